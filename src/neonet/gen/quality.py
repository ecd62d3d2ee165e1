"""Quality of each fold's synthetic patches against the fold's real **training-patient** patches.

Per fold (nothing here reads the fold's test patients):

(a) **distance**: KID (unbiased polynomial-kernel MMD², standardised features) between synthetic and
    real patches, beside a **real-vs-real** KID of two disjoint real subsets of the same size, both
    averaged over random subsets. Features come from a network that is not the generator: the fold's
    NeoSeg network (global mean+sd of its bottleneck) when ``seg/fold<k>/checkpoints/best.ckpt``
    exists, else a fixed random-init 3D conv extractor (seed 0) — ``feature_net`` says which.
(b) **diversity**: mean pairwise MS-SSIM among synthetic patches (lower = more diverse), beside the
    same among real patches.
(c) **memorisation**: nearest real training patch per synthetic patch by Pearson correlation;
    ``near_copies`` counts correlations >= ``near_copy_threshold``; the real-vs-real nearest-neighbour
    correlation is given for scale.
(d) **mask adherence**: Dice between a tumour segmentation of each synthetic patch and the tumour of
    its conditioning mask, by the fold's NeoSeg model if available and good enough on the real patches
    (``neoseg_dice_real`` >= ``min_segmenter_dice``; it was trained on whole volumes), else by an intensity rule
    (inside the mask's liver+shell+tumour region, voxels closer to the real tumours' mean intensity
    than to the real livers'; the component nearest the patch centre) — ``segmenter`` says which; the same segmenter on
    the real patches against their own labels gives its ceiling (``dice_real``).
(e) **real vs synthetic** (:mod:`neonet.gen.discriminator`): per class of the synthetic patches, a
    cross-validated logistic regression between the fold's synthetic patches and its real **training**
    patches of that class (grouped by patient; AUC 0.5 = indistinguishable), on intensity/texture
    features and on the fold's frozen autoencoder encoder's pooled features (what PattenNet sees), and
    the same against the real patches after a round trip through the autoencoder (``roundtrip_real``).
    Every synthetic patch is decoded and, without ``--classes both``, PNI+: a high AUC means a classifier
    trained on real + synthetic patches can learn "decoded → PNI+". Per fold, pooled over folds, and in
    words: ``reports/gen_discriminator.{csv,png}``, ``disc_*`` columns and a section of ``gen_quality.md``.

Outputs (for another synthetic set ``synthetic_<name>``: ``gen_quality_synthetic_<name>*``, no figures
but the discriminator's): ``reports/gen_quality.{csv,json,md}``, ``reports/gen_quality_fold<k>.csv`` (per synthetic
patch), ``reports/gen_quality_fold<k>.png`` (synthetic patches beside their nearest real training
patch in three planes, :mod:`neonet.report.figures.gen_pairs`) and ``reports/gen_folds.png``, plus a
W&B summary run ``gen-cv``. ``gen_quality.md`` gives KID ± its sd over subsets and says what a negative
KID means (:data:`KID_NOTE`). ``gen_quality.json`` is also the report's provenance
record (:mod:`neonet.run.provenance`): its settings and the SHA-256 of every file it was computed from.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import torch
from scipy import ndimage
from torch import nn

from neonet.data.nifti import load_nifti, read_array
from neonet.data.patches import PATCH_LIVER, PATCH_TUMOR, patch_records
from neonet.data.splits import read_splits
from neonet.errors import MissingUpstreamError
from neonet.gen import discriminator as disc
from neonet.gen.common import ms_ssim_settings
from neonet.gen.latents import read_fold
from neonet.gen.patch_data import load_patch
from neonet.gen.roundtrip import roundtrip
from neonet.gen.upstream import load_autoencoder, load_seg_network
from neonet.run.atomic import write_csv, write_text
from neonet.run.provenance import FileRecord, Provenance, UnreadableRecordError, differences, read_provenance
from neonet.workspace import SYNTHETIC, Workspace, check_synthetic_name

log = logging.getLogger(__name__)
SEG_TUMOR = 2  # NeoSeg output convention: 0 bg, 1 liver, 2 tumour


# ----------------------------------------------------------------------------- features
class RandomConvFeatures(nn.Module):
    """A fixed random-init 3D conv feature extractor (seed 0): global mean and sd of 3 conv stages."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.body = nn.Sequential(
                nn.Conv3d(1, 8, 3, stride=2, padding=1),
                nn.LeakyReLU(0.2),
                nn.Conv3d(8, 16, 3, stride=2, padding=1),
                nn.LeakyReLU(0.2),
                nn.Conv3d(16, 32, 3, stride=1, padding=1),
                nn.LeakyReLU(0.2),
            )
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.body(x)
        return torch.cat([f.mean(dim=(2, 3, 4)), f.std(dim=(2, 3, 4))], dim=1)


