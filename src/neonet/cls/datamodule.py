"""``ClsDataModule``: TLCR image patches with their PNI label for NeoCls, per fold.

Training uses the fold's real training patches, plus that fold's synthetic PNI+ patches when
``use_synthetic`` is on (read only from ``synthetic/fold<k>/manifest.csv``; every synthetic patch
must derive from one of the fold's *training* cases). Model selection uses the real inner
validation patients, testing the real held-out patients: synthetic data never enters val/test.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal, cast

import nibabel as nib
import numpy as np
import pandas as pd
import torch
from monai import transforms as mt
from monai.data import CacheDataset
from torch.utils.data import DataLoader

from neonet.data.base import FoldDataModule
from neonet.data.patches import patch_records
from neonet.data.transforms import TorchioAugmentd, mri_augmentation
from neonet.errors import DataError, MissingUpstreamError
from neonet.run.atomic import sha256_file
from neonet.workspace import SYNTHETIC, Workspace, check_synthetic_name

log = logging.getLogger(__name__)

#: Columns the synthetic manifest must have (``pni`` defaults to 1, ``label`` is optional).
SYNTHETIC_COLUMNS = ("case_id", "source_case", "image")


def read_synthetic(
    ws: Workspace, fold: int, train_cases: Sequence[str], real_cases: Sequence[str], name: str = SYNTHETIC
) -> list[dict[str, Any]]:
    """Items of the fold's synthetic patches, after checking they can only have come from its training cases.

    Args:
        ws: the workspace.
        fold: the fold.
        train_cases: the fold's training cases (the only allowed ``source_case`` values).
        real_cases: every real case id of the experiment (synthetic ids must differ from them).
        name: the synthetic set (``synthetic``, or ``synthetic_<name>`` of ``neonet synthesize --name``).

    Raises:
        MissingUpstreamError: when ``synthetic/fold<k>/manifest.csv`` is missing.
        DataError: on missing columns, files or labels, a ``fold`` column naming another fold, a
            synthetic id equal to a real case id, or a source case outside the fold's training cases.
    """
    folder = ws.synthetic_dir(fold, name)
    manifest = ws.synthetic_manifest(fold, name)
    if not manifest.is_file():
        raise MissingUpstreamError(
            f"synthetic patches of fold {fold}" + ("" if name == SYNTHETIC else f" (set {name})"),
            manifest,
            f"neonet synthesize (NeoGen) for experiment {ws.experiment}, fold {fold}"
            + ("" if name == SYNTHETIC else f", with --name {name}"),
        )
    frame = pd.read_csv(manifest, dtype={"case_id": str, "source_case": str})
    missing_cols = [c for c in SYNTHETIC_COLUMNS if c not in frame.columns]
    if missing_cols:
        raise DataError(f"{manifest}: missing column(s) {missing_cols}")
    usable = frame["image"].notna() & (frame["image"].astype(str) != "")
    if "status" in frame.columns:
        usable &= frame["status"].fillna("").astype(str).isin(["ok", ""])
    if (~usable).any():
        log.warning("fold %d: %d synthetic row(s) without an ok patch are left out (%s)", fold, int((~usable).sum()), manifest)
    frame = frame[usable]
    if "fold" in frame.columns and not (frame["fold"].astype(int) == int(fold)).all():
        raise DataError(f"{manifest}: rows of fold(s) {sorted(set(frame['fold']) - {fold})} in fold {fold}'s folder")
    train, real = set(train_cases), set(real_cases)
    bad = frame[~frame["source_case"].isin(train)]
    if len(bad):
        what = ["held-out/validation case" if s in real else "unknown case" for s in bad["source_case"]]
        examples = ", ".join(f"{c} <- {s} ({w})" for c, s, w in list(zip(bad["case_id"], bad["source_case"], what))[:5])
        raise DataError(
            f"leakage guard: {len(bad)} synthetic patch(es) in {manifest} derive from cases that are not fold {fold} "
            f"training cases: {examples}. Synthetic patches must come only from the fold's training patients."
        )
    clash = sorted(set(frame["case_id"]) & real)
    if clash:
        raise DataError(f"{manifest}: synthetic case ids equal real case ids: {clash[:5]}")
    dupes = sorted(frame["case_id"][frame["case_id"].duplicated()])
    if dupes:
        raise DataError(f"{manifest}: duplicate synthetic case ids {dupes[:5]}")
    pni = frame["pni"] if "pni" in frame.columns else pd.Series(1, index=frame.index)
    if pni.isna().any() or not pni.isin([0, 1]).all():
        raise DataError(f"{manifest}: pni must be 0 or 1 in every row")
    items: list[dict[str, Any]] = []
    for (_, row), label in zip(frame.iterrows(), pni):
        image = folder / str(row["image"])
        if not image.is_file():
            raise DataError(f"{manifest}: synthetic patch {row['case_id']}: {image} not found")
        item = {
            "image": str(image),
            "label": float(label),
            "case_id": str(row["case_id"]),
            "patient_id": f"syn:{row['source_case']}",
            "synthetic": 1,
        }
        mask = row.get("label")
        if isinstance(mask, str) and mask:
            item["region"] = str(folder / mask)
        items.append(item)
    return items


#: What ``ClsDataModule(image=...)`` may replace the image patch with (None keeps it): a constant (the image-free control).
IMAGE_MODES = ("constant",)
#: The value of every image voxel under ``image: constant``.
CONSTANT_IMAGE_VALUE = 0.0


def constant_image(image: torch.Tensor) -> torch.Tensor:
    """A tensor of the image's shape and type holding :data:`CONSTANT_IMAGE_VALUE` everywhere (no image content)."""
    return torch.full_like(image, CONSTANT_IMAGE_VALUE)


