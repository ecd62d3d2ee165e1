"""Scans that are not NIfTI: DICOM series folders, NRRD and MetaImage, read with SimpleITK.

:func:`neonet.data.nifti.load_nifti` hands a path here when it is a folder (a DICOM series) or a
``.nrrd`` / ``.nhdr`` / ``.mha`` / ``.mhd`` file. The volume comes back as an in-memory
:class:`nibabel.Nifti1Image` whose affine is the scan's own geometry in NIfTI's RAS+ world
(SimpleITK reports LPS+: the first two world axes change sign), so every later step (resampling to
the canonical grid, cropping, writing predictions in the input's space) treats it exactly as it
treats a NIfTI file of the same scan.

A DICOM folder is read only when it holds exactly one series of evenly spaced slices with no slice
missing; a DICOM-SEG or RTSTRUCT object given as a label is refused with the conversion to use.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from neonet.errors import DataError

# ITK prints warnings ("No Series were found") straight to stderr; every case it warns about is a DataError here
sitk.ProcessObject.SetGlobalWarningDisplay(False)

#: File suffixes read with SimpleITK's image readers (NRRD and MetaImage).
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
#: Relative tolerance on the distance between consecutive DICOM slices.
SLICE_GAP_TOLERANCE = 0.01
#: DICOM modalities that are segmentation objects, not images.
_OBJECT_MODALITIES = {
    "SEG": "a DICOM-SEG object",
    "RTSTRUCT": "an RTSTRUCT (contours)",
}
_LABEL_CONVERT = (
    "convert it to a label map on the image's grid first, e.g. DICOM-SEG with dcmqi "
    "(`segimage2itkimage --inputDICOM SEG.dcm --outputDirectory OUT -t nifti`), RTSTRUCT with rt-utils or "
    "platipy, and put the .nii.gz (or .nrrd) path in the manifest"
)


def is_itk_file(path: Path) -> bool:
    """Whether ``path`` names a NRRD or MetaImage file (read with SimpleITK)."""
    return path.name.lower().endswith(ITK_SUFFIXES)


def is_dicom_file(path: Path) -> bool:
    """Whether ``path`` starts like a DICOM file (``DICM`` after the 128-byte preamble)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _lps_to_ras_affine(image: sitk.Image) -> np.ndarray:
    """The voxel-to-world affine of a SimpleITK image in NIfTI's RAS+ convention."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    affine = np.eye(4)
    affine[:3, :3] = direction * spacing[None, :]
    affine[:3, 3] = np.asarray(image.GetOrigin(), dtype=np.float64)
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine


def _to_nifti(image: sitk.Image, path: Path, where: str, kind: str) -> nib.Nifti1Image:
    """A 3D SimpleITK image as an in-memory NIfTI image with the same geometry."""
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        shape = "x".join(str(s) for s in image.GetSize())
        raise DataError(
            f"{where}{path}: {kind} is {image.GetDimension()}D with {image.GetNumberOfComponentsPerPixel()} "
            f"component(s) per voxel (size {shape}); neonet needs one 3D scalar volume: export the one volume "
            "(or, for a multi-layer segmentation, the merged label map) to use"
        )
    array = np.ascontiguousarray(np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0)))
    img = nib.Nifti1Image(array, _lps_to_ras_affine(image))
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    return img


def _check_size(path: Path, size: tuple[int, ...], where: str, kind: str, limit: int | None, env: str) -> None:
    """Refuse a volume whose header declares more voxels than the limit, before reading it."""
    n = math.prod(size)
    if limit is None or n <= limit:
        return
    shape = "x".join(str(s) for s in size)
    raise DataError(
        f"{where}{path}: {kind} header declares {shape} = {n:,} voxels, more than the limit of {limit:,} voxels; "
        f"if the volume is real, raise the limit with the environment variable {env} (e.g. {env}={n})"
    )


def read_itk_file(path: Path, where: str, kind: str, limit: int | None, env: str) -> nib.Nifti1Image:
    """Read a NRRD or MetaImage volume (header checked first) as a NIfTI image.

    Args:
        path: the ``.nrrd`` / ``.nhdr`` / ``.mha`` / ``.mhd`` file.
        where: ``"case <id>: "`` or empty, prefixed to messages.
        kind: what the file is, named in messages.
        limit: the largest volume read, in voxels (None: no limit).
        env: the environment variable that sets ``limit``, named in messages.

    Raises:
        DataError: the file is not readable, too large, or not one 3D scalar volume.
    """
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise DataError(f"{where}{path}: {kind} is not a readable NRRD/MetaImage file ({_first_line(exc)})") from exc
    _check_size(path, tuple(int(s) for s in reader.GetSize()), where, kind, limit, env)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise DataError(
            f"{where}{path}: cannot read the {kind}'s voxel data, file truncated or corrupt ({_first_line(exc)})"
        ) from exc
    return _to_nifti(image, path, where, kind)


def _first_line(exc: BaseException) -> str:
    """The most telling line of an ITK exception (its text spans several lines)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if "Description" in line or "ERROR" in line.upper()]
    return (useful or lines or [type(exc).__name__])[-1][:300]


