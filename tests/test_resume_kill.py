"""Faults: a fit SIGKILLed mid-epoch resumes from its step checkpoint under ``neonet cv``, leaves no
corrupt or temporary file, and a second ``neonet cv`` is a no-op. Checkpoint writes are atomic."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import neonet.run.lightning_cli as lcli
from neonet.errors import NeonetError
from neonet.run.lightning_cli import AtomicCheckpointIO, _with_atomic_checkpoint_io
from neonet.workspace import Workspace

TESTS = Path(__file__).resolve().parent
SEG = TESTS / "conf" / "seg.yaml"
FOLD = 1
EPOCHS = 3
KILL_AT_STEP = 4  # batch 1 of epoch 1 with the tiny seg config (3 batches per epoch)


def fit_env() -> dict[str, str]:
    """Environment of a neonet subprocess: one thread, no W&B, INFO logs, the test helpers importable."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", WANDB_MODE="disabled", NEONET_LOG_LEVEL="INFO")
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), *filter(None, [env.get("PYTHONPATH")])])
    return env


def file_stamps(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


def test_sigkill_mid_epoch_then_cv_resumes_and_rerun_is_noop(phantom_cohort: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    ws = Workspace(runs, "test")
    common = [
        f"--data.cases={phantom_cohort}",
        f"--data.runs_dir={runs}",
        f"--trainer.max_epochs={EPOCHS}",
        "--checkpoint_every_n_steps=1",
    ]
    marker = tmp_path / "paused"
    pause = {"class_path": "fit_probes.PauseAtStep", "init_args": {"step": KILL_AT_STEP, "marker": str(marker)}}
    log = open(tmp_path / "killed-fit.log", "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "neonet",
            "fit",
            "--config",
            str(SEG),
            *common,
            f"--data.fold={FOLD}",
            "--trainer.callbacks+=" + json.dumps(pause),
        ],
        env=fit_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.time() + 240
        while not marker.exists():
            assert proc.poll() is None, (tmp_path / "killed-fit.log").read_text(encoding="utf-8")[-4000:]
            assert time.time() < deadline, "the fit never reached the kill step"
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)
        log.close()
    assert proc.returncode == -signal.SIGKILL

    step, batch_idx = (int(v) for v in marker.read_text(encoding="utf-8").split())
    killed = torch.load(ws.last_checkpoint("seg", FOLD), map_location="cpu", weights_only=False)
    assert killed["global_step"] == step == KILL_AT_STEP
    assert batch_idx > 0, "the kill must come mid-epoch"
    steps_per_epoch = (step - batch_idx) // killed["epoch"]
    planned = EPOCHS * steps_per_epoch
    assert ws.read_artifact("seg", FOLD) is None  # a killed fit never claims to be finished

    cv = [sys.executable, "-m", "neonet", "cv", "--config", str(SEG), "--folds", str(FOLD), "--", *common]
    first = subprocess.run(cv, env=fit_env(), capture_output=True, text=True, encoding="utf-8", timeout=400, check=False)
    out = first.stdout + first.stderr
    assert first.returncode == 0, out[-6000:]
    assert f"fold {FOLD}: resuming from {ws.last_checkpoint('seg', FOLD)}" in out
    assert "Restoring states from the checkpoint path" in out

    last = torch.load(ws.last_checkpoint("seg", FOLD), map_location="cpu", weights_only=False)
    assert last["global_step"] == planned  # continued from step 4, not restarted (that would end at planned + 4)
    torch.load(ws.best_checkpoint("seg", FOLD), map_location="cpu", weights_only=False)
    art = ws.read_artifact("seg", FOLD)
    assert art["status"] == "complete" and art["global_step"] == planned
    assert art["best_checkpoint"]["path"] == str(ws.best_checkpoint("seg", FOLD))
    assert [p for p in runs.rglob("*") if ".tmp" in p.name] == []
    assert sorted(p.name for p in (ws.root / "seg").iterdir() if p.name.startswith("fold")) == [f"fold{FOLD}"]
    assert (ws.reports_dir / "seg_summary.json").is_file()

    before = file_stamps(runs)
    start = time.time()
    again = subprocess.run(cv, env=fit_env(), capture_output=True, text=True, encoding="utf-8", timeout=200, check=False)
    assert again.returncode == 0, (again.stdout + again.stderr)[-6000:]
    assert f"fold {FOLD}: seg already complete" in again.stderr
    assert "nothing new to summarise" in again.stderr
    assert file_stamps(runs) == before  # idempotent: nothing rewritten, nothing added
    assert time.time() - start < 60


def test_checkpoint_save_is_atomic_and_cleans_killed_saves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    io = AtomicCheckpointIO()
    target = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 1}, target)
    stale = target.parent / ".last.ckpt.killed.tmp.ckpt"  # what a save killed by SIGKILL leaves behind
    stale.write_bytes(b"half a checkpoint")

    real_save = torch.save

    def crash(obj: object, f: object, *args: object, **kwargs: object) -> None:
        f.write(b"partial bytes")  # type: ignore[attr-defined]
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="simulated"):
        io.save_checkpoint({"global_step": 2}, target)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.load(target, weights_only=False)["global_step"] == 1  # the previous checkpoint is intact
    assert not stale.exists()  # removed before the next save of the same checkpoint
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]

    io.save_checkpoint({"global_step": 3}, target)
    assert torch.load(target, weights_only=False)["global_step"] == 3
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_checkpoint_save_on_a_full_disk_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch reports a full disk as "unexpected pos"; the save names the file, the free space and what to do."""
    io = AtomicCheckpointIO()
    target = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "w": torch.zeros(4)}, target)

    def crash(obj: object, f: object, *args: object, **kwargs: object) -> None:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", crash)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(lcli.shutil, "disk_usage", lambda p: usage._replace(free=10 * 2**20))
    with pytest.raises(NeonetError, match=r"last\.ckpt.*disk is full \(10 MB free.*run the same command again"):
        io.save_checkpoint({"global_step": 2, "w": torch.zeros(2**20)}, target)
    monkeypatch.setattr(lcli.shutil, "disk_usage", lambda p: usage._replace(free=2**40))  # not the disk: as raised
    with pytest.raises(RuntimeError, match="unexpected pos"):
        io.save_checkpoint({"global_step": 2}, target)
    monkeypatch.undo()
    assert torch.load(target, weights_only=False)["global_step"] == 1
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]


def test_cli_adds_atomic_checkpoint_io_unless_one_is_given() -> None:
    assert [type(p) for p in _with_atomic_checkpoint_io(None)] == [AtomicCheckpointIO]
    assert [type(p) for p in _with_atomic_checkpoint_io("bf16-mixed")] == [str, AtomicCheckpointIO]
    mine = AtomicCheckpointIO()
    assert _with_atomic_checkpoint_io([mine]) == [mine]
