"""One process per stage fold: a second `neonet cv` on a fold in progress stops with a clear message."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from neonet.errors import NeonetError
from neonet.run.cv import cv
from neonet.run.fold_lock import fold_lock
from neonet.workspace import Workspace

ROOT = Path(__file__).resolve().parents[1]


def sleeper(fd: int) -> subprocess.Popen:
    """A child that inherits the locked descriptor, as `neonet fit` does from `neonet cv`."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], pass_fds=(fd,))


def test_lock_outlives_its_taker_while_a_child_holds_it(tmp_path: Path) -> None:
    lock = tmp_path / "seg" / "fold1" / ".cv.lock"
    with fold_lock(lock, "seg", 1) as fd:
        assert fd is not None
        child = sleeper(fd)
    try:
        # the taker is gone (as a SIGKILLed cv driver would be), its fit child still runs
        with pytest.raises(NeonetError, match=r"fold 1 of stage seg is being run by another process \(neonet cv, pid \d+ on "):
            with fold_lock(lock, "seg", 1):
                pass
    finally:
        child.kill()
        child.wait()
    with fold_lock(lock, "seg", 1) as fd:  # released by the OS when the last holder exited
        assert fd is not None


def test_cv_refuses_a_fold_that_another_process_runs(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    ws = Workspace(runs, "demo")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from neonet.run.fold_lock import fold_lock\n"
            "with fold_lock(sys.argv[1], 'seg', 0):\n    print('locked', flush=True); time.sleep(60)",
            str(ws.stage_dir("seg", 0) / ".cv.lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
        encoding="utf-8",
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        start = time.time()
        with pytest.raises(NeonetError, match="fold 0 of stage seg is being run by another process"):
            cv([ROOT / "experiments/demo/seg.yaml"], folds=[0], override=[f"--data.runs_dir={runs}"])
        assert time.time() - start < 30
        assert not ws.last_checkpoint("seg", 0).exists()
    finally:
        holder.kill()
        holder.wait()