def _tag(reader: sitk.ImageFileReader, key: str) -> str:
    """A DICOM tag's value from a file reader that has read its information, '' if absent."""
    return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""


def _series(folder: Path, where: str, kind: str) -> tuple[str, list[str]]:
    """The one DICOM series in ``folder``: its UID and its files sorted along the slice normal."""
    try:
        uids = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    except RuntimeError as exc:
        raise DataError(f"{where}{folder}: {kind} folder cannot be scanned for DICOM series ({_first_line(exc)})") from exc
    if not uids:
        raise DataError(
            f"{where}{folder}: {kind} path is a folder with no DICOM series in it (neonet reads a folder as one DICOM "
            "series); point the manifest at the series folder, or at a NIfTI / NRRD / MHA file"
        )
    if len(uids) > 1:
        counts = ", ".join(
            f"{uid} ({len(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))} files)" for uid in uids[:6]
        )
        raise DataError(
            f"{where}{folder}: {kind} folder holds {len(uids)} DICOM series ({counts}); neonet reads one series per "
            "folder: move each series into its own folder (e.g. `dcm2niix` or a DICOM sorter) and name the one to use"
        )
    files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uids[0]))
    return uids[0], files


def _slice_problem(positions: np.ndarray, normal: np.ndarray) -> str | None:
    """Why slices at ``positions`` (LPS, mm) are not one evenly spaced stack, or None."""
    if len(positions) < 2:
        return f"only {len(positions)} slice; a 3D volume needs several"
    offsets = np.sort(positions @ normal)
    gaps = np.diff(offsets)
    if np.any(gaps < 1e-3):
        return "two slices share one position (a duplicate file, or several acquisitions in one series)"
    step = float(np.median(gaps))
    uneven = np.abs(gaps - step) > SLICE_GAP_TOLERANCE * step
    if not np.any(uneven):
        return None
    missing = int(np.sum(np.round(gaps[uneven] / step) - 1))
    if missing > 0 and np.allclose(gaps / step, np.round(gaps / step), atol=SLICE_GAP_TOLERANCE):
        shown = ", ".join(f"{g:.2f}" for g in gaps[uneven][:4])
        return f"{missing} slice(s) missing (gaps of {shown} mm where slices are {step:.2f} mm apart)"
    return f"slices unevenly spaced ({gaps.min():.2f} to {gaps.max():.2f} mm apart)"


