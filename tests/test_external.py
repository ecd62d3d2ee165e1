"""``neonet evaluate`` through the real command line: the tiny trained experiment (``trained_experiment`` of
``conftest.py``: NeoSeg and PattenNet folds 0-1 on a phantom) on an external phantom cohort of another seed."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from neonet.data.phantom import synth
from neonet.run.cli import main


@pytest.fixture(scope="module")
def external(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four phantom cases of seed 7 (two PNI+), their case ids made ``ext_*`` (the experiment's are ``phantom_*``)."""
    out = tmp_path_factory.mktemp("external") / "cohort_b"
    csv = synth(out, cases=4, seed=7, pni_fraction=0.5, shape=(48, 48, 16), spacing=(7.0, 7.0, 12.0))
    frame = pd.read_csv(csv, dtype=str)
    frame["case_id"] = frame["case_id"].str.replace("phantom", "ext")
    frame["patient_id"] = frame["case_id"]
    frame.to_csv(csv, index=False)
    return csv


def evaluate(experiment: dict, csv: Path, *extra: str) -> int:
    return main(["evaluate", "--experiment", "test", "--runs_dir", str(experiment["runs"]), "--cases", str(csv), *extra])


@pytest.fixture(scope="module")
def report(trained_experiment: dict, external: Path) -> Path:
    assert evaluate(trained_experiment, external, "--device", "cpu", "--n_boot", "200") == 0
    return trained_experiment["ws"].external("cohort_b_cases").root


def test_report_files_and_one_case_recomputed(trained_experiment: dict, external: Path, report: Path) -> None:
    """Every file is there; one case's Dice and ensemble probability match an independent computation."""
    for name in ("external.md", "external.json", "seg_metrics.csv", "seg_summary.json", "seg_summary.md", "predictions.csv"):
        assert (report / name).is_file(), name
    figure = report / "seg_cases.png"  # one bar per case and metric
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "`seg_cases.png`" in (report / "external.md").read_text("utf-8")
    doc = json.loads((report / "external.json").read_text(encoding="utf-8"))
    assert doc["folds"] == {"seg": [0, 1], "pattennet": [0, 1]} and doc["stages"] == ["seg", "pattennet"]
    md = (report / "external.md").read_text(encoding="utf-8")
    assert "folds 0, 1 (ensemble)" in md and "cohort_b" in md and "The experiment's split: 3 folds" in md

    cases = pd.read_csv(external, dtype=str).set_index("case_id")
    seg = pd.read_csv(report / "seg_metrics.csv").set_index("case_id")
    assert sorted(seg.index) == sorted(cases.index)
    cid = seg.index[0]
    pred = np.asarray(nib.load(report / "masks" / f"{cid}.nii.gz").dataobj)
    truth = np.asarray(nib.load(external.parent / cases.loc[cid, "label"]).dataobj)
    liver_p, liver_t = pred >= 1, truth >= 1
    dice = 2 * (liver_p & liver_t).sum() / (liver_p.sum() + liver_t.sum())
    assert seg.loc[cid, "dice_liver"] == pytest.approx(dice, abs=1e-6)
    summary = json.loads((report / "seg_summary.json").read_text(encoding="utf-8"))
    assert summary["n_cases"] == len(cases)
    assert summary["dice_liver"]["mean"] == pytest.approx(seg["dice_liver"].mean())

    preds = pd.read_csv(report / "predictions.csv", dtype={"case_id": str})
    scored = preds[preds["prob"].notna()]
    if scored.empty:
        pytest.skip("the 1-epoch NeoSeg found no tumour in any external scan")
    row = scored.iloc[0]
    assert row["prob"] == pytest.approx((row["prob_fold0"] + row["prob_fold1"]) / 2)
    # predict-case on that scan with its NeoSeg mask gives the same fold probabilities
    one = report.parent / "one_case"
    args = ["predict-case", str(external.parent / cases.loc[row["case_id"], "image"]), "--experiment", "test"]
    args += ["--runs_dir", str(trained_experiment["runs"]), "--out", str(one), "--folds", "[0,1]"]
    assert main([*args, "--mask", str(report / "masks" / f"{row['case_id']}.nii.gz"), "--device", "cpu"]) == 0
    single = json.loads((one / "prediction.json").read_text(encoding="utf-8"))
    assert single["pni_probability"] == pytest.approx(row["prob"], abs=1e-5)
    assert row["threshold"] == pytest.approx(np.mean(list(single["val_threshold_per_fold"].values())))


def test_cls_summary_numbers(report: Path) -> None:
    """AUC, sensitivity and specificity recomputed from predictions.csv by hand."""
    preds = pd.read_csv(report / "predictions.csv")
    scored = preds[preds["prob"].notna() & preds["y_true"].notna()]
    summary = pd.read_csv(report / "cls_summary.csv").set_index("stage").loc["pattennet"]
    assert summary["n"] == len(scored) and summary["n_no_tumour"] == int(preds["prob"].isna().sum())
    y, p = scored["y_true"].to_numpy(int), scored["prob"].to_numpy()
    if len(y):
        hard = p >= summary["threshold"]
        if y.sum():
            assert summary["sensitivity"] == pytest.approx((hard & (y == 1)).sum() / y.sum())
        if (y == 0).any():
            assert summary["specificity"] == pytest.approx((~hard & (y == 0)).sum() / (y == 0).sum())
    if 0 < y.sum() < len(y):
        pairs = [(a > b) + 0.5 * (a == b) for a in p[y == 1] for b in p[y == 0]]
        assert summary["auc"] == pytest.approx(np.mean(pairs))
        assert summary["auc_ci_lo"] <= summary["auc"] <= summary["auc_ci_hi"]
        assert (report / "roc.png").is_file() and (report / "calibration.png").is_file()


