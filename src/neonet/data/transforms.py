"""Preprocessing and augmentation: MONAI dictionary transforms plus torchio MRI augmentation.

Every stage sees volumes the same way: reoriented to RAS, label values mapped to the project
convention (0 background, 1 liver, 2 tumour), resampled to the experiment's target spacing
(default 1.5625 x 1.5625 x 4.0 mm) and intensities scaled to [0, 1] between the volume's
0.5th and 99.5th percentiles. All spatial steps are invertible, so predictions can be mapped back
to the input's original grid with ``monai.transforms.Invertd``.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, TypedDict, cast

import numpy as np
import torch
import torchio as tio
from monai import transforms as mt
from monai.config import KeysCollection
from monai.data import MetaTensor, NibabelReader
from monai.data.utils import correct_nifti_header_if_necessary
from monai.utils import ensure_tuple

from neonet.data.cases import LabelMap
from neonet.data.nifti import load_nifti

DEFAULT_SPACING: tuple[float, float, float] = (1.5625, 1.5625, 4.0)
#: Orientation every volume is brought to before resampling (:func:`canonical_transforms`).
ORIENTATION = "RAS"
#: Intensity normalisation of :func:`canonical_transforms`: these percentiles of the volume map to [0, 1], clipped.
INTENSITY_PERCENTILES: tuple[float, float] = (0.5, 99.5)


class NeonetNiftiReader(NibabelReader):
    """MONAI's ``NibabelReader`` opening each file with :func:`neonet.data.nifti.load_nifti`.

    So the training, crop and prediction transforms read a volume exactly when ``check-data`` accepts
    it: the size limit and the voxel-size check come from the header before any voxel is read, a
    trailing singleton axis (``(x, y, z, 1)``) is dropped, and a real 4D volume is refused with a
    :class:`~neonet.errors.DataError` naming the file (MONAI wraps it in its "applying transform"
    error). A 3D volume is read exactly as ``NibabelReader`` reads it.
    """

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs: Any) -> Any:
        """Open one file or several (stacked as channels by ``get_data``), header-checked."""
        filenames = ensure_tuple(data)
        self.filenames = filenames
        images = [correct_nifti_header_if_necessary(load_nifti(name)) for name in filenames]
        return images if len(filenames) > 1 else images[0]


class LoadNiftid(mt.LoadImaged):
    """``LoadImaged`` that reads every file with :class:`NeonetNiftiReader`, and only with it.

    Given a reader, MONAI's ``LoadImage`` falls back on its other readers when that one fails, so a
    volume the header checks refuse would still be read by a plain reader; the reader is passed at
    call time here, which MONAI uses without a fallback (its ``DataError`` then ends the transform).

    Args:
        keys: keys of the file paths.
        kwargs: the other ``LoadImaged`` arguments (``image_only``, ``dtype``, ...).
    """

    def __init__(self, keys: KeysCollection, **kwargs: Any) -> None:
        super().__init__(keys, reader=NeonetNiftiReader, **kwargs)
        self.nifti_reader = NeonetNiftiReader()

    def __call__(self, data: Mapping[Hashable, Any], reader: Any = None) -> dict[Hashable, Any]:
        """Load each key's file with the neonet reader (a reader given here takes its place)."""
        return super().__call__(data, reader or self.nifti_reader)


