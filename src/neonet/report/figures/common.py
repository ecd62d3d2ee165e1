"""What every report figure shares: the Agg backend, atomic PNG writes, planes of a patch, contour colours."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from neonet.data.patches import PATCH_SHELL, PATCH_TUMOR  # noqa: E402
from neonet.run.atomic import atomic_path  # noqa: E402

#: Dots per inch of every report PNG.
DPI = 110
#: Patch label contours: value -> colour (peritumoral shell yellow, tumour red).
PATCH_CONTOURS = ((PATCH_SHELL, "yellow"), (PATCH_TUMOR, "red"))
#: The three planes of an (X, Y, Z) patch on the canonical RAS grid: (name, axis cut).
PLANES = (("axial", 2), ("coronal", 1), ("sagittal", 0))


def save_png(fig: plt.Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` as a PNG atomically (temp file + rename) and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")
    plt.close(fig)
    return Path(path)


def plane(volume: np.ndarray, cut: int, index: int | None = None) -> np.ndarray:
    """The slice of an (X, Y, Z) or (1, X, Y, Z) volume across axis ``cut`` (default: its middle), shown
    with the lower remaining axis across and the higher one up (``imshow(..., origin="lower")``)."""
    v = np.asarray(volume)
    if v.ndim == 4:
        v = v[0]
    at = v.shape[cut] // 2 if index is None else int(index)
    return np.take(v, at, axis=cut).T


def plane_aspect(zooms: Sequence[float], cut: int) -> float:
    """``imshow`` aspect (height / width of a pixel) of :func:`plane` ``cut`` for voxel spacing ``zooms``."""
    across, up = [a for a in range(3) if a != cut]
    return float(zooms[up]) / float(zooms[across])


def draw_patch(ax: plt.Axes, image: np.ndarray, label: np.ndarray | None = None, vmax: float = 1.0, aspect: float = 1.0) -> None:
    """One patch slice in grey (intensities in [0, vmax], pixels ``aspect`` times as high as wide) with the
    shell and tumour contours of its label slice."""
    ax.imshow(image, cmap="gray", vmin=0.0, vmax=vmax, origin="lower", interpolation="nearest", aspect=aspect)
    if label is not None:
        for value, colour in PATCH_CONTOURS:
            region = label == value
            if region.any() and not region.all():
                ax.contour(region.astype(float), levels=[0.5], colors=colour, linewidths=0.7)
    ax.set_xticks([])
    ax.set_yticks([])


def fold_colours(folds: Sequence[int]) -> dict[int, tuple[float, float, float, float]]:
    """One colour per fold, stable across figures (tab10)."""
    cmap = plt.get_cmap("tab10")
    return {int(k): cmap(int(k) % 10) for k in folds}
