"""The radiomics baseline where a classifier predicts: its folds read back from ``model.json`` (no pickle) score
a patch as ``neonet radiomics`` did, in ``predict-case`` and in ``neonet evaluate``.

Uses ``radiomics_experiment`` (``conftest.py``): the tiny trained experiment (NeoSeg and PattenNet folds 0-1,
manual-mask TLCR patches of the 12-case phantom) with ``neonet radiomics`` on its 3 folds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from neonet.data.patches import patch_records
from neonet.data.phantom import synth
from neonet.predict.case import NO_SALIENCY_FROM_RADIOMICS
from neonet.predict.pipeline import Patch, fold_probabilities
from neonet.predict.source import RadiomicsModel, RunsSource
from neonet.run.cli import main
from neonet.workspace import BundlePaths, Workspace


def thresholds(ws: Workspace) -> list[float]:
    """The radiomics folds' validation thresholds, read from their model.json."""
    return [json.loads(ws.radiomics_model("radiomics", k).read_text(encoding="utf-8"))["threshold_youden_val"] for k in range(3)]


def test_saved_folds_score_the_cv_patches_as_the_cv_did(radiomics_experiment: dict) -> None:
    """Each fold's model.json, with the features recomputed from the TLCR patch files by the prediction path,
    gives the probabilities the fold wrote in test_predictions.csv."""
    ws = radiomics_experiment["ws"]
    for k in range(3):
        (model,) = RunsSource(ws).cls_models("radiomics", [k])
        assert isinstance(model, RadiomicsModel) and model.record["path"] == str(ws.radiomics_model("radiomics", k))
        cv = pd.read_csv(ws.test_predictions("radiomics", k), dtype={"case_id": str}).set_index("case_id")
        for r in patch_records(ws, list(cv.index)):
            patch = Patch(r.image, r.label_path("the test"), np.eye(4))
            prob = fold_probabilities(patch, [model], torch.device("cpu"))[k]
            assert prob == pytest.approx(cv.loc[r.case_id, "prob"], abs=1e-9)
        assert model.threshold == pytest.approx(cv["threshold_youden_val"].iloc[0])