def _pad_divisible(x: torch.Tensor, k: int = 16) -> torch.Tensor:
    """Zero-pad (B, C, X, Y, Z) at the end of each spatial axis to a multiple of ``k``."""
    pads: list[int] = []
    for s in reversed(x.shape[2:]):
        pads += [0, (-int(s)) % k]
    return torch.nn.functional.pad(x, pads) if any(pads) else x


class BottleneckFeatures(nn.Module):
    """Global mean and sd of a segmentation network's ``bottleneck`` output (forward hook)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self._out: torch.Tensor | None = None
        bottleneck = cast(nn.Module, net.bottleneck)  # e.g. DynUNet's bottleneck block
        bottleneck.register_forward_hook(lambda _m, _i, out: setattr(self, "_out", out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.net(_pad_divisible(x))
        f = self._out
        assert f is not None
        return torch.cat([f.mean(dim=(2, 3, 4)), f.std(dim=(2, 3, 4))], dim=1)


@torch.no_grad()
def features(net: nn.Module, images: np.ndarray, batch: int = 16) -> np.ndarray:
    """Features of images (N, X, Y, Z)."""
    out = [net(torch.as_tensor(images[i : i + batch], dtype=torch.float32)[:, None]) for i in range(0, len(images), batch)]
    return torch.cat(out).numpy().astype(np.float64)


def kid(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² with the polynomial kernel ``(x·y / d + 1)^3`` (KID) between feature sets."""
    d = x.shape[1]
    kxx, kyy, kxy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
    m, n = len(x), len(y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2 * kxy.mean())


#: Random subsets KID is averaged over.
KID_REPEATS = 50


