"""``PatchDataModule``: a fold's TLCR image (and label) patches for the autoencoder.

Training uses the fold's training cases, validation its inner validation cases; the fold's test
cases are never read. Patches are small, so all of a fold's patches are loaded once into memory.
Intensities stay in [0, 1] as written by ``neonet crop`` (see :mod:`neonet.gen.common`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import torch
import torchio as tio
from torch.utils.data import DataLoader, Dataset

from neonet.data.base import FoldDataModule
from neonet.data.nifti import load_nifti, read_array
from neonet.data.patches import PatchRecord, patch_records
from neonet.errors import DataError

log = logging.getLogger(__name__)


def load_patch(record: PatchRecord, with_label: bool = True) -> dict[str, Any]:
    """One patch as ``{"image": (1, X, Y, Z) float32, "label": (1, X, Y, Z) uint8, "affine", ...}``.

    Raises:
        MissingLabelPatchError: ``with_label`` and the patch has no label patch (``neonet crop --source none``).
    """
    img = load_nifti(record.image, record.case_id)
    image = read_array(img, record.image, record.case_id).astype(np.float32)
    if image.ndim != 3:
        raise DataError(f"case {record.case_id}: {record.image}: expected a 3D patch, got shape {image.shape}")
    item: dict[str, Any] = {
        "image": torch.from_numpy(np.ascontiguousarray(image))[None],
        "case_id": record.case_id,
        "pni": -1 if record.pni is None else int(record.pni),
        "affine": np.asarray(img.affine, dtype=np.float64),
    }
    if with_label:
        path = record.label_path("NeoGen (the latent cache, ControlNet's masks, the quality report)")
        lab = read_array(load_nifti(path, record.case_id), path, record.case_id)
        if lab.shape != image.shape:
            raise DataError(f"case {record.case_id}: label patch {lab.shape} and image patch {image.shape} differ")
        item["label"] = torch.from_numpy(np.rint(lab).astype(np.uint8))[None]
    return item


class PatchDataset(Dataset):
    """In-memory patches with an optional torchio augmentation (applied to image and label alike).

    Args:
        records: the patches to serve.
        with_label: also load the label patches.
        transform: torchio transform applied per item (flips: the same for image and label).
    """

    def __init__(self, records: Sequence[PatchRecord], with_label: bool = True, transform: tio.Transform | None = None) -> None:
        self.items = [load_patch(r, with_label) for r in records]
        self.transform = transform
        self.with_label = with_label

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        out = {"image": item["image"], "case_id": item["case_id"], "pni": item["pni"]}
        if self.with_label:
            out["label"] = item["label"]
        if self.transform is not None:
            subject = tio.Subject(image=tio.ScalarImage(tensor=out["image"]))
            if self.with_label:
                subject.add_image(tio.LabelMap(tensor=out["label"]), "label")
            subject = self.transform(subject)
            out["image"] = cast(tio.Image, subject["image"]).data.float()
            if self.with_label:
                out["label"] = cast(tio.Image, subject["label"]).data.to(torch.uint8)
        return out


class PatchDataModule(FoldDataModule):
    """Image patches of one fold for the autoencoder (and anything else that trains on patches).

    The fold's test cases are never read.

    Args:
        val_batch_size: validation batch size.
        augment: random flips during training (torchio ``RandomFlip``).
        flip_axes: axes to flip with probability 0.5 each (0 = left-right in the RAS patch grid).
        with_label: also serve the label patches (0 bg, 1 liver, 2 shell, 3 tumour).
        **kwargs: the cohort, the fold, ``batch_size`` (training) and ``num_workers``
            (:class:`~neonet.data.base.FoldDataModule`).
    """

    loader_class = DataLoader  # PyTorch's: see FoldDataModule.loader_class

    def __init__(
        self,
        *,
        val_batch_size: int = 4,
        augment: bool = True,
        flip_axes: Sequence[int] = (0, 1),
        with_label: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.val_batch_size = int(val_batch_size)
        self.augment = bool(augment)
        self.flip_axes = tuple(int(a) for a in flip_axes)
        self.with_label = bool(with_label)
        self.train_ds: PatchDataset | None = None
        self.val_ds: PatchDataset | None = None

    def train_records(self) -> list[PatchRecord]:
        """Patches of the fold's training cases."""
        return patch_records(self.workspace, self.split.train)

    def val_records(self) -> list[PatchRecord]:
        """Patches of the fold's inner validation cases."""
        return patch_records(self.workspace, self.split.val)

    def train_transform(self) -> tio.Transform | None:
        """Random flips (torchio), or None without augmentation."""
        if not self.augment or not self.flip_axes:
            return None
        return tio.RandomFlip(axes=self.flip_axes, flip_probability=0.5)

    def setup(self, stage: str | None = None) -> None:
        """Load the fold's training and validation patches (never its test patches)."""
        if stage in (None, "fit") and self.train_ds is None:
            records = self.train_records()
            if not records:
                raise DataError(f"fold {self.fold}: no usable training patches in {self.workspace.patches_manifest}")
            self.train_ds = PatchDataset(records, self.with_label, self.train_transform())
            log.info("fold %d: %d training patches", self.fold, len(self.train_ds))
        if stage in (None, "fit", "validate") and self.val_ds is None:
            records = self.val_records()
            if not records:
                raise DataError(f"fold {self.fold}: no inner validation patches; raise --data.val_fraction or add cases")
            self.val_ds = PatchDataset(records, self.with_label, None)

    def patch_shape(self) -> tuple[int, int, int]:
        """Spatial shape of the fold's patches."""
        ds = self.train_ds or self.val_ds
        if ds is None:
            self.setup("fit")
            ds = self.train_ds
        return tuple(int(s) for s in ds.items[0]["image"].shape[1:])  # type: ignore[union-attr,return-value]

    def train_dataloader(self) -> DataLoader:
        """Shuffled, augmented training patches (the last incomplete batch is dropped when possible)."""
        assert self.train_ds is not None
        drop = self.drop_last(len(self.train_ds), self.batch_size)
        return self.loader(self.train_ds, shuffle=True, drop_last=drop)

    def val_dataloader(self) -> DataLoader:
        """Inner validation patches in a fixed order."""
        assert self.val_ds is not None
        return self.loader(self.val_ds, batch_size=self.val_batch_size)

    def upstream(self) -> dict[str, Any]:
        """The TLCR patch manifest this fold trains on (path and SHA-256), for ``artifact.json``."""
        ws = self.workspace
        return {"patches_manifest": ws.checkpoint_record(ws.patches_manifest)} if ws.patches_manifest.is_file() else {}

    def split_record(self) -> dict[str, list[str]]:
        """The fold's split plus the case ids this module actually served (for the leakage check)."""
        record = super().split_record()
        used: set[str] = set()
        for ds in (self.train_ds, self.val_ds):
            if ds is not None:
                used.update(item["case_id"] for item in ds.items)
        record["trained_on_cases"] = sorted(used)
        return record
