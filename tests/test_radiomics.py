"""``neonet radiomics``: the per-fold model sees only its fold's training and validation patients, writes what the
classifier report reads, and is compared by DeLong with every deep model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from neonet.cls.module import PREDICTION_COLUMNS
from neonet.errors import DataError, NeonetError
from neonet.radiomics.model import fit_fold
from neonet.radiomics.saved import SavedModel
from neonet.report.cls_report import delong_table, load_predictions
from neonet.report.stats import auc
from neonet.run.atomic import sha256_file
from neonet.run.cli import main
from neonet.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "tests" / "conf" / "radiomics.yaml"


def _data(n: int, shift: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.normal(size=(n, 3)) + shift
    x[:, 0] += 1.5 * y  # one informative feature
    return x, y


def test_fold_model_standardises_and_imputes_with_training_rows_only() -> None:
    x_train, y_train = _data(40, 0.0, 0)
    x_train[3, 1] = np.nan  # a feature a patch lacks (e.g. no shell)
    x_val, y_val = _data(10, 50.0, 1)  # validation rows far away: they must not move any statistic
    model = fit_fold(x_train, y_train, x_val, y_val, ["a", "b", "c"], c_grid=[0.1, 1.0])
    rec = model.record()
    imputed = x_train.copy()
    imputed[3, 1] = np.nanmedian(x_train[:, 1])
    assert list(rec["train_median"].values()) == pytest.approx(np.nanmedian(x_train, axis=0))
    assert list(rec["train_mean"].values()) == pytest.approx(imputed.mean(axis=0))
    assert list(rec["train_sd"].values()) == pytest.approx(imputed.std(axis=0))
    assert set(rec["coefficients"]) == {"a", "b", "c"} and rec["C"] in (0.1, 1.0)


def test_strength_is_chosen_on_the_validation_rows() -> None:
    x_train, y_train = _data(40, 0.0, 0)
    x_val, y_val = _data(12, 0.0, 2)
    grid = [0.001, 1.0, 100.0]
    model = fit_fold(x_train, y_train, x_val, y_val, ["a", "b", "c"], c_grid=grid)
    rows = {r["C"]: r for r in model.selection}
    assert sorted(rows) == grid
    assert model.c == max(grid, key=lambda c: (rows[c]["val_auc"], -rows[c]["val_log_loss"], -c))
    p_val = model.pipeline.predict_proba(x_val)[:, 1]
    assert rows[model.c]["val_auc"] == pytest.approx(auc(y_val, p_val))
    # other validation rows: the same fits on the training rows (training AUC, statistics), another selection input
    other = fit_fold(x_train, y_train, x_val, 1 - y_val, ["a", "b", "c"], c_grid=grid)
    assert [r["train_auc"] for r in other.selection] == [r["train_auc"] for r in model.selection]
    assert [r["val_auc"] for r in other.selection] != [r["val_auc"] for r in model.selection]
    assert other.record()["train_mean"] == model.record()["train_mean"]


def test_saved_model_scores_as_the_fitted_pipeline(tmp_path: Path) -> None:
    """model.json, read back as plain JSON, gives the fitted pipeline's logits and probabilities (NaN imputed,
    a constant feature kept), and a damaged file is an error that names it."""
    x_train, y_train = _data(40, 0.0, 0)
    x_train[:, 2] = 5.0  # constant in training: scikit-learn's scale 1
    x_train[[3, 7], 1] = np.nan
    x_val, y_val = _data(12, 0.0, 2)
    model = fit_fold(x_train, y_train, x_val, y_val, ["a", "b", "c"], c_grid=[0.1, 1.0, 10.0])
    path = tmp_path / "model.json"
    path.write_text(json.dumps(model.record()), encoding="utf-8")
    saved = SavedModel.from_record(json.loads(path.read_text(encoding="utf-8")), path)
    x_new, _ = _data(25, 0.3, 5)
    x_new[[0, 4], 0] = np.nan
    x_new[2, 1] = np.nan
    np.testing.assert_allclose(saved.decision_function(x_new), model.pipeline.decision_function(x_new), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(saved.predict_proba(x_new), model.pipeline.predict_proba(x_new)[:, 1], rtol=1e-12, atol=1e-12)
    assert saved.threshold == model.threshold and saved.features == ("a", "b", "c")
    broken = {k: v for k, v in model.record().items() if k != "train_sd"}
    with pytest.raises(NeonetError, match=r"model\.json: not a radiomics model .*train_sd.*--force"):
        SavedModel.from_record(broken, path)


def test_one_class_validation_is_a_clear_error() -> None:
    x_train, y_train = _data(20, 0.0, 0)
    with pytest.raises(DataError, match="inner-validation patients have one class only"):
        fit_fold(x_train, y_train, x_train[:4], np.zeros(4, dtype=int), ["a", "b", "c"], fold=3)


def test_delong_pairs_every_deep_model_with_the_feature_baseline() -> None:
    rng = np.random.default_rng(0)
    y = np.arange(30) % 2
    stages = {"pattennet": "pattennet", "pattennet_syn": "pattennet", "resnet18": "resnet18", "radiomics": "radiomics"}
    frame = pd.concat(
        [
            pd.DataFrame(
                {
                    "stage": s,
                    "model": m,
                    "variant": "real + synthetic" if s.endswith("_syn") else "real only",
                    "case_id": [f"c{i}" for i in range(30)],
                    "y_true": y,
                    "prob": np.clip(0.3 * y + rng.uniform(size=30), 0, 1),
                }
            )
            for s, m in stages.items()
        ]
    )
    table = delong_table(frame, "pattennet", shallow=["radiomics"])
    pairs = {(r.stage_a, r.stage_b): r.comparison for r in table.itertuples()}
    for deep in ("pattennet", "pattennet_syn", "resnet18"):
        assert (deep, "radiomics") in pairs and ("radiomics", deep) not in pairs
    assert pairs[("resnet18", "radiomics")] == "deep model vs feature baseline"
    assert pairs[("pattennet", "radiomics")] == "reference vs baseline"
    assert len(pairs) == len(table)  # no pair twice
    assert ("pattennet", "resnet18") in pairs and ("pattennet_syn", "pattennet") in pairs
    assert ("resnet18", "radiomics") not in {(r.stage_a, r.stage_b) for r in delong_table(frame, "pattennet").itertuples()}


# ----------------------------------------------------------------------------- end to end
def _run(runs: Path, cases: Path, *extra: str) -> int:
    return main(["radiomics", "--config", str(CONF), f"--cases={cases}", f"--runs_dir={runs}", *extra])


@pytest.fixture(scope="module")
def experiment(phantom_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """TLCR patches of the 12-case phantom (manual masks) and ``neonet radiomics`` on its 3 folds, with the report."""
    runs = tmp_path_factory.mktemp("radiomics") / "runs"
    crop = ["crop", "--config", str(REPO / "tests" / "conf" / "crop.yaml"), f"--cases={phantom_cohort}", f"--runs_dir={runs}"]
    assert main([*crop, "--source=manual"]) == 0
    assert _run(runs, phantom_cohort) == 0
    return {"runs": runs, "cases": phantom_cohort, "ws": Workspace(runs, "test")}


def _copy(experiment: dict[str, Any], tmp_path: Path) -> tuple[Path, Workspace]:
    runs = tmp_path / "runs"
    shutil.copytree(experiment["runs"], runs)
    return runs, Workspace(runs, "test")


def test_writes_what_the_classifier_report_reads(experiment: dict[str, Any]) -> None:
    ws: Workspace = experiment["ws"]
    splits = json.loads(ws.splits_path.read_text(encoding="utf-8"))
    for k in range(3):
        art = ws.read_artifact("radiomics", k)
        assert art is not None and art["status"] == "complete"
        assert art["classifier"]["model"] == "radiomics" and art["classifier"]["deep"] is False
        assert art["train_cases"] == splits["splits"][k]["train"] and art["test_cases"] == splits["splits"][k]["test"]
        preds = pd.read_csv(ws.test_predictions("radiomics", k), dtype={"case_id": str})
        assert list(preds.columns) == PREDICTION_COLUMNS and sorted(preds["case_id"]) == sorted(splits["splits"][k]["test"])
        assert preds["threshold_youden_val"].nunique() == 1
        features = pd.read_csv(ws.radiomics_features("radiomics", k), dtype={"case_id": str})
        assert set(features["case_id"][features["split"] == "val"]) == set(splits["splits"][k]["val"])
        assert "tumour.morph_sphericity" in features and "shell.stat_mean" in features
        model = json.loads(ws.radiomics_model("radiomics", k).read_text(encoding="utf-8"))
        assert model["C"] in (0.01, 1.0, 100.0) and len(model["coefficients"]) == features.shape[1] - 4
    oof = load_predictions(ws, ["radiomics"])  # also checks every prediction is out-of-fold per splits.json
    assert len(oof) == 12
    summary = pd.read_csv(ws.reports_dir / "cls_summary.csv")
    assert summary.loc[summary["stage"] == "radiomics", "n"].item() == 12
    assert pd.read_csv(ws.stage_summary("radiomics"))["fold"].tolist() == [0, 1, 2]
    assert ws.figure("radiomics_coefficients").is_file()


def test_test_patients_never_reach_the_fold_model(experiment: dict[str, Any], tmp_path: Path) -> None:
    """Scramble fold 0's test patches and re-fit fold 0: its model (statistics, C, coefficients) stays the same."""
    runs, ws = _copy(experiment, tmp_path)
    before = ws.radiomics_model("radiomics", 0).read_text(encoding="utf-8")
    preds_before = pd.read_csv(ws.test_predictions("radiomics", 0))
    manifest = pd.read_csv(ws.patches_manifest, dtype={"case_id": str}).set_index("case_id")
    rng = np.random.default_rng(0)
    for case in json.loads(ws.splits_path.read_text(encoding="utf-8"))["splits"][0]["test"]:
        path = ws.patches_dir / manifest.loc[case, "image"]
        img = nib.load(path)
        data = np.asarray(img.dataobj, dtype=np.float32)
        nib.save(nib.Nifti1Image(data * rng.uniform(0.2, 3.0, size=data.shape).astype(np.float32), img.affine), path)
    assert _run(runs, experiment["cases"], "--folds", "0", "--force", "--report=false") == 0
    assert ws.radiomics_model("radiomics", 0).read_text(encoding="utf-8") == before
    assert not np.allclose(pd.read_csv(ws.test_predictions("radiomics", 0))["prob"], preds_before["prob"])


