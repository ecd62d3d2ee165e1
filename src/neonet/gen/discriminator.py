"""Real vs synthetic: can a simple classifier tell a fold's synthetic patches from its real ones?

Every synthetic patch is decoded by the fold's autoencoder, whose encoder is PattenNet's frozen
encoder, and (without ``neonet synthesize --classes both``) every synthetic patch is PNI+. If the
two sets are distinguishable, a classifier trained on real + synthetic patches can learn "decoded →
PNI+" instead of PNI. This module measures it per fold and class, on that fold's **training**
patients only:

- **features**: ``intensity`` — percentiles, mean and sd of the patch, mean and sd of its gradient
  magnitude, mean absolute Laplacian and the share of its variance above a Gaussian blur (decoded
  images are smoother); ``encoder`` — mean and sd over the patch of each channel of the fold's frozen
  autoencoder encoder (``features`` tap, as PattenNet taps it; PattenNet pools over the label region
  with a histogram, this pools over the whole patch).
- **classifier**: L2 logistic regression on standardised features (LBFGS, in torch).
- **cross-validation**: ``k`` folds by **patient**: a real patch and every synthetic patch conditioned
  on that patient's mask fall in the same CV fold (the mask alone must not give a synthetic patch away).
  Scores are out-of-CV; AUC with a cluster-bootstrap 95 % CI over patients. AUC 0.5: indistinguishable.
  Cross-validated AUCs of indistinguishable sets scatter *below* 0.5 on average (the held-out patches
  pull the training means the other way; 0.42 over 10 draws of 40 + 40 noise patches), so read an AUC
  near or below 0.5, or a CI that holds 0.5, as indistinguishable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from neonet.report.stats import bootstrap_auc_ci

#: Percentiles of the ``intensity`` features.
PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
#: CV folds of the discriminator, its L2 penalty (on standardised features, against the mean log-loss: strong,
#: since a fold has about as many patches as encoder features) and bootstrap resamples.
CV_FOLDS, L2, N_BOOT = 5, 1.0, 1000


def intensity_features(images: np.ndarray) -> np.ndarray:
    """Intensity and texture features of images (N, X, Y, Z) → (N, 13)."""
    rows = []
    for image in np.asarray(images, dtype=np.float64):
        grad = np.sqrt(sum(g**2 for g in np.gradient(image)))
        high = image - ndimage.gaussian_filter(image, 1.0)
        rows.append(
            [
                *np.percentile(image, PERCENTILES),
                image.mean(),
                image.std(),
                grad.mean(),
                grad.std(),
                np.abs(ndimage.laplace(image)).mean(),
                high.var() / (image.var() + 1e-12),
            ]
        )
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), 7 + 6)


@torch.no_grad()
def encoder_features(encoder: nn.Module, images: np.ndarray, batch: int = 16) -> np.ndarray:
    """Mean and sd over space of each channel of ``encoder``'s map of images (N, X, Y, Z) → (N, 2C)."""
    encoder = encoder.eval()
    out = []
    for i in range(0, len(images), batch):
        f = encoder(torch.as_tensor(np.asarray(images[i : i + batch]), dtype=torch.float32)[:, None])
        out.append(torch.cat([f.mean(dim=(2, 3, 4)), f.std(dim=(2, 3, 4))], dim=1))
    return torch.cat(out).double().numpy()


def group_folds(groups: Sequence[str], k: int = CV_FOLDS, seed: int = 0) -> np.ndarray:
    """A CV fold index per row such that the rows of one group share a fold (groups shuffled by ``seed``,
    then dealt to the fold with the fewest rows so far, largest groups first)."""
    names = sorted(set(groups))
    rng = np.random.default_rng(seed)
    order = [names[i] for i in rng.permutation(len(names))]
    sizes = {g: 0 for g in names}
    for g in groups:
        sizes[g] += 1
    order.sort(key=lambda g: -sizes[g])  # stable: shuffled within equal sizes
    load = np.zeros(min(k, len(names)), dtype=int)
    fold_of = {}
    for g in order:
        j = int(np.argmin(load))
        fold_of[g] = j
        load[j] += sizes[g]
    return np.array([fold_of[g] for g in groups], dtype=int)


