"""Tests of neonet.report.stats: AUC, bootstrap and DeLong intervals, the DeLong paired test, thresholds, metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats as sps
from torchmetrics.functional.classification import binary_auroc

from neonet.report.stats import (
    auc,
    binary_metrics,
    bootstrap_auc_ci,
    delong_ci,
    delong_test,
    delong_variance,
    youden_threshold,
)


def synthetic(n: int, shift: float, seed: int, ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(int)
    y[:2], y[2:4] = 1, 0
    p = rng.normal(size=n) + shift * y
    if ties:
        p = np.round(p, 1)
    return y, p


def slow_delong(y: np.ndarray, preds: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Direct O(m n) DeLong (1988): structural components by double loops, then the covariance formula."""

    def psi(x: float, yv: float) -> float:
        return 1.0 if x > yv else 0.5 if x == yv else 0.0

    k = len(preds)
    pos_idx = [i for i in range(len(y)) if y[i] == 1]
    neg_idx = [j for j in range(len(y)) if y[j] == 0]
    m, n = len(pos_idx), len(neg_idx)
    aucs = np.zeros(k)
    v10 = np.zeros((k, m))
    v01 = np.zeros((k, n))
    for r, p in enumerate(preds):
        total = 0.0
        for a, i in enumerate(pos_idx):
            for b, j in enumerate(neg_idx):
                s = psi(p[i], p[j])
                v10[r, a] += s / n
                v01[r, b] += s / m
                total += s
        aucs[r] = total / (m * n)
    s10 = np.zeros((k, k))
    s01 = np.zeros((k, k))
    for r in range(k):
        for s in range(k):
            s10[r, s] = sum((v10[r, a] - aucs[r]) * (v10[s, a] - aucs[s]) for a in range(m)) / (m - 1)
            s01[r, s] = sum((v01[r, b] - aucs[r]) * (v01[s, b] - aucs[s]) for b in range(n)) / (n - 1)
    return aucs, s10 / m + s01 / n


# ---------------------------------------------------------------- AUC


def test_auc_hand_example() -> None:
    assert auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)


def test_auc_with_ties_counts_half() -> None:
    # .5 (pos) vs .5 (neg) is a tie: (1 + 0.5 + 2) / 4
    assert auc([0, 0, 1, 1], [0.1, 0.5, 0.5, 0.9]) == pytest.approx(0.875)
    assert auc([0, 1, 0, 1], [0.3, 0.3, 0.3, 0.3]) == pytest.approx(0.5)


def test_auc_matches_torchmetrics_and_is_rank_invariant() -> None:
    y, p = synthetic(120, 1.0, seed=1, ties=True)
    ref = float(binary_auroc(torch.from_numpy(1 / (1 + np.exp(-p))), torch.from_numpy(y)))
    assert auc(y, p) == pytest.approx(ref, abs=1e-6)
    assert auc(y, np.exp(p)) == pytest.approx(auc(y, p), abs=1e-12)


def test_auc_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="both classes"):
        auc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="length"):
        auc([0, 1], [0.1])
    with pytest.raises(ValueError, match="0/1"):
        auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        auc([0, 1], [0.1, float("nan")])


# ---------------------------------------------------------------- bootstrap


@pytest.mark.parametrize("stratified", [True, False])
def test_bootstrap_ci_contains_estimate_and_narrows_with_n(stratified: bool) -> None:
    widths = []
    for n in (40, 800):
        y, p = synthetic(n, 1.0, seed=n)
        a, lo, hi = bootstrap_auc_ci(y, p, n_boot=500, seed=0, stratified=stratified)
        assert a == pytest.approx(auc(y, p))
        assert 0.0 <= lo <= a <= hi <= 1.0
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2


def test_bootstrap_ci_is_seeded_and_close_to_delong() -> None:
    y, p = synthetic(300, 1.0, seed=3)
    first = bootstrap_auc_ci(y, p, n_boot=1000, seed=7)
    assert first == bootstrap_auc_ci(y, p, n_boot=1000, seed=7)
    _, lo_d, hi_d = delong_ci(y, p)
    assert first[1] == pytest.approx(lo_d, abs=0.02) and first[2] == pytest.approx(hi_d, abs=0.02)


def test_bootstrap_unstratified_skips_single_class_resamples() -> None:
    # 1 positive in 6: many resamples have no positive; they must be skipped, not crash.
    a, lo, hi = bootstrap_auc_ci([1, 0, 0, 0, 0, 0], [0.9, 0.1, 0.2, 0.3, 0.4, 0.95], n_boot=300, stratified=False)
    assert a == pytest.approx(0.8) and 0.0 <= lo <= hi <= 1.0


