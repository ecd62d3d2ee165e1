"""`neonet crop` on a tiny NIfTI cohort: manifest, patch files, world placement, re-runs, errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from neonet.errors import MissingUpstreamError, NeonetError
from neonet.run.provenance import OutOfDateError, UnreadableRecordError
from neonet.run.wandb_privacy import REDACTED
from neonet.seg.crop import MANIFEST_COLUMNS, CropFailedError, crop
from neonet.workspace import Workspace

SHAPE = (40, 40, 16)
SPACING = (2.0, 2.0, 4.0)
PATCH = (16, 16, 8)
CENTRE = np.array(PATCH) // 2
KIDNEY = 5  # an "other" label value, mapped to background

REQUIRED = [
    "case_id", "patient_id", "pni", "image", "label", "source", "status", "n_tumors",
    "tumor_volume_ml", "tumor_volume_total_ml", "centroid_x", "centroid_y", "centroid_z",
    "box_start_x", "box_start_y", "box_start_z", "box_stop_x", "box_stop_y", "box_stop_z",
    "pad_before_x", "pad_before_y", "pad_before_z", "pad_after_x", "pad_after_y", "pad_after_z",
    "fits", "spacing_x", "spacing_y", "spacing_z", "patch_x", "patch_y", "patch_z", "shell_mm",
    "shell_region",
]  # fmt: skip


def _box(mask, lo, hi, value):
    mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = value


def _write_case(folder: Path, cid: str, tumour_lo=None, tumour_hi=None, flip_x=False, seed=0):
    rng = np.random.default_rng(seed)
    label = np.zeros(SHAPE, np.uint8)
    _box(label, (4, 4, 2), (32, 30, 13), 1)
    _box(label, (34, 34, 3), (38, 38, 8), KIDNEY)
    if tumour_lo is not None:
        _box(label, tumour_lo, tumour_hi, 2)
    image = (rng.random(SHAPE) * 100 + label * 50).astype(np.float32)
    affine = np.diag([*SPACING, 1.0])
    affine[:3, 3] = (-40.0, 10.0, 25.0)
    if flip_x:  # LAS storage of the same anatomy: voxel i holds what RAS voxel (n-1-i) holds
        image, label = image[::-1].copy(), label[::-1].copy()
        affine[0, 0] = -SPACING[0]
        affine[0, 3] = -40.0 + SPACING[0] * (SHAPE[0] - 1)
    nib.save(nib.Nifti1Image(image, affine), str(folder / f"{cid}_img.nii.gz"))
    nib.save(nib.Nifti1Image(label, affine), str(folder / f"{cid}_seg.nii.gz"))
    return label, affine


def _world_tumour_centroid(label, affine):
    ijk = np.argwhere(label == 2).mean(axis=0)
    return (affine @ np.r_[ijk, 1.0])[:3]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cohort")
    truth = {
        "c1": _write_case(folder, "c1", (14, 14, 6), (19, 18, 9)),
        "c2": _write_case(folder, "c2"),  # no tumour
        "c3": _write_case(folder, "c3", (0, 0, 0), (4, 3, 2)),  # at a volume corner
        "c4": _write_case(folder, "c4", (22, 10, 4), (27, 14, 7), flip_x=True),  # non-RAS affine
    }
    (folder / "c5_img.nii.gz").write_bytes(b"this is not a nifti file")
    (folder / "c5_seg.nii.gz").write_bytes(b"nor is this")
    with open(folder / "cases.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case_id", "image", "label", "pni", "patient_id"])
        for i, cid in enumerate(["c1", "c2", "c3", "c4", "c5"]):
            writer.writerow([cid, f"{cid}_img.nii.gz", f"{cid}_seg.nii.gz", i % 2, f"p{cid}"])
    return folder / "cases.csv", truth


def _crop(cases, runs, **kw):
    """Crop the cohort; c5 (not NIfTI) always fails, so crop raises after writing the manifest, naming c5."""
    args = dict(experiment="t", runs_dir=runs, spacing=SPACING, patch_size=PATCH, shell_mm=4.0, other=[KIDNEY])
    args.update(kw)
    with pytest.raises(CropFailedError) as info:
        crop(cases, **args)
    assert list(info.value.failed) == ["c5"] and "case c5: error: " in str(info.value)
    return info.value.manifest


def _manifest(path):
    return pd.read_csv(path, dtype=str, keep_default_na=False).set_index("case_id")


def test_crop_writes_patches_and_manifest(cohort, tmp_path):
    cases, truth = cohort
    manifest_path = _crop(cases, tmp_path / "runs")
    ws = Workspace(tmp_path / "runs", "t")
    assert manifest_path == ws.patches_manifest and manifest_path.is_file()
    assert ws.crop_config == ws.patches_dir / "crop_config.json" and ws.crop_config.is_file()
    assert ws.figure("tlcr_patches").stat().st_size > 1000  # drawn before the failed case c5 is raised
    frame = _manifest(manifest_path)
    assert list(frame.reset_index().columns)[: len(REQUIRED)] == REQUIRED
    assert list(frame.reset_index().columns) == MANIFEST_COLUMNS
    assert frame["status"].to_dict() == {
        "c1": "ok",
        "c2": "no_tumor_liver_fallback",
        "c3": "ok",
        "c4": "ok",
        "c5": frame.loc["c5", "status"],
    }
    assert frame.loc["c5", "status"].startswith("error: ")
    assert frame.loc["c5", "image"] == "" and frame.loc["c5", "label"] == ""
    assert frame.loc["c1", "n_tumors"] == "1" and frame.loc["c2", "n_tumors"] == "0"
    assert frame.loc["c1", "patient_id"] == "pc1" and frame.loc["c2", "pni"] == "1"
    assert float(frame.loc["c1", "tumor_volume_ml"]) == pytest.approx(5 * 4 * 3 * 16 / 1000)
    assert frame.loc["c1", "image"] == "images/c1.nii.gz" and frame.loc["c1", "label"] == "labels/c1.nii.gz"
    assert frame.loc["c1", "fits"] == "True" and frame.loc["c2", "fits"] == ""

    for cid in ("c1", "c2", "c3", "c4"):
        img = nib.load(str(manifest_path.parent / frame.loc[cid, "image"]))
        lab = nib.load(str(manifest_path.parent / frame.loc[cid, "label"]))
        assert img.shape == PATCH and lab.shape == PATCH
        assert img.get_data_dtype() == np.float32 and lab.get_data_dtype() == np.uint8
        values = set(np.unique(np.asarray(lab.dataobj)).tolist())
        assert values <= {0, 1, 2, 3}
        np.testing.assert_allclose(img.affine, lab.affine)
        if cid == "c2":
            assert values <= {0, 1} and np.asarray(lab.dataobj)[tuple(CENTRE)] == 1
            continue
        label_patch = np.asarray(lab.dataobj)
        label, affine = truth[cid]
        assert (label_patch == 3).sum() == (label == 2).sum()  # every tumour voxel is in the patch
        assert (label_patch == 2).any()  # the shell
        if cid in ("c1", "c4"):
            centroid_in_patch = np.argwhere(label_patch == 3).mean(axis=0)
            assert np.all(np.abs(centroid_in_patch - CENTRE) <= 1.0)
            # the patch affine places the centre voxel at the tumour's world position
            world_centre = (lab.affine @ np.r_[CENTRE, 1.0])[:3]
            world_tumour = _world_tumour_centroid(label, affine)
            assert np.all(np.abs(world_centre - world_tumour) <= np.array(SPACING))

    # the corner case is padded, and the padding is recorded
    c3 = frame.loc["c3"]
    assert int(c3["pad_before_x"]) > 0 and int(c3["pad_before_y"]) > 0 and int(c3["pad_before_z"]) > 0
    assert int(c3["box_start_x"]) < 0 and int(c3["box_stop_x"]) - int(c3["box_start_x"]) == PATCH[0]
    # the non-RAS case is stored on the canonical (RAS) grid
    c4 = nib.load(str(manifest_path.parent / frame.loc["c4", "image"]))
    assert nib.aff2axcodes(c4.affine) == ("R", "A", "S")


def test_rerun_is_noop_and_settings_need_force(cohort, tmp_path):
    cases, _ = cohort
    runs = tmp_path / "runs"
    manifest_path = _crop(cases, runs)
    files = sorted(manifest_path.parent.rglob("*.nii.gz")) + [manifest_path, manifest_path.parent / "crop_config.json"]
    assert len(files) == 2 * 4 + 2
    before = {f: f.stat().st_mtime_ns for f in files}

    _crop(cases, runs)  # same settings: nothing rewritten
    assert {f: f.stat().st_mtime_ns for f in files} == before

    with pytest.raises(OutOfDateError) as info:
        _crop(cases, runs, shell_mm=6.0)
    assert str(info.value) == (
        f"the TLCR patch folder at {manifest_path.parent} was made from other settings or inputs than this command's: "
        "setting shell_mm: 4.0 (stored) -> 6.0 (now).\nRe-run with --force to replace it (or write to another --experiment)."
    )
    assert {f: f.stat().st_mtime_ns for f in files} == before

    _crop(cases, runs, shell_mm=6.0, force=True)
    patch = files[0]
    assert patch.stat().st_mtime_ns != before[patch]
    assert _manifest(manifest_path).loc["c1", "shell_mm"] == "6.0"

    # the shell region is a setting too; a crop config written before it existed reads as shell_region "all"
    with pytest.raises(NeonetError, match=r"setting shell_region: 'all' \(stored\) -> 'liver' \(now\)"):
        _crop(cases, runs, shell_mm=6.0, shell_region="liver")
    config = manifest_path.parent / "crop_config.json"
    record = json.loads(config.read_text(encoding="utf-8"))
    old_format = {k: record[k] for k in ("cases", "experiment", "runs_dir")} | record["settings"]  # before neonet.run.provenance
    assert old_format.pop("shell_region") == "all"
    config.write_text(json.dumps(old_format))
    pd.read_csv(manifest_path, dtype=str, keep_default_na=False).drop(columns="shell_region").to_csv(manifest_path, index=False)
    kept = {f: f.stat().st_mtime_ns for f in files if f not in (config, manifest_path)}
    _crop(cases, runs, shell_mm=6.0)  # no patch rewritten; the config (now a current record) and the manifest gain the key
    assert {f: f.stat().st_mtime_ns for f in files if f not in (config, manifest_path)} == kept
    assert json.loads(config.read_text(encoding="utf-8")) == record
    assert _manifest(manifest_path).loc["c1", "shell_region"] == "all"

    # so is the tumour shrink (a record without it reads as 0, the crop it was made with); a negative depth is refused
    with pytest.raises(NeonetError, match=r"setting tumor_shrink_mm: 0.0 \(stored\) -> 2.0 \(now\)"):
        _crop(cases, runs, shell_mm=6.0, tumor_shrink_mm=2.0)
    with pytest.raises(NeonetError, match=r"--tumor_shrink_mm is a depth in mm, 0 or more, got -1.0"):
        crop(cases, experiment="t", runs_dir=runs, tumor_shrink_mm=-1.0)
    assert {f: f.stat().st_mtime_ns for f in files if f not in (config, manifest_path)} == kept

    # "skip" leaves the tumour-free case without patch files
    _crop(cases, runs, shell_mm=6.0, no_tumor="skip", force=True)
    frame = _manifest(manifest_path)
    assert frame.loc["c2", "status"] == "no_tumor_skipped"
    assert frame.loc["c2", "image"] == "" and not (manifest_path.parent / "images" / "c2.nii.gz").exists()


def test_predicted_source(cohort, tmp_path):
    cases, truth = cohort
    runs = tmp_path / "runs"
    ws = Workspace(runs, "t")
    with pytest.raises(MissingUpstreamError, match="neonet cv --config"):
        _crop(cases, runs, source="predicted")

    # predicted masks are already in project convention (0/1/2), in each input's own space
    for cid in ("c1", "c2", "c3", "c4", "c5"):
        ws.seg_predictions_dir.mkdir(parents=True, exist_ok=True)
        if cid in truth:
            label, affine = truth[cid]
            pred = np.where(label == KIDNEY, 0, label).astype(np.uint8)
            nib.save(nib.Nifti1Image(pred, affine), str(ws.seg_prediction(cid)))
        else:
            ws.seg_prediction(cid).write_bytes(b"broken")
    frame = _manifest(_crop(cases, runs, source="predicted", other=[]))
    assert set(frame["source"]) == {"predicted"}
    assert frame.loc["c1", "status"] == "ok" and frame.loc["c4", "status"] == "ok"
    assert frame.loc["c5", "status"].startswith("error: ")


def test_liver_level_normalises_each_case_and_is_a_setting(cohort, tmp_path):
    cases, _ = cohort
    runs = tmp_path / "runs"
    frame = _manifest(_crop(cases, runs, liver_level=0.5, liver_region="patch"))
    patches = runs / "t" / "patches"
    for cid in ("c1", "c3", "c4"):
        image = np.asarray(nib.load(patches / frame.loc[cid, "image"]).dataobj)
        label = np.asarray(nib.load(patches / frame.loc[cid, "label"]).dataobj)
        assert float(frame.loc[cid, "intensity_scale"]) != 1.0 and frame.loc[cid, "intensity_reference"] == "patch"
        assert 0.4 < np.median(image[label == 1]) < 0.6 and image.max() <= 1.0
    assert frame.loc["c5", "status"].startswith("error")
    config = json.loads((patches / "crop_config.json").read_text(encoding="utf-8"))
    assert config["settings"]["liver_level"] == 0.5 and config["settings"]["liver_region"] == "patch"
    with pytest.raises(NeonetError, match="liver_level"):
        _crop(cases, runs)  # back to the volume scaling: a changed setting needs --force
    assert _manifest(_crop(cases, runs, force=True)).loc["c1", "intensity_scale"] == "1.0"
    with pytest.raises(NeonetError, match=r"--liver_level must be in \(0, 1\]"):
        _crop(cases, runs, liver_level=1.5, force=True)


def test_a_config_of_before_provenance_records_is_current_and_a_corrupt_one_needs_force(cohort, tmp_path):
    """A ``crop_config.json`` as neonet wrote it before ``neonet.run.provenance`` (settings beside the command's
    cases, experiment and runs folder; no liver or shell-region settings yet) is read, not re-cropped."""
    cases, _ = cohort
    runs = tmp_path / "runs"
    manifest_path = _crop(cases, runs)
    ws = Workspace(runs, "t")
    old_format = {
        "cases": str(cases),
        "experiment": "t",
        "runs_dir": str(runs),
        "source": "manual",
        "spacing": list(SPACING),
        "patch_size": list(PATCH),
        "shell_mm": 4.0,
        "no_tumor": "liver",
        "liver": [1],
        "tumor": [2],
        "other": [KIDNEY],
    }
    ws.crop_config.write_text(json.dumps(old_format, indent=2))
    patches = sorted(manifest_path.parent.rglob("*.nii.gz")) + [manifest_path]
    before = {f: f.stat().st_mtime_ns for f in patches}
    _crop(cases, runs)
    assert {f: f.stat().st_mtime_ns for f in patches} == before  # nothing cropped again
    record = json.loads(ws.crop_config.read_text(encoding="utf-8"))
    assert record["provenance"] == 1 and record["cases"] == str(cases)
    settings = {k: v for k, v in old_format.items() if k not in ("cases", "experiment", "runs_dir")}
    assert record["settings"] == settings | {
        "liver_level": None,
        "liver_region": None,
        "shell_region": "all",
        "tumor_shrink_mm": 0.0,
    }

    ws.crop_config.write_text(ws.crop_config.read_text(encoding="utf-8")[:40])  # a truncated record
    with pytest.raises(
        UnreadableRecordError,
        match=r"crop_config\.json: unreadable record of the TLCR patch folder "
        r"\(truncated or not JSON\).*Re-run with --force",
    ):
        _crop(cases, runs)
    assert {f: f.stat().st_mtime_ns for f in patches} == before
    _crop(cases, runs, force=True)
    assert json.loads(ws.crop_config.read_text(encoding="utf-8")) == record


def test_crop_logs_the_patches_with_the_seg_models_to_wandb(cohort, tmp_path, monkeypatch, wandb_home):
    """``neonet crop --source predicted`` writes a W&B run ``crop`` that logs the patches dataset artifact (the one a
    later stage declares) and declares every NeoSeg fold model as its input."""
    from neonet.run.atomic import write_json
    from neonet.run.wandb_run import patches_artifact
    from test_wandb import offline_runs, read_run

    monkeypatch.setenv("WANDB_MODE", "offline")
    cases, truth = cohort
    runs = tmp_path / "runs"
    ws = Workspace(runs, "t")
    ws.seg_predictions_dir.mkdir(parents=True)
    for cid, (label, affine) in truth.items():
        nib.save(nib.Nifti1Image(np.where(label == KIDNEY, 0, label).astype(np.uint8), affine), str(ws.seg_prediction(cid)))
    ws.seg_prediction("c5").write_bytes(b"broken")
    for fold in (0, 1):
        ws.checkpoint_dir("seg", fold).mkdir(parents=True)
        ws.best_checkpoint("seg", fold).write_bytes(f"seg fold {fold}".encode())
        write_json(ws.artifact_path("seg", fold), {"stage": "seg", "fold": fold, "train_cases": ["c1"]})
    _crop(cases, runs, source="predicted", other=[])  # c5 fails: the manifest (and its W&B dataset) is still written

    run = read_run(offline_runs(ws.wandb_run_dir("crop"))[0])
    assert (run["name"], run["tags"]) == ("crop", ["t", "crop", "all"])
    assert run["config"]["source"] == "predicted" and run["config"]["shell_mm"] == 4.0
    assert set(run["used"]) == {"t-seg-fold0", "t-seg-fold1"}
    assert all(u["metadata"]["train_cases"] == REDACTED for u in run["used"].values())
    logged = run["logged"]["t-patches"]
    assert logged["type"] == "dataset" and logged["files"] == ["record.json"]
    assert logged["digest"] == patches_artifact(ws).manifest.digest()  # what a later stage declares
    assert set(logged["metadata"]) == {"experiment", "dataset", "fold", "manifest_sha256"}  # no case ids
