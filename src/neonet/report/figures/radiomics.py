"""``reports/<stage>_coefficients.png``: what the radiomics baseline weighs, per fold.

The standardised coefficients of each fold's logistic regression (``<stage>/fold<k>/model.json``, written
by ``neonet radiomics``) for the features with the largest mean absolute coefficient over the folds, one
marker per fold, with each fold's chosen ``C`` in the legend. Standardised coefficients compare across
features (each is per training standard deviation); features correlate, so read them as what the
model uses, not as independent effects.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from neonet.report.figures.common import fold_colours, plt, save_png
from neonet.run.atomic import read_json
from neonet.workspace import Workspace

#: Features shown (largest mean absolute coefficient first).
TOP = 15


def figure_name(stage: str) -> str:
    """The figure of a radiomics stage: ``<stage>_coefficients``."""
    return f"{stage}_coefficients"


def plot_coefficients(ws: Workspace, stage: str) -> Path | None:
    """Write ``reports/<stage>_coefficients.png``; None when no fold of ``stage`` has a ``model.json``."""
    models = {k: read_json(ws.radiomics_model(stage, k)) for k in ws.stage_folds(stage) if ws.radiomics_model(stage, k).is_file()}
    if not models:
        return None
    coef = pd.DataFrame({k: m["coefficients"] for k, m in models.items()})  # features x folds
    order = coef.abs().mean(axis=1).sort_values(ascending=False).index[:TOP][::-1]
    fig, ax = plt.subplots(figsize=(7.5, 0.32 * len(order) + 1.6))
    colours = fold_colours(list(models))
    y = np.arange(len(order))
    for i, k in enumerate(models):
        offset = (i - (len(models) - 1) / 2) * 0.18
        ax.scatter(coef.loc[order, k], y + offset, s=22, color=colours[k], label=f"fold {k} (C = {models[k]['C']:g})")
    ax.axvline(0.0, color="grey", linewidth=0.8)
    ax.set_yticks(y)
    ax.set_yticklabels(order, fontsize=8)
    ax.set_xlabel("standardised coefficient (log-odds of PNI+ per training SD)")
    ax.set_title(f"{stage}: the {len(order)} largest coefficients (mean |coef| over folds)", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return save_png(fig, ws.figure(figure_name(stage)))