def test_cluster_bootstrap_counts_copies_of_a_case_once() -> None:
    """Three copies of each case are no new evidence: the cluster CI keeps the width of the original data."""
    y, p = synthetic(120, 1.0, seed=5)
    _, lo, hi = bootstrap_auc_ci(y, p, n_boot=1000, seed=0, clusters=np.arange(y.size))
    _, lo_d, hi_d = delong_ci(y, p)
    assert lo == pytest.approx(lo_d, abs=0.03) and hi == pytest.approx(hi_d, abs=0.03)  # singletons: plain bootstrap
    y3, p3, ids = np.repeat(y, 3), np.repeat(p, 3), np.repeat(np.arange(y.size), 3)
    a3, lo_c, hi_c = bootstrap_auc_ci(y3, p3, n_boot=1000, seed=0, clusters=ids)
    _, lo_n, hi_n = bootstrap_auc_ci(y3, p3, n_boot=1000, seed=0)
    assert a3 == pytest.approx(auc(y, p))
    assert (hi_c - lo_c) == pytest.approx(hi - lo, rel=0.15)
    assert (hi_n - lo_n) < 0.75 * (hi - lo)  # the naive bootstrap believes it has 3x the patients
    with pytest.raises(ValueError, match="one id per case"):
        bootstrap_auc_ci(y, p, clusters=np.arange(3))


# ---------------------------------------------------------------- DeLong


@pytest.mark.parametrize("ties", [False, True])
def test_fast_delong_matches_direct_computation(ties: bool) -> None:
    y, p1 = synthetic(70, 1.0, seed=11, ties=ties)
    rng = np.random.default_rng(12)
    p2 = 0.6 * p1 + rng.normal(size=p1.size)
    if ties:
        p2 = np.round(p2, 1)
    aucs, cov = delong_variance(y, p1, p2)
    ref_aucs, ref_cov = slow_delong(y, [p1, p2])
    np.testing.assert_allclose(aucs, ref_aucs, rtol=0, atol=1e-10)
    np.testing.assert_allclose(cov, ref_cov, rtol=0, atol=1e-10)

    res = delong_test(y, p1, p2)
    diff = ref_aucs[0] - ref_aucs[1]
    se = math.sqrt(ref_cov[0, 0] + ref_cov[1, 1] - 2 * ref_cov[0, 1])
    assert res["auc1"] == pytest.approx(ref_aucs[0], abs=1e-10)
    assert res["diff"] == pytest.approx(diff, abs=1e-10)
    assert res["se"] == pytest.approx(se, abs=1e-10)
    assert res["z"] == pytest.approx(diff / se, abs=1e-8)
    assert res["p_value"] == pytest.approx(2 * sps.norm.sf(abs(diff / se)), abs=1e-10)


def test_delong_identical_predictors() -> None:
    y, p = synthetic(50, 1.0, seed=5)
    res = delong_test(y, p, p)
    assert res["diff"] == 0.0 and res["se"] == 0.0 and res["z"] == 0.0 and res["p_value"] == 1.0
    # a monotone transform of a predictor has the same ranks: also no difference
    assert delong_test(y, p, np.exp(p))["p_value"] == 1.0


def test_delong_zero_se_with_different_aucs() -> None:
    y = np.array([0, 0, 0, 1, 1, 1])
    perfect = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    constant = np.full(6, 0.5)  # AUC 0.5, all components 1/2, zero variance
    res = delong_test(y, perfect, constant)
    assert res["diff"] == pytest.approx(0.5) and res["se"] == 0.0
    assert res["z"] == math.inf and res["p_value"] == 0.0


def test_delong_detects_a_much_better_predictor() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 100)
    good = rng.normal(size=200) + 2.0 * y
    noise = rng.normal(size=200) + 0.2 * y
    res = delong_test(y, good, noise)
    assert res["diff"] > 0.2 and res["p_value"] < 0.01
    assert delong_test(y, noise, good)["z"] == pytest.approx(-res["z"])


