"""A grid of TLCR patches with their peritumoral shells: PNI+ rows above PNI− rows.

Each cell is the axial slice through the tumour's centre of one patch (``patches/manifest.csv``),
with the label patch's peritumoral shell (yellow) and tumour (red) contours (the middle slice, without
contours, for a patch cut without a mask: ``neonet crop --source none``). Written to
``reports/tlcr_patches.png`` by ``neonet crop`` and by ``neonet report``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from neonet.data.nifti import load_nifti, read_array
from neonet.data.patches import PATCH_TUMOR
from neonet.report.figures.common import draw_patch, plane, plt, save_png
from neonet.workspace import Workspace

FIGURE = "tlcr_patches"


def figure_name(ws: Workspace) -> str:
    """``tlcr_patches``, or ``tlcr_patches_<set>`` for a workspace of another patch set (``neonet crop --patches``)."""
    return FIGURE if ws.patches is None else f"{FIGURE}_{ws.patches}"


def patch_rows(manifest: pd.DataFrame, per_class: int = 8) -> dict[int, pd.DataFrame]:
    """Up to ``per_class`` cropped patches of each PNI class (1 first, then 0), in case-id order."""
    have = manifest[manifest["image"].fillna("").astype(str).str.len() > 0]
    have = have.assign(case_id=have["case_id"].astype(str)).sort_values("case_id")
    pni = pd.to_numeric(have["pni"], errors="coerce")
    return {cls: have[pni == cls].head(per_class) for cls in (1, 0)}


def tumour_slice(label: np.ndarray) -> int:
    """The axial (z) index through the tumour's centre, else the patch's middle."""
    tumour = np.argwhere(label == PATCH_TUMOR)
    return int(round(tumour[:, 2].mean())) if len(tumour) else label.shape[2] // 2


def plot_patch_grid(ws: Workspace, per_class: int = 8, columns: int = 4) -> Path | None:
    """Write ``reports/tlcr_patches.png`` (``tlcr_patches_<set>.png`` for another patch set); None without a
    patch manifest or cropped patches.

    Args:
        ws: the experiment's workspace.
        per_class: patches shown of each PNI class.
        columns: patches per row (a class takes ``ceil(per_class / columns)`` rows).
    """
    if not ws.patches_manifest.is_file():
        return None
    groups = patch_rows(pd.read_csv(ws.patches_manifest, dtype={"case_id": str, "image": str, "label": str}), per_class)
    cells = [(cls, rec) for cls in (1, 0) for rec in groups[cls].itertuples()]
    if not cells:
        return None
    rows_of = {cls: max(1, math.ceil(len(groups[cls]) / columns)) for cls in (1, 0)}
    n_rows = rows_of[1] + rows_of[0]
    fig, axes = plt.subplots(n_rows, columns, figsize=(2.1 * columns, 2.3 * n_rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    base = ws.patches_dir
    for cls, first_row in ((1, 0), (0, rows_of[1])):
        name = "PNI+" if cls == 1 else "PNI−"
        axes[first_row][0].text(-0.1, 0.5, name, transform=axes[first_row][0].transAxes, rotation=90, ha="right", va="center")
        if groups[cls].empty:
            axes[first_row][0].set_title(f"no {name} patch", fontsize=8)
        for i, rec in enumerate(groups[cls].itertuples()):
            ax = axes[first_row + i // columns][i % columns]
            image = read_array(load_nifti(base / str(rec.image), str(rec.case_id)), base / str(rec.image))
            label = None  # a patch cut without a mask (crop --source none): the middle slice, no contours
            if isinstance(rec.label, str) and rec.label:
                label = np.rint(read_array(load_nifti(base / rec.label, str(rec.case_id)), base / rec.label))
            z = tumour_slice(label) if label is not None else image.shape[2] // 2
            ax.axis("on")
            vmax = max(1.0, float(np.percentile(image, 99.5)))
            draw_patch(ax, plane(image, 2, z), None if label is None else plane(label, 2, z), vmax=vmax)
            ax.set_title(f"{rec.case_id} ({name}) z={z}", fontsize=7)
    fig.suptitle("TLCR patches, axial slice through the tumour: shell yellow, tumour red", fontsize=9)
    fig.tight_layout()
    return save_png(fig, ws.figure(figure_name(ws)))
