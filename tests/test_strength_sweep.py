"""``benchmarks/strength_sweep.py``: the pooled AUCs that ``neonet report`` wrote, gathered per strength and plotted."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from bench_scripts import load_benchmark
from neonet.report.cls_report import load_predictions, per_fold_table, summary_table
from neonet.run.atomic import write_csv, write_json
from neonet.workspace import Workspace

FOLDS = 3


def _sweep() -> ModuleType:
    return load_benchmark("strength_sweep")


def _experiment(runs: Path, name: str, effect: dict[str, float], n: int = 36) -> dict[str, np.ndarray]:
    """Out-of-fold predictions of two classifier stages whose scores separate the classes by ``effect`` (logit
    shift per PNI+ case), written where ``neonet cv`` writes them, with the matching ``splits.json``."""
    rng = np.random.default_rng(len(name))
    ws = Workspace(runs, name)
    y = np.array([1, 0, 0] * (n // 3))
    cases = [f"c{i:03d}" for i in range(n)]
    fold = np.arange(n) % FOLDS
    probs = {}
    for stage, shift in effect.items():
        p = 1 / (1 + np.exp(-(shift * y + rng.normal(0, 1, n))))
        frame = pd.DataFrame(
            {"case_id": cases, "patient_id": cases, "fold": fold, "y_true": y, "prob": p, "logit": np.log(p / (1 - p))}
        )
        frame["threshold_youden_val"] = 0.5
        for k in range(FOLDS):
            path = ws.test_predictions(stage, k)
            path.parent.mkdir(parents=True, exist_ok=True)
            frame[frame["fold"] == k].to_csv(path, index=False)
        probs[stage] = p
    splits = [{"fold": k, "train": [], "val": [], "test": [c for c, f in zip(cases, fold) if f == k]} for k in range(FOLDS)]
    write_json(ws.splits_path, {"folds": FOLDS, "splits": splits})
    # the table `neonet report` writes, by its own functions (without its figures and page, which take seconds)
    frame = load_predictions(ws, list(effect))
    write_csv(ws.cls_summary, summary_table(frame, per_fold_table(frame), 200, 0.05, 0, FOLDS))
    return {"y": y, **probs}


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModuleType, Path, dict[float, dict[str, np.ndarray]]]:
    sweep = _sweep()
    runs = tmp_path_factory.mktemp("sweep") / "runs"
    truth = {
        0.0: _experiment(runs, sweep.experiment_name(0.0), {"pattennet": 0.0, "resnet18": 0.0}),
        2.0: _experiment(runs, sweep.experiment_name(2.0), {"pattennet": 3.0, "resnet18": 0.5}),
    }
    return sweep, runs, truth


def test_collect_reads_each_strengths_report_and_marks_the_missing(swept) -> None:
    sweep, runs, truth = swept
    runs_log = [
        {"experiment": "sweep-s2", "seconds": 100.0, "status": "failed at seg (exit code 2)", "steps": [{"step": "seg"}]},
        {"experiment": "sweep-s2", "seconds": 20.5, "status": "complete", "steps": [{"step": "seg"}, {"step": "crop"}]},
        {"experiment": "sweep-s1", "seconds": 7.0, "status": "running", "steps": [{"step": "synth"}]},
    ]
    table = sweep.collect(runs, [2.0, 0.0, 1.0], runs_log)
    assert len(table) == 3 * len(sweep.MODELS)
    for strength, data in truth.items():
        for stage in ("pattennet", "resnet18"):
            row = table[(table["strength"] == strength) & (table["model"] == stage)].iloc[0]
            assert row["status"] == "complete" and row["folds"] == FOLDS and row["n"] == len(data["y"])
            assert row["auc_pooled"] == pytest.approx(roc_auc_score(data["y"], data[stage]))
            assert row["auc_ci_lo"] <= row["auc_pooled"] <= row["auc_ci_hi"]
    auc = table.set_index(["strength", "model"])["auc_pooled"]
    assert auc[(2.0, "pattennet")] > 0.85 > auc[(0.0, "pattennet")]
    # a model the report does not hold, and a strength without any report, are rows without an AUC
    assert table[table["model"] == "radiomics"]["auc_pooled"].isna().all()
    assert set(table[table["model"] == "radiomics"]["status"]) == {
        "missing: stage not in the report",
        "missing: no reports/cls_summary.csv",
    }
    assert table[table["strength"] == 1.0]["auc_pooled"].isna().all()
    assert set(table[table["strength"] == 2.0]["wall_s"]) == {120.5}
    # a cohort synthesised again starts its wall time afresh; invocations resumed after it add up
    fresh = [*runs_log, {"experiment": "sweep-s2", "seconds": 30.0, "status": "complete", "steps": [{"step": "synth"}]}]
    fresh.append({"experiment": "sweep-s2", "seconds": 5.0, "status": "complete", "steps": [{"step": "report"}]})
    assert set(sweep.collect(runs, [2.0], fresh)["wall_s"]) == {35.0}
    assert table[table["strength"] == 0.0]["wall_s"].isna().all()
    assert set(table[table["strength"] == 1.0]["run_status"]) == {"running after synth"}
    wall_line = sweep.markdown(table).strip().splitlines()[-1]
    assert wall_line == "| wall time (s) |  | 7 so far (running after synth) | 120 |"


def test_results_are_written_as_table_json_and_plot(swept, tmp_path: Path) -> None:
    sweep, runs, truth = swept
    table = sweep.collect(runs, [2.0, 0.0, 1.0])
    paths = sweep.write_results(table, tmp_path / "out", {"git_commit": "abc"})
    assert sorted(p.name for p in paths.values()) == [f"strength_sweep.{e}" for e in ("csv", "json", "md", "png")]
    md = paths["md"].read_text(encoding="utf-8")
    header, _, pattennet_line, _, _, radiomics_line, wall = md.strip().splitlines()
    assert header == "| model | strength 0 | strength 1 | strength 2 |"
    strong = table[(table["strength"] == 2.0) & (table["model"] == "pattennet")].iloc[0]
    assert pattennet_line.endswith(
        f"| no report | {strong['auc_pooled']:.3f} [{strong['auc_ci_lo']:.3f}, {strong['auc_ci_hi']:.3f}] |"
    )
    assert radiomics_line.count("no report") == 3
    assert wall.startswith("| wall time (s) |")
    doc = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert doc["git_commit"] == "abc" and len(doc["rows"]) == len(table)
    assert pd.read_csv(paths["csv"])["auc_pooled"].notna().sum() == 4
    image = mpimg.imread(paths["png"])
    assert image.ndim == 3 and image.shape[0] > 300 and image[..., :3].std() > 0.05  # a drawn figure, not a blank


def test_chain_points_every_stage_at_the_strengths_experiment() -> None:
    sweep = _sweep()
    args = sweep.parse_args(["--runs_dir", "r", "--jobs", "2", "--", "--trainer.max_epochs=1"])
    assert args.strengths == [2.0, 0.0, 1.0, 0.5] and args.cv_overrides == ["--trainer.max_epochs=1"]
    steps = dict(sweep.chain(Workspace("r", sweep.experiment_name(0.5)), args))
    assert list(steps) == [
        "seg",
        "crop",
        "autoencoder",
        "pattennet",
        "pattennet_hist",
        "baseline_resnet18",
        "radiomics",
        "report",
    ]
    cases = str(Path("r") / "sweep-s0.5" / "data" / "cases.csv")
    assert steps["pattennet"][-4:] == [
        "--data.runs_dir=r",
        f"--data.cases={cases}",
        "--data.experiment=sweep-s0.5",
        "--trainer.max_epochs=1",
    ]
    assert steps["crop"][steps["crop"].index("--cases") + 1] == cases
    assert steps["report"] == ["report", "--experiment", "sweep-s0.5", "--runs_dir", "r"]
    assert sweep.synth_args(0.5, 72, 0, 3)[-4:] == ["--strength", "0.5", "--matched", "3"]
