"""Figures of the classification report: ROC curves (per fold and pooled), calibration, and each fold's scores.

All functions take out-of-fold prediction tables (columns ``stage``, ``fold``, ``y_true``, ``prob``)
and write a PNG atomically. ROC points come from ``torchmetrics``; AUCs in legends from
:func:`neonet.report.stats.auc`.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from torchmetrics.functional.classification import binary_roc  # noqa: E402

from neonet.report.stats import auc, log_odds  # noqa: E402
from neonet.run.atomic import atomic_path  # noqa: E402

__all__ = [
    "calibration_curve",
    "calibration_table",
    "plot_calibration",
    "plot_fold_scores",
    "plot_roc_pooled",
    "plot_roc_stage",
    "roc_points",
]


def roc_points(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rate, true-positive rate) of the ROC curve."""
    fpr, tpr, _ = binary_roc(torch.tensor(np.array(p, dtype=np.float64)), torch.tensor(np.array(y, dtype=np.int64)))
    return fpr.numpy(), tpr.numpy()


def _both_classes(y: np.ndarray) -> bool:
    return 0 < int(np.sum(y)) < len(y)


def _save(fig: plt.Figure, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    plt.close(fig)
    return Path(path)


def _diagonal(ax: plt.Axes) -> None:
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")


def plot_roc_stage(frame: pd.DataFrame, stage: str, path: str | os.PathLike) -> Path:
    """ROC curve of every fold (thin) and of the pooled out-of-fold predictions (thick) of one stage."""
    fig, ax = plt.subplots(figsize=(5, 5))
    for fold, part in frame.groupby("fold"):
        y, p = part["y_true"].to_numpy(), part["prob"].to_numpy()
        if _both_classes(y):
            fpr, tpr = roc_points(y, p)
            ax.plot(fpr, tpr, linewidth=1, alpha=0.6, label=f"fold {fold} (AUC {auc(y, p):.2f}, n={len(y)})")
    y, p = frame["y_true"].to_numpy(), frame["prob"].to_numpy()
    if _both_classes(y):
        fpr, tpr = roc_points(y, p)
        ax.plot(fpr, tpr, linewidth=2.5, color="black", label=f"pooled (AUC {auc(y, p):.3f}, n={len(y)})")
    _diagonal(ax)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(f"{stage}: out-of-fold ROC")
    ax.legend(loc="lower right", fontsize=7)
    return _save(fig, path)


def plot_roc_pooled(
    frame: pd.DataFrame,
    path: str | os.PathLike,
    ci: dict[str, tuple[float, float]] | None = None,
    title: str = "Pooled out-of-fold ROC",
) -> Path:
    """Pooled out-of-fold ROC curves of all stages in one figure (legend: AUC and its CI)."""
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    for stage, part in frame.groupby("stage", sort=False):
        y, p = part["y_true"].to_numpy(), part["prob"].to_numpy()
        if not _both_classes(y):
            continue
        fpr, tpr = roc_points(y, p)
        label = f"{stage} (AUC {auc(y, p):.3f}"
        if ci and stage in ci:
            label += f" [{ci[stage][0]:.2f}, {ci[stage][1]:.2f}]"
        ax.plot(fpr, tpr, linewidth=1.8, label=label + ")")
    _diagonal(ax)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=7)
    return _save(fig, path)


def calibration_curve(y: np.ndarray, p: np.ndarray, bins: int = 5, alpha: float = 0.05) -> pd.DataFrame:
    """Quantile bins of the predicted probability (about equal counts; tied probabilities share a bin):
    per bin its edges, count ``n``, PNI+ count, mean predicted probability, observed PNI+ fraction and
    its Wilson ``1 - alpha`` interval (``ci_lo``, ``ci_hi``). The counts sum to ``len(p)``."""
    from scipy.stats import binomtest

    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    if len(p) == 0:
        return pd.DataFrame(columns=["bin", "lo", "hi", "n", "n_pos", "mean_prob", "observed", "ci_lo", "ci_hi"])
    edges = np.unique(np.quantile(p, np.linspace(0.0, 1.0, bins + 1)))
    idx = np.searchsorted(edges[1:-1], p, side="right")  # bin b holds edges[b] <= p < edges[b + 1]; the last is closed
    rows = []
    for b in range(max(len(edges) - 1, 1)):
        mask = idx == b
        if not mask.any():
            continue
        n, k = int(mask.sum()), int(y[mask].sum())
        ci = binomtest(k, n).proportion_ci(confidence_level=1 - alpha, method="wilson")
        rows.append(
            {
                "bin": b,
                "lo": float(edges[b]),
                "hi": float(edges[min(b + 1, len(edges) - 1)]),
                "n": n,
                "n_pos": k,
                "mean_prob": float(p[mask].mean()),
                "observed": k / n,
                "ci_lo": float(ci.low),
                "ci_hi": float(ci.high),
            }
        )
    return pd.DataFrame(rows)


