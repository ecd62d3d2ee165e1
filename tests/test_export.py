"""``neonet export`` and ``neonet predict-case --bundle`` on the tiny trained experiment of ``conftest.py``.

The bundle is exported from a copy of the runs folder that is deleted before the bundle predicts, so
the bundle cannot lean on the runs tree; its predictions are compared with ``predict-case --experiment``
on the original runs folder.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from neonet.run.atomic import sha256_file, write_json
from neonet.run.cli import main
from neonet.workspace import BundlePaths
from test_cls_fixtures import one_thread  # noqa: F401  (autouse: tiny convolutions on one thread)

FOLDS = "[0,1]"


@pytest.fixture(scope="module")
def bundle(trained_experiment: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A bundle of seg folds 0-1 and PattenNet folds 0-1, exported from a runs copy that no longer exists."""
    root = tmp_path_factory.mktemp("export")
    runs = root / "runs_copy"
    shutil.copytree(trained_experiment["runs"], runs)
    out = root / "bundle"
    assert main(["export", "--experiment", "test", "--runs_dir", str(runs), "--out", str(out), "--folds", FOLDS]) == 0
    shutil.rmtree(runs)
    return {**trained_experiment, "bundle": out, "root_tmp": root}


def case_files(experiment: dict, case_id: str) -> tuple[Path, Path]:
    row = experiment["cases"].loc[case_id]
    return experiment["root"] / row["image"], experiment["root"] / row["label"]


def predict(image: Path, out: Path, source: list[str], *extra: str) -> dict:
    assert main(["predict-case", str(image), *source, "--out", str(out), *extra]) == 0
    return json.loads((out / "prediction.json").read_text(encoding="utf-8"))


def test_bundle_layout_metadata_and_provenance(bundle: dict) -> None:
    paths = BundlePaths(bundle["bundle"])
    files = sorted(str(p.relative_to(paths.root)) for p in paths.root.rglob("*") if p.is_file())
    assert files == [
        "configs/inference.json",
        "configs/metadata.json",
        "docs/README.md",
        "models/pattennet_fold0.ts",
        "models/pattennet_fold1.ts",
        "models/seg_fold0.ts",
        "models/seg_fold1.ts",
    ]
    meta = json.loads(paths.metadata.read_text(encoding="utf-8"))
    assert meta["version"] == "1.0.0" and meta["experiment"] == "test" and "git_sha" in meta and meta["neonet_version"]
    assert set(meta["network_data_format"]["inputs"]) == {"image"}
    assert set(meta["network_data_format"]["outputs"]) == {"pni_probability", "segmentation"}
    diffs = meta["export_check"]["max_abs_output_difference"]
    assert sorted(diffs) == ["pattennet_fold0", "pattennet_fold1", "seg_fold0", "seg_fold1"]
    assert all(d <= meta["export_check"]["tolerance"] for d in diffs.values())

    config = json.loads(paths.inference.read_text(encoding="utf-8"))
    seg = config["segmentation"]["settings"]
    assert seg["spacing"] == [7.0, 7.0, 12.0] and seg["divisible"] == 8 and seg["orientation"] == "RAS"
    assert seg["intensity_percentiles"] == [0.5, 99.5] and seg["overlap"] == 0.25
    assert config["crop"]["patch_size"] == [16, 16, 8] and config["crop"]["liver_level"] == 0.75
    assert config["classifier"]["stage"] == "pattennet" and config["classifier"]["settings"]["label_channel"] is False
    ws = bundle["ws"]
    for section, stage in (("segmentation", "seg"), ("classifier", "pattennet")):
        for entry in config[section]["models"]:
            k = entry["fold"]
            assert entry["sha256"] == sha256_file(paths.model(stage, k))
            assert entry["source_checkpoint"]["sha256"] == sha256_file(ws.best_checkpoint(stage, k))
            if stage == "pattennet":
                trained = json.loads((ws.stage_dir(stage, k) / "artifact.json").read_text(encoding="utf-8"))
                assert 0.0 <= entry["val_threshold"] <= 1.0 and trained["status"] in ("complete", "fit-complete")
    text = paths.inference.read_text(encoding="utf-8") + paths.metadata.read_text(encoding="utf-8")
    assert "class_path" not in text and "_target_" not in text  # nothing in the JSON names code to build