def logistic_fit_predict(x_fit: np.ndarray, y_fit: np.ndarray, x_new: np.ndarray, l2: float = L2) -> np.ndarray:
    """Scores (logits) of ``x_new`` from an L2 logistic regression on standardised ``x_fit``."""
    mu, sd = x_fit.mean(0), x_fit.std(0) + 1e-8
    xf = torch.as_tensor((x_fit - mu) / sd, dtype=torch.float64)
    xn = torch.as_tensor((x_new - mu) / sd, dtype=torch.float64)
    yf = torch.as_tensor(y_fit, dtype=torch.float64)
    w = torch.zeros(xf.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(xf @ w + b, yf) + l2 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return (xn @ w + b).numpy()


@dataclass
class Discrimination:
    """Out-of-CV scores of one real-vs-synthetic comparison (``y`` 1 = synthetic) and their AUC [CI]."""

    y: np.ndarray
    scores: np.ndarray
    groups: list[str]
    auc: float
    ci_lo: float
    ci_hi: float

    @property
    def n_real(self) -> int:
        """Real patches compared."""
        return int((self.y == 0).sum())

    @property
    def n_synthetic(self) -> int:
        """Synthetic patches compared."""
        return int((self.y == 1).sum())


def auc_with_ci(y: np.ndarray, scores: np.ndarray, groups: Sequence[str], seed: int = 0) -> tuple[float, float, float]:
    """AUC of ``scores`` for ``y`` with a 95 % cluster-bootstrap CI over ``groups`` (nan when a class is missing)."""
    if (y == 1).sum() == 0 or (y == 0).sum() == 0:
        return float("nan"), float("nan"), float("nan")
    try:
        return bootstrap_auc_ci(y, scores, n_boot=N_BOOT, seed=seed, clusters=np.asarray(groups))
    except ValueError:  # too few groups for a resample with both classes
        from neonet.report.stats import auc

        return auc(y, scores), float("nan"), float("nan")


def discriminate(
    real: np.ndarray,
    synthetic: np.ndarray,
    real_groups: Sequence[str],
    synthetic_groups: Sequence[str],
    k: int = CV_FOLDS,
    seed: int = 0,
) -> Discrimination:
    """Cross-validated real (0) vs synthetic (1) discrimination on feature rows.

    Args:
        real: features of the real patches (N, F).
        synthetic: features of the synthetic patches (M, F).
        real_groups: the patient of each real patch.
        synthetic_groups: the patient whose mask each synthetic patch was conditioned on.
        k: CV folds (by patient).
        seed: seed of the fold assignment and the bootstrap.
    """
    x = np.concatenate([real, synthetic]).astype(np.float64)
    y = np.r_[np.zeros(len(real)), np.ones(len(synthetic))].astype(int)
    groups = [str(g) for g in [*real_groups, *synthetic_groups]]
    scores = np.full(len(y), np.nan)
    folds = group_folds(groups, k, seed) if len(y) else np.zeros(0, dtype=int)
    for j in np.unique(folds):
        fit, new = folds != j, folds == j
        if len(np.unique(y[fit])) < 2:  # a fit set of one class: no discriminator, no information
            scores[new] = 0.0
            continue
        scores[new] = logistic_fit_predict(x[fit], y[fit], x[new])
    auc, lo, hi = auc_with_ci(y, scores, groups, seed)
    return Discrimination(y, scores, groups, auc, lo, hi)


def pooled(parts: Sequence[Discrimination], seed: int = 0) -> tuple[float, float, float]:
    """AUC [CI] of several folds' out-of-CV scores together (each fold's scores are on its own scale;
    the CI resamples patients, which appear in several folds' training sets)."""
    if not parts:
        return float("nan"), float("nan"), float("nan")
    y = np.concatenate([p.y for p in parts])
    scores = np.concatenate([p.scores for p in parts])
    groups = [g for p in parts for g in p.groups]
    return auc_with_ci(y, scores, groups, seed)


def sentence(auc: float, lo: float, hi: float, synthetic: str, real: str, features: str, confound: bool = False) -> str:
    """What an AUC [CI] of the discriminator means, in words.

    Args:
        auc: the AUC; lo, hi: its 95 % CI.
        synthetic: the synthetic patches (``synthetic PNI+ patches``).
        real: the real patches (``real training PNI+ patches``).
        features: the features (``encoder``).
        confound: say what a distinguishable set means for a classifier trained on real + synthetic PNI+ patches.
    """
    subject = synthetic[:1].upper() + synthetic[1:]
    if not np.isfinite(auc):
        return f"{subject} against {real} on {features} features: not measured (too few patches)."
    shown = f"AUC {auc:.2f}" + (f" [{lo:.2f}, {hi:.2f}]" if np.isfinite(lo) and np.isfinite(hi) else "")
    if np.isfinite(lo) and lo > 0.5:
        text = f"{subject} are distinguishable from {real} on {features} features ({shown})"
        if confound:
            text += (
                ": a classifier trained on real + synthetic patches can learn 'decoded → PNI+' instead of PNI "
                "(remedies: `neonet synthesize --classes both`, `--data.roundtrip_real true`; docs/method.md, "
                '"synthetic confound")'
            )
        return text + "."
    return (
        f"{subject} are not distinguishable from {real} on {features} features within this sample "
        f"({shown}; 0.5 = indistinguishable)."
    )
