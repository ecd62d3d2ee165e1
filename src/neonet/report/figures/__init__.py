"""The report's pictures (PNG, matplotlib Agg) under ``runs/<experiment>/reports/``, one file per concept.

====================================  =========================================================  ==================
figure                                what it shows                                              module
====================================  =========================================================  ==================
``curves_<stage>.png``                per fold: train/val loss and the selection metric by epoch  :mod:`.curves`
``seg_overlays.png``                  NeoSeg best / median / worst case by tumour Dice           :mod:`.overlays`
``seg_folds.png``                     NeoSeg out-of-fold Dice per fold and pooled                 :mod:`.fold_compare`
``tlcr_patches.png``                  TLCR patches with their shells, PNI+ rows over PNI− rows    :mod:`.patch_grid`
``gen_quality_fold<k>.png``           synthetic patches beside their nearest real one, 3 planes   :mod:`.gen_pairs`
``gen_folds.png``                     NeoGen stage and quality metrics per fold                   :mod:`.fold_compare`
``<stage>_coefficients.png``          the radiomics baseline's standardised coefficients per fold :mod:`.radiomics`
``external/<name>/seg_cases.png``     ``neonet evaluate``: NeoSeg metrics per external case       :mod:`.seg_cases`
====================================  =========================================================  ==================

(The classification figures, ROC, calibration and scores, are :mod:`neonet.cls.plots`, drawn by
``neonet report``.) Each stage's cross-fold summary draws its own (:func:`write_stage`);
``neonet report`` redraws them all from what is on disk (:func:`write_all`), so an existing runs
folder gets them without retraining. A figure whose inputs are absent is skipped; one that cannot be
drawn from them is skipped with a warning that names it and why, and never stops the summary.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path

from neonet.errors import NeonetError
from neonet.workspace import Workspace

log = logging.getLogger(__name__)

__all__ = ["write_all", "write_stage"]

#: Stages (and outputs) with figures of their own beyond the training curves.
PATCHES, GEN_QUALITY = "patches", "gen_quality"


def _draw(name: str, draw: Callable[[], Path | None]) -> list[Path]:
    """Run one figure function; a figure that cannot be drawn is a warning, not a failure."""
    try:
        path = draw()
    except (NeonetError, OSError, ValueError, KeyError, IndexError) as exc:
        log.warning("figure %s not drawn: %s: %s (the tables beside it are unaffected)", name, type(exc).__name__, exc)
        return []
    return [path] if path is not None else []


#: A figure's name and the function that draws it (returning its path, or None without inputs).
Figure = tuple[str, Callable[[], "Path | None"]]


def _figures(ws: Workspace, stage: str) -> list[Figure]:
    """(name, drawing function) of every figure of ``stage`` (see :func:`write_stage`)."""
    from neonet.report.figures import curves, fold_compare, gen_pairs, overlays, patch_grid, radiomics

    if stage == PATCHES:
        grid: Figure = (patch_grid.figure_name(ws), partial(patch_grid.plot_patch_grid, ws))
        return [grid]
    gen_folds: Figure = (fold_compare.GEN_FIGURE, partial(fold_compare.plot_gen_folds, ws))
    if stage == GEN_QUALITY:
        pairs: list[Figure] = [(f"gen_quality_fold{k}", partial(gen_pairs.plot_gen_pairs, ws, k)) for k in ws.quality_folds()]
        return [*pairs, gen_folds]
    out: list[Figure] = [(curves.figure_name(stage), partial(curves.plot_training_curves, ws, stage))]
    if stage == "seg":
        out += [
            (overlays.FIGURE, partial(overlays.plot_seg_overlays, ws)),
            (fold_compare.SEG_FIGURE, partial(fold_compare.plot_seg_folds, ws)),
        ]
    elif stage in fold_compare.GEN_STAGES:
        out.append(gen_folds)
    elif any(ws.radiomics_model(stage, k).is_file() for k in ws.stage_folds(stage)):
        out.append((radiomics.figure_name(stage), partial(radiomics.plot_coefficients, ws, stage)))
    return out


def write_stage(ws: Workspace, stage: str) -> list[Path]:
    """The figures of one stage (its training curves and its own figures, see the module docstring).

    Args:
        ws: the experiment's workspace.
        stage: a stage folder (``seg``, ``autoencoder``, ``pattennet``, ...), or ``patches`` (TLCR)
            or ``gen_quality`` (the synthetic patches' quality report).

    Returns:
        The PNGs written.
    """
    return [path for name, draw in _figures(ws, stage) for path in _draw(name, draw)]


def _finished_stages(ws: Workspace) -> list[str]:
    """Stages with a complete fold; a stage whose ``artifact.json`` cannot be read is skipped with a warning."""
    out = []
    for stage in ws.artifact_stages():
        try:
            if any(ws.is_complete(stage, k) for k in ws.stage_folds(stage)):
                out.append(stage)
        except NeonetError as exc:
            log.warning("figures of stage %s not drawn: %s", stage, exc)
    return out


def write_all(ws: Workspace) -> list[Path]:
    """(Re)draw every figure of the experiment from its files: each stage with a finished fold, the
    TLCR patches and the NeoGen quality report. Returns the PNGs written."""
    todo: dict[str, Callable[[], Path | None]] = {}
    for stage in [*_finished_stages(ws), PATCHES, GEN_QUALITY]:
        for name, draw in _figures(ws, stage):
            todo.setdefault(name, draw)
    return [path for name, draw in todo.items() for path in _draw(name, draw)]
