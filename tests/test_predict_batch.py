"""``neonet predict-case`` on a folder / CSV of scans, and scans that are cases of the experiment's cohort.

Runs on a copy of the tiny ``trained_experiment`` (``conftest.py``) whose PattenNet folds 0 and 1 are
tested with ``neonet test`` (their out-of-fold ``test_predictions.csv``, as ``neonet cv`` writes them).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from neonet.data.splits import read_splits
from neonet.errors import NeonetError
from neonet.predict.batch import find_scans
from neonet.predict.membership import cohort_matches
from neonet.report.cls_report import load_predictions
from neonet.run.cli import main, run_project_verb
from neonet.workspace import Workspace
from test_cls_fixtures import CONF, one_thread  # noqa: F401


@pytest.fixture(scope="module")
def tested(trained_experiment: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A copy of the trained experiment with PattenNet folds 0-1 tested on their held-out cases."""
    runs = tmp_path_factory.mktemp("batch") / "runs"
    shutil.copytree(trained_experiment["runs"], runs)
    ws = Workspace(runs, "test")
    cases_csv = trained_experiment["root"] / "cases.csv"
    for k in (0, 1):
        args = [f"--data.cases={cases_csv}", f"--data.runs_dir={runs}", "--data.experiment=test", f"--data.fold={k}"]
        assert (
            main(
                ["test", "--config", str(CONF / "pattennet.yaml"), *args, "--ckpt_path", str(ws.best_checkpoint("pattennet", k))]
            )
            == 0
        )
    test_of = {c: int(s["fold"]) for s in read_splits(ws.splits_path)["splits"] for c in s["test"]}
    held_out = sorted(c for c, k in test_of.items() if k in (0, 1))
    return {**trained_experiment, "runs": runs, "ws": ws, "test_of": test_of, "held_out": held_out}


