"""The fingerprint of one case, as ``neonet plan`` summarises a cohort (nnU-Net's dataset fingerprint).

Everything is given along the R, A, S axes (the canonical grid every stage resamples to), whatever
the orientation the file is stored in:

* voxel spacing (mm) and shape (voxels) of the image as stored;
* the image's 0.5th, 50th and 99.5th intensity percentiles over the liver voxels of the label
  (the label map's liver values; tumour voxels excluded), and the liver volume;
* the tumours: 26-connected components of the tumour voxels (as TLCR counts them), each with its
  volume in ml and the extent of its bounding box in mm per axis;
* at each crop spacing asked for, the patch size TLCR needs to hold the case's largest tumour whole
  (:func:`neonet.seg.tlcr.patch_needed` on the label resampled as ``neonet crop`` resamples it).

A case without a label, or whose label has no tumour voxels, is fingerprinted as far as it goes
(status ``no_label`` / ``no_tumor``); files that cannot be read raise :class:`~neonet.errors.DataError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np
from scipy import ndimage

from neonet.data.cases import LIVER, TUMOR, Case, LabelMap
from neonet.data.nifti import load_nifti, read_array
from neonet.errors import DataError

#: Intensity percentiles recorded inside the liver.
PERCENTILES = (0.5, 50.0, 99.5)
#: Fingerprint statuses.
STATUS_OK, STATUS_NO_TUMOR, STATUS_NO_LABEL = "ok", "no_tumor", "no_label"
_STRUCTURE_26 = np.ones((3, 3, 3), dtype=bool)

Spacing = tuple[float, float, float]


@dataclass(frozen=True)
class Tumour:
    """One 26-connected tumour component.

    Attributes:
        volume_ml: its volume in ml.
        extent_mm: the extent of its bounding box in mm along R, A, S.
    """

    volume_ml: float
    extent_mm: tuple[float, float, float]


@dataclass
class CaseFingerprint:
    """What ``neonet plan`` records about one case.

    Attributes:
        case_id: the case.
        status: ``ok``, ``no_tumor`` (label without tumour voxels) or ``no_label`` (no label in the manifest).
        spacing: voxel size in mm along R, A, S.
        shape: voxels along R, A, S.
        liver_ml: liver volume in ml (None without label).
        liver_percentiles: the image's :data:`PERCENTILES` over the liver voxels (None without liver voxels).
        tumours: the tumour components, largest first.
        needed_patch: crop spacing → the patch size (voxels) TLCR needs at that spacing to hold the
            largest tumour whole (only for cases with a tumour).
    """

    case_id: str
    status: str
    spacing: Spacing
    shape: tuple[int, int, int]
    liver_ml: float | None = None
    liver_percentiles: tuple[float, float, float] | None = None
    tumours: list[Tumour] = field(default_factory=list)
    needed_patch: dict[Spacing, tuple[int, int, int]] = field(default_factory=dict)


def _ras_order(affine: np.ndarray) -> list[int]:
    """For each stored voxel axis, the R/A/S axis (0, 1, 2) it runs along (nibabel's closest orientation)."""
    return [int(a) for a in nib.orientations.io_orientation(affine)[:, 0]]


def _to_ras(values: Sequence[float], order: list[int]) -> list[float]:
    out = [0.0, 0.0, 0.0]
    for axis, ras in enumerate(order):
        out[ras] = float(values[axis])
    return out


def geometry(img: nib.Nifti1Image) -> tuple[Spacing, tuple[int, int, int]]:
    """A volume's voxel size (mm) and size (voxels) along R, A, S, from its header."""
    affine = np.asarray(img.affine, dtype=np.float64)
    order = _ras_order(affine)
    spacing = _to_ras([float(z) for z in np.linalg.norm(affine[:3, :3], axis=0)], order)
    shape = _to_ras([int(s) for s in img.shape[:3]], order)
    return (spacing[0], spacing[1], spacing[2]), (int(shape[0]), int(shape[1]), int(shape[2]))


def tumour_components(tumour: np.ndarray, zooms: Sequence[float], order: list[int]) -> list[Tumour]:
    """The 26-connected components of a boolean tumour mask, largest first.

    Args:
        tumour: boolean 3D mask on the stored grid.
        zooms: voxel size in mm along the stored axes.
        order: :func:`_ras_order` of the grid (extents are returned along R, A, S).
    """
    labels, n = ndimage.label(tumour, structure=_STRUCTURE_26)
    if n == 0:
        return []
    counts = np.bincount(labels.ravel())[1:]
    voxel_ml = float(np.prod(zooms)) / 1000.0
    found = []
    for index, box in enumerate(ndimage.find_objects(labels)):
        assert box is not None
        extent = [(s.stop - s.start) * float(z) for s, z in zip(box, zooms)]
        ras = _to_ras(extent, order)
        found.append(Tumour(float(counts[index]) * voxel_ml, (ras[0], ras[1], ras[2])))
    return sorted(found, key=lambda t: -t.volume_ml)


def needed_patch_at(case: Case, spacing: Sequence[float], label_map: LabelMap) -> tuple[int, int, int] | None:
    """The patch size TLCR needs at ``spacing`` to hold the case's largest tumour whole (None without tumour).

    The label is resampled as ``neonet crop`` resamples it (:func:`neonet.data.transforms.load_canonical_label`)
    and the patch centred as TLCR centres it (the largest component's centroid).
    """
    from neonet.data.transforms import load_canonical_label  # heavy import (MONAI)
    from neonet.seg.tlcr import largest_component, patch_needed

    assert case.label is not None
    try:
        mask, _ = load_canonical_label(case.label, spacing, label_map)
    except Exception as exc:  # MONAI wraps the reader's error in "applying transform <...>"
        root: BaseException = exc
        while root.__cause__ is not None or root.__context__ is not None:
            root = root.__cause__ or root.__context__  # type: ignore[assignment]
        raise DataError(f"case {case.case_id}: cannot resample {case.label}: {type(root).__name__}: {root}") from exc
    largest, n = largest_component(mask == TUMOR)
    if not n:
        return None
    return patch_needed(largest, np.argwhere(largest).mean(axis=0))


def fingerprint_case(case: Case, label_map: LabelMap, crop_spacings: Sequence[Sequence[float]] = ()) -> CaseFingerprint:
    """Fingerprint one case (see the module docstring).

    Args:
        case: the case (its image and, when given, its label).
        label_map: which label values mean liver and tumour.
        crop_spacings: spacings (mm) at which to measure the patch the largest tumour needs.

    Raises:
        DataError: the image or label cannot be read, or they are not on one grid (the message names
            the case, the file and the way on).
    """
    img = load_nifti(case.image, case.case_id, "image")
    affine = np.asarray(img.affine, dtype=np.float64)
    zooms = [float(z) for z in np.linalg.norm(affine[:3, :3], axis=0)]
    order = _ras_order(affine)
    spacing, shape = geometry(img)
    fp = CaseFingerprint(case_id=case.case_id, status=STATUS_NO_LABEL, spacing=spacing, shape=shape)
    if case.label is None:
        return fp
    lab = load_nifti(case.label, case.case_id, "label")
    if tuple(lab.shape[:3]) != tuple(img.shape[:3]):
        raise DataError(
            f"case {case.case_id}: {case.label}: label shape {tuple(lab.shape[:3])} differs from the image's "
            f"{tuple(img.shape[:3])} ({case.image}); the label must be on the image's voxel grid "
            f"(`neonet check-data` checks every case)"
        )
    mapped = label_map.apply(read_array(lab, case.label, case.case_id, "label"))
    liver = mapped == LIVER
    fp.liver_ml = float(liver.sum()) * float(np.prod(zooms)) / 1000.0
    if liver.any():
        image = read_array(img, case.image, case.case_id, "image")
        inside = np.asarray(image[liver], dtype=np.float64)
        inside = inside[np.isfinite(inside)]
        if inside.size:
            values = np.percentile(inside, PERCENTILES)
            fp.liver_percentiles = (float(values[0]), float(values[1]), float(values[2]))
        del image
    fp.tumours = tumour_components(mapped == TUMOR, zooms, order)
    fp.status = STATUS_OK if fp.tumours else STATUS_NO_TUMOR
    if fp.tumours:
        for crop_spacing in crop_spacings:
            key = (float(crop_spacing[0]), float(crop_spacing[1]), float(crop_spacing[2]))
            need = needed_patch_at(case, key, label_map)
            if need is not None:
                fp.needed_patch[key] = need
    return fp
