"""Scan input and NIfTI output with errors that name the file, and atomic writes.

Every volume neonet reads goes through :func:`load_nifti` (directly, or through
:class:`neonet.data.transforms.NeonetNiftiReader` in the MONAI transforms). It reads NIfTI with
nibabel, and a DICOM series folder, NRRD or MetaImage with SimpleITK (:mod:`neonet.data.itk_io`),
always returning a NIfTI image; it checks the header before a single voxel is read:

* the path is a readable scan (a symlink loop or a single DICOM file is named as such);
* the volume is not larger than :func:`max_voxels` (``NEONET_MAX_VOXELS``): a small ``.nii.gz``
  can declare a volume that does not fit in memory;
* the header says how large a voxel is (a NIfTI file with ``qform_code`` and ``sform_code`` 0 and
  no ``pixdim`` would otherwise be read as 1 mm voxels);
* the volume is 3D; trailing singleton axes (``(x, y, z, 1)``) are dropped without reading the
  voxels, a real 4th axis (``(x, y, z, t)``) is refused.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Any, cast

import nibabel as nib
import numpy as np

from neonet.data.itk_io import is_dicom_file, is_itk_file, read_dicom_series, read_itk_file
from neonet.errors import DataError
from neonet.run.atomic import atomic_path, sha256_file

#: Default largest volume read, in voxels: 512 x 512 x 512 (512 MiB as float32). A liver MRI is
#: typically 256-512 x 256-512 x 40-200 voxels (at most about 52 M), so this leaves room for
#: fine isotropic scans while reading, checking and resampling one volume stays within a few GB.
DEFAULT_MAX_VOXELS = 512**3
#: Environment variable that overrides :data:`DEFAULT_MAX_VOXELS` (``0`` switches the limit off).
MAX_VOXELS_ENV = "NEONET_MAX_VOXELS"


def max_voxels() -> int | None:
    """The largest volume (in voxels) neonet reads: ``NEONET_MAX_VOXELS`` or :data:`DEFAULT_MAX_VOXELS`.

    Returns:
        The limit, or None when ``NEONET_MAX_VOXELS=0`` switches it off.

    Raises:
        DataError: ``NEONET_MAX_VOXELS`` is not a whole number >= 0.
    """
    text = os.environ.get(MAX_VOXELS_ENV, "").strip().replace("_", "")
    if not text:
        return DEFAULT_MAX_VOXELS
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise DataError(
            f"{MAX_VOXELS_ENV}={os.environ[MAX_VOXELS_ENV]!r} is not a whole number of voxels "
            f"(e.g. {MAX_VOXELS_ENV}={1024 * 1024 * 512}; 0 switches the limit off)"
        )
    return value or None


def _missing_problem(path: Path, kind: str) -> str:
    """Why ``path`` is not a readable file: a folder, a symlink loop or dangling link, or absent."""
    if path.is_symlink():
        try:
            path.resolve(strict=True)
        except RuntimeError:  # Python < 3.13 reports a loop this way
            return f"{kind} path is a symbolic link loop (the link leads back to itself); point it at the scan"
        except OSError as exc:
            return f"{kind} path is a symbolic link that leads nowhere ({exc.strerror or exc}); point it at the scan"
    return f"{kind} file not found"


def _raw_pixdim(path: Path, img: nib.Nifti1Image, where: str, kind: str) -> np.ndarray:
    """``pixdim[1:4]`` as stored (nibabel's loader replaces a zero ``pixdim`` by 1 without a word)."""
    holder = img.file_map.get("header") or img.file_map.get("image")  # the .hdr of a .hdr/.img pair
    name = (holder.filename if holder is not None else None) or str(path)
    try:
        with nib.openers.ImageOpener(name) as handle:
            header = type(img.header).from_fileobj(handle, check=False)
    except Exception as exc:  # the header was parsed once already, so this is rare
        raise DataError(f"{where}{path}: {kind} header is not readable ({exc})") from exc
    return np.asarray(header["pixdim"][1:4], dtype=np.float64)


def _check_spacing(path: Path, img: nib.Nifti1Image, where: str, kind: str) -> None:
    """Refuse a NIfTI file whose header gives no voxel size (no qform/sform and no valid ``pixdim``)."""
    header = img.header
    if not isinstance(header, nib.Nifti1Header) or int(header["qform_code"]) or int(header["sform_code"]):
        return
    pixdim = _raw_pixdim(path, img, where, kind)
    if np.all(np.isfinite(pixdim)) and np.all(pixdim > 0):
        return  # no orientation but a voxel size: nibabel's default orientation (check-data warns)
    shown = ", ".join(f"{p:g}" for p in pixdim)
    raise DataError(
        f"{where}{path}: {kind} header holds no spatial information (pixdim ({shown}), qform_code 0, sform_code 0), "
        "so the voxel size is unknown and would be taken as 1 mm; fix the header: re-convert the scan with its "
        "spacing and orientation (e.g. dcm2niix), or set them, e.g. with nibabel: img.set_sform(affine, code=1)"
    )


def _check_size(path: Path, img: nib.Nifti1Image, where: str, kind: str) -> None:
    """Refuse a volume whose header declares more voxels than :func:`max_voxels`."""
    limit = max_voxels()
    n = math.prod(int(s) for s in img.shape)
    if limit is None or n <= limit:
        return
    dtype = img.get_data_dtype()
    gib = n * max(dtype.itemsize, 4) / 2**30
    shape = "x".join(str(int(s)) for s in img.shape)
    raise DataError(
        f"{where}{path}: {kind} header declares {shape} = {n:,} voxels ({gib:,.1f} GiB in memory), more than the "
        f"limit of {limit:,} voxels; a header declaring more voxels than the scan has is corrupt, but if the volume "
        f"is real, raise the limit with the environment variable {MAX_VOXELS_ENV} (e.g. {MAX_VOXELS_ENV}={n}) "
        "on a machine with that much memory"
    )


def _squeeze_3d(path: Path, img: nib.Nifti1Image, where: str, kind: str) -> nib.Nifti1Image:
    """The image as a 3D volume: trailing singleton axes dropped (lazily); anything else refused."""
    shape = tuple(int(s) for s in img.shape)
    if len(shape) < 3:
        raise DataError(f"{where}{path}: {kind} is {len(shape)}D (shape {shape}); neonet needs a 3D volume")
    if len(shape) == 3:
        return img
    if any(s != 1 for s in shape[3:]):
        raise DataError(
            f"{where}{path}: {kind} is {len(shape)}D with shape {shape}; neonet needs a 3D volume: "
            "extract the one volume (phase, echo, time point) to use into its own file, e.g. with "
            "nibabel (img.slicer[..., k]) or `fslroi IN OUT k 1`"
        )
    proxy = cast(Any, img.dataobj).reshape(shape[:3])  # an ArrayProxy reshapes without reading the voxels
    return type(img)(proxy, img.affine, img.header, extra=img.extra)


def load_nifti(path: str | os.PathLike, case_id: str | None = None, kind: str = "volume") -> nib.Nifti1Image:
    """Load a scan as a NIfTI image after the header checks of this module (a NIfTI file's voxels stay lazy).

    A folder is read as one DICOM series and a ``.nrrd`` / ``.nhdr`` / ``.mha`` / ``.mhd`` file with
    SimpleITK (:mod:`neonet.data.itk_io`); both come back as in-memory NIfTI images with the scan's
    geometry in RAS+, so nothing downstream depends on the format.

    Args:
        path: the NIfTI file (``.nii`` or ``.nii.gz``), NRRD or MetaImage file, or DICOM series folder.
        case_id: the case it belongs to, named in messages.
        kind: what the file is (``image``, ``label``, ``mask``, ...), named in messages.

    Returns:
        The image, 3D (a trailing singleton axis is dropped without reading the voxels). Its voxels
        are read by :func:`read_array`.

    Raises:
        DataError: the path is not a readable NIfTI file, the volume is larger than
            :func:`max_voxels`, has no voxel size, or is not 3D; the message names the case, the
            file and what to do.
    """
    where = f"case {case_id}: " if case_id else ""
    path = Path(path)
    if path.is_dir():
        return read_dicom_series(path, where, kind, max_voxels(), MAX_VOXELS_ENV)
    if not path.is_file():
        raise DataError(f"{where}{path}: {_missing_problem(path, kind)}")
    if is_itk_file(path):
        return read_itk_file(path, where, kind, max_voxels(), MAX_VOXELS_ENV)
    if is_dicom_file(path):
        raise DataError(
            f"{where}{path}: {kind} is one DICOM file; neonet reads a DICOM series from its folder: put the series "
            f"folder ({path.parent}) in the manifest (one series per folder)"
        )
    try:
        img = cast(nib.Nifti1Image, nib.load(str(path)))
    except Exception as exc:  # nibabel raises several exception types for bad files
        raise DataError(
            f"{where}{path}: {kind} is not a readable NIfTI file ({exc}); neonet reads NIfTI (.nii, .nii.gz), NRRD (.nrrd, "
            ".nhdr), MetaImage (.mha, .mhd) and DICOM series folders"
        ) from exc
    _check_size(path, img, where, kind)
    _check_spacing(path, img, where, kind)
    return _squeeze_3d(path, img, where, kind)


def read_array(img: nib.Nifti1Image, path: str | os.PathLike, case_id: str | None = None, kind: str = "volume") -> np.ndarray:
    """Read a NIfTI image's voxels.

    Args:
        img: an image from :func:`load_nifti` (its size was checked there).
        path: its file, named in messages.
        case_id: its case, named in messages.
        kind: what the file is, named in messages.

    Raises:
        DataError: the file is truncated or corrupt, or the voxels do not fit in memory.
    """
    where = f"case {case_id}: " if case_id else ""
    try:
        return np.asanyarray(img.dataobj)
    except MemoryError as exc:
        n = math.prod(int(s) for s in img.shape)
        raise DataError(
            f"{where}{path}: not enough memory to read the {kind}'s {n:,} voxels ({'x'.join(map(str, img.shape))}, "
            f"{img.get_data_dtype()}); free memory, use a machine with more, or lower {MAX_VOXELS_ENV} to refuse such volumes"
        ) from exc
    except Exception as exc:  # truncated gzip streams raise EOFError, OSError, zlib.error, ...
        detail = str(exc) or type(exc).__name__
        raise DataError(f"{where}{path}: cannot read the {kind}'s voxel data, file truncated or corrupt ({detail})") from exc


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


def scan_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a scan's content: the file's bytes, or for a DICOM series folder its files' names and bytes."""
    path = Path(path)
    if not path.is_dir():
        return sha256_file(path)
    digest = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(item.relative_to(path).as_posix().encode() + b"\0" + sha256_file(item).encode())
    return digest.hexdigest()