def calibration_table(frame: pd.DataFrame, bins: int = 5, alpha: float = 0.05) -> pd.DataFrame:
    """:func:`calibration_curve` of every stage's pooled out-of-fold predictions (column ``stage`` first)."""
    parts = [
        calibration_curve(part["y_true"].to_numpy(), part["prob"].to_numpy(), bins, alpha).assign(stage=stage)
        for stage, part in frame.groupby("stage", sort=False)
    ]
    table = pd.concat(parts, ignore_index=True) if parts else calibration_curve(np.zeros(0), np.zeros(0)).assign(stage="")
    return table[["stage", *[c for c in table.columns if c != "stage"]]]


def plot_calibration(
    frame: pd.DataFrame,
    path: str | os.PathLike,
    bins: int = 5,
    alpha: float = 0.05,
    title: str = "Calibration (pooled out-of-fold)",
) -> Path:
    """Reliability diagram of the pooled out-of-fold probabilities of every stage, with a histogram.

    Top: per quantile bin, the observed PNI+ fraction with its Wilson interval against the mean
    predicted probability, and the bin's case count beside the point; bottom: the distribution of the
    predicted probabilities.
    """
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5.5, 7), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    stages = list(frame.groupby("stage", sort=False))
    for i, (stage, part) in enumerate(stages):
        y, p = part["y_true"].to_numpy(dtype=float), part["prob"].to_numpy(dtype=float)
        curve = calibration_curve(y, p, bins, alpha)
        brier = float(np.mean((p - y) ** 2))
        shift = 0.006 * (i - (len(stages) - 1) / 2)  # stages side by side where their bins coincide
        x = curve["mean_prob"].to_numpy() + shift
        err = np.stack([curve["observed"] - curve["ci_lo"], curve["ci_hi"] - curve["observed"]])
        line = ax.errorbar(
            x, curve["observed"], yerr=err, marker="o", linewidth=1.5, capsize=3, label=f"{stage} (Brier {brier:.3f})"
        )
        colour = line.lines[0].get_color()
        for xi, yi, n in zip(x, curve["observed"], curve["n"]):
            ax.annotate(f"n={n}", (xi, yi), textcoords="offset points", xytext=(4, -9), fontsize=6, color=colour)
        hist.hist(p, bins=np.linspace(0, 1, bins * 4 + 1), histtype="step", linewidth=1.2, color=colour, label=stage)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("observed PNI+ fraction")
    level = round(100 * (1 - alpha))
    ax.set_title(f"{title}: {bins} quantile bins, Wilson {level} % CI", fontsize=9)
    ax.legend(loc="upper left", fontsize=7)
    hist.set_xlabel("predicted probability")
    hist.set_ylabel("cases")
    return _save(fig, path)


def plot_fold_scores(frame: pd.DataFrame, stage: str, path: str | os.PathLike) -> Path:
    """Each fold's test scores (log-odds) of PNI− and PNI+ cases side by side, with the fold's AUC.

    If the folds' PNI− boxes sit at different heights, the fold models do not score on one scale
    and the pooled AUC is lower than the folds' own.
    """
    folds = sorted(frame["fold"].unique())
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(folds), 4.5))
    rng = np.random.default_rng(0)
    colours = {0: "tab:blue", 1: "tab:red"}
    for i, fold in enumerate(folds):
        part = frame[frame["fold"] == fold]
        logits, y = log_odds(part["prob"]), part["y_true"].to_numpy(int)
        for label, offset in ((0, -0.18), (1, 0.18)):
            values = logits[y == label]
            if len(values) == 0:
                continue
            ax.boxplot(
                values,
                positions=[i + offset],
                widths=0.3,
                showfliers=False,
                medianprops={"color": colours[label]},
                boxprops={"color": colours[label]},
            )
            ax.scatter(i + offset + rng.uniform(-0.08, 0.08, len(values)), values, s=9, alpha=0.6, color=colours[label])
        fold_auc = auc(y, part["prob"].to_numpy()) if _both_classes(y) else float("nan")
        ax.text(i, 1.0, f"AUC {fold_auc:.2f}", transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(folds)), [f"fold {f}" for f in folds])
    ax.set_xlim(-0.6, len(folds) - 0.4)
    ax.set_ylabel("test score (log-odds)")
    ax.scatter([], [], color=colours[0], label="PNI−")
    ax.scatter([], [], color=colours[1], label="PNI+")
    y_all, p_all = frame["y_true"].to_numpy(int), frame["prob"].to_numpy()
    pooled = auc(y_all, p_all) if _both_classes(y_all) else float("nan")
    ax.set_title(f"{stage}: test scores per fold (pooled AUC {pooled:.3f})", fontsize=9, pad=16)
    ax.legend(loc="lower right", fontsize=7)
    return _save(fig, path)