def test_bundle_predicts_what_the_experiment_predicts(bundle: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    runs = ["--experiment", "test", "--runs_dir", str(bundle["runs"]), "--folds", FOLDS]
    image, label = case_files(bundle, "phantom_003")
    ref = predict(image, tmp_path / "runs_mask", runs, "--mask", str(label))
    got = predict(image, tmp_path / "bundle_mask", ["--bundle", str(bundle["bundle"])], "--mask", str(label))
    assert got["bundle"] == str(bundle["bundle"]) and got["runs_dir"] is None
    assert got["tumor_found"] and sorted(got["pni_probability_per_fold"]) == ["0", "1"]
    deltas = [abs(got["pni_probability_per_fold"][k] - ref["pni_probability_per_fold"][k]) for k in ("0", "1")]
    assert max(deltas) < 1e-5 and abs(got["pni_probability"] - ref["pni_probability"]) < 1e-5
    assert got["val_threshold_per_fold"] == pytest.approx(ref["val_threshold_per_fold"], abs=1e-7)
    assert got["crop_box"] == ref["crop_box"]
    assert [c["source_checkpoint"]["sha256"] for c in got["classifier"]["checkpoints"]] == [
        c["sha256"] for c in ref["classifier"]["checkpoints"]
    ]
    assert got["saliency"]["error"].startswith("Grad-CAM needs") and not (tmp_path / "bundle_mask" / "saliency.nii.gz").exists()

    # NeoSeg from the bundle: the same mask voxel for voxel, and then the same probabilities
    image, _ = case_files(bundle, "phantom_000")
    ref = predict(image, tmp_path / "runs_seg", runs)
    got = predict(image, tmp_path / "bundle_seg", ["--bundle", str(bundle["bundle"])])
    ours, theirs = (nib.load(tmp_path / name / "segmentation.nii.gz") for name in ("bundle_seg", "runs_seg"))
    np.testing.assert_array_equal(np.asarray(ours.dataobj), np.asarray(theirs.dataobj))
    np.testing.assert_allclose(ours.affine, theirs.affine)
    assert got["tumor_found"] == ref["tumor_found"] and got["segmentation"]["folds"] == [0, 1]
    for k, p in ref["pni_probability_per_fold"].items():
        deltas.append(abs(got["pni_probability_per_fold"][k] - p))
    assert max(deltas) < 1e-5
    with capsys.disabled():
        size = sum(p.stat().st_size for p in bundle["bundle"].rglob("*") if p.is_file())
        print(f"\nbundle {size / 1e3:.0f} kB; max |delta probability| bundle vs runs: {max(deltas):.2e}")


def test_out_refused_unless_force_and_a_failed_export_keeps_the_old_bundle(
    bundle: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    base = ["export", "--experiment", "test", "--runs_dir", str(bundle["runs"]), "--folds", FOLDS, "--classifier", "none"]
    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("keep me")
    assert main([*base, "--out", str(other)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert main([*base, "--out", str(other), "--force"]) == 2  # --force replaces only a bundle
    assert "is not a neonet bundle" in capsys.readouterr().err
    assert [p.name for p in other.iterdir()] == ["mine.txt"]

    out = tmp_path / "b"
    shutil.copytree(bundle["bundle"], out)  # an earlier bundle
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    import neonet.predict.export as export_module

    def broken(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(export_module, "_save", broken)
    with pytest.raises(OSError, match="disk full"):
        export_module.export(out, experiment="test", runs_dir=bundle["runs"], classifier="none", folds=[0, 1], force=True)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "notes"]  # no temporary folder left behind
    monkeypatch.undo()
    assert main([*base, "--out", str(out), "--force", "--version", "2.0.0"]) == 0
    assert json.loads(BundlePaths(out).metadata.read_text(encoding="utf-8"))["version"] == "2.0.0"
    assert json.loads(BundlePaths(out).inference.read_text(encoding="utf-8"))["classifier"] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "notes"]


class _Marker:
    """A pickled object that would create a file when unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (Path.write_text, (self.path, "code ran"))


def test_tampered_bundle_is_refused_and_runs_no_pickle(bundle: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    image, label = case_files(bundle, "phantom_003")
    copy = tmp_path / "bundle"
    shutil.copytree(bundle["bundle"], copy)
    paths = BundlePaths(copy)
    target = paths.model("pattennet", 1)
    marker = tmp_path / "marker.txt"
    target.write_bytes(pickle.dumps(_Marker(marker)))
    args = ["predict-case", str(image), "--bundle", str(copy), "--mask", str(label), "--out", str(tmp_path / "p")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert str(target) in err and "not the one the bundle's inference.json records" in err

    config = json.loads(paths.inference.read_text(encoding="utf-8"))  # even when inference.json is edited to match the pickle
    config["classifier"]["models"][1]["sha256"] = sha256_file(target)
    write_json(paths.inference, config)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert str(target) in err and "cannot read this TorchScript file" in err and not marker.exists()

    config["classifier"]["models"][1]["file"] = "../../elsewhere.ts"
    write_json(paths.inference, config)
    assert main(args) == 2
    assert "names file '../../elsewhere.ts'" in capsys.readouterr().err
    assert main([*args[:-2], "--classifier", "resnet18", "--out", str(tmp_path / "p")]) == 2
    assert "holds the 'pattennet' classifier" in capsys.readouterr().err
    config["classifier"]["stage"] = "../evil"  # a stage name becomes a file name: no path allowed
    write_json(paths.inference, config)
    assert main(args) == 2
    assert "'../evil' is not a stage name" in capsys.readouterr().err
    assert not (tmp_path / "p" / "prediction.json").exists()
