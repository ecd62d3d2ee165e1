"""``SegDataModule``: whole MRI volumes with liver/tumour masks for NeoSeg."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai import transforms as mt
from monai.data import CacheDataset, Dataset, list_data_collate
from torch.utils.data import DataLoader

from neonet.data.base import FoldDataModule
from neonet.data.cases import Case, LabelMap, read_cases
from neonet.data.transforms import (
    DEFAULT_SPACING,
    ContrastRemapd,
    TorchioAugmentd,
    canonical_transforms,
    mri_augmentation,
)

log = logging.getLogger(__name__)


def seg_preprocessing(
    spacing: Sequence[float], divisible: int, label_map: LabelMap | None = None, with_label: bool = True
) -> mt.Compose:
    """NeoSeg's deterministic preprocessing: :func:`~neonet.data.transforms.canonical_transforms` (RAS,
    ``spacing``, intensity to [0, 1]), then zero padding to a multiple of ``divisible``.

    Every spatial step is invertible (:class:`~neonet.seg.SegMaskWriter` maps masks back to the input).
    Training, ``neonet predict`` and ``neonet predict-case`` (from a runs folder or a bundle) use it.

    Args:
        spacing: target voxel spacing in mm.
        divisible: pad each axis to a multiple of this (the network's total downsampling).
        label_map: raw label values to project convention (only read ``with_label``).
        with_label: whether the item has a ``label`` path too.
    """
    steps: list[mt.Transform] = [canonical_transforms(spacing, label_map, with_label=with_label)]
    keys = ["image", "label"] if with_label else ["image"]
    steps.append(mt.DivisiblePadd(keys=keys, k=int(divisible)))
    return mt.Compose(steps).flatten()


class SegDataModule(FoldDataModule):
    """Liver + tumour segmentation data of one fold.

    Training uses the fold's training patients, validation its inner validation patients and
    test/predict its held-out test patients (out-of-fold prediction). Volumes are reoriented to
    RAS, resampled to ``spacing`` and scaled to [0, 1]; training adds torchio MRI augmentation.

    Args:
        spacing: target voxel spacing in mm.
        patch_size: training crop size (voxels); None trains on whole (padded) volumes.
        samples_per_volume: random crops per volume and step when ``patch_size`` is set.
        divisible: pad volumes to a multiple of this (the network's total downsampling).
        cache_rate: fraction of preprocessed volumes kept in memory.
        augment: whether to apply torchio MRI augmentation during training.
        aug_prob: probability of each augmentation.
        flip_axes: axes of the random flips (probability 0.5 each; 0 = left-right in RAS); an empty list
            flips nothing, which keeps the liver on the body's right (a cue a small cohort should keep).
        contrast_remap: probability of a random non-monotone remapping of the training image's intensities
            (:class:`~neonet.data.transforms.ContrastRemapd`, before the torchio augmentation), which changes
            the order of tissues' brightness (e.g. a liver darker than muscle in one scan, brighter in the
            others); None or 0 leaves it out.
        predict_cases: a ``cases.csv`` to predict instead of the fold's test cases (new patients).
        predict_split: which cases ``predict`` uses when ``predict_cases`` is not given:
            ``test`` (out-of-fold), ``val``, ``train`` or ``all``.
        check: run the ``check-data`` checks on the manifest before fitting.
        **kwargs: the cohort, the fold, ``batch_size`` (training; validation and prediction use 1 whole
            volume) and ``num_workers`` (:class:`~neonet.data.base.FoldDataModule`).
    """

    def __init__(
        self,
        *,
        spacing: Sequence[float] = DEFAULT_SPACING,
        patch_size: Sequence[int] | None = None,
        samples_per_volume: int = 2,
        divisible: int = 16,
        cache_rate: float = 1.0,
        augment: bool = True,
        aug_prob: float = 0.3,
        flip_axes: Sequence[int] = (0,),
        contrast_remap: float | None = None,
        predict_cases: str | None = None,
        predict_split: str = "test",
        check: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.spacing = tuple(float(s) for s in spacing)
        self.patch_size = tuple(int(p) for p in patch_size) if patch_size else None
        self.samples_per_volume = samples_per_volume
        self.divisible = divisible
        self.cache_rate = cache_rate
        self.augment = augment
        self.aug_prob = aug_prob
        self.flip_axes = tuple(int(a) for a in flip_axes)
        if contrast_remap is not None and not 0.0 <= contrast_remap <= 1.0:
            raise ValueError(f"contrast_remap is a probability in [0, 1], not {contrast_remap}")
        self.contrast_remap = contrast_remap
        self.predict_cases = predict_cases
        if predict_split not in ("test", "val", "train", "all"):
            raise ValueError(f"predict_split must be test, val, train or all, not {predict_split!r}")
        self.predict_split = predict_split
        self.check = check

    # ------------------------------------------------------------------ checks
    def check_inputs(self) -> None:
        """Validate the manifest and files (all problems at once) before training starts."""
        if not self.check:
            return
        from neonet.data.validate import assert_valid

        assert_valid(self.cases_csv, self.label_map, require_label=True, require_pni=False, stages=("seg",))

    # ------------------------------------------------------------------ transforms
    def base_transform(self, with_label: bool = True) -> mt.Compose:
        """Deterministic preprocessing (invertible spatial steps): :func:`seg_preprocessing` with this fold's settings."""
        return seg_preprocessing(self.spacing, self.divisible, self.label_map, with_label=with_label)

    def train_transform(self) -> mt.Compose:
        """Preprocessing + random crops + augmentation."""
        steps: list[Any] = [self.base_transform(True)]
        if self.patch_size:
            steps += [
                mt.SpatialPadd(keys=["image", "label"], spatial_size=self.patch_size),
                mt.RandCropByPosNegLabeld(
                    keys=["image", "label"],
                    label_key="label",
                    spatial_size=self.patch_size,
                    pos=2,
                    neg=1,
                    num_samples=self.samples_per_volume,
                ),
            ]
        if self.augment and self.contrast_remap:
            steps.append(ContrastRemapd(["image"], prob=self.contrast_remap))
        if self.augment:
            steps.append(TorchioAugmentd(["image", "label"], mri_augmentation(p=self.aug_prob, flip_axes=self.flip_axes)))
        steps.append(mt.EnsureTyped(keys=["image", "label"], track_meta=False))
        # flat, so that CacheDataset's "cache up to the first random transform" index is right
        return mt.Compose(steps).flatten()

    @staticmethod
    def _items(cases: list[Case], with_label: bool = True) -> list[dict[str, str]]:
        items = []
        for c in cases:
            item = {"image": str(c.image), "case_id": c.case_id, "source": str(c.image)}
            if with_label:
                if c.label is None:
                    continue
                item["label"] = str(c.label)
            items.append(item)
        return items

    # ------------------------------------------------------------------ datasets
    def setup(self, stage: str | None = None) -> None:
        """Build datasets of the fold (the split file is written on first use)."""
        split = self.split
        if stage in (None, "fit"):
            self.train_ds = CacheDataset(
                self._items(self.cases_of(split.train)),
                self.train_transform(),
                cache_rate=self.cache_rate,
                num_workers=max(self.num_workers, 1),
                progress=False,
            )
        if stage in (None, "fit", "validate"):
            self.val_ds = CacheDataset(
                self._items(self.cases_of(split.val)),
                self.base_transform(True),
                cache_rate=self.cache_rate,
                num_workers=max(self.num_workers, 1),
                progress=False,
            )
        if stage in (None, "test"):
            self.test_ds = Dataset(self._items(self.cases_of(split.test)), self.base_transform(True))
        if stage in (None, "predict"):
            self.predict_transform = self.base_transform(with_label=False)
            self.predict_ds = Dataset(self._items(self.prediction_cases(), with_label=False), self.predict_transform)

    def prediction_cases(self) -> list[Case]:
        """Cases that ``predict`` writes masks for."""
        if self.predict_cases:
            return read_cases(self.predict_cases)
        split = self.split
        ids = {"test": split.test, "val": split.val, "train": split.train, "all": split.train + split.val + split.test}
        return self.cases_of(ids[self.predict_split])

    def train_dataloader(self) -> DataLoader:
        """Random training crops or volumes."""
        return self.loader(self.train_ds, shuffle=True, collate_fn=list_data_collate)

    def val_dataloader(self) -> DataLoader:
        """Whole inner-validation volumes, one at a time."""
        return self.loader(self.val_ds, batch_size=1)

    def test_dataloader(self) -> DataLoader:
        """Whole held-out volumes, one at a time."""
        return self.loader(self.test_ds, batch_size=1)

    def predict_dataloader(self) -> DataLoader:
        """Whole volumes to predict, one at a time (keeps the metadata needed to invert)."""
        return self.loader(self.predict_ds, batch_size=1)

    def output_dir(self) -> Path:
        """Where ``predict`` writes masks (out-of-fold predictions of the experiment)."""
        return self.workspace.seg_predictions_dir