def kid_with_baseline(f_syn: np.ndarray, f_real: np.ndarray, repeats: int = KID_REPEATS, seed: int = 0) -> dict[str, float]:
    """KID(synthetic, real B) and KID(real A, real B) with disjoint real subsets of equal size n."""
    n = min(len(f_syn), len(f_real) // 2)
    if n < 2:
        return {"kid": float("nan"), "kid_sd": float("nan"), "kid_real": float("nan"), "kid_real_sd": float("nan"), "kid_n": n}
    mu, sd = f_real.mean(0), f_real.std(0) + 1e-8
    zs, zr = (f_syn - mu) / sd, (f_real - mu) / sd
    rng = np.random.default_rng(seed)
    syn_vals, real_vals = [], []
    for _ in range(repeats):
        perm = rng.permutation(len(zr))
        a, b = zr[perm[:n]], zr[perm[n : 2 * n]]
        syn_vals.append(kid(zs[rng.permutation(len(zs))[:n]], b))
        real_vals.append(kid(a, b))
    return {
        "kid": float(np.mean(syn_vals)),
        "kid_sd": float(np.std(syn_vals)),
        "kid_real": float(np.mean(real_vals)),
        "kid_real_sd": float(np.std(real_vals)),
        "kid_n": n,
    }


# ----------------------------------------------------------------------------- diversity, memorisation
def mean_pairwise_ms_ssim(images: np.ndarray, max_pairs: int = 300, seed: int = 0) -> float:
    """Mean MS-SSIM over pairs of distinct images (N, X, Y, Z) in [0, 1] (settings fit the patch size)."""
    from monai.metrics import MultiScaleSSIMMetric

    pairs = [(i, j) for i in range(len(images)) for j in range(i + 1, len(images))]
    if not pairs:
        return float("nan")
    rng = np.random.default_rng(seed)
    if len(pairs) > max_pairs:
        pairs = [pairs[k] for k in rng.choice(len(pairs), max_pairs, replace=False)]
    kernel, weights = ms_ssim_settings(images.shape[1:])
    metric = MultiScaleSSIMMetric(spatial_dims=3, data_range=1.0, kernel_size=kernel, weights=weights, reduction="none")
    a = torch.as_tensor(np.stack([images[i] for i, _ in pairs]), dtype=torch.float32)[:, None]
    b = torch.as_tensor(np.stack([images[j] for _, j in pairs]), dtype=torch.float32)[:, None]
    return float(cast(torch.Tensor, metric(a, b)).mean())


def correlations(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of every image in ``a`` with every image in ``b`` → (len(a), len(b))."""
    fa = a.reshape(len(a), -1).astype(np.float64)
    fb = b.reshape(len(b), -1).astype(np.float64)
    fa = (fa - fa.mean(1, keepdims=True)) / (fa.std(1, keepdims=True) + 1e-8)
    fb = (fb - fb.mean(1, keepdims=True)) / (fb.std(1, keepdims=True) + 1e-8)
    return fa @ fb.T / fa.shape[1]


# ----------------------------------------------------------------------------- mask adherence
def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice of two binary masks (nan when both are empty)."""
    total = pred.sum() + ref.sum()
    return float(2.0 * (pred & ref).sum() / total) if total else float("nan")


class IntensityTumourRule:
    """Tumour = voxels of the mask's liver+shell+tumour region closer to the real tumours' mean intensity
    than to the real livers' (after light smoothing and a one-voxel opening that cuts thin bridges); of
    those, the connected component nearest the patch centre (TLCR centres patches on the tumour)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.name = "intensity rule (no NeoSeg checkpoint for this fold)"
        self.mu_tumour = float(images[labels == PATCH_TUMOR].mean())
        self.mu_liver = float(images[labels == PATCH_LIVER].mean())

    def __call__(self, image: np.ndarray, label: np.ndarray) -> np.ndarray:
        smooth = ndimage.gaussian_filter(image.astype(np.float64), 0.7)
        cand = (label >= PATCH_LIVER) & (np.abs(smooth - self.mu_tumour) < np.abs(smooth - self.mu_liver))
        cand = ndimage.binary_opening(cand, structure=ndimage.generate_binary_structure(3, 1))
        comps, n = ndimage.label(cand)
        if n == 0:
            return cand
        centre = (np.array(cand.shape) - 1) / 2.0
        coords = np.argwhere(cand)
        nearest = np.argmin(((coords - centre) ** 2).sum(1))
        return comps == comps[tuple(coords[nearest])]


class SegTumour:
    """Tumour = NeoSeg's argmax tumour class on the patch."""

    name = "fold NeoSeg model"

    def __init__(self, net: nn.Module) -> None:
        self.net = net

    @torch.no_grad()
    def __call__(self, image: np.ndarray, label: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(image, dtype=torch.float32)[None, None]
        logits = self.net(_pad_divisible(x))[..., : image.shape[0], : image.shape[1], : image.shape[2]]
        return (logits.argmax(1)[0] == SEG_TUMOR).numpy()


# ----------------------------------------------------------------------------- report
def _load_synthetic(ws: Workspace, fold: int, synthetic: str = SYNTHETIC) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    path = ws.synthetic_manifest(fold, synthetic)
    frame = pd.read_csv(path, dtype={"case_id": str, "source_case": str}) if path.is_file() else pd.DataFrame()
    if frame.empty:
        return frame, np.zeros((0,)), np.zeros((0,))
    base = path.parent
    imgs = np.stack([read_array(load_nifti(base / p), base / p) for p in frame["image"]]).astype(np.float32)
    labs = np.stack([np.rint(read_array(load_nifti(base / p), base / p)) for p in frame["label"]]).astype(np.uint8)
    return frame, imgs, labs


#: The discriminator's comparisons: (real patches as they are | after the autoencoder round trip) x features.
DISC_REAL, DISC_FEATURES = ("real", "round-tripped real"), ("intensity", "encoder")
#: Columns of ``reports/gen_discriminator.csv``.
DISC_COLUMNS = ["fold", "class", "real", "features", "n_real", "n_synthetic", "auc", "ci_lo", "ci_hi"]


def fold_discrimination(
    ws: Workspace, fold: int, real: list[dict[str, Any]], frame: pd.DataFrame, s_img: np.ndarray
) -> list[tuple[dict[str, Any], disc.Discrimination]]:
    """Real vs synthetic per class of the fold's synthetic patches, against the fold's real **training**
    patches of that class (``real``: items of the fold's training cases only, with ``pni`` and
    ``patient_id``), as they are and after the fold autoencoder's round trip; returns (row, result) pairs.
    Encoder features and round trips need the fold's autoencoder ``best.ckpt`` (skipped without it)."""
    split = read_fold(ws, fold)
    allowed = set(split.train)
    if any(it["case_id"] not in allowed for it in real):
        raise ValueError(f"fold {fold}: the discriminator takes the fold's training patches only")
    ckpt = ws.best_checkpoint("autoencoder", fold)
    autoencoder = load_autoencoder(ckpt) if ckpt.is_file() else None
    encoder = None
    if autoencoder is not None:
        from neonet.nets import AutoencoderKLEncoder

        encoder = AutoencoderKLEncoder(autoencoder, tap="features")
    out = []
    for pni in sorted({int(p) for p in frame["pni"]}, reverse=True):
        rows = [it for it in real if int(it["pni"]) == pni]
        syn = (frame["pni"].astype(int) == pni).to_numpy()
        if not rows or not syn.any():
            continue
        images = {"real": np.stack([it["image"][0].numpy() for it in rows])}
        if autoencoder is not None:
            images["round-tripped real"] = roundtrip(autoencoder, images["real"])
        groups = [str(it["patient_id"]) for it in rows]
        s_groups = frame.loc[syn, "source_patient" if "source_patient" in frame else "source_case"].astype(str).tolist()
        for kind in DISC_REAL:
            for feats in DISC_FEATURES:
                if kind not in images or (feats == "encoder" and encoder is None):
                    continue
                if feats == "encoder":
                    assert encoder is not None
                    fr, fs = disc.encoder_features(encoder, images[kind]), disc.encoder_features(encoder, s_img[syn])
                else:
                    fr, fs = disc.intensity_features(images[kind]), disc.intensity_features(s_img[syn])
                res = disc.discriminate(fr, fs, groups, s_groups, seed=fold)
                row: dict[str, Any] = {"fold": fold, "class": "PNI+" if pni == 1 else "PNI-", "real": kind, "features": feats}
                row.update(n_real=res.n_real, n_synthetic=res.n_synthetic, auc=res.auc, ci_lo=res.ci_lo, ci_hi=res.ci_hi)
                out.append((row, res))
    return out


def _disc_columns(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The summary row's ``disc_*`` columns: PNI+ synthetic against real training PNI+ patches."""
    found = {(r["class"], r["real"], r["features"]): r for r in rows}
    out = {}
    for key, (kind, feats) in {
        "disc_auc_intensity": ("real", "intensity"),
        "disc_auc_encoder": ("real", "encoder"),
        "disc_auc_encoder_roundtrip": ("round-tripped real", "encoder"),
    }.items():
        row = found.get(("PNI+", kind, feats))
        if row is not None:
            out[key] = row["auc"]
            if key == "disc_auc_encoder":
                out["disc_auc_encoder_lo"], out["disc_auc_encoder_hi"] = row["ci_lo"], row["ci_hi"]
    return out


def fold_quality(
    ws: Workspace,
    fold: int,
    near_copy_threshold: float = 0.95,
    min_segmenter_dice: float = 0.5,
    synthetic: str = SYNTHETIC,
    discrimination: list[tuple[dict[str, Any], disc.Discrimination]] | None = None,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Quality numbers of one fold (summary row, per-synthetic-patch table).

    The fold's NeoSeg model segments the synthetic tumours only if it reaches ``min_segmenter_dice``
    on the fold's real patches (it was trained on whole volumes); otherwise the intensity rule does.
    The real-vs-synthetic results (:func:`fold_discrimination`) are appended to ``discrimination``.
    """
    split = read_fold(ws, fold)
    records = patch_records(ws, split.fit)
    real_items = [dict(load_patch(r), patient_id=r.patient_id) for r in records]
    r_img = np.stack([it["image"][0].numpy() for it in real_items])
    r_lab = np.stack([it["label"][0].numpy() for it in real_items])
    r_ids = [it["case_id"] for it in real_items]
    frame, s_img, s_lab = _load_synthetic(ws, fold, synthetic)
    row: dict[str, Any] = {"fold": fold, "n_real": len(r_img), "n_synthetic": len(frame)}
    ae_eval = (ws.read_artifact("autoencoder", fold) or {}).get("evaluation") or {}
    row["ae_val_psnr"] = ae_eval.get("val_psnr")
    row["ae_val_ms_ssim"] = ae_eval.get("val_ms_ssim")
    if frame.empty:
        return row, frame
    seg = load_seg_network(ws, fold)
    extractor: nn.Module = BottleneckFeatures(seg) if seg is not None and hasattr(seg, "bottleneck") else RandomConvFeatures()
    row["feature_net"] = "fold NeoSeg bottleneck" if isinstance(extractor, BottleneckFeatures) else "random-init conv (seed 0)"
    row.update(kid_with_baseline(features(extractor, s_img), features(extractor, r_img)))
    row["ms_ssim_synthetic"] = mean_pairwise_ms_ssim(s_img)
    row["ms_ssim_real"] = mean_pairwise_ms_ssim(r_img)
    corr = correlations(s_img, r_img)
    nearest = corr.argmax(1)
    rr = correlations(r_img, r_img)
    np.fill_diagonal(rr, -np.inf)
    row["nn_corr_max"] = float(corr.max())
    row["nn_corr_real_max"] = float(rr.max())
    row["near_copies"] = int((corr.max(1) >= near_copy_threshold).sum())
    row["near_copy_threshold"] = near_copy_threshold
    segmenter: Any = IntensityTumourRule(r_img, r_lab)
    d_real = [dice(segmenter(r_img[i], r_lab[i]), r_lab[i] == PATCH_TUMOR) for i in range(len(r_img))]
    if seg is not None:  # the fold's NeoSeg model, if it segments real patches well enough on its own
        seg_tumour = SegTumour(seg)
        d_seg = [dice(seg_tumour(r_img[i], r_lab[i]), r_lab[i] == PATCH_TUMOR) for i in range(len(r_img))]
        row["neoseg_dice_real"] = float(np.nanmean(d_seg))
        if row["neoseg_dice_real"] >= min_segmenter_dice:
            segmenter, d_real = seg_tumour, d_seg
        else:
            segmenter.name = (
                f"intensity rule (the fold NeoSeg model reaches only tumour Dice "
                f"{row['neoseg_dice_real']:.2f} on real patches without whole-volume context)"
            )
    row["segmenter"] = segmenter.name
    d_syn = [dice(segmenter(s_img[i], s_lab[i]), s_lab[i] == PATCH_TUMOR) for i in range(len(s_img))]
    row["dice_synthetic"] = float(np.nanmean(d_syn))
    row["dice_real"] = float(np.nanmean(d_real))
    train = set(split.train)  # the discriminator sees the fold's training patients only (not its validation ones)
    found = fold_discrimination(ws, fold, [it for it in real_items if it["case_id"] in train], frame, s_img)
    row.update(_disc_columns([r for r, _ in found]))
    if discrimination is not None:
        discrimination += found
    per = pd.DataFrame(
        {
            "case_id": frame["case_id"],
            "source_case": frame["source_case"],
            "nearest_real": [r_ids[j] for j in nearest],
            "nearest_corr": corr.max(1),
            "nearest_is_source": [r_ids[j] == s for j, s in zip(nearest, frame["source_case"])],
            "near_copy": corr.max(1) >= near_copy_threshold,
            "tumour_dice": d_syn,
            "pni": frame["pni"].astype(int) if "pni" in frame else 1,
        }
    )
    return row, per


def _input_files(ws: Workspace, folds: list[int], synthetic: str = SYNTHETIC) -> dict[str, Path]:
    """Every file the report of ``folds`` may depend on, by input name."""
    files = {"splits": ws.splits_path, "patches": ws.patches_manifest}
    for k in folds:
        files[f"synthetic_fold{k}"] = ws.synthetic_manifest(k, synthetic)
        files[f"synthetic_config_fold{k}"] = ws.synthetic_config(k, synthetic)
        files[f"autoencoder_fold{k}"] = ws.artifact_path("autoencoder", k)
        files[f"seg_fold{k}"] = ws.artifact_path("seg", k)
    return files


#: The discriminator's settings, recorded in the report's provenance (a report without them is recomputed).
DISCRIMINATOR_SETTINGS = {"cv_folds": disc.CV_FOLDS, "l2": disc.L2, "features": list(DISC_FEATURES), "real": list(DISC_REAL)}


def quality_inputs(
    ws: Workspace, folds: list[int], near_copy_threshold: float, min_segmenter_dice: float, synthetic: str = SYNTHETIC
) -> Provenance:
    """The report's provenance now: its settings and the SHA-256 of every file of ``folds`` it depends
    on that exists (for :func:`quality_is_current`)."""
    settings: dict[str, Any] = {
        "folds": [int(k) for k in folds],
        "near_copy_threshold": near_copy_threshold,
        "min_segmenter_dice": min_segmenter_dice,
        "discriminator": DISCRIMINATOR_SETTINGS,
    }
    if synthetic != SYNTHETIC:
        settings["synthetic"] = synthetic
    files = _input_files(ws, folds, synthetic)
    return Provenance(settings, {name: FileRecord.of(path) for name, path in files.items() if path.is_file()})


def _legacy_record(data: dict[str, Any], files: dict[str, Path]) -> Provenance:
    """A ``gen_quality.json`` of before :mod:`neonet.run.provenance`: settings and digests under ``inputs``."""
    old = data.get("inputs")
    if not isinstance(old, dict):
        raise ValueError("no `inputs` of the report")
    digests = old.get("sha256") or {}
    return Provenance(
        {k: v for k, v in old.items() if k != "sha256"},
        {name: FileRecord(str(files.get(name, name)), str(d)) for name, d in digests.items() if d},
        extra={k: v for k, v in data.items() if k != "inputs"},
    )


def quality_is_current(
    ws: Workspace,
    folds: list[int],
    near_copy_threshold: float = 0.95,
    min_segmenter_dice: float = 0.5,
    synthetic: str = SYNTHETIC,
) -> bool:
    """True when ``reports/gen_quality.json`` (of the synthetic set) was made from exactly the current inputs of ``folds``."""
    files = _input_files(ws, folds, synthetic)
    report = ws.gen_quality_report(synthetic=synthetic)
    try:
        stored = read_provenance(report, "the quality report", lambda data: _legacy_record(data, files))
    except UnreadableRecordError as exc:
        log.info("%s", exc)
        return False
    if stored is None:
        return False
    found = differences(stored, quality_inputs(ws, folds, near_copy_threshold, min_segmenter_dice, synthetic))
    if found:
        log.info("quality report %s is out of date: %s", report, "; ".join(found))
    return not found


#: What ``gen_quality.md`` says under its table.
KID_NOTE = (
    "KID is an unbiased estimator of a squared distance (MMD²): its expected value is 0 when synthetic and real "
    "patches come from one distribution, and a single estimate can then be negative. A negative KID, or one within "
    "the real-vs-real baseline's spread, means the two sets are indistinguishable within the estimator's noise on "
    "these features, not that synthetic patches are closer than real ones. Values are mean ± sd over {repeats} "
    "random subsets of {n} patches; the last row is mean ± sd over the folds."
)


def _pm(mean: Any, sd: Any) -> str:
    """``mean ± sd`` for the markdown table (``—`` when the mean is missing)."""
    if mean is None or not np.isfinite(float(mean)):
        return "—"
    return f"{float(mean):.4g} ± {float(sd):.2g}" if sd is not None and np.isfinite(float(sd)) else f"{float(mean):.4g}"


def quality_markdown(table: pd.DataFrame, cols: list[str]) -> str:
    """``gen_quality.md``: the per-fold table with KID ± its sd over subsets, the mean ± sd over folds, and what
    a negative KID means."""
    shown = table[cols].astype(object).where(table[cols].notna(), "—")
    for column in ("kid", "kid_real"):
        if column in table:
            shown[column] = [_pm(m, s) for m, s in zip(table[column], table.get(f"{column}_sd", [None] * len(table)))]
    numeric = table[[c for c in cols if c != "fold"]].select_dtypes("number")
    across = {c: _pm(numeric[c].mean(), numeric[c].std(ddof=1) if numeric[c].count() > 1 else None) for c in numeric}
    shown.loc[len(shown)] = ["folds mean ± sd" if c == "fold" else across.get(c, "") for c in cols]
    n = int(table["kid_n"].dropna().min()) if "kid_n" in table and table["kid_n"].notna().any() else 0
    from neonet.report.cls_report import markdown

    text = markdown(shown)
    return f"# NeoGen synthetic patch quality\n\n{text}\n{KID_NOTE.format(repeats=KID_REPEATS, n=n)}\n"


def discriminator_table(found: list[tuple[dict[str, Any], disc.Discrimination]]) -> tuple[pd.DataFrame, list[str]]:
    """``gen_discriminator.csv``: every fold's rows, then one ``pooled`` row per comparison (all folds'
    out-of-CV scores together, CI over patients); and the pooled results in words."""
    rows = [r for r, _ in found]
    sentences = []
    keys = list(dict.fromkeys((r["class"], r["real"], r["features"]) for r in rows))
    for cls, kind, feats in keys:
        parts = [(r, res) for r, res in found if (r["class"], r["real"], r["features"]) == (cls, kind, feats)]
        auc, lo, hi = disc.pooled([res for _, res in parts])
        rows.append(
            {
                "fold": "pooled",
                "class": cls,
                "real": kind,
                "features": feats,
                "n_real": sum(r["n_real"] for r, _ in parts),
                "n_synthetic": sum(r["n_synthetic"] for r, _ in parts),
                "auc": auc,
                "ci_lo": lo,
                "ci_hi": hi,
            }
        )
        confound = cls == "PNI+" and kind == "real"
        sentences.append(
            disc.sentence(auc, lo, hi, f"synthetic {cls} patches", f"{kind} training {cls} patches", feats, confound)
        )
    return pd.DataFrame(rows, columns=DISC_COLUMNS), sentences


#: What ``gen_quality.md``'s real-vs-synthetic section says above its table.
DISC_NOTE = (
    "A cross-validated L2 logistic regression (5 folds by patient: a real patch and the synthetic patches conditioned "
    "on its mask share a fold) between each fold's synthetic patches and its real training patches of the same class "
    "(never its validation or test patients); features: `intensity` (percentiles, gradient and Laplacian statistics, "
    "high-frequency share) or `encoder` (mean and sd of each channel of the fold's frozen autoencoder encoder, the map "
    "PattenNet reads); `round-tripped real`: the real patches after the autoencoder's encode-decode round trip "
    "(`roundtrip_real`). AUC 0.5: indistinguishable; 95 % CI by cluster bootstrap over patients. Every synthetic patch "
    "is decoded by the fold's autoencoder; when they are all PNI+, a high AUC means a classifier trained on real + "
    "synthetic patches can learn 'decoded → PNI+'."
)


def _discriminator_markdown(table: pd.DataFrame, sentences: list[str]) -> str:
    from neonet.report.cls_report import markdown

    if table.empty:
        return ""
    shown = table.astype(object)
    shown["auc [CI]"] = [
        "—" if not np.isfinite(a) else f"{a:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if np.isfinite(lo) else "")
        for a, lo, hi in zip(table["auc"].astype(float), table["ci_lo"].astype(float), table["ci_hi"].astype(float))
    ]
    shown = shown[["fold", "class", "real", "features", "n_real", "n_synthetic", "auc [CI]"]]
    words = "\n".join(f"- {s}" for s in sentences)
    return f"\n## Real vs synthetic\n\n{DISC_NOTE}\n\n{words}\n\n{markdown(shown)}\n"


def write_discriminator_figure(ws: Workspace, table: pd.DataFrame, synthetic: str = SYNTHETIC) -> Path | None:
    """``gen_discriminator.png``: AUC [CI] per fold and pooled, one panel per class and real-patch kind."""
    from neonet.report.figures.common import plt, save_png

    if table.empty:
        return None
    panels = list(dict.fromkeys(zip(table["class"], table["real"])))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False, sharey=True)
    for ax, (cls, kind) in zip(axes[0], panels):
        part = table[(table["class"] == cls) & (table["real"] == kind)]
        labels = list(dict.fromkeys(str(f) for f in part["fold"]))
        for j, feats in enumerate(DISC_FEATURES):
            sub = part[part["features"] == feats].set_index(part[part["features"] == feats]["fold"].astype(str))
            x = [labels.index(f) + (j - 0.5) * 0.25 for f in sub.index]
            auc = sub["auc"].astype(float).to_numpy()
            lo, hi = sub["ci_lo"].astype(float).to_numpy(), sub["ci_hi"].astype(float).to_numpy()
            err = np.vstack([np.nan_to_num(auc - lo), np.nan_to_num(hi - auc)])
            ax.errorbar(x, auc, yerr=err, fmt="o", capsize=3, label=feats)
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_xticks(range(len(labels)), [f"fold {f}" if f != "pooled" else f for f in labels])
        ax.set_ylim(0.0, 1.05)
        ax.set_title(f"synthetic {cls} vs {kind} {cls}", fontsize=9)
        ax.set_ylabel("discriminator AUC (0.5 = indistinguishable)")
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return save_png(fig, ws.gen_discriminator_report("png", synthetic))


def quality_report(
    ws: Workspace,
    folds: list[int],
    near_copy_threshold: float = 0.95,
    min_segmenter_dice: float = 0.5,
    synthetic: str = SYNTHETIC,
) -> pd.DataFrame:
    """Write the quality report of ``folds`` to ``reports/`` and W&B; returns the per-fold table.

    Args:
        ws: the experiment's workspace.
        folds: folds to evaluate.
        near_copy_threshold: correlation at or above which a synthetic patch counts as a near copy.
        min_segmenter_dice: real-patch tumour Dice the fold's NeoSeg model needs to be used for (d).
        synthetic: the synthetic set (``synthetic`` or ``synthetic_<name>``).
    """
    from neonet.report.figures import GEN_QUALITY, write_stage

    rows = []
    found: list[tuple[dict[str, Any], disc.Discrimination]] = []
    for k in folds:
        row, per = fold_quality(ws, k, near_copy_threshold, min_segmenter_dice, synthetic, found)
        rows.append(row)
        if not per.empty:
            write_csv(ws.gen_quality_report("csv", k, synthetic), per)
    table = pd.DataFrame(rows)
    write_csv(ws.gen_quality_report("csv", synthetic=synthetic), table)
    d_table, sentences = discriminator_table(found)
    write_csv(ws.gen_discriminator_report("csv", synthetic), d_table)
    disc_png = write_discriminator_figure(ws, d_table, synthetic)
    # gen_quality_fold<k>.png (synthetic beside nearest real), gen_folds.png: of the default set
    figures = write_stage(ws, GEN_QUALITY) if synthetic == SYNTHETIC else []
    images = {p.stem: p for p in (ws.gen_quality_report("png", k) for k in folds) if p in figures}
    numeric = table.drop(columns=["fold"]).select_dtypes("number")
    summary = {c: float(numeric[c].mean()) for c in numeric.columns}
    spread = {c: float(numeric[c].std(ddof=1)) if numeric[c].count() > 1 else None for c in numeric.columns}
    now = quality_inputs(ws, folds, near_copy_threshold, min_segmenter_dice, synthetic)
    pooled_rows = d_table[d_table["fold"] == "pooled"].to_dict(orient="records")
    extra = {
        "per_fold": table.to_dict(orient="records"),
        "mean": summary,
        "sd_over_folds": spread,
        "discriminator": {"rows": d_table.to_dict(orient="records"), "pooled": pooled_rows, "in_words": sentences},
    }
    Provenance(now.settings, now.inputs, extra=extra).write(ws.gen_quality_report(synthetic=synthetic))
    cols = [
        c
        for c in (
            "fold",
            "n_synthetic",
            "ae_val_psnr",
            "kid",
            "kid_real",
            "ms_ssim_synthetic",
            "ms_ssim_real",
            "near_copies",
            "dice_synthetic",
            "dice_real",
            "neoseg_dice_real",
            "disc_auc_intensity",
            "disc_auc_encoder",
            "disc_auc_encoder_roundtrip",
        )
        if c in table.columns
    ]
    text = quality_markdown(table, cols) + _discriminator_markdown(d_table, sentences)
    write_text(ws.gen_quality_report("md", synthetic=synthetic), text)
    log.info("NeoGen quality (%s):\n%s", ws.gen_quality_report("csv", synthetic=synthetic), table[cols].to_string(index=False))
    for line in sentences:
        log.info("real vs synthetic: %s", line)
    from neonet.report.wandb_summary import log_cv_summary

    # the panels show real training patches: patient images, sent to W&B only when the user opts in
    numbers = {f"gen/{k}": v for k, v in summary.items()}
    settings = {"folds": folds, **now.settings}
    plots = {disc_png.stem: disc_png} if disc_png is not None else None
    tables = {"gen_quality": table, "gen_discriminator": d_table.astype({"fold": str})}
    stage = "gen" if synthetic == SYNTHETIC else f"gen_{synthetic}"
    log_cv_summary(ws, stage, tables, numbers, images=plots, patient_images=images, config=settings)
    return table


def gen_quality(
    experiment: str = "default",
    runs_dir: Path = Path("runs"),
    folds: list[int] | None = None,
    near_copy_threshold: float = 0.95,
    min_segmenter_dice: float = 0.5,
    synthetic: str = SYNTHETIC,
) -> int:
    """Write the quality report of each fold's synthetic patches (``neonet synthesize`` does this too).

    Args:
        experiment: experiment name (folder below ``runs_dir``).
        runs_dir: folder holding all experiments.
        folds: folds to evaluate (default: every fold with a ``synthetic/fold<k>/manifest.csv``).
        near_copy_threshold: correlation at or above which a synthetic patch counts as a near copy.
        min_segmenter_dice: real-patch tumour Dice the fold's NeoSeg model needs to be used for mask adherence.
        synthetic: the synthetic set: ``synthetic`` or ``synthetic_<name>`` (``neonet synthesize --name``);
            another set's report is ``reports/gen_quality_<set>.*`` and ``reports/gen_discriminator_<set>.*``.
    """
    check_synthetic_name(synthetic)
    ws = Workspace(runs_dir, experiment)
    if folds is None:
        n = int(read_splits(ws.splits_path)["folds"]) if ws.splits_path.is_file() else 0
        folds = [k for k in range(n) if ws.synthetic_manifest(k, synthetic).is_file()]
    if not folds:
        raise MissingUpstreamError(
            "synthetic patches",
            ws.root / synthetic,
            f"neonet synthesize --experiment {experiment} --runs_dir {runs_dir}"
            + ("" if synthetic == SYNTHETIC else f" --name {synthetic}"),
        )
    quality_report(ws, [int(k) for k in folds], near_copy_threshold, min_segmenter_dice, synthetic)
    return 0
