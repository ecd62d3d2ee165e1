"""NeoCls through the real command line: ``neonet fit/test`` with the tiny configs, shipped configs parse,
and (slow) ``neonet cv`` over all folds followed by the report."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from neonet.data.base import FoldDataModule
from neonet.run.atomic import read_json, sha256_file
from neonet.run.cli import main
from test_cls_fixtures import CONF, REPO, one_thread, write_fake_autoencoder, write_patch_cohort  # noqa: F401


def data_args(cohort: dict, fold: int = 0) -> list[str]:
    return [
        f"--data.cases={cohort['cases']}",
        f"--data.runs_dir={cohort['runs_dir']}",
        f"--data.experiment={cohort['experiment']}",
        f"--data.fold={fold}",
    ]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return write_patch_cohort(tmp_path_factory.mktemp("cls_cli"), n=12)


def test_baseline_trains_and_tests_through_the_cli(cohort: dict) -> None:
    ws = cohort["ws"]
    assert main(["fit", "--config", str(CONF / "baseline.yaml"), *data_args(cohort)]) == 0
    art = ws.read_artifact("resnet18", 0)
    assert art["status"] == "fit-complete" and art["monitor"] == "val/selection"
    assert "encoder_checkpoint" not in art["upstream"] and len(art["upstream"]["patches_manifest"]["sha256"]) == 64
    log = pd.read_csv(ws.stage_dir("resnet18", 0) / "metrics.csv").dropna(subset=["val/selection"])
    assert len(log) == 2  # val/auc with ties broken by the lower whole-split val/loss
    assert (log["val/selection"] - (log["val/auc"] - 1e-4 * log["val/loss"])).abs().max() < 1e-6
    best = ws.best_checkpoint("resnet18", 0)
    assert best.is_file() and ws.last_checkpoint("resnet18", 0).is_file()
    assert main(["test", "--config", str(CONF / "baseline.yaml"), *data_args(cohort), "--ckpt_path", str(best)]) == 0
    frame = pd.read_csv(ws.stage_dir("resnet18", 0) / "test_predictions.csv", dtype={"case_id": str})
    split = read_json(ws.splits_path)["splits"][0]
    assert sorted(frame["case_id"]) == sorted(split["test"])
    threshold = float(torch.load(best, map_location="cpu", weights_only=False)["state_dict"]["val_threshold"])
    assert frame["threshold_youden_val"].eq(threshold).all()


def test_select_from_epoch_keeps_early_epochs_out_of_best(cohort: dict) -> None:
    ws = cohort["ws"]
    args = [
        "fit",
        "--config",
        str(CONF / "baseline.yaml"),
        *data_args(cohort),
        "--model.stage=resnet18_late",
        "--model.select_from_epoch=1",
    ]
    assert main(args) == 0
    log = pd.read_csv(ws.stage_dir("resnet18_late", 0) / "metrics.csv").dropna(subset=["val/selection"])
    assert log["epoch"].tolist() == [0, 1]
    assert log["val/selection"].iloc[0] == -1.0 and log["val/selection"].iloc[1] > -1.0
    best = torch.load(ws.best_checkpoint("resnet18_late", 0), map_location="cpu", weights_only=False)
    assert best["epoch"] == 1


def test_pattennet_fits_through_the_cli_with_the_folds_autoencoder(cohort: dict) -> None:
    ws = cohort["ws"]
    dm = FoldDataModule(cohort["cases"], experiment=cohort["experiment"], runs_dir=cohort["runs_dir"], fold=1, folds=3)
    ckpt, ae = write_fake_autoencoder(ws, 1, seed=7, train_cases=list(dm.split.train))
    assert main(["fit", "--config", str(CONF / "pattennet.yaml"), *data_args(cohort, fold=1)]) == 0
    art = ws.read_artifact("pattennet", 1)
    enc = art["upstream"]["encoder_checkpoint"]
    assert enc["path"] == str(ckpt) and enc["sha256"] == sha256_file(ckpt) and enc["fold"] == 1
    state = torch.load(ws.best_checkpoint("pattennet", 1), map_location="cpu", weights_only=False)["state_dict"]
    ae_state = ae.state_dict()
    encoder_keys = [k for k in state if k.startswith("net.encoder.")]
    assert len(encoder_keys) > 10
    for key in encoder_keys:
        assert torch.equal(state[key], ae_state[f"encoder.{key.removeprefix('net.encoder.')}"]), key


def test_pattennet_loads_a_neogen_autoencoder_trained_through_the_cli(tmp_path: Path) -> None:
    pytest.importorskip("neonet.gen")
    if not (CONF / "autoencoder.yaml").is_file():
        pytest.skip("tests/conf/autoencoder.yaml not written yet")
    cohort = write_patch_cohort(tmp_path, n=12)
    assert main(["fit", "--config", str(CONF / "autoencoder.yaml"), *data_args(cohort)]) == 0
    assert main(["fit", "--config", str(CONF / "pattennet.yaml"), *data_args(cohort)]) == 0
    ws = cohort["ws"]
    enc = ws.read_artifact("pattennet", 0)["upstream"]["encoder_checkpoint"]
    assert enc["sha256"] == sha256_file(ws.best_checkpoint("autoencoder", 0))
    ae_state = torch.load(ws.best_checkpoint("autoencoder", 0), map_location="cpu", weights_only=False)["state_dict"]
    state = torch.load(ws.best_checkpoint("pattennet", 0), map_location="cpu", weights_only=False)["state_dict"]
    keys = [k for k in state if k.startswith("net.encoder.blocks.")]
    assert keys and all(torch.equal(state[k], ae_state[f"autoencoder.encoder.{k.removeprefix('net.encoder.')}"]) for k in keys)


def test_pattennet_cli_names_the_missing_autoencoder(cohort: dict, capsys: pytest.CaptureFixture) -> None:
    rc = main(["fit", "--config", str(CONF / "pattennet.yaml"), *data_args(cohort, fold=2)])
    assert rc == 2
    assert "neonet cv --config tests/conf/autoencoder.yaml --folds 2" in capsys.readouterr().err


SHIPPED = sorted(
    [
        *(REPO / "experiments" / "demo").glob("pattennet*.yaml"),
        *(REPO / "experiments" / "demo").glob("baseline_*.yaml"),
        CONF / "pattennet.yaml",
        CONF / "baseline.yaml",
    ]
)


@pytest.mark.parametrize("config", SHIPPED, ids=lambda p: str(p.relative_to(REPO)))
def test_shipped_configs_parse(config: Path, capsys: pytest.CaptureFixture) -> None:
    overlays = [REPO / "experiments" / "demo" / "null" / "null.yaml"] if "experiments" in str(config) else []
    for extra in [[], *[["--config", str(o)] for o in overlays]]:
        with pytest.raises(SystemExit) as exc:
            main(["fit", "--config", str(config), *extra, "--print_config"])
        assert exc.value.code in (0, None)
        printed = capsys.readouterr().out
        assert "class_path: neonet.cls.PattenNetModule" in printed or "class_path: neonet.cls.ClassifierModule" in printed
        if extra:
            assert "experiment: demo-null" in printed


def autoencoder_kl_args(config: Path) -> dict:
    cfg = yaml.safe_load(config.read_text(encoding="utf-8"))
    model = cfg["model"]["init_args"]
    if "net" in model:
        model = model["net"]["init_args"]["encoder"]["init_args"]
    return model["autoencoder"]["init_args"]


@pytest.mark.parametrize("folder", [REPO / "experiments" / "demo", CONF], ids=["experiments", "tests-conf"])
def test_pattennet_encoder_matches_the_autoencoder_config(folder: Path) -> None:
    if not (folder / "autoencoder.yaml").is_file():
        pytest.skip(f"{folder / 'autoencoder.yaml'} not written yet")
    assert autoencoder_kl_args(folder / "pattennet.yaml") == autoencoder_kl_args(folder / "autoencoder.yaml")


def fake_fold_autoencoders(cohort: dict, folds: int = 3) -> None:
    """A fake autoencoder checkpoint per fold, recorded as trained on that fold's training cases."""
    for k in range(folds):
        dm = FoldDataModule(cohort["cases"], experiment=cohort["experiment"], runs_dir=cohort["runs_dir"], fold=k, folds=folds)
        write_fake_autoencoder(cohort["ws"], k, seed=k, train_cases=list(dm.split.train))