def read_dicom_series(folder: Path, where: str, kind: str, limit: int | None, env: str) -> nib.Nifti1Image:
    """Read the one DICOM series in ``folder`` as a NIfTI image, after checking it is a whole volume.

    Args:
        folder: a folder holding one DICOM series.
        where: ``"case <id>: "`` or empty, prefixed to messages.
        kind: what the series is (``image``, ``label``), named in messages.
        limit: the largest volume read, in voxels (None: no limit).
        env: the environment variable that sets ``limit``, named in messages.

    Raises:
        DataError: no series or several, a segmentation object (DICOM-SEG, RTSTRUCT), missing or
            unevenly spaced slices, too large, or unreadable; the message says what to do.
    """
    _, files = _series(folder, where, kind)
    first = sitk.ImageFileReader()
    first.SetFileName(files[0])
    try:
        first.ReadImageInformation()
    except RuntimeError as exc:
        raise DataError(f"{where}{folder}: {kind} series file {files[0]} is not readable ({_first_line(exc)})") from exc
    modality = _tag(first, "0008|0060").upper()
    if modality in _OBJECT_MODALITIES:
        raise DataError(
            f"{where}{folder}: {kind} series is {_OBJECT_MODALITIES[modality]}, not an image or a label map; {_LABEL_CONVERT}"
        )
    size = tuple(int(s) for s in first.GetSize())
    _check_size(folder, (size[0], size[1], len(files)), where, kind, limit, env)
    positions = []
    for name in files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(name)
        try:
            reader.ReadImageInformation()
        except RuntimeError as exc:
            raise DataError(f"{where}{folder}: {kind} series file {name} is not readable ({_first_line(exc)})") from exc
        text = _tag(reader, "0020|0032")
        try:
            positions.append([float(v) for v in text.split("\\")])
        except ValueError as exc:
            raise DataError(
                f"{where}{folder}: {kind} series file {name} has no usable slice position (ImagePositionPatient "
                f"{text!r}); the slice order cannot be known: re-export the series with its geometry tags"
            ) from exc
    orientation = np.asarray([float(v) for v in _tag(first, "0020|0037").split("\\")] or [1, 0, 0, 0, 1, 0])
    normal = np.cross(orientation[:3], orientation[3:6])
    problem = _slice_problem(np.asarray(positions), normal)
    if problem:
        raise DataError(
            f"{where}{folder}: {kind} DICOM series is not one evenly spaced volume: {problem}; complete or re-export "
            "the series (all slices, one acquisition), or convert it with `dcm2niix` and check its warnings"
        )
    series = sitk.ImageSeriesReader()
    series.SetFileNames(files)
    try:
        image = series.Execute()
    except RuntimeError as exc:
        raise DataError(f"{where}{folder}: {kind} DICOM series cannot be read ({_first_line(exc)})") from exc
    return _to_nifti(image, folder, where, kind)


def write_dicom_series(array: np.ndarray, affine: np.ndarray, folder: str | os.PathLike, **tags: Any) -> Path:
    """Write an integer volume as a DICOM series (one file per slice), e.g. for tests and examples.

    Args:
        array: the volume, ``(x, y, z)``, integers that fit int16.
        affine: its RAS+ voxel-to-world affine (as in NIfTI).
        folder: the series folder, created.
        tags: extra DICOM tags ``"gggg|eeee"``-keyed (passed as ``**{"0008|0060": "MR"}``).

    Returns:
        The folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing[None, :]
    image = sitk.GetImageFromArray(np.transpose(np.asarray(array).astype(np.int16), (2, 1, 0)))
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(d) for d in direction.ravel()])
    image.SetOrigin([float(o) for o in lps[:3, 3]])
    series_uid = "1.2.826.0.1.3680043.2.1125." + str(abs(hash(str(folder))) % 10**12)
    orientation = "\\".join(f"{v:.10g}" for v in (*direction[:, 0], *direction[:, 1]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(image.GetDepth()):
        slice_ = image[:, :, z]
        origin = image.TransformIndexToPhysicalPoint((0, 0, z))
        meta = {
            "0008|0060": "MR",
            "0020|000d": series_uid + ".1",
            "0020|000e": series_uid,
            "0020|0013": str(z + 1),
            "0020|0032": "\\".join(f"{v:.10g}" for v in origin),
            "0020|0037": orientation,
            "0018|0050": f"{spacing[2]:.10g}",
            "0008|0018": f"{series_uid}.{z + 1}",
        }
        meta.update({k: str(v) for k, v in tags.items()})
        for key, value in meta.items():
            slice_.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"slice{z:04d}.dcm"))
        writer.Execute(slice_)
    return folder
