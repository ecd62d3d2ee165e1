"""Per-fold comparison plots of the NeoSeg and NeoGen metrics, from the cross-fold tables in ``reports/``.

- ``reports/seg_folds.png``: out-of-fold Dice of every case (``seg_oof_dice.csv``) per fold and
  pooled, liver and tumour side by side (box and points, mean in the label);
- ``reports/gen_folds.png``: one small panel per metric of ``autoencoder_summary.csv``,
  ``diffusion_summary.csv``, ``controlnet_summary.csv`` (each fold's value, with the mean across folds)
  and of ``gen_quality.csv`` (synthetic beside the real-vs-real or real-patch reference, ± sd over
  subsets where the table has it).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from neonet.report.figures.common import fold_colours, plt, save_png
from neonet.workspace import Workspace

SEG_FIGURE = "seg_folds"
GEN_FIGURE = "gen_folds"
GEN_STAGES = ("autoencoder", "diffusion", "controlnet")
#: Columns of a stage summary that are bookkeeping, not metrics.
NOT_METRICS = ("fold", "epochs", "global_step", "n_val_patches")
#: Quality metrics drawn as (synthetic, reference, label); the sd columns are ``<name>_sd`` where present.
QUALITY_PAIRS = (
    ("kid", "kid_real", "KID (vs real-vs-real)"),
    ("ms_ssim_synthetic", "ms_ssim_real", "MS-SSIM diversity (vs real)"),
    ("dice_synthetic", "dice_real", "mask adherence: tumour Dice (vs real)"),
    ("nn_corr_max", "nn_corr_real_max", "max nearest-real correlation (vs real-real)"),
)


def plot_seg_folds(ws: Workspace) -> Path | None:
    """Write ``reports/seg_folds.png``; None without evaluated cases in ``seg_oof_dice.csv``."""
    if not ws.seg_oof_dice.is_file():
        return None
    frame = pd.read_csv(ws.seg_oof_dice, dtype={"case_id": str})
    frame = frame[frame["status"] == "ok"] if "status" in frame.columns else frame
    if frame.empty:
        return None
    folds = sorted(int(k) for k in frame["fold"].unique())
    colours = fold_colours(folds)
    rng = np.random.default_rng(0)
    fig, axes = plt.subplots(1, 2, figsize=(4 + 1.6 * len(folds), 4.2), squeeze=False)
    for ax, column, name in zip(axes[0], ("dice_liver", "dice_tumor"), ("liver", "tumour")):
        groups = [frame.loc[frame["fold"] == k, column].dropna().to_numpy() for k in folds]
        groups.append(frame[column].dropna().to_numpy())
        labels = [f"fold {k}" for k in folds] + ["pooled"]
        for i, values in enumerate(groups):
            if len(values) == 0:
                continue
            colour = colours[folds[i]] if i < len(folds) else "black"
            ax.boxplot(values, positions=[i], widths=0.5, showfliers=False, medianprops={"color": colour})
            ax.scatter(i + rng.uniform(-0.12, 0.12, len(values)), values, s=10, alpha=0.7, color=colour)
            sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
            labels[i] += f"\n{np.mean(values):.3f} ± {sd:.3f}\nn={len(values)}"
        ax.set_xticks(range(len(labels)), labels, fontsize=7)
        ax.set_ylabel(f"Dice ({name})")
        ax.set_title(f"NeoSeg out-of-fold Dice: {name}", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return save_png(fig, ws.figure(SEG_FIGURE))


def _stage_panels(ws: Workspace) -> list[tuple[str, pd.DataFrame, str, str | None]]:
    """(title, table, column, reference column) of every panel of the NeoGen figure."""
    panels: list[tuple[str, pd.DataFrame, str, str | None]] = []
    for stage in GEN_STAGES:
        path = ws.stage_summary(stage)
        if not path.is_file():
            continue
        table = pd.read_csv(path)
        monitor = str(table["monitor"].dropna().iloc[0]) if "monitor" in table and table["monitor"].notna().any() else ""
        for column in table.select_dtypes("number").columns:
            if column not in NOT_METRICS and table[column].notna().any():
                title = f"{stage}: best {monitor}" if column == "best_score" and monitor else f"{stage}: {column}"
                panels.append((title, table, column, None))
    quality = ws.gen_quality_report("csv")
    if quality.is_file():
        table = pd.read_csv(quality)
        for column, reference, title in QUALITY_PAIRS:
            if column in table and table[column].notna().any():
                panels.append((f"quality: {title}", table, column, reference if reference in table else None))
    return panels


def plot_gen_folds(ws: Workspace) -> Path | None:
    """Write ``reports/gen_folds.png``; None without any NeoGen per-fold table."""
    panels = _stage_panels(ws)
    if not panels:
        return None
    columns = min(4, len(panels))
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, 2.9 * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, (title, table, column, reference) in zip(axes.flat, panels):
        folds = table["fold"].astype(int).to_numpy()
        colours = fold_colours(list(folds))
        values = pd.to_numeric(table[column], errors="coerce").to_numpy(float)
        errors = pd.to_numeric(table[f"{column}_sd"], errors="coerce").to_numpy(float) if f"{column}_sd" in table else None
        x = np.arange(len(folds))
        width = 0.38 if reference else 0.6
        ax.bar(x - (width / 2 if reference else 0), values, width, yerr=errors, color=[colours[k] for k in folds], capsize=3)
        if reference:
            ref = pd.to_numeric(table[reference], errors="coerce").to_numpy(float)
            ref_err = (
                pd.to_numeric(table[f"{reference}_sd"], errors="coerce").to_numpy(float) if f"{reference}_sd" in table else None
            )
            ax.bar(x + width / 2, ref, width, yerr=ref_err, color="lightgrey", edgecolor="grey", capsize=3, label=reference)
            ax.legend(fontsize=6)
        finite = values[np.isfinite(values)]
        if len(finite):
            ax.axhline(float(finite.mean()), color="black", linewidth=0.8, linestyle="--")
        ax.axhline(0.0, color="grey", linewidth=0.5)
        ax.set_xticks(x, [f"fold {k}" for k in folds], fontsize=7)
        mean = f"{finite.mean():.4g}" if len(finite) else "—"
        sd = f" ± {finite.std(ddof=1):.2g}" if len(finite) > 1 else ""
        ax.set_title(f"{title}\nmean {mean}{sd}", fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
    fig.suptitle("NeoGen per fold (dashed: mean over folds)", fontsize=9)
    fig.tight_layout()
    return save_png(fig, ws.figure(GEN_FIGURE))
