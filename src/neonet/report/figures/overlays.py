"""NeoSeg out-of-fold overlays: the best, median and worst case by tumour Dice.

Reads ``reports/seg_oof_dice.csv`` (:mod:`neonet.seg.evaluate`), and each chosen case's image and
manual label (from the cohort the NeoSeg folds were trained on, their ``config.yaml``) and its
out-of-fold mask (``seg/predictions/<case>.nii.gz``). One row per case, three planes through the
centre of its true tumour on the closest-to-RAS voxel grid (radiological convention, as
``predict-case``'s overlay): manual contours solid, NeoSeg's dashed, liver cyan, tumour red.
Written to ``reports/seg_overlays.png``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from neonet.data.cases import LIVER, TUMOR, LabelMap, read_cases
from neonet.data.nifti import load_nifti, read_array
from neonet.predict.overlay import VIEWS
from neonet.report.figures.common import plt, save_png
from neonet.workspace import Workspace

log = logging.getLogger(__name__)

FIGURE = "seg_overlays"
#: Rows of the figure, in order.
PICKS = ("best", "median", "worst")


def pick_cases(frame: pd.DataFrame, column: str = "dice_tumor") -> dict[str, pd.Series]:
    """The best, median and worst evaluated case by ``column`` (ties: the lower case id first).

    The median is the lower middle case of the sorted values (a case that exists, not an average).
    """
    ok = frame[(frame.get("status", "ok") == "ok") & frame[column].notna()] if len(frame) else frame
    if ok.empty:
        return {}
    ordered = ok.assign(case_id=ok["case_id"].astype(str)).sort_values([column, "case_id"], kind="stable")
    rows = [ordered.iloc[-1], ordered.iloc[(len(ordered) - 1) // 2], ordered.iloc[0]]
    return dict(zip(PICKS, rows))


def seg_cohort(ws: Workspace) -> tuple[Path, LabelMap] | None:
    """``cases.csv`` and label map of the NeoSeg folds (from a fold's ``config.yaml``), or None."""
    import yaml

    for k in ws.stage_folds("seg"):
        path = ws.config_path("seg", k)
        if not path.is_file():
            continue
        args: dict[str, Any] = ((yaml.safe_load(path.read_text()) or {}).get("data") or {}).get("init_args") or {}
        if args.get("cases"):
            return Path(args["cases"]), LabelMap.from_args(args)
    return None


def _canonical(path: Path, case_id: str, kind: str) -> tuple[np.ndarray, tuple[float, ...]]:
    img = nib.as_closest_canonical(load_nifti(path, case_id, kind))
    return read_array(img, path, case_id, kind), tuple(float(z) for z in img.header.get_zooms()[:3])


def _centre(true: np.ndarray, pred: np.ndarray) -> tuple[int, ...]:
    """The true tumour's centroid, else the predicted tumour's, else the liver's, else the volume centre."""
    for region in (true == TUMOR, pred == TUMOR, true > 0):
        if region.any():
            return tuple(int(round(c)) for c in np.argwhere(region).mean(axis=0))
    return tuple(s // 2 for s in true.shape)


def _contours(ax: plt.Axes, lab: np.ndarray, style: str) -> None:
    for region, colour in ((lab >= LIVER, "cyan"), (lab == TUMOR, "red")):
        if region.any() and not region.all():
            ax.contour(region.astype(float), levels=[0.5], colors=colour, linewidths=0.9, linestyles=style)


def plot_seg_overlays(ws: Workspace, cases: Path | None = None, label_map: LabelMap | None = None) -> Path | None:
    """Write ``reports/seg_overlays.png``; None without ``seg_oof_dice.csv`` or evaluated cases.

    Args:
        ws: the experiment's workspace.
        cases: the cohort's ``cases.csv`` (default: the one the NeoSeg folds were trained on).
        label_map: what the manual labels' values mean (default: the NeoSeg folds' setting).
    """
    if not ws.seg_oof_dice.is_file():
        return None
    picks = pick_cases(pd.read_csv(ws.seg_oof_dice, dtype={"case_id": str}))
    if not picks:
        return None
    if cases is None or label_map is None:
        found = seg_cohort(ws)
        if found is None:
            log.warning("no NeoSeg fold config under %s names the cohort: %s not drawn", ws.root / "seg", ws.figure(FIGURE))
            return None
        cases, label_map = cases or found[0], label_map or found[1]
    by_id = {c.case_id: c for c in read_cases(cases)}
    fig, axes = plt.subplots(len(picks), 3, figsize=(11, 3.8 * len(picks)), squeeze=False)
    for row, (name, rec) in enumerate(picks.items()):
        case = by_id[str(rec["case_id"])]
        assert case.label is not None  # evaluated cases have a manual label
        image, zooms = _canonical(case.image, case.case_id, "image")
        true = label_map.apply(_canonical(case.label, case.case_id, "label")[0])
        pred = np.rint(_canonical(ws.seg_prediction(case.case_id), case.case_id, "prediction")[0]).astype(np.uint8)
        lo, hi = np.percentile(image, [1, 99])
        image = np.clip((image - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
        centre = _centre(true, pred)
        for col, (view, cut, h, v, flip) in enumerate(VIEWS):
            ax = axes[row][col]
            index = [slice(None)] * 3
            index[cut] = centre[cut]  # type: ignore[call-overload]
            ax.imshow(image[tuple(index)].T, cmap="gray", origin="lower", vmin=0, vmax=1, aspect=zooms[v] / zooms[h])
            _contours(ax, true[tuple(index)].T, "solid")
            _contours(ax, pred[tuple(index)].T, "dashed")
            if flip:
                ax.invert_xaxis()
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{view} {'xyz'[cut]}={centre[cut]}", fontsize=8)
        axes[row][0].set_ylabel(
            f"{name}: {case.case_id} (fold {int(rec['fold'])})\n"
            f"tumour Dice {rec['dice_tumor']:.3f}, liver {rec['dice_liver']:.3f}",
            fontsize=8,
        )
    fig.suptitle("NeoSeg out-of-fold: manual (solid) vs predicted (dashed); liver cyan, tumour red", fontsize=10)
    fig.tight_layout()
    return save_png(fig, ws.figure(FIGURE))