def _with_rows(csv: Path, out: Path, rows: list[dict]) -> Path:
    out.mkdir()
    frame = pd.read_csv(csv, dtype=str)
    for col in ("image", "label"):
        frame[col] = [str(csv.parent / v) for v in frame[col]]
    pd.concat([frame, pd.DataFrame(rows)], ignore_index=True).to_csv(out / "cases.csv", index=False)
    return out / "cases.csv"


@pytest.mark.parametrize("how", ["id", "content"])
def test_training_case_is_refused_by_id_and_by_content(
    trained_experiment: dict, external: Path, tmp_path: Path, how: str, capsys: pytest.CaptureFixture
) -> None:
    """A case of the experiment's cohort is refused under its own id and, by its image's SHA-256, under another."""
    root = trained_experiment["root"]
    row = trained_experiment["cases"].loc["phantom_003"]
    cid = "phantom_003" if how == "id" else "renamed_003"
    csv = _with_rows(external, tmp_path / "c", [{"case_id": cid, "image": str(root / row["image"]), "label": "", "pni": "1"}])
    assert evaluate(trained_experiment, csv, "--name", f"reused_{how}") == 2
    err = capsys.readouterr().err
    assert cid in err and ("belong to experiment" in err if how == "id" else "phantom_003" in err and "SHA-256" in err)
    assert not trained_experiment["ws"].external(f"reused_{how}").root.exists()


def test_other_label_map_is_refused(
    trained_experiment: dict, external: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Labels with a value the folds' map does not know, or a stated map of other values, are refused."""
    cases = pd.read_csv(external, dtype=str)
    label = external.parent / cases["label"].iloc[0]
    img = nib.load(label)
    moved = np.asarray(img.dataobj).astype(np.uint8)
    moved[moved == 2] = 9  # tumour coded 9
    relabelled = tmp_path / "relabelled.nii.gz"
    nib.save(nib.Nifti1Image(moved, img.affine), relabelled)
    csv = _with_rows(external, tmp_path / "c", [])
    frame = pd.read_csv(csv, dtype=str)
    frame.loc[0, "label"] = str(relabelled)
    frame.to_csv(csv, index=False)
    assert evaluate(trained_experiment, csv, "--name", "other_map") == 2
    err = capsys.readouterr().err
    assert "values [9]" in err and frame.loc[0, "case_id"] in err and "liver=[1], tumor=[2]" in err
    assert evaluate(trained_experiment, external, "--name", "other_map", "--tumor", "[9]") == 2
    assert "differs from the one the experiment's NeoSeg folds were trained with" in capsys.readouterr().err
    assert not trained_experiment["ws"].external("other_map").root.exists()


def test_seg_only_replaces_an_earlier_report(trained_experiment: dict, external: Path) -> None:
    """``--stages seg`` evaluates NeoSeg alone, and replaces the whole earlier report folder (no stale file stays)."""
    folder = trained_experiment["ws"].external("seg_only").root
    folder.mkdir(parents=True)
    (folder / "predictions.csv").write_text("from an earlier run")
    assert evaluate(trained_experiment, external, "--name", "seg_only", "--stages", "seg", "--device", "cpu") == 0
    assert (folder / "seg_metrics.csv").is_file() and not (folder / "predictions.csv").exists()
    assert json.loads((folder / "external.json").read_text(encoding="utf-8"))["folds"] == {"seg": [0, 1]}
    assert not list(folder.parent.glob(".seg_only.*"))  # no temporary folder left beside it


def test_scans_compared_with_the_cohort_fingerprint(trained_experiment: dict, external: Path, report: Path) -> None:
    """Every external scan is measured inside its NeoSeg mask and compared with the experiment's cohort fingerprint."""
    doc = json.loads((report / "external.json").read_text(encoding="utf-8"))
    assert doc["cohort_fingerprint"] == str(trained_experiment["ws"].cohort_fingerprint)
    assert trained_experiment["ws"].cohort_fingerprint.is_file()
    ood = pd.read_csv(report / "ood.csv", dtype={"case_id": str}).set_index("case_id")
    cases = pd.read_csv(external, dtype=str).set_index("case_id")
    assert sorted(ood.index) == sorted(cases.index)
    for cid in cases.index:  # the spacing measured is the scan header's
        zooms = nib.load(external.parent / cases.loc[cid, "image"]).header.get_zooms()[:3]
        assert [ood.loc[cid, f"spacing_{a}"] for a in "xyz"] == pytest.approx(list(zooms), abs=1e-3)
    flagged = set(ood.index[ood["out_of_distribution"]])
    assert set(doc["out_of_distribution"]) == flagged
    preds = pd.read_csv(report / "predictions.csv", dtype={"case_id": str})
    assert set(preds.loc[preds["out_of_distribution"], "case_id"]) == flagged
