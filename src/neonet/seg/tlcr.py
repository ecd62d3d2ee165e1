"""Tumor-Localized ROI Crop (TLCR): a fixed-size image patch and label patch around the tumour.

Pure numpy/scipy functions on canonical arrays (RAS, resampled to the target spacing); no torch,
no file io. Conventions (see ``NEONET.md``, "our decisions"):

* input masks are in the project convention: 0 background, 1 liver, 2 tumour;
* label patches are 0 background, 1 liver, 2 peritumoral shell, 3 tumour (tumour wins over
  shell, shell over liver); the shell is every non-tumour voxel whose *physical* distance to the
  tumour is at most ``shell_mm`` (so on anisotropic grids it is thinner in voxels along the coarse
  axis); it is not restricted to the liver;
* the patch is centred on the centroid of the **largest** 3D connected tumour component
  (26-connectivity), rounded half-up to the nearest voxel; for a patch size ``p`` the centre voxel
  is at index ``p // 2`` of the patch (for even ``p`` the patch reaches one voxel further before
  the centre than after it). All tumour voxels, of every component, are 3 in the label patch;
* at volume borders the patch is padded (image with the volume's minimum, label with 0) so it
  always has exactly ``patch_size`` voxels; the crop box may start below 0 or stop beyond the
  volume, and the padding per side is recorded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

import numpy as np
from scipy import ndimage

#: Label patch values.
PATCH_BACKGROUND, PATCH_LIVER, PATCH_SHELL, PATCH_TUMOR = 0, 1, 2, 3

#: TLCR statuses.
STATUS_OK = "ok"
STATUS_LIVER_FALLBACK = "no_tumor_liver_fallback"
STATUS_SKIPPED = "no_tumor_skipped"
STATUS_NO_LIVER = "no_liver_no_tumor"
#: A volume without a mask (``neonet crop --source none``): the patch is the volume's centre, no label patch.
STATUS_NO_MASK = "no_mask_centred"
NO_TUMOR_POLICIES = ("liver", "skip")

_STRUCTURE_26 = np.ones((3, 3, 3), dtype=bool)


def largest_component(mask: np.ndarray, spacing: Sequence[float] | None = None) -> tuple[np.ndarray, int]:
    """Largest 3D connected component of a boolean mask (26-connectivity).

    Args:
        mask: boolean (or 0/non-0) 3D array.
        spacing: voxel spacing in mm; accepted for symmetry with the other functions (on one grid
            the largest component by voxel count is also the largest by volume).

    Returns:
        ``(component mask (bool, same shape), number of components)``; an all-False mask and 0
        when ``mask`` is empty. Ties are broken by the lowest component label (scan order).
    """
    del spacing  # voxel count is proportional to volume on a regular grid
    mask = np.asarray(mask).astype(bool, copy=False)
    if mask.ndim != 3:
        raise ValueError(f"largest_component expects a 3D mask, got shape {mask.shape}")
    labels, n = ndimage.label(mask, structure=_STRUCTURE_26)
    if n == 0:
        return np.zeros(mask.shape, dtype=bool), 0
    counts = np.bincount(labels.ravel())
    counts[0] = 0
    return labels == int(np.argmax(counts)), int(n)


def peritumoral_shell(tumor: np.ndarray, spacing: Sequence[float], width_mm: float = 10.0) -> np.ndarray:
    """Voxels outside the tumour within ``width_mm`` (physical distance) of it.

    Args:
        tumor: boolean 3D tumour mask.
        spacing: voxel spacing ``(sx, sy, sz)`` in mm.
        width_mm: shell width in mm (distance measured between voxel centres).

    Returns:
        Boolean mask of the shell (empty when there is no tumour or ``width_mm <= 0``).
    """
    tumor = np.asarray(tumor).astype(bool, copy=False)
    if not tumor.any() or width_mm <= 0:
        return np.zeros(tumor.shape, dtype=bool)
    distance = ndimage.distance_transform_edt(~tumor, sampling=tuple(float(s) for s in spacing))
    return (distance <= float(width_mm)) & ~tumor


def shrunk_tumor(tumor: np.ndarray, spacing: Sequence[float], shrink_mm: float) -> np.ndarray:
    """Tumour voxels farther than ``shrink_mm`` (physical distance) from every non-tumour voxel.

    Distances run between voxel centres, as for the shell: a depth below the voxel spacing removes
    nothing along that axis (at 3.5 x 3.5 x 6 mm, 6 mm takes one voxel layer off in-plane and along z).

    An erosion in millimetres: a segmentation that grew the tumour into the tissue around it (a
    perineural cuff drawn as tumour) loses that rim. A tumour thinner than ``2 * shrink_mm`` everywhere
    would vanish; it is then kept as it is (the caller always gets a tumour where there was one).

    Args:
        tumor: boolean tumour mask.
        spacing: voxel spacing in mm.
        shrink_mm: erosion depth in mm (0 keeps the mask).
    """
    if shrink_mm <= 0 or not tumor.any():
        return tumor
    inside = ndimage.distance_transform_edt(tumor, sampling=tuple(float(s) for s in spacing))
    shrunk = inside > float(shrink_mm)
    return shrunk if shrunk.any() else tumor


def _round_half_up(values: Sequence[float]) -> tuple[int, ...]:
    return tuple(int(np.floor(float(v) + 0.5)) for v in values)


def crop_box(center_vox: Sequence[float], patch_size: Sequence[int], volume_shape: Sequence[int]) -> dict[str, tuple[int, ...]]:
    """Crop box of ``patch_size`` voxels centred on ``center_vox``.

    The centre is rounded half-up to a voxel ``c``; along each axis the box is
    ``[c - p // 2, c - p // 2 + p)``, so ``c`` lands on patch index ``p // 2``.

    Args:
        center_vox: centre in (fractional) voxel coordinates of the volume.
        patch_size: patch size in voxels per axis.
        volume_shape: shape of the volume.

    Returns:
        Dict of per-axis tuples: ``center`` (rounded voxel), ``start`` and ``stop`` (volume
        coordinates; start may be negative and stop beyond the volume), ``pad_before`` and
        ``pad_after`` (voxels of padding needed on each side).
    """
    if not (len(center_vox) == len(patch_size) == len(volume_shape)):
        raise ValueError("center_vox, patch_size and volume_shape must have the same length")
    center = _round_half_up(center_vox)
    start = tuple(c - int(p) // 2 for c, p in zip(center, patch_size))
    stop = tuple(s + int(p) for s, p in zip(start, patch_size))
    pad_before = tuple(max(0, -s) for s in start)
    pad_after = tuple(max(0, e - int(n)) for e, n in zip(stop, volume_shape))
    return {"center": center, "start": start, "stop": stop, "pad_before": pad_before, "pad_after": pad_after}


def extract_patch(array: np.ndarray, box: Mapping[str, Sequence[int]], pad_value: float = 0) -> np.ndarray:
    """The part of ``array`` inside ``box``, padded with ``pad_value`` outside the volume.

    Args:
        array: 3D volume.
        box: a :func:`crop_box` result (``start`` and ``stop`` are used).
        pad_value: value outside the volume (image: 0 or its minimum; label: 0).

    Returns:
        Array of shape ``stop - start`` with ``array``'s dtype.
    """
    start = [int(s) for s in box["start"]]
    stop = [int(e) for e in box["stop"]]
    shape = tuple(e - s for s, e in zip(start, stop))
    out = np.full(shape, pad_value, dtype=array.dtype)
    src, dst = [], []
    for s, e, n in zip(start, stop, array.shape):
        lo, hi = max(s, 0), min(e, n)
        if hi <= lo:  # box entirely outside the volume along this axis
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, hi - s))
    out[tuple(dst)] = array[tuple(src)]
    return out


def label_patch(liver: np.ndarray, tumor: np.ndarray, shell: np.ndarray) -> np.ndarray:
    """Combine masks into a label patch: 0 bg, 1 liver, 2 shell, 3 tumour (tumour > shell > liver)."""
    out = np.zeros(np.shape(liver), dtype=np.uint8)
    out[np.asarray(liver, dtype=bool)] = PATCH_LIVER
    out[np.asarray(shell, dtype=bool)] = PATCH_SHELL
    out[np.asarray(tumor, dtype=bool)] = PATCH_TUMOR
    return out


def patch_affine(affine: np.ndarray, start: Sequence[int]) -> np.ndarray:
    """Voxel-to-world affine of a patch whose voxel 0 is volume voxel ``start``.

    World coordinates of patch voxels then equal those of the same voxels in the volume.
    """
    affine = np.asarray(affine, dtype=np.float64)
    out = affine.copy()
    out[:3, 3] = affine[:3, :3] @ np.asarray(start, dtype=np.float64) + affine[:3, 3]
    return out


class _Common(TypedDict):
    """The :class:`TLCRResult` fields every outcome of :func:`tlcr` sets."""

    spacing: tuple[float, float, float]
    patch_size: tuple[int, int, int]
    shell_mm: float


@dataclass
class TLCRResult:
    """Outcome of :func:`tlcr` for one case.

    Attributes:
        status: ``ok``, ``no_tumor_liver_fallback``, ``no_tumor_skipped``, ``no_liver_no_tumor`` or
            ``no_mask_centred`` (:func:`centred_patch`).
        image_patch: float32 image patch, or None when no patch was made.
        label_patch: uint8 label patch (0 bg, 1 liver, 2 shell, 3 tumour), or None (no patch, or no mask).
        n_tumors: number of 26-connected tumour components.
        tumor_volume_ml: volume of the largest tumour component in ml.
        tumor_volume_total_ml: volume of all tumour voxels in ml.
        centroid: centre used for the crop, in fractional voxel coordinates of the volume
            (largest tumour component, or the liver for the fallback), or None.
        box: the :func:`crop_box` dict, or None.
        fits: whether the largest tumour component lies entirely inside the patch (None
            without tumour).
        spacing: voxel spacing in mm.
        patch_size: patch size in voxels.
        shell_mm: shell width in mm.
        intensity_scale: factor the image patch was multiplied by (``liver_level`` / median liver
            intensity; 1.0 without ``liver_level``).
        intensity_reference: whose liver voxels set the scale: ``patch``, ``volume`` or ``none``.
        needed_patch: the smallest patch size (voxels per axis) whose crop box, centred as this one
            is, holds the largest tumour component whole (:func:`patch_needed`); None without tumour.
    """

    status: str
    image_patch: np.ndarray | None = None
    label_patch: np.ndarray | None = None
    n_tumors: int = 0
    tumor_volume_ml: float = 0.0
    tumor_volume_total_ml: float = 0.0
    centroid: tuple[float, float, float] | None = None
    box: dict[str, tuple[int, ...]] | None = None
    fits: bool | None = None
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    patch_size: tuple[int, int, int] = (96, 96, 48)
    shell_mm: float = 10.0
    intensity_scale: float = 1.0
    intensity_reference: str = "none"
    needed_patch: tuple[int, int, int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def has_patch(self) -> bool:
        """True when an image patch was made (with a label patch unless the status is ``no_mask_centred``)."""
        return self.image_patch is not None

    @property
    def padding(self) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
        """``(pad_before, pad_after)`` per axis, or None without a patch."""
        if self.box is None:
            return None
        return self.box["pad_before"], self.box["pad_after"]


#: Where ``tlcr(liver_level=...)`` takes its liver reference from.
LIVER_REGIONS = ("patch", "volume")
#: Where the peritumoral shell may lie: ``all`` non-tumour voxels near the tumour, or only the ``liver`` ones.
SHELL_REGIONS = ("all", "liver")
#: Fewer liver voxels than this in a patch (outside the shell) make the reference the whole volume's liver.
MIN_PATCH_LIVER_VOXELS = 50


def liver_reference_scale(image: np.ndarray, liver: np.ndarray, level: float) -> float:
    """Factor that puts the median intensity of the liver voxels at ``level``.

    Reference-tissue normalisation: after it, an image reads as a ratio to the liver (the lesion-to-
    liver ratio of hepatobiliary-phase reading) whatever the scan's scaling, coil and bias.

    Args:
        image: 3D image.
        liver: boolean liver mask on the same grid (tumour excluded).
        level: where the liver median goes (> 0).

    Raises:
        ValueError: without liver voxels, or when their median is not positive.
    """
    if not level > 0:
        raise ValueError(f"liver_level must be > 0, got {level}")
    if not liver.any():
        raise ValueError("liver_level needs liver voxels in the mask to normalise to; this mask has none")
    median = float(np.median(image[liver]))
    if not median > 0 and float(image.min()) == float(image.max()):
        raise ValueError(
            f"the image is constant (every voxel is {float(image.min()):g} after loading), so there is no liver intensity "
            "to normalise to; re-export or re-convert the scan (`neonet check-data` names constant images)"
        )
    if not median > 0:
        raise ValueError(f"the median liver intensity is {median:g}; cannot normalise to it (is the image scaled to [0, 1]?)")
    return level / median


def patch_needed(component: np.ndarray, center_vox: Sequence[float]) -> tuple[int, int, int]:
    """The smallest patch size per axis whose :func:`crop_box` around ``center_vox`` holds ``component``.

    With the centre rounded half-up to voxel ``c``, a box of ``p`` voxels reaches ``p // 2`` voxels
    before ``c`` and ``p - p // 2 - 1`` after it; a component reaching ``a`` voxels before and ``b``
    after needs ``p = 2a`` when ``a > b``, else ``p = 2b + 1`` (and every larger ``p`` holds it too).

    Args:
        component: boolean 3D mask (e.g. the largest tumour component).
        center_vox: the crop centre in (fractional) voxel coordinates (TLCR: the component's centroid).

    Returns:
        Voxels per axis; ``(1, 1, 1)`` for an empty mask.
    """
    coords = np.argwhere(np.asarray(component, dtype=bool))
    if coords.size == 0:
        return (1, 1, 1)
    center = np.asarray(_round_half_up(center_vox))
    before = np.maximum(center - coords.min(axis=0), 0)
    after = np.maximum(coords.max(axis=0) - center, 0)
    need = np.where(before > after, 2 * before, 2 * after + 1)
    return tuple(int(n) for n in need)  # type: ignore[return-value]


def patch_for_share(
    needs: Sequence[Sequence[int]], share: float = 0.95, divisor: Sequence[int] = (1, 1, 1)
) -> tuple[tuple[int, int, int], int]:
    """A patch size that holds at least ``share`` of the tumours, given each one's :func:`patch_needed`.

    Each axis starts at the ``share`` quantile of its needed sizes (no smaller patch can hold that
    many); while fewer than ``ceil(share * n)`` tumours fit on all three axes at once, the axis whose
    next larger needed size holds the most more tumours per added voxel grows to it. Each axis is
    then rounded up to a multiple of ``divisor``.

    Args:
        needs: per tumour, the needed patch size (x, y, z) in voxels.
        share: the fraction of tumours that must fit, in (0, 1].
        divisor: each axis of the result is a multiple of this.

    Returns:
        ``(patch size, number of tumours it holds)``; ``((d_x, d_y, d_z), 0)`` without tumours.
    """
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share}")
    div = np.asarray([max(1, int(d)) for d in divisor])
    arr = np.asarray(needs, dtype=np.int64).reshape(-1, 3)
    if arr.shape[0] == 0:
        return tuple(int(d) for d in div), 0  # type: ignore[return-value]

    def held(size: np.ndarray) -> int:
        return int(np.all(arr <= size, axis=1).sum())

    wanted = int(np.ceil(share * arr.shape[0] - 1e-9))
    patch = np.sort(arr, axis=0)[wanted - 1].copy()
    while held(patch) < wanted:  # ends: with every axis at its largest need, every tumour fits
        best: tuple[float, float, int, int] | None = None
        for axis in range(3):
            larger = arr[:, axis][arr[:, axis] > patch[axis]]
            if larger.size == 0:
                continue
            grown = patch.copy()
            grown[axis] = int(larger.min())
            cost = float(np.prod(grown) - np.prod(patch))
            score = (held(grown) - held(patch)) / cost, -cost
            if best is None or score > best[:2]:
                best = (score[0], score[1], axis, int(grown[axis]))
        assert best is not None
        patch[best[2]] = best[3]
    patch = -(-patch // div) * div
    return tuple(int(p) for p in patch), held(patch)  # type: ignore[return-value]


def _centroid(mask: np.ndarray) -> tuple[float, float, float]:
    return tuple(float(c) for c in np.argwhere(mask).mean(axis=0))  # type: ignore[return-value]


def _inside(mask: np.ndarray, box: dict[str, tuple[int, ...]]) -> bool:
    coords = np.argwhere(mask)
    if coords.size == 0:
        return True
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    return bool(np.all(lo >= np.asarray(box["start"])) and np.all(hi < np.asarray(box["stop"])))


def tlcr(
    image: np.ndarray,
    mask: np.ndarray,
    spacing: Sequence[float],
    patch_size: Sequence[int] = (96, 96, 48),
    shell_mm: float = 10.0,
    no_tumor: str = "liver",
    liver_level: float | None = None,
    liver_region: str = "volume",
    shell_region: str = "all",
    tumor_shrink_mm: float = 0.0,
) -> TLCRResult:
    """Tumour-localised ROI crop of one canonical volume.

    Args:
        image: 3D image (canonical grid).
        mask: 3D mask on the same grid, project convention (0 bg, 1 liver, 2 tumour).
        spacing: voxel spacing ``(sx, sy, sz)`` in mm.
        patch_size: patch size in voxels.
        shell_mm: peritumoral shell width in mm.
        no_tumor: what to do without tumour voxels: ``"liver"`` centres the patch on the
            liver's largest component (status ``no_tumor_liver_fallback``), ``"skip"`` makes no
            patch (status ``no_tumor_skipped``). Without tumour and liver no patch is made
            (status ``no_liver_no_tumor``). A missing tumour never raises.
        liver_level: None keeps the image's intensities; a value multiplies the image patch by
            :func:`liver_reference_scale` (median liver voxel → this value) and clips it to [0, 1].
            Raises ValueError when the mask has no liver voxels.
        liver_region: ``volume``: the whole volume's liver; ``patch``: the liver voxels of the
            patch outside the peritumoral shell (the local reference follows a bias field; with
            fewer than ``MIN_PATCH_LIVER_VOXELS`` the whole volume's liver is used instead).
        shell_region: ``all``: the shell is every non-tumour voxel within ``shell_mm``; ``liver``:
            only those the mask labels liver, so tissue outside the liver next to the tumour stays
            background (0) in the label patch.
        tumor_shrink_mm: > 0 shrinks every tumour by this depth (:func:`shrunk_tumor`) before the
            label patch is made: the eroded rim becomes shell, and the shell is measured from the shrunk
            tumour. The patch stays centred on the unshrunk largest tumour, and the manifest's tumour
            volumes are those of the unshrunk mask.

    Returns:
        A :class:`TLCRResult`.
    """
    if no_tumor not in NO_TUMOR_POLICIES:
        raise ValueError(f"no_tumor must be one of {NO_TUMOR_POLICIES}, got {no_tumor!r}")
    if shell_region not in SHELL_REGIONS:
        raise ValueError(f"shell_region must be one of {SHELL_REGIONS}, got {shell_region!r}")
    image = np.asarray(image)
    mask = np.asarray(mask)
    if image.ndim != 3 or image.shape != mask.shape:
        raise ValueError(f"image and mask must be 3D arrays of one shape, got {image.shape} and {mask.shape}")
    spacing = tuple(float(s) for s in spacing)
    patch_size = tuple(int(p) for p in patch_size)
    if len(spacing) != 3 or len(patch_size) != 3 or min(patch_size) < 1:
        raise ValueError(f"spacing and patch_size need 3 positive entries, got {spacing} and {patch_size}")
    voxel_ml = float(np.prod(spacing)) / 1000.0
    liver = mask == 1
    tumor = mask == 2
    common: _Common = {"spacing": spacing, "patch_size": patch_size, "shell_mm": float(shell_mm)}

    largest, n_tumors = largest_component(tumor)
    if n_tumors:
        centroid = _centroid(largest)
        shrunk = shrunk_tumor(tumor, spacing, tumor_shrink_mm)
        shell = peritumoral_shell(shrunk, spacing, shell_mm)
        if shell_region == "liver":
            shell &= liver | tumor  # the rim a shrink took off the tumour lies in the liver as the mask drew it
        status = STATUS_OK
    elif no_tumor == "skip":
        return TLCRResult(status=STATUS_SKIPPED, **common)
    else:
        liver_main, n_liver = largest_component(liver)
        if not n_liver:
            return TLCRResult(status=STATUS_NO_LIVER, **common)
        centroid = _centroid(liver_main)
        shrunk = tumor
        shell = np.zeros(mask.shape, dtype=bool)
        status = STATUS_LIVER_FALLBACK

    box = crop_box(centroid, patch_size, mask.shape)
    pad_value = image.min() if image.size else 0
    img_patch = extract_patch(image.astype(np.float32, copy=False), box, float(pad_value))
    lab_patch = extract_patch(label_patch(liver, shrunk, shell), box, 0)
    scale, reference = 1.0, "none"
    if liver_level is not None:
        if liver_region not in LIVER_REGIONS:
            raise ValueError(f"liver_region must be one of {LIVER_REGIONS}, got {liver_region!r}")
        local = lab_patch == 1  # liver outside the shell: the reference never includes peritumoral tissue
        if liver_region == "patch" and int(local.sum()) >= MIN_PATCH_LIVER_VOXELS:
            scale, reference = liver_reference_scale(img_patch, local, liver_level), "patch"
        else:
            scale, reference = liver_reference_scale(image, liver, liver_level), "volume"
        img_patch = np.clip(img_patch * np.float32(scale), 0.0, 1.0, dtype=np.float32)
    return TLCRResult(
        status=status,
        image_patch=img_patch,
        label_patch=lab_patch,
        n_tumors=n_tumors,
        tumor_volume_ml=float(largest.sum()) * voxel_ml,
        tumor_volume_total_ml=float(tumor.sum()) * voxel_ml,
        centroid=centroid,
        box=box,
        fits=_inside(largest, box) if n_tumors else None,
        needed_patch=patch_needed(largest, centroid) if n_tumors else None,
        intensity_scale=scale,
        intensity_reference=reference,
        **common,
    )


def centred_patch(image: np.ndarray, spacing: Sequence[float], patch_size: Sequence[int] = (96, 96, 48)) -> TLCRResult:
    """The ``patch_size`` patch at the centre of a volume that has no mask (status ``no_mask_centred``).

    For scans that come already cropped around the lesion (many public and radiomics sets): the
    volume's centre stands in for the tumour centroid, and the box, its rounding and the padding at
    the borders are :func:`crop_box`'s and :func:`extract_patch`'s, as for a tumour. No label patch
    is made; the tumour fields stay empty.

    Args:
        image: 3D image (canonical grid).
        spacing: voxel spacing ``(sx, sy, sz)`` in mm.
        patch_size: patch size in voxels.

    Returns:
        A :class:`TLCRResult` with ``image_patch`` and ``box``, ``label_patch`` None.
    """
    image = np.asarray(image)
    if image.ndim != 3 or len(patch_size) != 3 or len(spacing) != 3 or min(patch_size) < 1:
        raise ValueError(
            f"centred_patch needs a 3D image, 3 spacings and 3 positive patch sizes, got {image.shape}, {spacing}, {patch_size}"
        )
    px, py, pz = (int(p) for p in patch_size)
    sx, sy, sz = (float(s) for s in spacing)
    cx, cy, cz = ((n - 1) / 2 for n in image.shape)
    box = crop_box((cx, cy, cz), (px, py, pz), image.shape)
    pad_value = float(image.min()) if image.size else 0.0
    return TLCRResult(
        status=STATUS_NO_MASK,
        image_patch=extract_patch(image.astype(np.float32, copy=False), box, pad_value),
        centroid=(cx, cy, cz),
        box=box,
        spacing=(sx, sy, sz),
        patch_size=(px, py, pz),
        shell_mm=0.0,
    )