def patch_transform(
    label_channel: bool,
    pad_to: Sequence[int] | None = None,
    augment: mt.Transform | None = None,
    image: str | None = None,
) -> mt.Compose:
    """A classifier's input from a TLCR patch: ``{"image": path[, "region": label path]}`` → ``image`` (C, X, Y, Z).

    Loads the patch as float32 in its stored intensity range, zero-pads it to ``pad_to``, applies
    ``augment`` (training only), with ``image="constant"`` replaces the image by a constant and, with
    ``label_channel``, appends the label patch as the last channel.
    :class:`ClsDataModule` (every split) and ``neonet predict-case`` (from a runs folder or a bundle) use it.

    Args:
        label_channel: append the label patch (item key ``region``) as a second channel.
        pad_to: zero-pad to at least this size; None keeps the patch size.
        augment: a transform of the ``image`` (and ``region``) keys run after padding, or None.
        image: None keeps the image patch; ``constant`` sets every image voxel to
            :data:`CONSTANT_IMAGE_VALUE` after augmentation, so nothing of the image reaches the network.
    """
    if image is not None and image not in IMAGE_MODES:
        raise ValueError(f"image must be None (the image patch) or one of {', '.join(IMAGE_MODES)}, got {image!r}")
    keys = ["image", "region"] if label_channel else ["image"]
    steps: list[Any] = [
        mt.LoadImaged(keys=keys, reader="NibabelReader", image_only=True, dtype=np.float32),
        mt.EnsureChannelFirstd(keys=keys, channel_dim="no_channel"),
    ]
    if pad_to:
        steps.append(mt.SpatialPadd(keys=keys, spatial_size=tuple(int(s) for s in pad_to)))
    if augment is not None:
        steps.append(augment)
    if image == "constant":
        steps.append(mt.Lambdad(keys=["image"], func=constant_image))
    if label_channel:
        steps += [mt.ConcatItemsd(keys=keys, name="image"), mt.DeleteItemsd(keys=["region"])]
    steps.append(mt.EnsureTyped(keys=["image"], track_meta=False))
    return mt.Compose(steps).flatten()