def slow_obuchowski(y: np.ndarray, scores: list[np.ndarray], clusters: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Obuchowski (1997) clustered AUC covariance, straight from the definitions (loops over cases)."""
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    ids = sorted(set(clusters.tolist()))
    big_i, m, n = len(ids), pos.size, neg.size
    aucs, parts = [], []
    for p in scores:
        psi = np.array([[1.0 if p[i] > p[j] else 0.5 if p[i] == p[j] else 0.0 for j in neg] for i in pos])
        theta = psi.mean()
        v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
        a = np.array([v10[clusters[pos] == c].sum() - (clusters[pos] == c).sum() * theta for c in ids])
        b = np.array([v01[clusters[neg] == c].sum() - (clusters[neg] == c).sum() * theta for c in ids])
        aucs.append(theta)
        parts.append((a, b))
    cov = np.zeros((len(scores), len(scores)))
    for r, (ar, br) in enumerate(parts):
        for c, (ac, bc) in enumerate(parts):
            s10 = big_i / ((big_i - 1) * m) * (ar * ac).sum()
            s01 = big_i / ((big_i - 1) * n) * (br * bc).sum()
            s11 = big_i / (big_i - 1) * ((ar * bc).sum() + (ac * br).sum()) / 2
            cov[r, c] = s10 / m + s01 / n + 2 * s11 / (m * n)
    return np.array(aucs), cov


def test_clustered_delong_matches_direct_computation_and_ignores_copies() -> None:
    y, p1 = synthetic(60, 1.0, seed=21, ties=True)
    rng = np.random.default_rng(22)
    p2 = np.round(0.5 * p1 + rng.normal(size=p1.size), 1)
    clusters = rng.integers(0, 25, size=y.size)  # patients with 1-6 scans, mixed labels
    aucs, cov = delong_variance(y, p1, p2, clusters=[f"patient{c}" for c in clusters])
    ref_aucs, ref_cov = slow_obuchowski(y, [p1, p2], clusters)
    np.testing.assert_allclose(aucs, ref_aucs, atol=1e-10)
    np.testing.assert_allclose(cov, ref_cov, atol=1e-10)
    # every case in its own cluster: DeLong up to the I / (I - 1) vs m / (m - 1), n / (n - 1) scaling
    _, single = delong_variance(y, p1, clusters=np.arange(y.size))
    _, plain = delong_variance(y, p1)
    assert single[0, 0] == pytest.approx(plain[0, 0], rel=0.05)
    # three copies of every patient are no new evidence: the clustered variance is exactly unchanged,
    # DeLong's treats them as independent and shrinks about threefold
    y3, p3, q3, ids3 = (np.repeat(v, 3) for v in (y, p1, p2, clusters))
    np.testing.assert_allclose(delong_variance(y3, p3, q3, clusters=ids3)[1], cov, rtol=1e-10)
    assert delong_variance(y3, p3)[1][0, 0] < 0.4 * plain[0, 0]
    res = delong_test(y3, p3, q3, clusters=ids3)
    assert res["se"] == pytest.approx(math.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]))
    a, lo, hi = delong_ci(y3, p3, clusters=ids3)
    assert (hi - lo) == pytest.approx(2 * sps.norm.ppf(0.975) * math.sqrt(cov[0, 0]))
    with pytest.raises(ValueError, match="one id per case"):
        delong_variance(y, p1, clusters=np.arange(3))


def test_delong_ci() -> None:
    y, p = synthetic(200, 1.0, seed=9)
    a, lo, hi = delong_ci(y, p)
    _, cov = slow_delong(y, [p])
    half = sps.norm.ppf(0.975) * math.sqrt(cov[0, 0])
    assert a == pytest.approx(auc(y, p))
    assert lo == pytest.approx(a - half, abs=1e-10) and hi == pytest.approx(a + half, abs=1e-10)
    assert delong_ci([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == (1.0, 1.0, 1.0)


# ---------------------------------------------------------------- thresholds and metrics


def test_youden_separates_a_separable_sample() -> None:
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.3, 0.2, 0.7, 0.9, 0.6])
    t = youden_threshold(y, p)
    assert t == pytest.approx(0.45)
    assert np.array_equal((p >= t).astype(int), y)


def test_youden_non_separable_maximises_j() -> None:
    y, p = synthetic(150, 1.0, seed=2, ties=True)
    t = youden_threshold(y, p)
    j = lambda thr: np.mean(p[y == 1] >= thr) + np.mean(p[y == 0] < thr) - 1  # noqa: E731
    assert j(t) == pytest.approx(max(j(v) for v in np.unique(p)))


def test_binary_metrics_hand_example() -> None:
    y = [0, 0, 0, 1, 1, 1, 1, 0]
    p = [0.1, 0.6, 0.2, 0.7, 0.4, 0.9, 0.8, 0.3]
    # p >= .35: TP 4, FN 0, FP 1 (0.6), TN 3
    m = binary_metrics(y, p, threshold=0.35)
    assert m["auroc"] == pytest.approx(15 / 16)
    assert m["average_precision"] == pytest.approx((1 + 1 + 1 + 4 / 5) / 4)
    assert m["accuracy"] == pytest.approx(7 / 8)
    assert m["sensitivity"] == pytest.approx(1.0)
    assert m["specificity"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(2 * 0.8 * 1.0 / 1.8)
    assert m["n"] == 8 and m["n_pos"] == 4 and m["threshold"] == 0.35

    logits = np.log(np.asarray(p) / (1 - np.asarray(p)))
    m_logit = binary_metrics(y, logits, threshold=math.log(0.35 / 0.65))
    for key in ("auroc", "average_precision", "accuracy", "sensitivity", "specificity", "f1"):
        assert m_logit[key] == pytest.approx(m[key]), key


def test_binary_metrics_single_class() -> None:
    m = binary_metrics([0, 0, 0], [0.2, 0.6, 0.1], threshold=0.5)
    assert math.isnan(m["auroc"]) and math.isnan(m["average_precision"])
    assert m["specificity"] == pytest.approx(2 / 3) and m["n_pos"] == 0
