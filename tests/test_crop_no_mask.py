"""``neonet crop --source none``: volumes that come already cropped around the lesion, without masks.

Each volume's centre is cut or padded to the patch size (status ``no_mask_centred``, no label patch); classifiers
without a label channel train on such patches, and whatever needs a label patch says so, naming the case. A crop
that makes no patch at all fails instead of leaving an empty manifest behind.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from neonet.cls import ClsDataModule
from neonet.data.patches import MissingLabelPatchError, patch_records
from neonet.data.transforms import load_canonical
from neonet.gen.patch_data import load_patch
from neonet.run.cli import main
from neonet.workspace import Workspace

SPACING = ["--spacing", "7,7,12"]  # the phantom's own grid: 48 x 48 x 16 voxels
PATCH = ["--patch_size", "32,32,24"]  # cut in-plane, padded along z


@pytest.fixture(scope="module")
def image_only(phantom_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The phantom cohort as an image-only manifest (empty `label` column), PNI labels kept."""
    frame = pd.read_csv(phantom_cohort)
    frame["image"] = [str(phantom_cohort.parent / p) for p in frame["image"]]
    frame["label"] = ""
    out = tmp_path_factory.mktemp("image_only") / "cases.csv"
    frame.to_csv(out, index=False)
    return out


@pytest.fixture(scope="module")
def cropped(image_only: Path, tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    runs = tmp_path_factory.mktemp("no_mask") / "runs"
    args = ["crop", "--cases", str(image_only), "--experiment", "nm", "--runs_dir", str(runs), "--source", "none"]
    assert main([*args, *SPACING, *PATCH]) == 0
    return Workspace(runs, "nm")


def test_source_none_cuts_each_volume_centre_without_a_label_patch(image_only: Path, cropped: Workspace) -> None:
    ws = cropped
    manifest = pd.read_csv(ws.patches_manifest, dtype=str, keep_default_na=False)
    assert len(manifest) == 12 and set(manifest["status"]) == {"no_mask_centred"}
    assert (manifest["label"] == "").all() and (manifest["source"] == "none").all()
    assert not any((ws.patches_dir / "labels").glob("*.nii.gz"))
    row = manifest.iloc[0]
    assert [int(row[f"pad_before_{a}"]) for a in "xyz"] == [0, 0, 4] and [int(row[f"box_start_{a}"]) for a in "xyz"] == [8, 8, -4]
    # the patch is the canonical volume's centre, padded with its minimum along z, on the volume's world grid
    volume, _, affine = load_canonical(str(pd.read_csv(image_only)["image"][0]), None, (7.0, 7.0, 12.0))
    patch = nib.load(ws.patches_dir / row["image"])
    expected = np.pad(volume[8:40, 8:40, :], ((0, 0), (0, 0), (4, 4)), constant_values=volume.min())
    np.testing.assert_allclose(np.asarray(patch.dataobj), expected, atol=1e-6)
    np.testing.assert_allclose(patch.affine[:3, 3], affine[:3, :3] @ [8, 8, -4] + affine[:3, 3], atol=1e-4)
    assert ws.figure("tlcr_patches").is_file()  # the patch grid draws label-free patches too


def test_classifier_data_reads_label_free_patches(image_only: Path, cropped: Workspace) -> None:
    ws = cropped
    common = {"cases": str(image_only), "experiment": "nm", "runs_dir": str(ws.runs_dir), "folds": 3, "batch_size": 4}
    dm = ClsDataModule(**common, augment=False)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 1, 32, 32, 24) and set(batch["label"].tolist()) <= {0.0, 1.0}
    # where a label patch is really needed, the error names the manifest, the case and the way on
    with pytest.raises(MissingLabelPatchError, match=r"manifest\.csv: case phantom_\d+: the patch has no label patch"):
        ClsDataModule(**common, label_channel=True).items("train")
    record = patch_records(ws, [dm.split.train[0]])[0]
    assert record.label is None and load_patch(record, with_label=False)["image"].shape == (1, 32, 32, 24)
    with pytest.raises(MissingLabelPatchError, match="--source manual"):
        load_patch(record, with_label=True)


def test_a_crop_without_masks_or_patches_fails_pointing_at_source_none(
    image_only: Path, phantom_cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    base = ["crop", "--experiment", "e", "--runs_dir", str(runs), *SPACING, *PATCH]
    assert main([*base, "--cases", str(image_only), "--source", "manual"]) == 2
    err = capsys.readouterr().err
    assert "no case has a manual label" in err and "--source none" in err and "--source predicted" in err
    assert not runs.exists()  # refused before anything was written
    assert main([*base, "--cases", str(image_only), "--source", "none", "--liver_level", "0.75"]) == 2
    assert "--source none has none: set --liver_level null" in capsys.readouterr().err
    # masks that hold neither liver nor tumour: every case refused, the manifest written, the exit non-zero
    frame = pd.read_csv(phantom_cohort)
    for i, rel in enumerate(frame["label"]):
        img = nib.load(phantom_cohort.parent / rel)
        path = tmp_path / f"empty_{i}.nii.gz"
        nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine), path)
        frame.loc[i, "label"] = str(path)
    frame["image"] = [str(phantom_cohort.parent / p) for p in frame["image"]]
    frame.head(3).to_csv(tmp_path / "empty.csv", index=False)
    assert main([*base, "--cases", str(tmp_path / "empty.csv"), "--source", "manual"]) == 2
    err = capsys.readouterr().err
    assert "none of the 3 case(s)" in err and "no_liver_no_tumor 3" in err and "--source none" in err
    manifest = pd.read_csv(Workspace(runs, "e").patches_manifest, dtype=str, keep_default_na=False)
    assert set(manifest["status"]) == {"no_liver_no_tumor"}
