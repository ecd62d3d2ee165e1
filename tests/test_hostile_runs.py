"""Issue 20, rows 3, 5, 6, 7 and 8 (the runs-folder rows), replayed as a careless, unlucky or hostile user.

Each test asserts the clear outcome: the message names the file or fold and the way on, no earlier
result is lost, nothing is written outside the experiment. One NeoSeg fold is trained once
(``trained_fold``, ``neonet fit`` then marked complete as ``neonet cv`` would) and copied by the tests
that tamper with it; the other folds are fabricated files (no training).
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from neonet.data.cases import read_cases
from neonet.data.splits import ensure_splits
from neonet.errors import NeonetError
from neonet.run.atomic import sha256_file
from neonet.run.cli import main
from neonet.run.fold_lock import fold_lock
from neonet.run.reload import read_state_dict
from neonet.run.wandb_privacy import OPT_IN_ENV, REDACTED, redact, redact_table
from neonet.workspace import Workspace

TESTS = Path(__file__).resolve().parent
SEG = TESTS / "conf" / "seg.yaml"
EXPERIMENT = "test"  # tests/conf/_shared.yaml: 3 folds, split seed 0


# ----------------------------------------------------------------------------- helpers
def stamps(root: Path) -> dict[str, tuple[int, int]]:
    """Every file below ``root`` with its size and modification time (lock files left out)."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".cv.lock"
    }


def cv_args(cases: Path, runs: Path, *options: str, fold: int = 0) -> list[str]:
    return ["cv", "--config", str(SEG), "--folds", str(fold), *options, "--", f"--data.cases={cases}", f"--data.runs_dir={runs}"]


def fit_args(cases: Path, runs: Path, fold: int, *extra: str) -> list[str]:
    return ["fit", "--config", str(SEG), f"--data.cases={cases}", f"--data.runs_dir={runs}", f"--data.fold={fold}", *extra]


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``neonet <args>`` in this process: (exit code, what it printed to stderr)."""
    capsys.readouterr()
    code = main(args)
    return code, capsys.readouterr().err


def fabricated_fold(cases: Path, runs: Path, fold: int = 0, status: str = "complete") -> Workspace:
    """A fold folder as a finished fit leaves it (split file, checkpoints, artifact.json), without training."""
    ws = Workspace(runs, EXPERIMENT)
    ensure_splits(ws.splits_path, read_cases(cases), folds=3, seed=0)
    ws.checkpoint_dir("seg", fold).mkdir(parents=True)
    for name in ("best", "last"):
        torch.save(
            {"state_dict": {"w": torch.full((64,), float(fold))}, "epoch": 0}, ws.checkpoint_dir("seg", fold) / f"{name}.ckpt"
        )
    ws.write_artifact("seg", fold, status=status, best_checkpoint=ws.checkpoint_record(ws.best_checkpoint("seg", fold)))
    return ws


@pytest.fixture(scope="module")
def trained_fold(phantom_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project folder ``<tmp>/project`` with the cohort in ``data/`` and a trained, complete NeoSeg fold 0
    under ``runs/`` (tests copy the project before changing anything)."""
    project = tmp_path_factory.mktemp("hostile") / "project"
    shutil.copytree(phantom_cohort.parent, project / "data")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(fit_args(project / "data" / phantom_cohort.name, project / "runs", 0)) == 0
    finally:
        torch.set_num_threads(threads)
    ws = Workspace(project / "runs", EXPERIMENT)
    ws.write_artifact("seg", 0, status="complete")  # what `neonet cv` adds after the fold's post-fit work
    return project


def copy_project(trained_fold: Path, tmp_path: Path, name: str = "project") -> tuple[Path, Path, Workspace]:
    """A copy of the trained project: (cases.csv, runs folder, workspace)."""
    project = tmp_path / name
    shutil.copytree(trained_fold, project, symlinks=True)
    cases = next((project / "data").glob("*.csv"))
    return cases, project / "runs", Workspace(project / "runs", EXPERIMENT)


