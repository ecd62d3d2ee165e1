"""``ClsDataModule``: which patches each split gets, and the synthetic-data leakage guards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from neonet.cls import ClsDataModule
from neonet.errors import DataError, MissingUpstreamError
from test_cls_fixtures import cls_datamodule, one_thread, save_nifti, write_patch_cohort, write_synthetic  # noqa: F401


def datamodule(cohort: dict, fold: int = 0, **kwargs) -> ClsDataModule:
    return cls_datamodule(cohort, fold, **kwargs)


@pytest.fixture()
def cohort(tmp_path: Path) -> dict:
    return write_patch_cohort(tmp_path, n=12)


def test_splits_get_the_folds_real_patches(cohort: dict) -> None:
    dm = datamodule(cohort)
    s = dm.split
    for split, ids in (("train", s.train), ("val", s.val), ("test", s.test)):
        items = dm.items(split)
        assert [i["case_id"] for i in items] == list(ids)
        assert all(i["synthetic"] == 0 for i in items)
    assert not set(s.test) & set(s.train + s.val)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 1, 16, 16, 8) and batch["image"].dtype == torch.float32
    assert set(batch["label"].tolist()) <= {0.0, 1.0}


def test_use_synthetic_adds_to_training_only(cohort: dict) -> None:
    real = datamodule(cohort)
    s = real.split
    write_synthetic(cohort["ws"], 0, [i["case_id"] for i in real.items("train") if i["label"] == 1], per_source=2)
    syn = datamodule(cohort, use_synthetic=True)
    train = syn.items("train")
    synthetic = [i for i in train if i["synthetic"]]
    assert synthetic and all(i["label"] == 1.0 and i["case_id"].startswith("syn-") for i in synthetic)
    assert [i for i in train if not i["synthetic"]] == real.items("train")
    for split in ("val", "test", "predict"):
        assert syn.items(split) == real.items(split)
        assert not any(i["synthetic"] for i in syn.items(split))
    neg, pos = syn.class_counts()
    assert pos - real.class_counts()[1] == len(synthetic)
    syn.setup("fit")
    assert len(syn.train_ds) == len(train) and len(syn.val_ds) == len(s.val)
    up = syn.upstream()
    assert up["synthetic"]["n_used"] == len(synthetic) and len(up["synthetic"]["sha256"]) == 64
    assert set(up["synthetic"]["source_cases"]) <= set(s.train)
    # without the label channel (the paper's PattenNet) synthetic items carry the real ones' keys, so a batch mixes them
    assert {frozenset(i) for i in train} == {frozenset(real.items("train")[0])}
    batch = next(iter(syn.loader(syn.train_ds, shuffle=False, batch_size=len(syn.train_ds))))
    assert batch["image"].shape[:2] == (len(train), 1) and batch["synthetic"].sum() == len(synthetic)


@pytest.mark.parametrize("where", ["test", "val", "unknown"])
def test_synthetic_from_a_non_training_case_is_rejected(cohort: dict, where: str) -> None:
    dm = datamodule(cohort)
    s = dm.split
    source = {"test": s.test[0], "val": s.val[0], "unknown": "nobody"}[where]
    write_synthetic(cohort["ws"], 0, [s.train[0], source])
    with pytest.raises(DataError, match="leakage guard"):
        datamodule(cohort, use_synthetic=True).items("train")


def test_synthetic_manifest_of_another_fold_or_missing_is_rejected(cohort: dict) -> None:
    with pytest.raises(MissingUpstreamError, match="synthetic patches of fold 0"):
        datamodule(cohort, use_synthetic=True).items("train")
    dm = datamodule(cohort)
    manifest = write_synthetic(cohort["ws"], 0, [dm.split.train[0]])
    frame = pd.read_csv(manifest)
    frame["fold"] = 1
    frame.to_csv(manifest, index=False)
    with pytest.raises(DataError, match="fold"):
        datamodule(cohort, use_synthetic=True).items("train")
    frame["fold"] = 0
    frame.loc[0, "case_id"] = dm.split.test[0]  # a synthetic id that is a real case id
    frame.to_csv(manifest, index=False)
    with pytest.raises(DataError, match="equal real case ids"):
        datamodule(cohort, use_synthetic=True).items("train")


def test_uncropped_cases_are_left_out_and_shapes_must_agree(cohort: dict) -> None:
    ws = cohort["ws"]
    dm = datamodule(cohort)
    skipped = dm.split.train[0]
    frame = pd.read_csv(ws.patches_manifest, dtype={"case_id": str})
    frame.loc[frame["case_id"] == skipped, ["image", "label", "status"]] = [np.nan, np.nan, "no_tumor_skipped"]
    frame.to_csv(ws.patches_manifest, index=False)
    assert skipped not in [i["case_id"] for i in datamodule(cohort).items("train")]
    other = dm.split.train[1]
    save_nifti(ws.patches_dir / "images" / f"{other}.nii.gz", np.zeros((16, 16, 9), np.float32))
    with pytest.raises(DataError, match="differ in shape"):
        datamodule(cohort).setup("fit")


def test_pad_to_enlarges_small_patches(cohort: dict) -> None:
    dm = datamodule(cohort, pad_to=[16, 16, 16], augment=False)
    dm.setup("test")
    assert next(iter(dm.test_dataloader()))["image"].shape[2:] == (16, 16, 16)


def test_label_channel_appends_the_label_patch_augmented_with_the_image(cohort: dict) -> None:
    ws = cohort["ws"]
    rng = np.random.default_rng(0)
    for path in sorted((ws.patches_dir / "labels").glob("*.nii.gz")):
        label = rng.integers(0, 4, size=(16, 16, 8)).astype(np.uint8)
        save_nifti(path, label)
        save_nifti(ws.patches_dir / "images" / path.name, label.astype(np.float32) / 3.0)
    plain = datamodule(cohort, label_channel=True, augment=False)
    plain.setup("fit")
    batch = next(iter(plain.val_dataloader()))
    assert batch["image"].shape[1] == 2
    torch.testing.assert_close(batch["image"][:, 0] * 3.0, batch["image"][:, 1])
    flipped = datamodule(cohort, label_channel=True, augment=True, aug_prob=0.0, flip_axes=[0, 1])
    flipped.setup("fit")
    x = next(iter(flipped.train_dataloader()))["image"]
    assert set(torch.unique(x[:, 1]).tolist()) <= {0.0, 1.0, 2.0, 3.0}  # nearest-neighbour for the label
    agree = ((x[:, 0] * 3.0).round() == x[:, 1]).float().mean()
    assert agree > 0.8, agree  # same flips/affine for image and label (interpolation blurs only edges)


def test_training_epochs_leave_the_cache_intact(cohort: dict) -> None:
    """The cache is not copied per sample (copy_cache=False), so augmentation must never write into it."""
    dm = datamodule(cohort, label_channel=True, augment=True, aug_prob=1.0, flip_axes=[0, 1, 2])
    dm.setup("fit")
    cached = [{k: v.clone() for k, v in item.items() if isinstance(v, torch.Tensor)} for item in dm.train_ds._cache]
    assert cached and all(item for item in cached)
    batches = [b["image"] for _ in range(3) for b in dm.train_dataloader()]
    assert len(batches) >= 3
    for before, item in zip(cached, dm.train_ds._cache):
        for key, value in before.items():
            assert torch.equal(item[key], value), key
