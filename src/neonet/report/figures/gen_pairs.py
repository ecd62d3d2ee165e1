"""NeoGen quality panel: synthetic patches beside their nearest real training patch, in three planes.

Reads fold ``k``'s per-patch quality table ``reports/gen_quality_fold<k>.csv`` (``nearest_real``,
``nearest_corr``: the real training patch most correlated with each synthetic one, see
:mod:`neonet.gen.quality`), ``synthetic/fold<k>/manifest.csv`` and ``patches/manifest.csv``. One row
per synthetic patch, the most copy-like first: its axial, coronal and sagittal slices through its
tumour's centre, then the same for its nearest real patch; label contours: shell yellow, tumour
red. Written to ``reports/gen_quality_fold<k>.png`` by the quality report and by ``neonet report``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from neonet.data.nifti import load_nifti, read_array
from neonet.data.patches import PATCH_TUMOR
from neonet.report.figures.common import PLANES, draw_patch, plane, plane_aspect, plt, save_png
from neonet.workspace import Workspace


def _load(base: Path, image: str, label: str) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Image, label and voxel spacing of a patch."""
    nifti = load_nifti(base / image)
    img = read_array(nifti, base / image).astype(np.float32)
    lab = np.rint(read_array(load_nifti(base / label), base / label)).astype(np.uint8)
    return img, lab, tuple(float(z) for z in nifti.header.get_zooms()[:3])


def _centre(label: np.ndarray) -> tuple[int, ...]:
    tumour = np.argwhere(label == PATCH_TUMOR)
    return tuple(int(round(c)) for c in tumour.mean(axis=0)) if len(tumour) else tuple(s // 2 for s in label.shape)


def plot_gen_pairs(ws: Workspace, fold: int, n: int = 4) -> Path | None:
    """Write ``reports/gen_quality_fold<k>.png``; None when the fold has no per-patch quality table.

    Args:
        ws: the experiment's workspace.
        fold: the fold k.
        n: synthetic patches shown (those most correlated with a real training patch first).
    """
    table_path = ws.gen_quality_report("csv", fold)
    if not table_path.is_file() or not ws.synthetic_manifest(fold).is_file() or not ws.patches_manifest.is_file():
        return None
    per = pd.read_csv(table_path, dtype={"case_id": str, "nearest_real": str})
    if per.empty:
        return None
    synthetic = pd.read_csv(ws.synthetic_manifest(fold), dtype={"case_id": str}).set_index("case_id")
    real = pd.read_csv(ws.patches_manifest, dtype={"case_id": str}).set_index("case_id")
    shown = per.sort_values(["nearest_corr", "case_id"], ascending=[False, True]).head(n)
    fig, axes = plt.subplots(len(shown), 6, figsize=(12, 2.2 * len(shown) + 0.6), squeeze=False)
    for row, rec in enumerate(shown.itertuples()):
        s = synthetic.loc[rec.case_id]
        r = real.loc[rec.nearest_real]
        pair = [_load(ws.synthetic_dir(fold), s["image"], s["label"]), _load(ws.patches_dir, r["image"], r["label"])]
        for half, (image, label, zooms) in enumerate(pair):
            centre = _centre(label)
            for j, (name, cut) in enumerate(PLANES):
                ax = axes[row][3 * half + j]
                draw_patch(ax, plane(image, cut, centre[cut]), plane(label, cut, centre[cut]), aspect=plane_aspect(zooms, cut))
                if row == 0:
                    ax.set_title(f"{'synthetic' if half == 0 else 'nearest real'}: {name}", fontsize=8)
        axes[row][0].set_ylabel(f"{rec.case_id}\n(from {getattr(rec, 'source_case', '?')})", fontsize=7)
        axes[row][3].set_ylabel(f"{rec.nearest_real}\ncorr {rec.nearest_corr:.3f}", fontsize=7)
    fig.suptitle(
        f"fold {int(fold)}: synthetic patches (left) beside their nearest real training patch (right), "
        "most similar first; shell yellow, tumour red",
        fontsize=9,
    )
    fig.tight_layout()
    return save_png(fig, ws.gen_quality_report("png", fold))
