"""PNG panels of patches (mid axial slices): reconstructions and real-vs-synthetic comparisons."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from neonet.run.atomic import atomic_path


def _mid_axial(volume: np.ndarray) -> np.ndarray:
    """Mid slice along the last (z) axis of an (X, Y, Z) or (1, X, Y, Z) volume, shown with x across."""
    v = np.asarray(volume)
    if v.ndim == 4:
        v = v[0]
    return v[:, :, v.shape[2] // 2].T


def save_grid(
    path: str | os.PathLike,
    rows: Sequence[Sequence[np.ndarray]],
    row_titles: Sequence[str],
    col_titles: Sequence[str] | None = None,
    contours: Sequence[Sequence[np.ndarray | None]] | None = None,
    vmax: Sequence[float] | None = None,
    title: str | None = None,
) -> Path:
    """Save a grid of mid axial slices as PNG (atomically).

    Args:
        path: target PNG.
        rows: volumes per row (each (X, Y, Z) or (1, X, Y, Z)).
        row_titles: one label per row.
        col_titles: optional label per column.
        contours: optional label volumes per cell; tumour (3) is drawn red, shell (2) yellow.
        vmax: display maximum per row (default 1.0; intensities are in [0, 1]).
        title: figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_rows = len(rows)
    n_cols = max(len(r) for r in rows) if rows else 1
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.8 * n_cols, 1.9 * n_rows), squeeze=False)
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i][j]
            ax.axis("off")
            if j >= len(row):
                continue
            ax.imshow(_mid_axial(row[j]), cmap="gray", vmin=0.0, vmax=(vmax[i] if vmax else 1.0), origin="lower")
            cell = contours[i][j] if contours and j < len(contours[i]) else None
            if cell is not None:
                lab = _mid_axial(cell)
                for value, color in ((2, "yellow"), (3, "red")):
                    if (lab == value).any():
                        ax.contour((lab == value).astype(float), levels=[0.5], colors=color, linewidths=0.6)
            if i == 0 and col_titles and j < len(col_titles):
                ax.set_title(col_titles[j], fontsize=7)
        axes[i][0].text(
            -0.08, 0.5, row_titles[i], transform=axes[i][0].transAxes, rotation=90, va="center", ha="right", fontsize=8
        )
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return Path(path)


def reconstruction_panel(
    path: str | os.PathLike, images: np.ndarray, recons: np.ndarray, case_ids: Sequence[str], title: str | None = None
) -> Path:
    """Input / reconstruction / absolute error, one column per patch."""
    errors = np.abs(np.asarray(images) - np.asarray(recons))
    return save_grid(
        path,
        [list(images), list(recons), list(errors)],
        ["input", "reconstruction", "|error| x2"],
        col_titles=list(case_ids),
        vmax=[1.0, 1.0, 0.5],
        title=title,
    )