@pytest.mark.slow
def test_cv_runs_every_fold_then_reports(tmp_path: Path) -> None:
    cohort = write_patch_cohort(tmp_path, n=15)
    ws = cohort["ws"]
    fake_fold_autoencoders(cohort)
    cmd = [
        sys.executable,
        "-m",
        "neonet",
        "cv",
        "--config",
        str(CONF / "pattennet.yaml"),
        "--",
        f"--data.cases={cohort['cases']}",
        f"--data.runs_dir={cohort['runs_dir']}",
        f"--data.experiment={cohort['experiment']}",
    ]
    env = {"WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, encoding="utf-8", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for k in range(3):
        art = ws.read_artifact("pattennet", k)
        assert art["status"] == "complete" and "auroc" in art["test_metrics"]
        assert (ws.stage_dir("pattennet", k) / "metrics.csv").is_file()  # the fit's log survives `neonet test`
    summary = pd.read_csv(ws.reports_dir / "cls_summary.csv")
    assert list(summary["stage"]) == ["pattennet"] and summary["n"].iloc[0] == 15
    assert json.loads((ws.reports_dir / "cls_report.json").read_text(encoding="utf-8"))["folds"] == 3


def test_cv_jobs_runs_folds_concurrently_with_logs_then_one_report(tmp_path: Path) -> None:
    cohort = write_patch_cohort(tmp_path, n=12)
    ws = cohort["ws"]
    fake_fold_autoencoders(cohort)
    cmd = [
        sys.executable,
        "-m",
        "neonet",
        "cv",
        "--config",
        str(CONF / "pattennet.yaml"),
        "--folds",
        "0",
        "2",
        "--jobs",
        "2",
        "--",
        f"--data.cases={cohort['cases']}",
        f"--data.runs_dir={cohort['runs_dir']}",
        f"--data.experiment={cohort['experiment']}",
        "--trainer.enable_progress_bar=true",  # asked for, but cv.log is no terminal: one line per epoch instead
        "--trainer.max_epochs=2",
    ]
    env = {"WANDB_MODE": "disabled", "PATH": "/usr/bin:/bin", **{k: v for k, v in os.environ.items() if k == "PYTHONPATH"}}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, encoding="utf-8", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for k in (0, 2):
        assert ws.read_artifact("pattennet", k)["status"] == "complete"
        text = (ws.stage_dir("pattennet", k) / "cv.log").read_text(encoding="utf-8")
        assert f"fold {k}: neonet fit" in text
        assert "\r" not in text and "Tip:" not in text and "LeafSpec" not in text, text
        epoch_line = rf"pattennet fold {k}: epoch (\d+)/2  train/loss [-\d.e]+  val/loss [-\d.e]+  val/selection "
        assert re.findall(epoch_line, text) == ["1", "2"], text
        messages = [re.sub(r"^(\d\d:\d\d:\d\d \w+ [\w.]+: |INFO: )", "", line) for line in text.splitlines()]
        assert not [a for a, b in zip(messages, messages[1:]) if a == b], text  # each line once
        progress = json.loads(ws.fold_progress("pattennet", k).read_text(encoding="utf-8"))
        assert progress["epoch"] == progress["max_epochs"] == 2 and progress["monitor"] == "val/selection"
    assert ws.read_artifact("pattennet", 1) is None
    summary = pd.read_csv(ws.reports_dir / "cls_per_fold.csv")
    assert sorted(summary["fold"]) == [0, 2]
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, encoding="utf-8", timeout=600)
    assert again.returncode == 0 and "skipped" in again.stderr
    changed = subprocess.run(
        [*cmd[:-1], "--trainer.max_epochs=3"], cwd=REPO, env=env, capture_output=True, text=True, encoding="utf-8", timeout=600
    )
    assert changed.returncode != 0, "a finished fold must not be skipped under changed settings"
    assert "pattennet fold 0 at " in changed.stderr and "setting trainer.max_epochs: 2 (stored) -> 3 (now)" in changed.stderr
    assert "--force" in changed.stderr and ws.read_artifact("pattennet", 0)["status"] == "complete"