def test_rerun_skips_and_other_settings_are_refused(
    experiment: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs, ws = _copy(experiment, tmp_path)
    files = [ws.test_predictions("radiomics", k) for k in range(3)] + [ws.artifact_path("radiomics", k) for k in range(3)]
    digests = [sha256_file(f) for f in files]
    assert _run(runs, experiment["cases"], "--report=false") == 0  # current: every fold skipped
    assert [sha256_file(f) for f in files] == digests
    capsys.readouterr()
    assert _run(runs, experiment["cases"], "--bins", "8", "--report=false") == 2
    err = capsys.readouterr().err
    assert "setting bins: 16 (stored) -> 8 (now)" in err and "--force" in err
    assert [sha256_file(f) for f in files] == digests  # nothing written
    assert _run(runs, experiment["cases"], "--bins", "8", "--force", "--report=false") == 0
    assert json.loads(ws.radiomics_record("radiomics", 1).read_text(encoding="utf-8"))["settings"]["bins"] == 8


def test_refuses_another_models_folder_and_names_missing_patches(
    experiment: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs, ws = _copy(experiment, tmp_path)
    ws.checkpoint_dir("pattennet", 0).mkdir(parents=True)
    assert _run(runs, experiment["cases"], "--stage", "pattennet", "--force", "--report=false") == 2
    assert "holds a fold of another model" in capsys.readouterr().err
    assert list(ws.stage_dir("pattennet", 0).iterdir()) == [ws.checkpoint_dir("pattennet", 0)]
    shutil.rmtree(ws.patches_dir)
    assert _run(runs, experiment["cases"], "--report=false") == 2
    assert "neonet crop" in capsys.readouterr().err


def test_a_patch_set_trains_a_control_stage_of_the_baseline(experiment: dict[str, Any], tmp_path: Path) -> None:
    """``--patches shrunk`` reads ``patches_shrunk/`` (cut here with --tumor_shrink_mm 8: one 7 mm voxel layer),
    records the stage as a control in its artifacts, and the report places it under the controls against
    ``radiomics``."""
    runs, ws = _copy(experiment, tmp_path)
    conf = str(REPO / "tests" / "conf" / "crop.yaml")
    crop = ["crop", "--config", conf, f"--cases={experiment['cases']}", f"--runs_dir={runs}"]
    assert main([*crop, "--source=manual", "--patches=shrunk", "--tumor_shrink_mm=8"]) == 0
    assert _run(runs, experiment["cases"], "--patches=shrunk", "--stage=radiomics_shrunk", "--model_name=radiomics_shrunk") == 0
    plain, shrunk = (pd.read_csv(ws.radiomics_features(s, 0)).set_index("case_id") for s in ("radiomics", "radiomics_shrunk"))
    assert (shrunk["tumour.morph_volume"] < plain["tumour.morph_volume"]).all()  # the shrunk tumours were read
    for k in range(3):
        art = ws.read_artifact("radiomics_shrunk", k)
        assert art["classifier"]["control"] == {"patches": {"set": "shrunk", "dir": "patches_shrunk", "source": "manual"}}
        assert "control" not in ws.read_artifact("radiomics", k)["classifier"]
    controls = pd.read_csv(ws.reports_dir / "cls_controls.csv").set_index("stage")
    assert controls.loc["radiomics_shrunk", "main_stage"] == "radiomics"
