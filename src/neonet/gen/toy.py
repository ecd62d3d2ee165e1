"""A tiny ready-cropped patch cohort for NeoGen tests and benchmarks (no phantom, no TLCR run).

Writes what ``neonet crop`` would have produced — image/label patches in [0, 1] with the TLCR label
values (0 bg, 1 liver, 2 peritumoral shell, 3 tumour) and ``patches/manifest.csv`` — plus a
``cases.csv`` whose image/label columns point at the same patch files, so the experiment's split
file can be written by :class:`neonet.data.base.FoldDataModule` as usual.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from neonet.data.nifti import save_nifti
from neonet.run.atomic import write_csv
from neonet.workspace import Workspace


def toy_patch(rng: np.random.Generator, shape: Sequence[int], pni: int) -> tuple[np.ndarray, np.ndarray]:
    """One (image, label) pair: bright liver, dark tumour with a shell, noisy dark background."""
    shape = tuple(int(s) for s in shape)
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"))
    centre = np.array(shape, np.float32) / 2 + rng.uniform(-1.0, 1.0, 3) * np.array(shape) * 0.05
    semi = np.array(shape, np.float32) * rng.uniform(0.33, 0.45, 3)
    liver = (((grid - centre[:, None, None, None]) / semi[:, None, None, None]) ** 2).sum(0) <= 1.0
    t_centre = centre + rng.uniform(-0.15, 0.15, 3) * np.array(shape)
    t_radius = rng.uniform(0.12, 0.2) * min(shape[0], shape[1])
    scale = np.array([1.0, 1.0, shape[0] / max(shape[2], 1) / 2.0], np.float32)
    dist = np.sqrt((((grid - t_centre[:, None, None, None]) * scale[:, None, None, None]) ** 2).sum(0))
    tumour = (dist <= t_radius) & liver
    shell = ndimage.binary_dilation(tumour, iterations=1 + int(rng.integers(0, 2))) & liver & ~tumour
    label = np.zeros(shape, np.uint8)
    label[liver] = 1
    label[shell] = 2
    label[tumour] = 3
    image = 0.25 + 0.05 * ndimage.gaussian_filter(rng.normal(size=shape), 1.5)
    image[liver] = rng.uniform(0.75, 0.9)
    image[tumour] = rng.uniform(0.3, 0.45)
    if pni:  # a darker streak through the shell (the phantom's "tumour along the nerve")
        streak = shell & (np.abs(grid[1] - t_centre[1]) < 1.0)
        image[streak] = 0.5
    image = ndimage.gaussian_filter(image, 0.6) + rng.normal(0.0, 0.03, shape)
    return np.clip(image, 0.0, 1.0).astype(np.float32), label


def write_toy_cohort(
    root: str | os.PathLike,
    experiment: str = "toy",
    cases: int = 12,
    shape: Sequence[int] = (16, 16, 8),
    spacing: Sequence[float] = (7.0, 7.0, 12.0),
    pni_fraction: float = 0.4,
    seed: int = 0,
) -> Path:
    """Write a toy patch cohort under ``root``; returns the ``cases.csv`` path.

    Layout: ``<root>/data/cases.csv`` (+ ``data/patches/...``) and the experiment's
    ``<root>/runs/<experiment>/patches/manifest.csv`` with the same patches.

    Args:
        root: output folder.
        experiment: experiment name (the workspace is ``<root>/runs/<experiment>``).
        cases: number of cases (one patient each).
        shape: patch shape in voxels.
        spacing: voxel spacing in mm.
        pni_fraction: fraction of PNI+ cases (the minority).
        seed: random seed.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    ws = Workspace(root / "runs", experiment)
    n_pos = max(1, int(round(cases * pni_fraction)))
    labels = np.array([1] * n_pos + [0] * (cases - n_pos))
    rng.shuffle(labels)
    affine = np.diag([*[float(s) for s in spacing], 1.0])
    case_rows, patch_rows = [], []
    for i, pni in enumerate(labels):
        cid = f"toy_{i:03d}"
        image, label = toy_patch(rng, shape, int(pni))
        for base in (root / "data", ws.patches_dir):
            save_nifti(base / "images" / f"{cid}.nii.gz", image, affine)
            save_nifti(base / "labels" / f"{cid}.nii.gz", label, affine)
        case_rows.append(
            {"case_id": cid, "image": f"images/{cid}.nii.gz", "label": f"labels/{cid}.nii.gz", "pni": int(pni), "patient_id": cid}
        )
        patch_rows.append(
            {
                "case_id": cid,
                "patient_id": cid,
                "pni": int(pni),
                "image": f"images/{cid}.nii.gz",
                "label": f"labels/{cid}.nii.gz",
                "source": "manual",
                "status": "ok",
            }
        )
    cases_csv = write_csv(root / "data" / "cases.csv", pd.DataFrame(case_rows))
    write_csv(ws.patches_manifest, pd.DataFrame(patch_rows))
    return cases_csv
