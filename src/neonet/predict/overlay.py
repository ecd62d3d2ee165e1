"""The overlay figure of ``neonet predict-case``: orthogonal slices through the tumour.

Drawn on the canonical grid that TLCR crops on (RAS, resampled to the crop spacing, so voxels have
their true aspect ratio), in radiological convention (the patient's right on the left of axial and
coronal views; anterior up in axial views, superior up otherwise). Top row: the image with the
liver (cyan) and tumour (red) contours and the crop box (yellow, dashed); bottom row: the same
slices with the Grad-CAM saliency over them (only when a classifier ran).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from neonet.data.cases import LIVER, TUMOR
from neonet.run.atomic import atomic_path

#: (name, axis cut, horizontal axis, vertical axis, flip horizontally)
VIEWS = (("axial", 2, 0, 1, True), ("coronal", 1, 0, 2, True), ("sagittal", 0, 1, 2, False))


def _centre(mask: np.ndarray, box: dict | None) -> tuple[int, int, int]:
    """Voxel to cut through: the crop centre, else the liver's centroid, else the volume centre."""
    if box is not None:
        return tuple(int(np.clip(c, 0, s - 1)) for c, s in zip(box["center"], mask.shape))  # type: ignore[return-value]
    liver = np.argwhere(mask > 0)
    if len(liver):
        return tuple(int(round(c)) for c in liver.mean(axis=0))  # type: ignore[return-value]
    return tuple(s // 2 for s in mask.shape)


def write_overlay(
    path: Path,
    image: np.ndarray,
    mask: np.ndarray,
    spacing: Sequence[float],
    box: dict | None,
    saliency: np.ndarray | None,
    title: str,
) -> Path:
    """Write the overlay PNG atomically.

    Args:
        path: the PNG to write.
        image: canonical image (X, Y, Z), intensities in [0, 1].
        mask: canonical mask on the same grid (0 background, 1 liver, 2 tumour).
        spacing: voxel spacing of the grid in mm.
        box: the TLCR crop box (``start``, ``stop``, ``center``), or None without a patch.
        saliency: saliency on the same grid (0 outside the crop box), or None.
        title: figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    centre = _centre(mask, box)
    rows = 2 if saliency is not None else 1
    fig, axes = plt.subplots(rows, 3, figsize=(12, 4.2 * rows), squeeze=False)
    for col, (name, cut, h, v, flip) in enumerate(VIEWS):
        index = [slice(None)] * 3
        index[cut] = centre[cut]  # type: ignore[call-overload]
        # after cutting, the remaining axes keep their order (h < v), so rows are v and columns h after .T
        img, lab = image[tuple(index)].T, mask[tuple(index)].T
        sal = saliency[tuple(index)].T if saliency is not None else None
        for row in range(rows):
            ax = axes[row][col]
            ax.imshow(img, cmap="gray", origin="lower", vmin=0, vmax=1, aspect=spacing[v] / spacing[h], interpolation="nearest")
            for value, colour in ((LIVER, "cyan"), (TUMOR, "red")):
                region = (lab == value) | ((lab == TUMOR) if value == LIVER else False)
                if region.any() and not region.all():
                    ax.contour(region.astype(float), levels=[0.5], colors=colour, linewidths=0.8)
            if box is not None:
                ax.add_patch(
                    Rectangle(
                        (box["start"][h] - 0.5, box["start"][v] - 0.5),
                        box["stop"][h] - box["start"][h],
                        box["stop"][v] - box["start"][v],
                        fill=False,
                        edgecolor="yellow",
                        linestyle="--",
                        linewidth=0.8,
                    )
                )
            if row == 1 and sal is not None:
                shown = np.ma.masked_less_equal(sal, 0.05)
                handle = ax.imshow(
                    shown,
                    cmap="inferno",
                    origin="lower",
                    vmin=0,
                    vmax=1,
                    alpha=0.55,
                    aspect=spacing[v] / spacing[h],
                    interpolation="bilinear",
                )
                if col == 2:
                    fig.colorbar(handle, ax=ax, fraction=0.046, pad=0.04, label="Grad-CAM")
            ax.set_xlim(img.shape[1] - 0.5, -0.5) if flip else ax.set_xlim(-0.5, img.shape[1] - 0.5)
            ax.set_ylim(-0.5, img.shape[0] - 0.5)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{name} {'xyz'[cut]}={centre[cut]}" + (" + saliency" if row == 1 else ""), fontsize=9)
            if flip:
                ax.text(0.02, 0.02, "R", color="white", transform=ax.transAxes, fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return Path(path)
