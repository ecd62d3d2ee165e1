"""Training curves of a stage, one line per fold, from each fold's ``metrics.csv`` (the CSV log).

Left: training loss (solid) and validation loss (dashed) against epoch; right: the metric that
selected ``best.ckpt`` (the module's ``monitor``, from ``artifact.json``), with a dot at the best
epoch. nnU-Net's ``progress.png`` is the model. Written to ``reports/curves_<stage>.png``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from matplotlib.ticker import MaxNLocator

from neonet.report.figures.common import fold_colours, plt, save_png
from neonet.workspace import Workspace

log = logging.getLogger(__name__)

#: The metric shown for a monitor that is not itself worth reading: the classifiers select on
#: ``val/selection`` (val AUC with a loss tie-break, -1 before ``select_from_epoch``), so show val AUC.
SHOWN_METRIC = {"val/selection": "val/auc"}


def figure_name(stage: str) -> str:
    """The figure's name under ``reports/`` (without ``.png``)."""
    return f"curves_{stage}"


def epoch_table(path: Path) -> pd.DataFrame:
    """One row per epoch of a ``metrics.csv``: the last value each column logged in that epoch.

    Lightning's CSV log writes training and validation values of one epoch in separate rows, and
    step-only rows (e.g. the learning rate) without an epoch; those are dropped.
    """
    frame = pd.read_csv(path)
    if "epoch" not in frame.columns:
        return pd.DataFrame()
    frame = frame.dropna(subset=["epoch"])
    frame["epoch"] = frame["epoch"].astype(int)
    return frame.groupby("epoch").last().drop(columns=["step"], errors="ignore")


def _loss_columns(table: pd.DataFrame) -> tuple[str | None, str | None]:
    """(training loss, validation loss) columns: ``train/loss``, ``val/loss``, else the first of their split."""

    def pick(split: str) -> str | None:
        if f"{split}/loss" in table.columns:
            return f"{split}/loss"
        found = [c for c in table.columns if c.startswith(f"{split}/") and "loss" in c]
        return found[0] if found else None

    return pick("train"), pick("val")


def plot_training_curves(ws: Workspace, stage: str) -> Path | None:
    """Write ``reports/curves_<stage>.png``; None when no fold of ``stage`` has a ``metrics.csv``."""
    tables = {k: epoch_table(ws.metrics_log(stage, k)) for k in ws.stage_folds(stage) if ws.metrics_log(stage, k).is_file()}
    tables = {k: t for k, t in tables.items() if not t.empty}
    if not tables:
        return None
    monitors = {str((ws.read_artifact(stage, k) or {}).get("monitor") or "") for k in tables} - {""}
    monitor = sorted(monitors)[0] if monitors else "val/loss"
    metric = SHOWN_METRIC.get(monitor, monitor)
    higher_better = "loss" not in metric
    colours = fold_colours(list(tables))
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(11, 4.2))
    for k, table in tables.items():
        train, val = _loss_columns(table)
        for column, style in ((train, "-"), (val, "--")):
            if column is not None and table[column].notna().any():
                s = table[column].dropna()
                ax_loss.plot(s.index, s.to_numpy(), style, color=colours[k], label=f"fold {k} {column}")
        if metric in table.columns and table[metric].notna().any():
            s = table[metric].dropna()
            best = s.idxmax() if higher_better else s.idxmin()
            ax_metric.plot(s.index, s.to_numpy(), "-", color=colours[k], label=f"fold {k} (best {s[best]:.3f} @ {best})")
            ax_metric.plot([best], [s[best]], "o", color=colours[k])
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title(f"{stage}: training (solid) and validation (dashed) loss", fontsize=9)
    ax_metric.set_xlabel("epoch")
    ax_metric.set_ylabel(metric)
    ax_metric.set_title(f"{stage}: {metric}" + (f" (selection: {monitor})" if metric != monitor else ""), fontsize=9)
    for ax in (ax_loss, ax_metric):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.has_data():
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_png(fig, ws.figure(figure_name(stage)))