def test_predict_case_with_radiomics_gives_the_out_of_fold_probability(radiomics_experiment: dict, tmp_path: Path) -> None:
    """A cohort case with its manual mask (the crop of its training patch): the fold that held it out scores it as
    in the CV; all folds give their mean; no Grad-CAM, said why."""
    ws = radiomics_experiment["ws"]
    cv = pd.read_csv(ws.test_predictions("radiomics", 1), dtype={"case_id": str}).set_index("case_id")
    case = cv.index[0]
    row = radiomics_experiment["cases"].loc[case]
    image, label = radiomics_experiment["root"] / row["image"], radiomics_experiment["root"] / row["label"]
    args = ["predict-case", str(image), "--experiment", "test", "--runs_dir", str(radiomics_experiment["runs"])]
    args += ["--classifier", "radiomics", "--mask", str(label), "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "one"), "--folds", "[1]"]) == 0
    one = json.loads((tmp_path / "one" / "prediction.json").read_text(encoding="utf-8"))
    assert one["pni_probability"] == pytest.approx(cv.loc[case, "prob"], abs=1e-9)
    assert one["cohort"]["out_of_fold"]["probability"] == pytest.approx(one["pni_probability"], abs=1e-9)
    assert one["saliency"] == {"error": NO_SALIENCY_FROM_RADIOMICS} and not (tmp_path / "one" / "saliency.nii.gz").exists()
    assert one["classifier"]["checkpoints"][0]["path"].endswith("model.json")

    assert main([*args, "--out", str(tmp_path / "all")]) == 0
    every = json.loads((tmp_path / "all" / "prediction.json").read_text(encoding="utf-8"))
    probs = every["pni_probability_per_fold"]
    assert sorted(probs) == ["0", "1", "2"] and probs["1"] == pytest.approx(one["pni_probability"], abs=1e-12)
    assert every["pni_probability"] == pytest.approx(np.mean(list(probs.values())))
    assert list(every["val_threshold_per_fold"].values()) == pytest.approx(thresholds(ws))


def test_evaluate_scores_radiomics_beside_the_deep_classifier(radiomics_experiment: dict, tmp_path: Path) -> None:
    """``neonet evaluate``: a radiomics row in cls_summary.csv, each fold's probability in predictions.csv, recomputed
    from the report's own patches; the deep classifier's rows as before."""
    csv = synth(tmp_path / "cohort_c", cases=4, seed=7, pni_fraction=0.5, shape=(48, 48, 16), spacing=(7.0, 7.0, 12.0))
    frame = pd.read_csv(csv, dtype=str)
    frame["case_id"] = frame["case_id"].str.replace("phantom", "ext")
    frame["patient_id"] = frame["case_id"]
    frame.to_csv(csv, index=False)
    args = ["evaluate", "--experiment", "test", "--runs_dir", str(radiomics_experiment["runs"]), "--cases", str(csv)]
    assert main([*args, "--device", "cpu", "--n_boot", "200"]) == 0  # default stages: seg and every classifier
    report = radiomics_experiment["ws"].external("cohort_c_cases").root
    doc = json.loads((report / "external.json").read_text(encoding="utf-8"))
    assert doc["stages"] == ["seg", "pattennet", "radiomics"]
    assert doc["folds"] == {"seg": [0, 1], "pattennet": [0, 1], "radiomics": [0, 1, 2]}
    summary = pd.read_csv(report / "cls_summary.csv").set_index("stage")
    assert list(summary.index) == ["pattennet", "radiomics"] and summary.loc["radiomics", "folds"] == "0 1 2"
    assert summary.loc["radiomics", "threshold"] == pytest.approx(np.mean(thresholds(radiomics_experiment["ws"])))
    preds = pd.read_csv(report / "predictions.csv", dtype={"case_id": str})
    rad = preds[(preds["stage"] == "radiomics") & preds["prob"].notna()]
    assert summary.loc["radiomics", "n"] == int((preds["stage"] == "radiomics").sum() - summary.loc["radiomics", "n_no_tumour"])
    if rad.empty:
        pytest.skip("the 1-epoch NeoSeg found no tumour in any external scan")
    row = rad.iloc[0]
    models = RunsSource(radiomics_experiment["ws"]).cls_models("radiomics", [0, 1, 2])
    files = [report / "patches" / f"{row['case_id']}_{part}.nii.gz" for part in ("image", "label")]
    patch = Patch(files[0], files[1], np.eye(4))
    again = fold_probabilities(patch, models, torch.device("cpu"))
    assert [row[f"prob_fold{k}"] for k in range(3)] == pytest.approx([again[k] for k in range(3)], abs=1e-9)
    assert row["prob"] == pytest.approx(np.mean(list(again.values())))


def test_bundle_with_radiomics_predicts_what_the_experiment_predicts(
    radiomics_experiment: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``neonet export --classifier radiomics``: JSON models in the bundle, the same probability through ``--bundle`` as
    through ``--experiment``, and a changed model file refused."""
    runs, out = str(radiomics_experiment["runs"]), tmp_path / "bundle"
    assert (
        main(
            ["export", "--experiment", "test", "--runs_dir", runs, "--out", str(out), "--classifier", "radiomics"]
            + ["--folds", "[0,1]"]
        )
        == 0
    )
    paths = BundlePaths(out)
    config = json.loads(paths.inference.read_text(encoding="utf-8"))
    assert config["classifier"]["kind"] == "radiomics" and config["classifier"]["settings"] == {
        "regions": ["tumour", "shell"],
        "bins": 16,
    }
    assert sorted(p.name for p in paths.models_dir.iterdir()) == [
        "radiomics_fold0.json",
        "radiomics_fold1.json",
        "seg_fold0.ts",
        "seg_fold1.ts",
    ]
    check = json.loads(paths.metadata.read_text(encoding="utf-8"))["export_check"]["max_abs_output_difference"]
    assert check["radiomics_fold0"] == 0.0 and check["radiomics_fold1"] == 0.0

    row = radiomics_experiment["cases"].loc["phantom_003"]
    image, label = radiomics_experiment["root"] / row["image"], radiomics_experiment["root"] / row["label"]
    common = ["predict-case", str(image), "--mask", str(label), "--device", "cpu"]
    assert main([*common, "--bundle", str(out), "--out", str(tmp_path / "b")]) == 0
    assert (
        main(
            [
                *common,
                "--experiment",
                "test",
                "--runs_dir",
                runs,
                "--classifier",
                "radiomics",
                "--folds",
                "[0,1]",
                "--out",
                str(tmp_path / "e"),
            ]
        )
        == 0
    )
    b, e = (json.loads((tmp_path / d / "prediction.json").read_text(encoding="utf-8")) for d in ("b", "e"))
    assert b["pni_probability_per_fold"] == pytest.approx(e["pni_probability_per_fold"], abs=1e-12)
    assert b["classifier"]["stage"] == "radiomics" and b["saliency"] == {"error": NO_SALIENCY_FROM_RADIOMICS}

    target = paths.model("radiomics", 1, ".json")
    model = json.loads(target.read_text(encoding="utf-8"))
    model["intercept"] += 1.0
    target.write_text(json.dumps(model), encoding="utf-8")
    capsys.readouterr()
    assert main([*common, "--bundle", str(out), "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert str(target) in err and "not the one the bundle's inference.json records" in err


def test_missing_radiomics_fold_names_the_radiomics_command(
    radiomics_experiment: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A radiomics fold without its model.json is not trained: the error names it and `neonet radiomics`, not `neonet cv`."""
    runs = tmp_path / "runs"
    shutil.copytree(radiomics_experiment["runs"], runs, ignore=shutil.ignore_patterns("reports", "predict_case"))
    Workspace(runs, "test").radiomics_model("radiomics", 1).unlink()
    row = radiomics_experiment["cases"].loc["phantom_003"]
    args = ["predict-case", str(radiomics_experiment["root"] / row["image"]), "--experiment", "test", "--runs_dir", str(runs)]
    assert main([*args, "--classifier", "radiomics", "--mask", str(radiomics_experiment["root"] / row["label"])]) == 2
    err = capsys.readouterr().err
    assert "trained radiomics fold(s) 1" in err and "model.json" in err and "neonet radiomics --config" in err
    assert "--folds [0,2]" in err and "neonet cv" not in err
    assert not (runs / "test" / "predict_case").exists()

    changed = Workspace(runs, "test").radiomics_model("radiomics", 2)  # a model.json edited after it was written
    model = json.loads(changed.read_text(encoding="utf-8"))
    model["intercept"] += 1.0
    changed.write_text(json.dumps(model), encoding="utf-8")
    assert (
        main([*args, "--classifier", "radiomics", "--folds", "[2]", "--mask", str(radiomics_experiment["root"] / row["label"])])
        == 2
    )
    err = capsys.readouterr().err
    assert str(changed) in err and "not the one its artifact.json records" in err and "--force" in err