class MapLabeld(mt.MapTransform):
    """Map raw label values to the project convention with a :class:`LabelMap`.

    Args:
        keys: label keys.
        label_map: which raw values are liver / tumour / other.
    """

    def __init__(self, keys: KeysCollection, label_map: LabelMap, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_map = label_map

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            value = d[key]
            mapped = self.label_map.apply(np.asarray(value))
            d[key] = _like(value, mapped) if isinstance(value, torch.Tensor) else mapped
        return d


def _like(ref: torch.Tensor, array: np.ndarray) -> torch.Tensor:
    """Tensor with ``array``'s values and ``ref``'s metadata (MetaTensor-preserving).

    The metadata dict and the list of applied operations are copied shallowly: a deep copy of the
    metadata (what ``MetaTensor.clone`` does) costs more than the augmentation of a small patch.
    """
    values = torch.as_tensor(array, dtype=ref.dtype)
    if isinstance(ref, MetaTensor):
        return MetaTensor(values, meta=dict(ref.meta), applied_operations=list(ref.applied_operations))
    return values  # torchio worked on the wrapper's own copy, so ``values`` never aliases ``ref``


class TorchioAugmentd(mt.RandomizableTransform, mt.MapTransform):
    """Apply a torchio augmentation pipeline to an image (and optional label) in a MONAI dict.

    Being randomizable, it marks where MONAI's ``CacheDataset`` stops caching. The input tensors
    are copied once into a fresh ``tio.Subject``; the torchio transforms are built with
    ``copy=False`` (see :func:`mri_augmentation`), so no per-transform deep copy is made.

    Args:
        keys: (image key, label key); the label key may be missing in the dict.
        transform: a torchio transform (e.g. from :func:`mri_augmentation`).
    """

    def __init__(self, keys: KeysCollection, transform: tio.Transform) -> None:
        mt.MapTransform.__init__(self, keys, allow_missing_keys=True)
        mt.RandomizableTransform.__init__(self, prob=1.0)
        self.transform = transform

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        keys = list(self.keys)
        image_key, label_key = keys[0], (keys[1] if len(keys) > 1 else None)
        image = torch.as_tensor(d[image_key]).float()
        subject_args: dict[str, tio.Image] = {"image": tio.ScalarImage(tensor=_own(image))}
        if label_key is not None and label_key in d:
            label = torch.as_tensor(d[label_key])
            subject_args["label"] = tio.LabelMap(tensor=_own(label.float()))
        out = self.transform(tio.Subject(**subject_args))
        out_image = cast(tio.Image, out["image"])  # a Subject's items are typed as plain objects
        d[image_key] = (
            _like(d[image_key], out_image.data.numpy()) if isinstance(d[image_key], torch.Tensor) else out_image.data.numpy()
        )
        if "label" in subject_args:
            lab = cast(tio.Image, out["label"]).data.numpy()
            d[label_key] = _like(d[label_key], lab) if isinstance(d[label_key], torch.Tensor) else lab
        return d


class ContrastRemapd(mt.RandomizableTransform, mt.MapTransform):
    """Random non-monotone remapping of a one-channel image's intensities (MONAI's ``RandIntensityRemap``).

    MONAI's transform (Meyer et al., "Intensity augmentation for domain transfer of whole breast
    segmentation in MRI", IEEE TMI 2020) maps each intensity level through a random smooth curve with a
    linear trend, so the order of tissues' brightness can change between scans, which no gamma, bias
    field or normalisation does. It draws the curve over the image's distinct values: the image (scaled
    to [0, 1] by the preprocessing) is first rounded to ``levels`` grey levels, so that ``kernel_size``
    spans a fixed fraction of the intensity range. The curve is drawn from torch's generator (seeded by
    ``seed_everything``, as torchio's transforms are).

    Args:
        keys: the image key(s).
        prob: probability of remapping an image.
        levels: grey levels the image is rounded to before the remapping.
        kernel_size: width, in grey levels, of the moving average that smooths the random curve.
    """

    def __init__(self, keys: KeysCollection, prob: float = 0.3, levels: int = 256, kernel_size: int = 64) -> None:
        mt.MapTransform.__init__(self, keys)
        mt.RandomizableTransform.__init__(self, prob=1.0)
        self.p = float(prob)
        self.levels = int(levels)
        self.kernel_size = int(kernel_size)
        self.slope = 0.7  # MONAI's default weight of the linear trend, with a random sign as RandIntensityRemap draws it

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.p <= 0 or float(torch.rand(())) >= self.p:
            return d
        # RandIntensityRemap's steps, with the draws taken from torch: the trend's sign, then the curve
        slope = self.slope if float(torch.rand(())) < 0.5 else -self.slope
        remap = mt.IntensityRemap(kernel_size=self.kernel_size, slope=slope)
        remap.set_random_state(seed=int(torch.randint(0, 2**31 - 1, ())))
        for key in self.key_iterator(d):
            image = torch.as_tensor(d[key]).float()
            rounded = torch.round(image.clamp(0.0, 1.0) * (self.levels - 1)) / (self.levels - 1)
            out = torch.as_tensor(remap(rounded.as_subclass(torch.Tensor)[0])).float()[None]
            # MONAI's curve spans [min, min + max] of the input: back to the image's own range
            lo, hi, span = rounded.min(), rounded.max(), out.max() - out.min()
            out = (out - out.min()) / span * (hi - lo) + lo if span > 0 else rounded
            d[key] = _like(d[key], out.numpy()) if isinstance(d[key], torch.Tensor) else out.numpy()
        return d


class _NoCopy(TypedDict):
    """torchio's ``copy`` keyword, typed for ``**`` unpacking into the transforms."""

    copy: bool


def _own(tensor: torch.Tensor) -> torch.Tensor:
    """A plain CPU tensor that shares no memory with ``tensor`` (transforms may then work in place)."""
    return tensor.detach().cpu().as_subclass(torch.Tensor).clone()


def mri_augmentation(
    p: float = 0.3,
    flip_axes: Sequence[int] = (0,),
    affine_degrees: float = 10.0,
    affine_scales: float = 0.1,
    intensity: bool = True,
) -> tio.Compose:
    """MRI-specific training augmentation with torchio.

    Args:
        p: probability of each intensity/artefact augmentation.
        flip_axes: axes along which to flip with probability 0.5 (0 = left-right in RAS).
        affine_degrees: maximum rotation in degrees.
        affine_scales: maximum relative scaling.
        intensity: include the augmentations that change the intensity ratios between tissues
            (bias field and gamma); False drops just those (flips, affine, motion or ghosting and
            noise stay), for data whose cue is such a ratio.

    Every transform is built with ``copy=False``: torchio otherwise deep-copies the subject in each
    transform (about a third of the per-sample time on small patches). Feed it a subject that owns
    its tensors, as :class:`TorchioAugmentd` does.
    """
    nc: _NoCopy = {"copy": False}
    return tio.Compose(
        [
            tio.RandomFlip(axes=tuple(flip_axes), flip_probability=0.5, **nc) if flip_axes else tio.Lambda(lambda x: x, **nc),
            tio.RandomAffine(scales=affine_scales, degrees=affine_degrees, default_pad_value="minimum", p=p, **nc),
            tio.RandomBiasField(coefficients=0.3, p=p if intensity else 0.0, **nc),
            tio.OneOf(
                {tio.RandomMotion(num_transforms=1, **nc): 0.5, tio.RandomGhosting(num_ghosts=(2, 4), **nc): 0.5}, p=p / 2, **nc
            ),
            tio.RandomGamma(log_gamma=(-0.3, 0.3), p=p if intensity else 0.0, **nc),
            tio.RandomNoise(std=(0, 0.03), p=p, **nc),
        ],
        **nc,
    )


def canonical_transforms(
    spacing: Sequence[float] = DEFAULT_SPACING,
    label_map: LabelMap | None = None,
    with_label: bool = True,
    image_key: str = "image",
    label_key: str = "label",
) -> mt.Compose:
    """Load → channel-first → map labels → RAS → resample → scale intensity to [0, 1].

    Args:
        spacing: target voxel spacing in mm.
        label_map: raw label values to project convention; default ``LabelMap()``.
        with_label: whether the dict has a label path under ``label_key``.
        image_key: key of the image path.
        label_key: key of the label path.
    """
    label_map = label_map or LabelMap()
    keys = [image_key, label_key] if with_label else [image_key]
    steps: list[Any] = [
        LoadNiftid(keys=keys, image_only=True, dtype=np.float32),
        mt.EnsureChannelFirstd(keys=keys, channel_dim="no_channel"),
    ]
    if with_label:
        steps.append(MapLabeld(keys=[label_key], label_map=label_map))
    steps += [
        mt.Orientationd(keys=keys, axcodes=ORIENTATION, labels=None),
        mt.Spacingd(
            keys=keys,
            pixdim=tuple(float(s) for s in spacing),
            mode=("bilinear", "nearest") if with_label else "bilinear",
            padding_mode="border" if not with_label else ("border", "zeros"),
        ),
        mt.ScaleIntensityRangePercentilesd(
            keys=[image_key],
            lower=INTENSITY_PERCENTILES[0],
            upper=INTENSITY_PERCENTILES[1],
            b_min=0.0,
            b_max=1.0,
            clip=True,
            relative=False,
        ),
    ]
    if with_label:
        steps.append(mt.CastToTyped(keys=[label_key], dtype=torch.uint8))
    return mt.Compose(steps)


def load_canonical(
    image: str,
    label: str | None = None,
    spacing: Sequence[float] = DEFAULT_SPACING,
    label_map: LabelMap | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Load one case in canonical form.

    Args:
        image: image NIfTI path.
        label: label NIfTI path (a predicted mask in project convention, or a raw label with
            ``label_map``), or None.
        spacing: target spacing in mm.
        label_map: raw label map (default: project convention).

    Returns:
        ``(image (X, Y, Z) float32 in [0, 1], label (X, Y, Z) uint8 or None, affine 4x4)``.
    """
    data = {"image": str(image)}
    if label is not None:
        data["label"] = str(label)
    out = canonical_transforms(spacing, label_map, with_label=label is not None)(data)
    img = out["image"]
    affine = np.asarray(img.affine, dtype=np.float64)
    lab = np.asarray(out["label"][0]).astype(np.uint8) if label is not None else None
    return np.asarray(img[0], dtype=np.float32), lab, affine


def load_canonical_label(
    label: str | os.PathLike,
    spacing: Sequence[float] = DEFAULT_SPACING,
    label_map: LabelMap | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Load a label volume alone as :func:`load_canonical` loads it beside its image.

    The same steps for the label key (map values, RAS, nearest-neighbour resampling to ``spacing``
    with zero padding), so the grid and the voxels equal ``load_canonical(image, label, ...)``'s
    label for an image on the label's grid, without reading or resampling the image.

    Args:
        label: label NIfTI path (raw values mapped with ``label_map``).
        spacing: target spacing in mm.
        label_map: raw label map (default: project convention).

    Returns:
        ``(label (X, Y, Z) uint8 in the project convention, affine 4x4)``.
    """
    steps = mt.Compose(
        [
            LoadNiftid(keys=["label"], image_only=True, dtype=np.float32),
            mt.EnsureChannelFirstd(keys=["label"], channel_dim="no_channel"),
            MapLabeld(keys=["label"], label_map=label_map or LabelMap()),
            mt.Orientationd(keys=["label"], axcodes="RAS", labels=None),
            mt.Spacingd(keys=["label"], pixdim=tuple(float(s) for s in spacing), mode="nearest", padding_mode="zeros"),
        ]
    )
    out = steps({"label": str(label)})["label"]
    return np.asarray(out[0]).astype(np.uint8), np.asarray(out.affine, dtype=np.float64)