@pytest.fixture(scope="module")
def batch(tested: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Three scans in a folder: a training scan under another name, another case under its own id, a broken file."""
    scans = tmp_path_factory.mktemp("scans")
    renamed, by_id = tested["held_out"][0], tested["held_out"][1]
    shutil.copy(tested["root"] / tested["cases"].loc[renamed, "image"], scans / "new_patient.nii.gz")
    shutil.copy(tested["root"] / tested["cases"].loc[by_id, "image"], scans / f"{by_id}.nii.gz")
    (scans / "broken.nii.gz").write_bytes(b"not a scan")
    out = scans.parent / "out"
    args = ["predict-case", str(scans), "--experiment", "test", "--runs_dir", str(tested["runs"]), "--out", str(out)]
    with pytest.raises(NeonetError) as failure:  # `neonet` prints it and exits with 2
        run_project_verb("predict-case", [*args[1:], "--folds", "[0,1]"])
    return {"error": str(failure.value), "out": out, "renamed": renamed, "by_id": by_id, "scans": scans}


def test_folder_of_three_scans_gives_folders_summary_and_names_the_failure(batch: dict) -> None:
    """Every good scan has its folder; summary.csv has a row per scan; the broken one is named at the end."""
    assert batch["error"].startswith("1 of 3 scan(s) failed: broken (") and "summary.csv" in batch["error"]
    summary = pd.read_csv(batch["out"] / "summary.csv", dtype={"case_id": str}).set_index("case_id")
    assert sorted(summary.index) == sorted(["broken", "new_patient", batch["by_id"]])
    assert list(summary["status"].sort_index()) == sorted(["failed", "ok", "ok"])
    assert "not a readable NIfTI" in summary.loc["broken", "error"]
    for name in ("new_patient", batch["by_id"]):
        record = json.loads((batch["out"] / name / "prediction.json").read_text(encoding="utf-8"))
        assert summary.loc[name, "output_dir"] == str(batch["out"] / name)
        assert summary.loc[name, "pni_probability"] == pytest.approx(record["pni_probability"])
        assert summary.loc[name, "liver_volume_ml"] == pytest.approx(record["segmentation"]["liver_volume_ml"])
    assert not (batch["out"] / "broken" / "prediction.json").exists()


def test_renamed_training_scan_is_recognised_with_its_out_of_fold_probability(batch: dict, tested: dict) -> None:
    """Matched by content; its out-of-fold probability is the one `neonet report` reads; the ensemble's folds that
    trained on it are named."""
    record = json.loads((batch["out"] / "new_patient" / "prediction.json").read_text(encoding="utf-8"))
    cohort = record["cohort"]
    assert cohort["case_id"] == batch["renamed"] and cohort["matched_by"] == ["content"]
    oof = load_predictions(tested["ws"], ["pattennet"]).set_index("case_id").loc[batch["renamed"]]
    assert cohort["out_of_fold"]["probability"] == pytest.approx(float(oof["prob"]))
    assert cohort["out_of_fold"]["fold"] == tested["test_of"][batch["renamed"]] == int(oof["fold"])
    assert cohort["ensemble_folds_trained_on_it"] == [k for k in (0, 1) if k != tested["test_of"][batch["renamed"]]]
    assert cohort["message"] in record["warnings"] and "out-of-fold probability" in cohort["message"]
    summary = pd.read_csv(batch["out"] / "summary.csv", dtype={"case_id": str, "cohort_case": str}).set_index("case_id")
    assert summary.loc["new_patient", "cohort_case"] == batch["renamed"]
    assert summary.loc["new_patient", "out_of_fold_probability"] == pytest.approx(float(oof["prob"]))
    by_id = json.loads((batch["out"] / batch["by_id"] / "prediction.json").read_text(encoding="utf-8"))["cohort"]
    assert by_id["case_id"] == batch["by_id"] and by_id["matched_by"] == ["content", "case_id"]
    assert by_id["content_differs"] is False


def test_membership_by_id_only_and_strangers(tested: dict, tmp_path: Path) -> None:
    """A case id of the cohort with other content matches by id; another scan does not match."""
    other = tmp_path / "x.nii.gz"
    shutil.copy(tested["root"] / tested["cases"].loc[tested["held_out"][0], "image"], other)
    with open(other, "ab") as handle:
        handle.write(b"\0")  # other bytes: not the cohort's content
    cid = tested["held_out"][2]
    found = cohort_matches(tested["ws"], [cid, "stranger"], [other, other])
    assert found[0] is not None and found[0].case_id == cid and found[0].by == ("case_id",)
    assert found[0].content_differs  # the cohort's scan of that id is known and is another scan
    assert found[1] is None
    same = cohort_matches(tested["ws"], [cid], [tested["root"] / tested["cases"].loc[cid, "image"]])[0]
    assert same is not None and not same.content_differs
    assert tested["ws"].cohort_hashes.is_file()


def test_csv_input_and_duplicate_names(tmp_path: Path) -> None:
    """A CSV's relative paths are read from its folder; two scans with one name are refused before any work."""
    (tmp_path / "a.nii.gz").write_bytes(b"x")
    (tmp_path / "list.csv").write_text("image,case_id\na.nii.gz,P1\na.nii.gz,\n")
    scans = find_scans(tmp_path / "list.csv")
    assert [(s.case_id, s.image) for s in scans] == [("P1", tmp_path / "a.nii.gz"), ("a", tmp_path / "a.nii.gz")]
    (tmp_path / "dupes.csv").write_text("image,case_id\na.nii.gz,P1\na.nii.gz,P1\n")
    with pytest.raises(Exception, match="share an output folder"):
        find_scans(tmp_path / "dupes.csv")


SHARED = Path(__file__).resolve().parents[2] / "shared"


def predict_folder(tested: dict, scans: Path, out: Path) -> pd.DataFrame:
    """``predict-case`` on a folder or CSV of scans, NeoSeg and TLCR only; the summary table."""
    args = [str(scans), "--experiment", "test", "--runs_dir", str(tested["runs"]), "--out", str(out)]
    run_project_verb("predict-case", [*args, "--folds", "[0,1]", "--classifier", "none"])
    return pd.read_csv(out / "summary.csv", dtype={"case_id": str, "ood_flags": str}, keep_default_na=False)


def test_phantom_scans_of_the_training_distribution_are_not_flagged(tested: dict, tmp_path: Path) -> None:
    """New phantom scans (another seed, same settings) lie inside the cohort fingerprint, built on first use."""
    from neonet.data.phantom import synth

    new = synth(tmp_path / "new", cases=3, seed=7, pni_fraction=0.5, shape=(48, 48, 16), spacing=(7.0, 7.0, 12.0))
    summary = predict_folder(tested, new.parent / "images", tmp_path / "out")
    assert len(summary) == 3 and list(summary["ood_flags"]) == ["", "", ""]
    fingerprint = json.loads(tested["ws"].cohort_fingerprint.read_text(encoding="utf-8"))
    assert fingerprint["n_cases"] == 12 and fingerprint["ranges"]["confidence"] is not None
    measured = [c for c in fingerprint["cases"] if c["mask"].startswith("neoseg")]
    assert len(measured) == 8 and all(0.3 < c["confidence"] <= 1.0 for c in measured)
    record = json.loads((tmp_path / "out" / summary["case_id"][0] / "prediction.json").read_text(encoding="utf-8"))
    assert record["out_of_distribution"]["flags"] == [] and record["out_of_distribution"]["measured"]["spacing_z"] == 12.0


def test_real_t2_scans_are_flagged(tested: dict, tmp_path: Path) -> None:
    """Real CHAOS T2-SPIR and TotalSegmentator MR scans given to the phantom-trained experiment are all flagged,
    each flag with its measure and the cohort's range."""
    chaos, samples = SHARED / "real_cohorts" / "chaos_mr_t2spir" / "images", SHARED / "real_samples"
    if not chaos.is_dir() or not samples.is_dir():
        pytest.skip("../shared/real_cohorts or ../shared/real_samples is not present")
    images = [
        *sorted(chaos.glob("*.nii.gz")),
        *sorted(samples.glob("*/image_*.nii.gz")),
        samples / "totalsegmentator_mr" / "example_mr_sm.nii.gz",
    ]
    listing = pd.DataFrame({"image": [str(p) for p in images], "case_id": [f"real{i:02d}" for i in range(len(images))]})
    listing.to_csv(tmp_path / "real.csv", index=False)
    summary = predict_folder(tested, tmp_path / "real.csv", tmp_path / "out")
    assert len(summary) == len(images) >= 14 and all(summary["ood_flags"] != ""), summary[["case_id", "ood_flags"]]
    # not only their spacing: the liver's intensities also lie outside the phantom's (another sequence)
    assert all("liver_p" in flags for flags in summary["ood_flags"]), summary[["case_id", "ood_flags"]]
    record = json.loads((tmp_path / "out" / "real00" / "prediction.json").read_text(encoding="utf-8"))
    flag = record["out_of_distribution"]["flags"][0]
    assert set(flag) == {"check", "measured", "cohort_range", "allowed", "message"} and flag["cohort_range"] is not None
    assert any(w.startswith("outside the training cohort") for w in record["warnings"])


def test_a_dicom_series_folder_is_one_scan(tmp_path: Path) -> None:
    """In a folder of scans, a sub-folder of DICOM files is one scan; other files and folders are not scans;
    a DICOM series folder given itself is one scan, not a batch."""
    import numpy as np

    from neonet.data.itk_io import write_dicom_series
    from neonet.predict.batch import is_batch_input

    series = write_dicom_series(np.zeros((8, 8, 4), dtype=np.int16), np.diag([2.0, 2.0, 3.0, 1.0]), tmp_path / "in" / "patient7")
    (tmp_path / "in" / "b.nrrd").write_bytes(b"x")
    (tmp_path / "in" / "notes.txt").write_text("not a scan")
    (tmp_path / "in" / "empty").mkdir()
    scans = find_scans(tmp_path / "in")
    assert [(s.case_id, s.image) for s in scans] == [("b", tmp_path / "in" / "b.nrrd"), ("patient7", series)]
    assert is_batch_input(tmp_path / "in") and not is_batch_input(series)
    with pytest.raises(Exception, match="no scans in this folder"):
        find_scans(tmp_path / "in" / "empty")


def test_cohort_manifest_found_when_the_runs_folder_is_opened_from_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fold's config names ``runs/e/data/cases.csv`` relative to where it ran; opened from another folder it is still found."""
    from neonet.predict.membership import cohort_manifest

    project = tmp_path / "project"
    ws = Workspace(project / "runs", "e")
    (ws.root / "seg" / "fold0").mkdir(parents=True)
    (ws.root / "seg" / "fold0" / "config.yaml").write_text("data:\n  init_args:\n    cases: runs/e/data/cases.csv\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert cohort_manifest(ws) is None  # no such file anywhere yet
    (ws.root / "data").mkdir()
    (ws.root / "data" / "cases.csv").write_text("case_id,image\n")
    assert cohort_manifest(ws) == project / "runs" / "e" / "data" / "cases.csv"
