"""Statistics for reporting binary classifiers: AUC with confidence intervals, DeLong tests, thresholds.

Conventions: ``y`` holds labels 0/1 (1 = PNI+), ``p`` holds scores where larger means more likely
positive (probabilities or logits: every function here is invariant to strictly increasing
transforms of ``p``, except the threshold itself). A case is called positive when ``p >= threshold``.

AUC is the Mann-Whitney statistic computed from midranks, so ties between a positive and a negative
count one half. The DeLong (1988) variance and paired test use the fast midrank algorithm of
Sun & Xu (2014): O(n log n) instead of O(m n). With ``clusters`` (several cases per patient or matched
set) they use Obuchowski's (1997) clustered variance instead, built from the same components summed
per cluster.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy import stats as sps
from torchmetrics.functional.classification import (
    binary_accuracy,
    binary_average_precision,
    binary_f1_score,
    binary_recall,
    binary_specificity,
)

__all__ = [
    "auc",
    "format_p",
    "binary_metrics",
    "bootstrap_auc_ci",
    "delong_ci",
    "delong_test",
    "delong_variance",
    "youden_threshold",
]

ArrayLike = Any


def _check(y: ArrayLike, *scores: ArrayLike, need_both: bool = True) -> tuple[np.ndarray, list[np.ndarray]]:
    """Validate labels and scores; return them as 1-D int and float64 arrays."""
    y_arr = np.asarray(y).reshape(-1)
    if y_arr.size == 0:
        raise ValueError("empty input")
    if not np.isin(y_arr, (0, 1)).all():
        raise ValueError(f"labels must be 0/1, got values {np.unique(y_arr)[:10]}")
    y_arr = y_arr.astype(np.int64)
    out = []
    for s in scores:
        s_arr = np.asarray(s, dtype=np.float64).reshape(-1)
        if s_arr.shape != y_arr.shape:
            raise ValueError(f"labels and scores differ in length: {y_arr.size} vs {s_arr.size}")
        if not np.isfinite(s_arr).all():
            raise ValueError("scores contain NaN or infinite values")
        out.append(s_arr)
    if need_both and (y_arr.sum() == 0 or y_arr.sum() == y_arr.size):
        raise ValueError("AUC needs both classes; got only one")
    return y_arr, out


def _auc_from_ranks(ranks_pos_sum: np.ndarray, n_pos: np.ndarray | int, n_neg: np.ndarray | int) -> np.ndarray:
    return (ranks_pos_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def log_odds(p: ArrayLike, eps: float = 1e-7) -> np.ndarray:
    """Log-odds ``log(p / (1 - p))`` of probabilities, clipped to ``eps`` from 0 and 1."""
    q = np.clip(np.asarray(p, dtype=float), eps, 1 - eps)
    return np.log(q / (1 - q))


def auc(y: ArrayLike, p: ArrayLike) -> float:
    """Area under the ROC curve (Mann-Whitney U / (m n), ties count 1/2).

    Args:
        y: labels 0/1.
        p: scores, higher = more likely positive.

    Raises:
        ValueError: if only one class is present, lengths differ or scores are not finite.
    """
    y_arr, (p_arr,) = _check(y, p)
    ranks = sps.rankdata(p_arr)
    n_pos = int(y_arr.sum())
    return float(_auc_from_ranks(ranks[y_arr == 1].sum(), n_pos, y_arr.size - n_pos))


def bootstrap_auc_ci(
    y: ArrayLike,
    p: ArrayLike,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
    stratified: bool = True,
    clusters: ArrayLike | None = None,
) -> tuple[float, float, float]:
    """AUC with a percentile-bootstrap confidence interval.

    Args:
        y: labels 0/1.
        p: scores.
        n_boot: number of bootstrap resamples.
        alpha: 1 - confidence level (0.05: 95 % interval).
        seed: seed of the resampling generator.
        stratified: resample positives and negatives separately (keeps the class counts);
            otherwise resample all cases and skip resamples that hold only one class.
        clusters: one id per case; when given, whole clusters are resampled (cluster bootstrap:
            cases of one patient or one matched set are not independent), resamples holding one
            class only are skipped, and ``stratified`` is ignored.

    Returns:
        ``(auc, lo, hi)``: the AUC of the full sample and the ``alpha/2`` and ``1-alpha/2``
        percentiles of the bootstrap AUCs.
    """
    y_arr, (p_arr,) = _check(y, p)
    if n_boot < 1:
        raise ValueError("n_boot must be >= 1")
    if not 0 < alpha < 1:
        raise ValueError("alpha must be in (0, 1)")
    rng = np.random.default_rng(seed)
    estimate = auc(y_arr, p_arr)
    if clusters is not None:
        boot = _cluster_bootstrap(y_arr, p_arr, np.asarray(clusters), n_boot, rng)
        lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
        return estimate, float(lo), float(hi)
    pos, neg = p_arr[y_arr == 1], p_arr[y_arr == 0]
    n = y_arr.size
    chunk = max(1, min(n_boot, 4_000_000 // max(n, 1)))
    aucs: list[np.ndarray] = []
    done = 0
    while done < n_boot:
        b = min(chunk, n_boot - done)
        if stratified:
            sp = pos[rng.integers(0, pos.size, size=(b, pos.size))]
            sn = neg[rng.integers(0, neg.size, size=(b, neg.size))]
            ranks = sps.rankdata(np.concatenate([sp, sn], axis=1), axis=1)
            aucs.append(_auc_from_ranks(ranks[:, : pos.size].sum(axis=1), pos.size, neg.size))
        else:
            idx = rng.integers(0, n, size=(b, n))
            yb, pb = y_arr[idx], p_arr[idx]
            n_pos = yb.sum(axis=1)
            ok = (n_pos > 0) & (n_pos < n)
            ranks = sps.rankdata(pb[ok], axis=1)
            n_pos_ok = n_pos[ok]
            aucs.append(_auc_from_ranks((ranks * yb[ok]).sum(axis=1), n_pos_ok, n - n_pos_ok))
        done += b
    boot = np.concatenate(aucs)
    if boot.size == 0:
        raise ValueError("every bootstrap resample held only one class")
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return estimate, float(lo), float(hi)


def _cluster_ids(clusters: ArrayLike, size: int) -> np.ndarray:
    """Integer cluster index per case, checked against the number of cases."""
    ids = np.asarray(clusters)
    if ids.shape != (size,):
        raise ValueError(f"clusters must hold one id per case ({size}), got shape {ids.shape}")
    return np.unique(ids, return_inverse=True)[1].reshape(-1)


def _cluster_bootstrap(y: np.ndarray, p: np.ndarray, clusters: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """AUCs of ``n_boot`` resamples of whole clusters (with replacement)."""
    index = _cluster_ids(clusters, y.size)
    members = [np.flatnonzero(index == g) for g in range(index.max() + 1)]
    aucs = []
    for _ in range(n_boot):
        idx = np.concatenate([members[g] for g in rng.integers(0, len(members), size=len(members))])
        yb = y[idx]
        n_pos = int(yb.sum())
        if 0 < n_pos < yb.size:
            ranks = sps.rankdata(p[idx])
            aucs.append(float(_auc_from_ranks(ranks[yb == 1].sum(), n_pos, yb.size - n_pos)))
    if not aucs:
        raise ValueError("every bootstrap resample held only one class")
    return np.asarray(aucs)


def _structural_components(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DeLong structural components by midranks (Sun & Xu 2014).

    Args:
        y: labels 0/1, shape ``(n,)``.
        scores: shape ``(k, n)``, one row per predictor.

    Returns:
        ``(aucs (k,), v10 (k, m), v01 (k, n_neg))``: per-predictor AUC, and for each positive the
        fraction of negatives it beats (V10), for each negative the fraction of positives that
        beat it (V01); ties count 1/2.
    """
    pos, neg = scores[:, y == 1], scores[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    tx = sps.rankdata(pos, axis=1)  # midranks among positives
    ty = sps.rankdata(neg, axis=1)  # midranks among negatives
    tz = sps.rankdata(np.concatenate([pos, neg], axis=1), axis=1)  # midranks among all
    aucs = tz[:, :m].sum(axis=1) / (m * n) - (m + 1.0) / (2.0 * n)
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    return aucs, v10, v01


def delong_variance(y: ArrayLike, *scores: ArrayLike, clusters: ArrayLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """AUCs of one or more paired predictors and their DeLong covariance matrix.

    Args:
        y: labels 0/1.
        *scores: one score array per predictor, all on the same cases.
        clusters: one id per case (e.g. patient or matched set). None: independent cases, DeLong's
            ``cov = S10 / m + S01 / n`` (sample covariances, ddof 1). Given: Obuchowski's (1997)
            clustered covariance, ``S10 / m + S01 / n + (S11 + S11') / (m n)`` with the structural
            components summed per cluster, centred at ``m_i * auc`` and ``n_i * auc`` (cluster i's
            positives and negatives) and scaled by ``I / (I - 1)`` over the ``I`` clusters; copying
            every cluster leaves it unchanged.

    Returns:
        ``(aucs (k,), cov (k, k))``.
    """
    if not scores:
        raise ValueError("need at least one score array")
    y_arr, arrs = _check(y, *scores)
    m = int(y_arr.sum())
    n = y_arr.size - m
    if m < 2 or n < 2:
        raise ValueError(f"DeLong variance needs at least 2 cases per class, got {m} positive and {n} negative")
    aucs, v10, v01 = _structural_components(y_arr, np.stack(arrs))
    if clusters is None:
        s10 = np.atleast_2d(np.cov(v10))
        s01 = np.atleast_2d(np.cov(v01))
        return aucs, s10 / m + s01 / n
    ids = _cluster_ids(clusters, y_arr.size)
    n_clusters = int(ids.max()) + 1
    if n_clusters < 2:
        raise ValueError("the clustered DeLong variance needs at least 2 clusters")
    pos, neg = ids[y_arr == 1], ids[y_arr == 0]
    sum10 = np.stack([np.bincount(pos, weights=row, minlength=n_clusters) for row in v10])  # (k, I)
    sum01 = np.stack([np.bincount(neg, weights=row, minlength=n_clusters) for row in v01])
    a = sum10 - np.bincount(pos, minlength=n_clusters)[None, :] * aucs[:, None]
    b = sum01 - np.bincount(neg, minlength=n_clusters)[None, :] * aucs[:, None]
    scale = n_clusters / (n_clusters - 1.0)
    s10, s01, s11 = scale * (a @ a.T) / m, scale * (b @ b.T) / n, scale * (a @ b.T)
    return aucs, s10 / m + s01 / n + (s11 + s11.T) / (m * n)


def delong_test(y: ArrayLike, p1: ArrayLike, p2: ArrayLike, clusters: ArrayLike | None = None) -> dict[str, float]:
    """DeLong et al. (1988) test of two correlated AUCs (same cases), two-sided.

    Args:
        y: labels 0/1.
        p1: scores of the first predictor.
        p2: scores of the second predictor.
        clusters: one id per case for clustered data (Obuchowski's variance, see
            :func:`delong_variance`); None for independent cases.

    Returns:
        ``auc1``, ``auc2``, ``diff`` (auc1 - auc2), ``se`` (of the difference), ``z`` and ``p_value``.
        With ``se == 0``: ``z = 0, p = 1`` when the AUCs are equal, else ``z = ±inf, p = 0``.
    """
    aucs, cov = delong_variance(y, p1, p2, clusters=clusters)
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    se = float(np.sqrt(max(var, 0.0)))
    if se <= 1e-15:
        if abs(diff) <= 1e-15:
            z, p_value = 0.0, 1.0
        else:
            z, p_value = float(np.copysign(np.inf, diff)), 0.0
    else:
        z = diff / se
        p_value = float(2.0 * sps.norm.sf(abs(z)))
    return {"auc1": float(aucs[0]), "auc2": float(aucs[1]), "diff": diff, "se": se, "z": z, "p_value": p_value}


def delong_ci(y: ArrayLike, p: ArrayLike, alpha: float = 0.05, clusters: ArrayLike | None = None) -> tuple[float, float, float]:
    """AUC with a Wald confidence interval from the DeLong variance, clipped to [0, 1].

    Args:
        y: labels 0/1.
        p: scores.
        alpha: 1 - confidence level.
        clusters: one id per case for clustered data (Obuchowski's variance); None for
            independent cases.

    Returns:
        ``(auc, lo, hi)``.
    """
    aucs, cov = delong_variance(y, p, clusters=clusters)
    a = float(aucs[0])
    half = float(sps.norm.ppf(1 - alpha / 2) * np.sqrt(max(float(cov[0, 0]), 0.0)))
    return a, max(0.0, a - half), min(1.0, a + half)


#: p-values below this print as ``< 0.0001`` (a test's tail this far out is not a number to read).
P_FLOOR = 1e-4


def format_p(p: float | None) -> str:
    """A p-value as report text: ``< 0.0001`` below :data:`P_FLOOR`, else four decimals; ``—`` when absent."""
    if p is None or not np.isfinite(p):
        return "—"
    return f"< {P_FLOOR:.4f}" if p < P_FLOOR else f"{p:.4f}"


def youden_threshold(y: ArrayLike, p: ArrayLike) -> float:
    """Threshold maximising Youden's J = sensitivity + specificity - 1 (rule: positive if ``p >= t``).

    Candidate cuts lie between consecutive distinct scores; the returned threshold is the midpoint
    between the lowest score called positive and the highest score below it (the lowest score
    itself when every case is called positive). Ties in J go to the higher threshold.

    Args:
        y: labels 0/1.
        p: scores.
    """
    y_arr, (p_arr,) = _check(y, p)
    values = np.unique(p_arr)  # ascending
    n_pos = y_arr.sum()
    n_neg = y_arr.size - n_pos
    # For the cut "p >= values[i]": positives and negatives at or above it.
    order = np.searchsorted(values, p_arr)
    pos_at = np.bincount(order, weights=y_arr, minlength=values.size)
    neg_at = np.bincount(order, weights=1 - y_arr, minlength=values.size)
    tp = np.cumsum(pos_at[::-1])[::-1]
    fp = np.cumsum(neg_at[::-1])[::-1]
    j = tp / n_pos - fp / n_neg
    best = int(np.flatnonzero(j >= j.max() - 1e-12)[-1])
    if best == 0:
        return float(values[0])
    return float((values[best - 1] + values[best]) / 2.0)


def binary_metrics(y: ArrayLike, p: ArrayLike, threshold: float) -> dict[str, float]:
    """Threshold-free and thresholded metrics of a binary classifier.

    ``auroc`` is :func:`auc` (exact, float64); ``average_precision`` uses torchmetrics on the
    midranks of ``p`` (order and ties preserved, so logits are not squashed); thresholded metrics
    use torchmetrics on the hard predictions ``p >= threshold``. With one class only, ``auroc``
    and ``average_precision`` are NaN.

    Args:
        y: labels 0/1.
        p: scores.
        threshold: decision threshold on ``p``.

    Returns:
        ``auroc``, ``average_precision``, ``accuracy``, ``sensitivity``, ``specificity``, ``f1``,
        ``threshold``, ``n``, ``n_pos``.
    """
    y_arr, (p_arr,) = _check(y, p, need_both=False)
    n, n_pos = int(y_arr.size), int(y_arr.sum())
    target = torch.from_numpy(y_arr)
    hard = torch.from_numpy((p_arr >= threshold).astype(np.int64))
    both = 0 < n_pos < n
    if both:
        ranks = torch.from_numpy(sps.rankdata(p_arr) / n)  # in (0, 1]: used as-is, no sigmoid
        ap = float(binary_average_precision(ranks, target))
    else:
        ap = float("nan")
    return {
        "auroc": auc(y_arr, p_arr) if both else float("nan"),
        "average_precision": ap,
        "accuracy": float(binary_accuracy(hard, target)),
        "sensitivity": float(binary_recall(hard, target)),
        "specificity": float(binary_specificity(hard, target)),
        "f1": float(binary_f1_score(hard, target)),
        "threshold": float(threshold),
        "n": n,
        "n_pos": n_pos,
    }
