"""Training variance: ``neonet cv --seeds`` (one stage under several training seeds on the same splits) and the
report's seed tables, patients x seeds interval and maximum fold AUC."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from neonet.cls.module import ClassifierModule
from neonet.errors import NeonetError
from neonet.gen.autoencoder import AutoencoderModule
from neonet.report.cls_report import report
from neonet.report.seeds import seed_bootstrap_ci
from neonet.report.stats import auc, bootstrap_auc_ci
from neonet.run.atomic import write_json
from neonet.run.cv import seed_runs
from neonet.workspace import Workspace
from test_cls_fixtures import CONF, REPO, write_patch_cohort
from test_page import section_html, tables_of

FOLDS = 3


def scores(y: np.ndarray, signal: float, rng: np.random.Generator) -> np.ndarray:
    """Probabilities whose separation of the classes grows with ``signal``."""
    return 1 / (1 + np.exp(-(signal * y + rng.normal(0, 1, y.size))))


def test_seed_stage_folders_follow_the_workspace_convention(tmp_path: Path) -> None:
    ws = Workspace(tmp_path, "e")
    assert Workspace.seed_stage("resnet18", 2) == "resnet18_seed2"
    assert ws.stage_dir(ws.seed_stage("pattennet_syn", 1), 0) == tmp_path / "e" / "pattennet_syn_seed1" / "fold0"
    for name in ("resnet18_seed1", "resnet18_seed10", "resnet18_seedx", "resnet18_seed1_old", "resnet18_syn"):
        (ws.root / name / "fold0").mkdir(parents=True)
    assert ws.seed_stages("resnet18") == {1: "resnet18_seed1", 10: "resnet18_seed10"}
    assert ws.seed_stages("resnet18_syn") == {}


def test_seed_runs_keep_the_config_seed_in_the_plain_folder() -> None:
    cfg = {"seed_everything": 0, "model": {"init_args": {"stage": "resnet18", "lr": 1}}, "data": {}}
    user = ["--trainer.max_epochs=2"]
    runs = seed_runs(cfg, user, [0, 1, 2, 1], ClassifierModule)
    assert [(r.seed, r.stage) for r in runs] == [(0, "resnet18"), (1, "resnet18_seed1"), (2, "resnet18_seed2")]
    assert runs[0].overrides == user and runs[0].config is cfg
    assert runs[2].overrides == [*user, "--seed_everything=2", "--model.stage=resnet18_seed2"]
    assert runs[2].config["seed_everything"] == 2 and runs[2].config["model"]["init_args"] == {"stage": "resnet18_seed2", "lr": 1}
    assert cfg["model"]["init_args"]["stage"] == "resnet18"  # the command's config is not changed
    # what a (seed, fold) worker of --jobs runs: the same seed alone, the user's overrides after --
    assert runs[1].command([Path("c.yaml")], 2, force=True, summary=False) == [
        "--config",
        "c.yaml",
        "--folds",
        "2",
        "--seeds",
        "1",
        "--force",
        "--summary=false",
        "--",
        *user,
    ]
    # without --seeds: today's single run, as before
    (only,) = seed_runs(cfg, user, None, ClassifierModule)
    assert (only.stage, only.overrides, only.seeded) == ("resnet18", user, False)
    # a stage module without a `stage` argument cannot be filed beside itself
    ae = {"seed_everything": 0, "model": {"class_path": "neonet.gen.AutoencoderModule", "init_args": {}}}
    assert [r.stage for r in seed_runs(ae, [], [0], AutoencoderModule)] == ["autoencoder"]
    with pytest.raises(NeonetError, match=r"--seeds 1: AutoencoderModule has no `stage` argument"):
        seed_runs(ae, [], [0, 1], AutoencoderModule)


def test_patients_x_seeds_interval_holds_the_seed_spread() -> None:
    rng = np.random.default_rng(0)
    y = np.array([1] * 30 + [0] * 60)
    spread = np.stack([scores(y, s, rng) for s in (0.5, 1.5, 3.0)], axis=1)
    per_seed = [auc(y, spread[:, j]) for j in range(3)]
    lo, hi = seed_bootstrap_ci(y, spread, n_boot=2000, seed=0)
    assert lo < min(per_seed) and hi > max(per_seed)
    _, mid_lo, mid_hi = bootstrap_auc_ci(y, spread[:, 1], n_boot=2000, seed=0)
    assert hi - lo > (mid_hi - mid_lo) + 0.1  # wider than one seed's patients-only CI by the seed spread
    # identical seeds: no seed spread, the interval is the patients-only bootstrap CI
    same = np.repeat(spread[:, [1]], 3, axis=1)
    s_lo, s_hi = seed_bootstrap_ci(y, same, n_boot=4000, seed=1)
    assert s_lo == pytest.approx(mid_lo, abs=0.03) and s_hi == pytest.approx(mid_hi, abs=0.03)
    # whole clusters: pairs of cases of one patient resampled together
    c_lo, c_hi = seed_bootstrap_ci(y, spread, n_boot=500, seed=0, clusters=np.arange(y.size) // 2)
    assert c_lo < per_seed[1] < c_hi
    with pytest.raises(ValueError, match="one class"):
        seed_bootstrap_ci(np.ones(5, int), np.random.default_rng(0).random((5, 2)))


def fake_experiment(root: Path, signals: dict[str, float], n: int = 48) -> tuple[Workspace, dict[str, pd.DataFrame]]:
    """Out-of-fold predictions of stages on the same patients, each fold's config.yaml with its seed, splits.json."""
    rng = np.random.default_rng(3)
    ws = Workspace(root, "s")
    y = np.array([1] * (n // 3) + [0] * (n - n // 3))
    cases = [f"c{i:03d}" for i in range(n)]
    fold = np.arange(n) % FOLDS
    frames = {}
    for stage, signal in signals.items():
        p = scores(y, signal, rng)
        frame = pd.DataFrame(
            {
                "case_id": cases,
                "patient_id": cases,
                "fold": fold,
                "y_true": y,
                "prob": p,
                "logit": np.log(p / (1 - p)),
                "threshold_youden_val": 0.5,
            }
        )
        seed = int(stage.rpartition("_seed")[2]) if "_seed" in stage else 0
        for k in range(FOLDS):
            ws.stage_dir(stage, k).mkdir(parents=True)
            frame[frame["fold"] == k].to_csv(ws.test_predictions(stage, k), index=False)
            ws.config_path(stage, k).write_text(yaml.safe_dump({"seed_everything": seed, "model": {}}))
        frames[stage] = frame
    splits = [{"fold": k, "train": [], "val": [], "test": [c for c, f in zip(cases, fold) if f == k]} for k in range(FOLDS)]
    write_json(ws.splits_path, {"folds": FOLDS, "splits": splits})
    return ws, frames


def test_report_gives_each_seed_and_the_maximum_fold_auc(tmp_path: Path) -> None:
    signals = {"resnet18": 1.0, "resnet18_seed1": 2.0, "resnet18_seed2": 0.3}
    ws, frames = fake_experiment(tmp_path, signals)
    doc = report("s", ws.runs_dir, n_boot=300, log_wandb=False)
    assert doc["stages"] == ["resnet18"]  # the seed folders are resnet18's seeds, not stages of their own
    summary = pd.read_csv(ws.reports_dir / "cls_summary.csv").set_index("stage")
    fold_aucs = [auc(g["y_true"].to_numpy(), g["prob"].to_numpy()) for _, g in frames["resnet18"].groupby("fold")]
    assert summary.loc["resnet18", "auc_fold_max"] == pytest.approx(max(fold_aucs)) and max(fold_aucs) > min(fold_aucs)
    md = (ws.reports_dir / "cls_report.md").read_text(encoding="utf-8")
    assert "auc_fold_max (optimistic)" in md and "the figure the NeoNet paper reports" in md

    per_seed = pd.read_csv(ws.reports_dir / "cls_seeds.csv")
    assert list(zip(per_seed["stage"], per_seed["seed"], per_seed["seed_stage"])) == [
        ("resnet18", 0, "resnet18"),
        ("resnet18", 1, "resnet18_seed1"),
        ("resnet18", 2, "resnet18_seed2"),
    ]
    pooled = [auc(frames[s]["y_true"].to_numpy(), frames[s]["prob"].to_numpy()) for s in per_seed["seed_stage"]]
    assert per_seed["auc_pooled"].to_numpy() == pytest.approx(pooled)
    assert (per_seed["n"] == 48).all() and (per_seed["folds"] == FOLDS).all()
    seeds = pd.read_csv(ws.reports_dir / "cls_seeds_summary.csv")
    assert list(seeds["stage"]) == ["resnet18"]
    row = seeds.iloc[0]
    assert row["seeds"] == "0 1 2" and row["n_seeds"] == 3 and row["n"] == 48
    assert row["auc_pooled_mean"] == pytest.approx(np.mean(pooled))
    assert row["auc_pooled_sd"] == pytest.approx(np.std(pooled, ddof=1))
    assert row["auc_seed_ci_lo"] < min(pooled) and row["auc_seed_ci_hi"] > max(pooled)
    assert row["auc_fold_max"] >= per_seed["auc_fold_max"].max() - 1e-12
    assert doc["seeds"]["interval"].startswith("patients x seeds")
    assert "## Training seeds" in md and f"{np.mean(pooled):.3f} ± {np.std(pooled, ddof=1):.3f}" in md


def test_experiment_page_shows_the_seed_table_and_the_optimistic_fold_maximum(tmp_path: Path) -> None:
    """The page's classification section: the maximum fold AUC beside the pooled AUC, labelled optimistic, and the
    seed table with the numbers of ``cls_seeds*.csv``; a report without seeds shows no seed table."""
    ws, _ = fake_experiment(tmp_path, {"resnet18": 1.0, "resnet18_seed1": 2.0, "resnet18_seed2": 0.3, "pattennet": 1.5})
    report("s", ws.runs_dir, n_boot=200, log_wandb=False)
    html = section_html(ws.page, "classification")
    shown = tables_of(ws.page)["classification"]
    summary = pd.read_csv(ws.reports_dir / "cls_summary.csv").set_index("stage")
    main = shown[0].set_index("stage")
    for stage in ("resnet18", "pattennet"):
        assert main.loc[stage, "auc_fold_max (optimistic)"] == f"{summary.loc[stage, 'auc_fold_max']:.3f}"
    assert "the figure the NeoNet paper reports" in html
    assert "<h3>Training seeds</h3>" in html
    seeds = next(t for t in shown if "mean ± sd" in t.columns)
    assert list(seeds["stage"]) == ["resnet18"]  # pattennet has one seed: no row
    per_seed = pd.read_csv(ws.reports_dir / "cls_seeds.csv")
    row, written = seeds.iloc[0], pd.read_csv(ws.reports_dir / "cls_seeds_summary.csv").iloc[0]
    assert row["seeds"] == "0 1 2"
    assert row["pooled AUC per seed"] == ", ".join(f"{a:.3f}" for a in per_seed["auc_pooled"])
    assert row["mean ± sd"] == f"{written['auc_pooled_mean']:.3f} ± {written['auc_pooled_sd']:.3f}"
    assert row["95 % interval (patients x seeds)"] == f"[{written['auc_seed_ci_lo']:.3f}, {written['auc_seed_ci_hi']:.3f}]"
    assert row["max fold AUC (optimistic)"] == f"{written['auc_fold_max']:.3f}"
    assert "cls_seeds_summary.csv" in html and "patients x seeds percentile bootstrap" in html

    for stage in ("resnet18_seed1", "resnet18_seed2"):  # the seeds gone: the next report's page has no seed table
        shutil.rmtree(ws.root / stage)
    report("s", ws.runs_dir, n_boot=200, log_wandb=False)
    html = section_html(ws.page, "classification")
    assert "Training seeds" not in html and "auc_fold_max (optimistic)" in html


@pytest.mark.slow
def test_cv_seeds_trains_each_seed_in_its_own_folder_then_reports(tmp_path: Path) -> None:
    cohort = write_patch_cohort(tmp_path, n=12, experiment="sd")
    ws = cohort["ws"]
    cmd = [
        sys.executable,
        "-m",
        "neonet",
        "cv",
        "--config",
        str(CONF / "baseline.yaml"),
        "--folds",
        "0",
        "1",
        "--seeds",
        "0",
        "3",
        "--jobs",
        "2",
        "--",
        f"--data.cases={cohort['cases']}",
        f"--data.runs_dir={cohort['runs_dir']}",
        "--data.experiment=sd",
        "--trainer.max_epochs=1",
        "--model.net.init_args.widen_factor=0.125",
    ]
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "NEONET_LOG_LEVEL": "INFO"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, encoding="utf-8", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for stage, seed in (("resnet18", 0), ("resnet18_seed3", 3)):
        assert ws.read_artifact(stage, 2) is None
        for k in (0, 1):
            art = ws.read_artifact(stage, k)
            assert art["status"] == "complete" and art["training_seed"] == seed
            assert yaml.safe_load(ws.config_path(stage, k).read_text(encoding="utf-8"))["seed_everything"] == seed
            assert ws.test_predictions(stage, k).is_file() and ws.cv_log(stage, k).is_file()
    splits = [ws.read_artifact(s, 0)["test_cases"] for s in ("resnet18", "resnet18_seed3")]
    assert splits[0] == splits[1]  # the same folds under every seed
    assert list(pd.read_csv(ws.reports_dir / "cls_summary.csv")["stage"]) == ["resnet18"]
    per_seed = pd.read_csv(ws.reports_dir / "cls_seeds.csv")
    assert list(per_seed["seed_stage"]) == ["resnet18", "resnet18_seed3"] and (per_seed["n"] == 8).all()
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, encoding="utf-8", timeout=900)
    assert again.returncode == 0 and again.stderr.count("skipped") == 2 * 2, again.stderr[-3000:]