# ----------------------------------------------------------------------------- row 3: truncated JSON and last.ckpt
def test_truncated_artifact_and_splits_name_the_file_and_the_way_on(
    phantom_cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    ws = fabricated_fold(phantom_cohort, runs)
    artifact = ws.artifact_path("seg", 0)
    artifact.write_text(artifact.read_text(encoding="utf-8")[:40])
    before = stamps(tmp_path)
    code, err = run_cli(cv_args(phantom_cohort, runs), capsys)
    assert code == 2 and "Traceback" not in err and "JSONDecodeError" not in err
    assert f"{artifact}: cannot read this JSON file: it is truncated or not JSON (" in err
    assert "It records how seg fold 0 was trained. Restore it from a backup, or re-train the fold" in err
    assert "neonet cv --config" in err and "--folds 0 --force" in err
    code, err = run_cli(["summary", "--experiment", EXPERIMENT, "--runs_dir", str(runs)], capsys)
    assert code == 2 and f"{artifact}: cannot read this JSON file" in err
    assert stamps(tmp_path) == before  # nothing written, nothing lost

    ws.splits_path.write_text(ws.splits_path.read_text(encoding="utf-8")[:100])
    before = stamps(tmp_path)
    code, err = run_cli(cv_args(phantom_cohort, runs), capsys)
    assert code == 2 and "Traceback" not in err
    assert f"{ws.splits_path}: cannot read this JSON file: it is truncated or not JSON" in err
    assert "restore it from a backup or a copy of the experiment" in err and "--data.experiment NAME" in err
    ws.splits_path.write_text("")
    code, err = run_cli(cv_args(phantom_cohort, runs), capsys)
    assert code == 2 and f"{ws.splits_path}: cannot read this JSON file: it is empty" in err
    ws.splits_path.write_text('{"folds": 3}')
    code, err = run_cli(cv_args(phantom_cohort, runs), capsys)
    assert code == 2 and f"{ws.splits_path}: not a split file written by neonet" in err
    assert {k: v for k, v in stamps(tmp_path).items() if k != "runs/test/splits.json"} == {
        k: v for k, v in before.items() if k != "runs/test/splits.json"
    }


def test_truncated_last_checkpoint_is_named_and_nothing_is_changed(
    phantom_cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """cv used to pass it to the fit, which died in torch's zip reader, and advised "run the same command again"."""
    runs = tmp_path / "runs"
    ws = fabricated_fold(phantom_cohort, runs, fold=1, status="complete")  # split file; fold 1 done
    last = ws.last_checkpoint("seg", 0)
    last.parent.mkdir(parents=True)
    torch.save({"state_dict": {"w": torch.zeros(4096)}, "epoch": 1}, last)
    last.write_bytes(last.read_bytes()[:5000])  # an interrupted fold whose last.ckpt was cut short
    before = stamps(tmp_path)
    code, err = run_cli(cv_args(phantom_cohort, runs), capsys)
    assert code == 2 and "Traceback" not in err
    assert f"{last}: cannot resume seg fold 0 from this checkpoint: it is truncated or corrupt (BadZipFile" in err
    assert "Running the same command again would fail the same way, and nothing was changed" in err
    assert f"mv {last} {last}.unreadable" in err
    assert f"neonet cv --config {SEG} --folds 0 --force --" in err
    assert stamps(tmp_path) == before

    # `neonet fit --ckpt_path` on it by hand: the same check, before anything is written
    code, err = run_cli(fit_args(phantom_cohort, runs, 0, "--ckpt_path", str(last)), capsys)
    assert code == 2 and f"{last}: cannot resume seg fold 0 from this checkpoint" in err
    assert "run the fit without --ckpt_path again" in err
    assert stamps(tmp_path) == before


# ----------------------------------------------------------------------------- row 5: deleted splits, damaged best.ckpt
def test_deleted_splits_with_trained_folds_is_an_error_not_a_new_split(
    phantom_cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    ws = fabricated_fold(phantom_cohort, runs)
    ws.splits_path.unlink()
    before = stamps(tmp_path)
    for args in (cv_args(phantom_cohort, runs, fold=1), fit_args(phantom_cohort, runs, 1)):
        code, err = run_cli(args, capsys)
        assert code == 2 and "Traceback" not in err
        assert f"{ws.splits_path} is missing, but experiment 'test' has trained folds ({ws.artifact_path('seg', 0)}" in err
        assert "a new one would put cases they trained on into other folds' test sets" in err
        assert "Restore splits.json" in err and "--data.experiment NAME" in err
        assert not ws.splits_path.exists()
        assert {k: v for k, v in stamps(tmp_path).items() if "fold1" not in k} == before
    assert not ws.last_checkpoint("seg", 1).exists()


def test_damaged_best_checkpoint_of_a_complete_fold_is_not_trusted(
    trained_fold: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    cases, runs, ws = copy_project(trained_fold, tmp_path)
    best = ws.best_checkpoint("seg", 0)
    good = best.read_bytes()
    recorded = ws.read_artifact("seg", 0)["best_checkpoint"]["sha256"]
    assert recorded == sha256_file(best)
    best.write_bytes(good[: len(good) // 2])  # truncated after the fold finished
    before = stamps(tmp_path)
    code, err = run_cli(cv_args(cases, runs), capsys)
    assert code == 2 and "already complete" not in err
    assert f"{best}: this checkpoint of seg fold 0 is not the file {ws.artifact_path('seg', 0)} recorded" in err
    assert f"recorded {recorded[:12]}…): it was damaged (e.g. truncated) or replaced since" in err
    assert "Restore the file from a backup, or re-train the fold" in err and "--folds 0 --force" in err
    assert stamps(tmp_path) == before

    # a readable checkpoint swapped in is refused by every reader of trained folds (neonet.run.reload)
    other = dict(torch.load(io.BytesIO(good), map_location="cpu", weights_only=True))
    other["state_dict"] = {k: torch.zeros_like(v) for k, v in other["state_dict"].items()}
    torch.save(other, best)
    with pytest.raises(NeonetError, match=r"this checkpoint of seg fold 0 is not the file .*artifact\.json recorded"):
        read_state_dict(best)
    best.write_bytes(good)  # restored from a backup: trusted again
    assert read_state_dict(best)
    caplog.set_level(logging.INFO, logger="neonet")
    code, err = run_cli(cv_args(cases, runs, "--summary", "false"), capsys)
    assert code == 0 and "fold 0: seg already complete" in caplog.text


# ----------------------------------------------------------------------------- row 6: moved runs folder, lock holder
def test_moved_project_is_not_a_settings_change(
    trained_fold: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """The fold's config.yaml holds absolute paths of the old place (cohort, runs folder); both moved together."""
    cases, runs, ws = copy_project(trained_fold, tmp_path, "old_place")
    saved = yaml.safe_load(ws.config_path("seg", 0).read_text(encoding="utf-8"))
    assert saved["data"]["init_args"]["runs_dir"] == str(trained_fold / "runs")
    shutil.move(str(tmp_path / "old_place"), str(tmp_path / "new_place"))
    cases, runs, ws = (
        tmp_path / "new_place" / "data" / cases.name,
        tmp_path / "new_place" / "runs",
        Workspace(tmp_path / "new_place" / "runs", EXPERIMENT),
    )
    before = stamps(tmp_path)
    caplog.set_level(logging.INFO, logger="neonet")
    code, err = run_cli(cv_args(cases, runs, "--summary", "false"), capsys)
    assert code == 0, err
    assert "fold 0: seg already complete" in caplog.text and "other settings" not in err
    assert stamps(tmp_path) == before  # skipped: nothing re-trained, nothing rewritten

    # a real change of settings in the moved project is still one
    code, err = run_cli([*cv_args(cases, runs, "--summary", "false"), "--model.init_args.optimizer.init_args.lr=0.01"], capsys)
    assert code == 2 and "setting model.optimizer.lr: 0.003 (stored) -> 0.01 (now)" in err
    assert "setting data.runs_dir" not in err and "setting data.cases" not in err


LOCK_CHILD = """
import sys, time
from neonet.run.fold_lock import worker_lock
with worker_lock(sys.argv[1], "seg", 0, "neonet fit", take=True):
    print("adopted", flush=True)
    time.sleep(120)
"""

LOCK_DRIVER = """
import subprocess, sys, time
from neonet.run.fold_lock import child_env, fold_lock
with fold_lock(sys.argv[1], "seg", 0, holder="neonet cv") as fd:
    child = subprocess.Popen([sys.executable, "-c", sys.argv[2], sys.argv[1]], pass_fds=(fd,), env=child_env(fd))
    print(child.pid, flush=True)
    child.wait()
"""


def test_lock_names_the_live_fit_child_after_the_cv_driver_is_killed(tmp_path: Path) -> None:
    """cv hands its fold lock to the fit child, which adopts it (no deadlock) and names itself in it."""
    lock = Workspace(tmp_path / "runs", EXPERIMENT).fold_lock("seg", 0)
    lock.parent.mkdir(parents=True)
    driver = subprocess.Popen(
        [sys.executable, "-c", LOCK_DRIVER, str(lock), LOCK_CHILD],
        stdout=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        start_new_session=True,
    )
    child_pid = int(driver.stdout.readline())
    try:
        deadline = time.time() + 30
        while "neonet fit" not in lock.read_text(encoding="utf-8"):  # the child adopted the lock cv holds
            assert time.time() < deadline, lock.read_text(encoding="utf-8")
            time.sleep(0.1)
        os.kill(driver.pid, signal.SIGKILL)  # the cv driver dies; its fit child trains on
        driver.wait()
        with pytest.raises(NeonetError) as err:
            with fold_lock(lock, "seg", 0):
                pass
        message = str(err.value)
        assert f"fold 0 of stage seg is being run by another process (neonet fit, pid {child_pid} on " in message
        assert f"pid {driver.pid}" not in message
    finally:
        os.kill(child_pid, signal.SIGKILL)
    deadline = time.time() + 30
    while True:  # released by the OS once the child is gone
        try:
            with fold_lock(lock, "seg", 0):
                break
        except NeonetError:
            assert time.time() < deadline
            time.sleep(0.1)


# ----------------------------------------------------------------------------- row 7: two fits, cv --force
def test_a_second_fit_of_a_fold_in_progress_is_refused(
    phantom_cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A resubmitted cluster job: `neonet fit` takes the fold lock itself, so it stops before writing anything."""
    runs = tmp_path / "runs"
    ws = Workspace(runs, EXPERIMENT)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from neonet.run.fold_lock import fold_lock\n"
            "with fold_lock(sys.argv[1], 'seg', 0, holder='neonet fit'):\n    print('locked', flush=True); time.sleep(120)",
            str(ws.fold_lock("seg", 0)),
        ],
        stdout=subprocess.PIPE,
        text=True,
        encoding="utf-8",
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = stamps(tmp_path)
        code, err = run_cli(fit_args(phantom_cohort, runs, 0), capsys)
        assert code == 2 and "Traceback" not in err
        assert f"fold 0 of stage seg is being run by another process (neonet fit, pid {holder.pid} on " in err
        assert f"lock file {ws.fold_lock('seg', 0)}). Wait for it to finish, or stop it" in err
        assert stamps(tmp_path) == before  # no config.yaml, metrics.csv or checkpoint of the second fit
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_two_real_fits_of_one_fold_train_it_once(
    phantom_cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same, with a real fit in progress: the second is refused, the first ends with one row per step."""
    from test_resume_kill import fit_env

    runs = tmp_path / "runs"
    ws = Workspace(runs, EXPERIMENT)
    marker = tmp_path / "paused"
    pause = {"class_path": "fit_probes.PauseAtStep", "init_args": {"step": 1, "marker": str(marker), "seconds": 5}}
    args = fit_args(phantom_cohort, runs, 0, "--trainer.max_epochs=2")
    first = subprocess.Popen(
        [sys.executable, "-m", "neonet", *args, "--trainer.callbacks+=" + json.dumps(pause)],
        env=fit_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 240
        while not marker.exists():
            assert first.poll() is None and time.time() < deadline
            time.sleep(0.2)
        code, err = run_cli(args, capsys)
        assert code == 2 and f"is being run by another process (neonet fit, pid {first.pid} on " in err
        assert first.wait(timeout=300) == 0
    finally:
        if first.poll() is None:
            first.kill()
    metrics = pd.read_csv(ws.stage_dir("seg", 0) / "metrics.csv")
    steps = metrics.dropna(subset=["train/loss"])["step"] if "train/loss" in metrics else metrics["step"]
    assert not steps.duplicated().any()
    assert ws.read_artifact("seg", 0)["status"] == "fit-complete"


def test_force_checks_the_manifest_before_touching_the_fold(
    phantom_cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    ws = fabricated_fold(phantom_cohort, runs)
    frame = pd.read_csv(phantom_cohort)
    frame["image"] = [str(phantom_cohort.parent / p) for p in frame["image"]]
    frame["label"] = [str(phantom_cohort.parent / p) for p in frame["label"]]
    extra = frame.iloc[[0]].assign(case_id="newcomer", patient_id="newcomer")
    changed = tmp_path / "cases_plus_one.csv"
    pd.concat([frame, extra]).to_csv(changed, index=False)
    before = stamps(tmp_path)
    code, err = run_cli(cv_args(changed, runs, "--force"), capsys)
    assert code == 2 and f"the case manifest no longer matches {ws.splits_path} (added: newcomer)" in err
    assert stamps(tmp_path) == before  # the fold's checkpoints and artifact.json are untouched
    assert not ws.replaced_dir("seg", 0).exists()


def test_force_puts_the_results_back_when_the_new_fit_fails_before_a_checkpoint(
    phantom_cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    ws = fabricated_fold(phantom_cohort, runs)
    before = stamps(ws.stage_dir("seg", 0))
    # the new fit passes cv's checks, then stops without a single training step (so without a checkpoint)
    args = [*cv_args(phantom_cohort, runs, "--force"), "--trainer.limit_train_batches=0"]
    code, err = run_cli(args, capsys)
    assert code == 2 and "fold 0: `neonet fit` failed with exit code 2" in err
    assert f"The fit saved no checkpoint, so the fold's earlier results are back in place in {ws.stage_dir('seg', 0)}" in err
    assert stamps(ws.stage_dir("seg", 0)) == before
    assert not ws.replaced_dir("seg", 0).exists()


# ----------------------------------------------------------------------------- row 8: W&B privacy
HPARAMS = {
    "cases": "/secret/cohort/cases.csv",
    "runs_dir": "runs",
    "experiment": "demo",
    "fold": 0,
    "spacing": [1.0, 1.0, 2.0],
    "monitor": "val/dice_tumor",
    "encoder_checkpoint": "runs/demo/autoencoder/fold0/checkpoints/best.ckpt",
    "net": {"class_path": "monai.networks.nets.DynUNet", "init_args": {"filters": [4, 8]}},
    "train_cases": ["case_017", "case_018"],
}


def test_what_goes_to_wandb_has_no_case_ids_or_paths_unless_opted_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(OPT_IN_ENV, raising=False)
    assert redact(HPARAMS) == {
        **HPARAMS,
        "cases": REDACTED,
        "runs_dir": REDACTED,
        "encoder_checkpoint": REDACTED,
        "train_cases": REDACTED,
    }
    frame = pd.DataFrame(
        {
            "case_id": ["case_017"],
            "fold": [0],
            "prediction": ["/runs/demo/seg/predictions/case_017.nii.gz"],
            "dice_liver": [0.9],
            "dice_tumor": [0.7],
            "tumor_ml_true": [12.0],
            "tumor_ml_pred": [11.0],
            "status": ["ok"],
        }
    )
    assert list(redact_table(frame).columns) == ["fold", "dice_liver", "dice_tumor", "status"]
    monkeypatch.setenv(OPT_IN_ENV, "1")
    assert redact(HPARAMS) == HPARAMS and redact_table(frame) is frame


def wandb_record(folder: Path, expect: bytes) -> bytes:
    """The bytes of the one offline run below ``folder`` (what `wandb sync` uploads), once they hold ``expect``
    (W&B's service may still be writing the file when ``finish`` returns)."""
    (run,) = folder.rglob("offline-run-*/run-*.wandb")
    deadline = time.time() + 30
    while expect not in run.read_bytes() and time.time() < deadline:
        time.sleep(0.2)
    return run.read_bytes()


def test_offline_wandb_runs_hold_no_case_ids_paths_or_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wandb

    from neonet.report.wandb_summary import log_cv_summary
    from neonet.run.lightning_cli import make_loggers
    from neonet.run.wandb_privacy import PrivateWandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv(OPT_IN_ENV, raising=False)
    ws = Workspace(tmp_path / "runs", EXPERIMENT)
    frame = pd.DataFrame(
        {"case_id": ["case_0173"], "fold": [0], "prediction": [str(ws.seg_prediction("case_0173"))], "dice_tumor": [0.7]}
    )
    frame["tumor_ml_true"] = 12.5
    panel = tmp_path / "panel.png"
    panel.write_bytes(b"not sent")
    log_cv_summary(ws, "seg", {"oof_dice": frame}, {"oof/dice_tumor_mean": 0.7}, patient_images={"panel": panel})
    summary_run = wandb_record(ws.root / "seg" / "cv", b"dice_tumor_mean")
    assert b"dice_tumor" in summary_run

    fold_dir = ws.stage_dir("seg", 0)
    (logger,) = [lg for lg in make_loggers(ws, "seg", 0) if isinstance(lg, PrivateWandbLogger)]
    logger.log_hyperparams({**HPARAMS, "cases": str(tmp_path / "cohort" / "cases.csv")})
    logger.log_metrics({"val/dice_tumor": 0.5}, step=0)
    logger.finalize("success")
    wandb.finish()
    fit_run = wandb_record(fold_dir, b"val/dice_tumor")
    assert b"val/dice_tumor" in fit_run and b"DynUNet" in fit_run
    for data in (summary_run, fit_run):
        assert b"case_0173" not in data and b"case_017" not in data
        assert str(tmp_path).encode() not in data and b"/secret/" not in data and b"checkpoints/best.ckpt" not in data
        assert b"hidden" in data  # W&B's host field
        if len(socket.gethostname()) >= 6:
            assert socket.gethostname().encode() not in data
        assert sys.executable.encode() not in data  # no program / command line metadata
    assert b"tumor_ml_true" not in summary_run and b"panel" not in summary_run