class ClsDataModule(FoldDataModule):
    """PNI classification data of one fold (TLCR patches, optionally plus synthetic patches).

    Args:
        use_synthetic: add the fold's synthetic patches (``synthetic/fold<k>/manifest.csv``) to training.
        max_synthetic: use at most this many synthetic patches (the first rows); None uses all.
        cache_rate: fraction of loaded patches kept in memory.
        augment: apply torchio MRI augmentation to training patches.
        aug_prob: probability of each augmentation.
        intensity_aug: include bias-field and gamma augmentation. They change the intensity
            ratios between tissues, which liver-normalised patches (``neonet crop --liver_level``)
            are meant to keep; on the demo's development cohort turning them off did not help.
        flip_axes: axes flipped with probability 0.5 during training (0 = left-right in RAS).
        pad_to: zero-pad patches to at least this size (e.g. ``[32, 32, 32]`` for DenseNet-121 on
            32x32x16 demo patches); None keeps them as they are.
        predict_split: cases that ``predict`` scores: ``test``, ``val``, ``train`` or ``all``.
        label_channel: append each patch's TLCR label patch (0 background, 1 liver, 2 peritumoral
            shell, 3 tumour) as a second input channel, spatially augmented with the image. PattenNet
            with ``region_labels`` uses it to pool over the peritumoral region; a baseline given
            ``in_channels: 2`` sees it as input. Synthetic patches need their conditioning mask
            (the ``label`` column of the synthetic manifest).
        patches: the TLCR patch set to read: None is the experiment's ``patches/`` (from the masks
            ``neonet crop`` was given, NeoSeg's in the demo); a name reads ``patches_<name>/``, made by
            ``neonet crop --patches <name>``, e.g. ``manual`` (``--source manual``) for the
            manual-mask control, whose test patients' patches are cut and labelled with their manual
            masks: a diagnostic control, not a deployable model (docs/controls.md).
        image: None feeds the image patch; ``constant`` replaces it by a constant
            (:data:`CONSTANT_IMAGE_VALUE`) in every split, so a network given ``label_channel`` sees
            only the label patch: the image-free control of a mask-reading classifier
            (docs/controls.md). Needs ``label_channel``.
        synthetic_set: the synthetic set ``use_synthetic`` reads: None or ``synthetic``
            (``synthetic/fold<k>``), or ``synthetic_<name>`` of ``neonet synthesize --name`` (e.g.
            ``synthetic_both``, PNI+ and PNI- patches: ``--classes both``).
        roundtrip_real: replace each real **training** patch by its round trip through the fold's
            autoencoder (encode, decode the posterior mean; cached once per fold in
            ``roundtrip/fold<k>/``), so that training patches of both classes are decoded like the
            synthetic ones and "decoded" no longer means PNI+. Validation and test patches stay real
            and undecoded, as the model meets them in use (docs/method.md, "synthetic confound").
            None or false: off.
        **kwargs: the cohort, the fold, ``batch_size`` (training, validation and test) and
            ``num_workers`` (:class:`~neonet.data.base.FoldDataModule`).
    """

    def __init__(
        self,
        *,
        use_synthetic: bool = False,
        max_synthetic: int | None = None,
        cache_rate: float = 1.0,
        augment: bool = True,
        aug_prob: float = 0.3,
        intensity_aug: bool = True,
        flip_axes: Sequence[int] = (0,),
        pad_to: Sequence[int] | None = None,
        predict_split: str = "test",
        label_channel: bool = False,
        patches: str | None = None,
        image: Literal["constant"] | None = None,
        synthetic_set: str | None = None,
        roundtrip_real: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if predict_split not in ("test", "val", "train", "all"):
            raise ValueError(f"predict_split must be test, val, train or all, not {predict_split!r}")
        if image is not None and image not in IMAGE_MODES:
            raise ValueError(f"image must be None (the image patch) or one of {', '.join(IMAGE_MODES)}, got {image!r}")
        if image == "constant" and not label_channel:
            raise ValueError(
                "image: constant leaves the network no input but the label patch, and label_channel is false: "
                "set label_channel: true (the image-free control of a classifier that reads the label patch)"
            )
        self.workspace = Workspace(self.runs_dir, self.experiment, patches)  # the one path that differs: patches_dir
        self.patches = patches
        self.image = image
        self.use_synthetic = bool(use_synthetic)
        self.max_synthetic = max_synthetic
        self.cache_rate = float(cache_rate)
        self.augment = bool(augment)
        self.aug_prob = float(aug_prob)
        self.intensity_aug = bool(intensity_aug)
        self.flip_axes = tuple(int(a) for a in flip_axes)
        self.pad_to = tuple(int(s) for s in pad_to) if pad_to else None
        self.predict_split = predict_split
        self.label_channel = bool(label_channel)
        self.synthetic_set = check_synthetic_name(synthetic_set or SYNTHETIC)
        self.roundtrip_real = bool(roundtrip_real)
        self._items: dict[str, list[dict[str, Any]]] = {}

    # ------------------------------------------------------------------ items
    def real_items(self, case_ids: Sequence[str], split: str) -> list[dict[str, Any]]:
        """Items of the real patches of ``case_ids`` (cases without a usable patch are skipped, with a warning).

        Raises:
            MissingLabelPatchError: with ``label_channel``, a patch has no label patch (``neonet crop --source none``).
        """
        records = patch_records(self.workspace, list(case_ids), require_pni=True)
        skipped = sorted(set(case_ids) - {r.case_id for r in records})
        if skipped:
            log.warning(
                "fold %d %s: %d case(s) have no TLCR patch and are left out: %s",
                self.fold,
                split,
                len(skipped),
                ", ".join(skipped[:10]),
            )
        items: list[dict[str, Any]] = []
        for r in records:
            item: dict[str, Any] = {
                "image": str(r.image),
                "label": float(cast(int, r.pni)),  # patch_records(require_pni=True) leaves no None
                "case_id": r.case_id,
                "patient_id": r.patient_id,
                "synthetic": 0,
            }
            if self.label_channel:  # patches cut without a mask (crop --source none) serve only without it
                item["region"] = str(r.label_path("the classifier's label channel (`label_channel: true`)"))
            items.append(item)
        return items

    def items(self, split: str) -> list[dict[str, Any]]:
        """Items of ``train`` (real + synthetic if enabled), ``val``, ``test`` (real only) or ``predict``."""
        if split not in self._items:
            s = self.split
            if split == "train":
                items = self.real_items(s.train, "train")
                if self.roundtrip_real:
                    items = self.roundtrip_items(items)
                if self.use_synthetic:
                    all_ids = [c.case_id for c in self.all_cases]
                    syn = read_synthetic(self.workspace, self.fold, s.train, all_ids, self.synthetic_set)
                    if self.max_synthetic is not None:
                        syn = syn[: self.max_synthetic]
                    log.info("fold %d: %d real + %d synthetic training patches", self.fold, len(items), len(syn))
                    if self.label_channel and any("region" not in i for i in syn):
                        raise DataError(
                            f"fold {self.fold}: label_channel needs each synthetic patch's label patch, but "
                            f"{self.workspace.synthetic_manifest(self.fold, self.synthetic_set)} has rows without a `label` "
                            "path; re-run `neonet synthesize --force` or set --data.label_channel=false"
                        )
                    if not self.label_channel:  # real items carry no label patch then: one set of keys per batch
                        syn = [{k: v for k, v in i.items() if k != "region"} for i in syn]
                    items = items + syn
            elif split in ("val", "test"):
                items = self.real_items(getattr(s, split), split)
            elif split == "predict":
                ids = {"test": s.test, "val": s.val, "train": s.train, "all": s.train + s.val + s.test}[self.predict_split]
                items = self.real_items(ids, "predict")
            else:
                raise ValueError(f"unknown split {split!r}")
            if not items:
                raise DataError(f"fold {self.fold}: no {split} patches (run `neonet crop` for experiment {self.experiment})")
            self._items[split] = items
        return self._items[split]

    def roundtrip_items(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``items`` (real training patches) with each image replaced by its cached round trip through the
        fold's autoencoder (:func:`neonet.gen.roundtrip.roundtrip_paths`); label patches stay as they are."""
        from neonet.gen.roundtrip import roundtrip_paths

        records = patch_records(self.workspace, [i["case_id"] for i in items], require_pni=True)
        paths = roundtrip_paths(self.workspace, self.fold, records)
        log.info("fold %d: %d real training patches round-tripped through the autoencoder", self.fold, len(items))
        return [dict(item, image=str(paths[item["case_id"]])) for item in items]

    def class_counts(self) -> tuple[int, int]:
        """(negatives, positives) among the training items, synthetic included."""
        labels = [int(i["label"]) for i in self.items("train")]
        return labels.count(0), labels.count(1)

    def check_shapes(self, items: list[dict[str, Any]]) -> tuple[int, ...]:
        """The common patch shape of ``items`` (NIfTI headers only); DataError when they differ."""
        shapes: dict[tuple[int, ...], list[str]] = {}
        for item in items:
            shape = tuple(int(d) for d in cast(nib.Nifti1Image, nib.load(item["image"])).shape[:3])
            shapes.setdefault(shape, []).append(item["case_id"])
        if len(shapes) > 1:
            parts = "; ".join(f"{k}: {len(v)} (e.g. {v[:3]})" for k, v in shapes.items())
            raise DataError(f"fold {self.fold}: patches differ in shape ({parts}); re-crop or re-synthesise at one size")
        return next(iter(shapes))

    def upstream(self) -> dict[str, Any]:
        """Provenance of the fold's inputs (patch manifest, synthetic manifest), for ``artifact.json``."""
        ws = self.workspace
        out: dict[str, Any] = {"patches_manifest": ws.checkpoint_record(ws.patches_manifest)}
        control = self.control()
        if control:
            out["control"] = control
        if self.roundtrip_real:
            self.items("train")  # the cache exists (and is current) from here on
            out["roundtrip"] = ws.checkpoint_record(ws.roundtrip_record(self.fold))
        if self.use_synthetic:
            manifest = ws.synthetic_manifest(self.fold, self.synthetic_set)
            syn = [i for i in self.items("train") if i["synthetic"]]
            out["synthetic"] = {
                "manifest": str(manifest),
                "sha256": sha256_file(manifest),
                "n_used": len(syn),
                "source_cases": sorted({i["patient_id"].removeprefix("syn:") for i in syn}),
            }
        neg, pos = self.class_counts()
        out["train_counts"] = {"negative": neg, "positive": pos}
        return out

    def control(self) -> dict[str, Any]:
        """What makes the fold a control (``artifact.json``'s ``classifier.control``), empty for an ordinary fold.

        ``patches``: the patch set read instead of ``patches/`` with the source of its masks (``manual``
        for the manual-mask control); ``image``: ``constant`` for the image-free control.
        """
        out: dict[str, Any] = {}
        if self.patches is not None:
            from neonet.seg.crop import patch_set_control  # the patch set's record: which masks cut it

            out["patches"] = patch_set_control(self.workspace)
        if self.image is not None:
            out["image"] = self.image
        return out

    # ------------------------------------------------------------------ transforms
    def transform(self, train: bool) -> mt.Compose:
        """Load the patch as (1, X, Y, Z) float32 in its stored intensity range; training adds augmentation."""
        keys = ["image", "region"] if self.label_channel else ["image"]
        augment = None
        if train and self.augment:  # intensity augmentations touch the image only, spatial ones both
            augment = TorchioAugmentd(
                keys, mri_augmentation(p=self.aug_prob, flip_axes=self.flip_axes, intensity=self.intensity_aug)
            )
        return patch_transform(self.label_channel, self.pad_to, augment, self.image)

    def _dataset(self, split: str, train: bool = False) -> CacheDataset:
        items = self.items(split)
        # copy_cache=False: no transform after the cache boundary changes its input in place (the torchio
        # wrapper works on its own copy; the MONAI dict transforms return new dicts), and deep-copying
        # each cached MetaTensor with its metadata was the largest per-sample cost on small patches.
        return CacheDataset(
            items,
            self.transform(train),
            cache_rate=self.cache_rate,
            num_workers=max(self.num_workers, 1),
            progress=False,
            copy_cache=False,
        )

    def setup(self, stage: str | None = None) -> None:
        """Build the fold's datasets (the split file is written on first use)."""
        if stage in (None, "fit"):
            self.check_shapes(self.items("train") + self.items("val"))
            self.train_ds = self._dataset("train", train=True)
        if stage in (None, "fit", "validate"):
            self.val_ds = self._dataset("val")
        if stage in (None, "test"):
            self.test_ds = self._dataset("test")
        if stage in (None, "predict"):
            self.predict_ds = self._dataset("predict")

    def train_dataloader(self) -> DataLoader:
        """Shuffled training patches; the last incomplete batch is dropped (BatchNorm needs > 1 sample)."""
        return self.loader(self.train_ds, shuffle=True, drop_last=self.drop_last(len(self.train_ds), self.batch_size))

    def val_dataloader(self) -> DataLoader:
        """Real inner-validation patches."""
        return self.loader(self.val_ds)

    def test_dataloader(self) -> DataLoader:
        """Real held-out test patches."""
        return self.loader(self.test_ds)

    def predict_dataloader(self) -> DataLoader:
        """Patches of ``predict_split``."""
        return self.loader(self.predict_ds)


def labels_of(batch: dict[str, Any]) -> torch.Tensor:
    """The batch's labels as a float tensor of shape (B,)."""
    return torch.as_tensor(batch["label"]).float().reshape(-1)
