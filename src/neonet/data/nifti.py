"""NIfTI input/output with errors that name the file, and atomic writes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import cast

import nibabel as nib
import numpy as np

from neonet.errors import DataError
from neonet.run.atomic import atomic_path


def load_nifti(path: str | os.PathLike, case_id: str | None = None) -> nib.Nifti1Image:
    """Load a NIfTI image header (lazy data); raises DataError naming the case and file."""
    where = f"case {case_id}: " if case_id else ""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{where}{path}: file not found")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises several exception types for bad files
        raise DataError(f"{where}{path}: not a readable NIfTI file ({exc})") from exc
    return cast(nib.Nifti1Image, img)


def read_array(img: nib.Nifti1Image, path: str | os.PathLike, case_id: str | None = None) -> np.ndarray:
    """Read a NIfTI image's voxels; raises DataError if the file is truncated or corrupt."""
    where = f"case {case_id}: " if case_id else ""
    try:
        return np.asanyarray(img.dataobj)
    except Exception as exc:  # truncated gzip streams raise EOFError, OSError, zlib.error, ...
        raise DataError(f"{where}{path}: cannot read voxel data, file truncated or corrupt ({exc})") from exc


def save_nifti(
    path: str | os.PathLike,
    array: np.ndarray,
    affine: np.ndarray,
    header: nib.Nifti1Header | None = None,
) -> Path:
    """Save ``array`` as NIfTI atomically (temp file + rename), keeping ``affine`` exactly."""
    array = np.asarray(array)
    img = nib.Nifti1Image(array, np.asarray(affine, dtype=np.float64), header=header)
    img.set_data_dtype(array.dtype)
    img.set_qform(np.asarray(affine, dtype=np.float64), code=1)
    img.set_sform(np.asarray(affine, dtype=np.float64), code=1)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return Path(path)
