"""The console: the fold progress lines of ``neonet cv --jobs N``, read from each fold's ``progress.json``,
and Lightning's log lines printed once, in neonet's format, without its adverts."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from neonet.run.atomic import write_json
from neonet.run.progress import FoldBoard, duration, progress_line, read_progress
from neonet.workspace import Workspace


def fake_progress(ws: Workspace, fold: int, epoch: int, started: float, updated: float, max_epochs: int | None = 10) -> None:
    """A fold's progress.json as EpochProgress writes it after ``epoch`` epochs of a fit started at ``started``."""
    write_json(
        ws.fold_progress("seg", fold),
        {
            "stage": "seg",
            "fold": fold,
            "epoch": epoch,
            "max_epochs": max_epochs,
            "monitor": "val/dice_mean",
            "metrics": {"train/loss": 0.93, "val/loss": 0.81, "val/dice_mean": 0.41234},
            "epoch_seconds": 19.0,
            "seconds_per_epoch": 20.0,
            "started": started,
            "updated": updated,
        },
    )


def test_duration() -> None:
    assert [duration(s) for s in (-3, 45, 89, 140, 3600, 7500)] == ["0 s", "45 s", "89 s", "2 min", "60 min", "2 h 05 min"]


def test_progress_line_from_a_fold_progress_file(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "runs", "test")
    t0 = 1_000_000.0
    fake_progress(ws, 1, epoch=3, started=t0 + 5, updated=t0 + 65)
    record = read_progress(ws.fold_progress("seg", 1), since=t0)
    assert record is not None
    # 7 epochs left at 20 s each, 10 s of the next one already spent
    line = progress_line(1, record, now=t0 + 75, started=t0)
    assert line == "fold 1: epoch 3/10  val/dice_mean 0.4123  20 s/epoch  ETA 2 min"
    fake_progress(ws, 1, epoch=10, started=t0 + 5, updated=t0 + 205)
    done = progress_line(1, read_progress(ws.fold_progress("seg", 1), since=t0), now=t0 + 235, started=t0)
    assert done == "fold 1: epoch 10/10  val/dice_mean 0.4123  20 s/epoch  fit done, finishing the fold (30 s)"
    fake_progress(ws, 1, epoch=4, started=t0 + 5, updated=t0 + 85, max_epochs=None)  # max_steps instead of max_epochs
    open_ended = progress_line(1, read_progress(ws.fold_progress("seg", 1), since=t0), now=t0 + 90, started=t0)
    assert open_ended == "fold 1: epoch 4  val/dice_mean 0.4123  20 s/epoch"


def test_board_shows_only_this_runs_progress(tmp_path: Path) -> None:
    """A progress.json left by an earlier run of the fold, or a damaged one, reads as "starting"."""
    ws = Workspace(tmp_path / "runs", "test")
    t0 = 2_000_000.0
    fake_progress(ws, 0, epoch=9, started=t0 - 500, updated=t0 - 300)  # an earlier run's
    fake_progress(ws, 1, epoch=2, started=t0 + 1, updated=t0 + 41)
    ws.stage_dir("seg", 2).mkdir(parents=True)
    ws.fold_progress("seg", 2).write_text('{"epoch": 3, "sta')  # being written by a non-atomic writer
    board = FoldBoard(ws, "seg", [0, 1, 2, 3], every=3600)
    assert not board.live  # pytest captures stderr: no terminal
    for k in (0, 1, 2):
        board.started[k] = t0
    board.fold_ended(2)
    lines = board.lines(now=t0 + 50)
    assert lines == {
        0: "fold 0: starting (50 s)",
        1: "fold 1: epoch 2/10  val/dice_mean 0.4123  20 s/epoch  ETA 3 min",  # 8 x 20 s - 9 s
        3: "fold 3: waiting",
    }


def test_board_logs_the_running_folds_when_not_a_terminal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ws = Workspace(tmp_path / "runs", "test")
    board = FoldBoard(ws, "seg", [0, 1], every=3600)
    board.fold_started(0)
    with caplog.at_level(logging.INFO, logger="neonet.run.progress"):
        board.report()
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == ["fold 0: starting"]


def test_lightning_lines_are_printed_once_without_adverts() -> None:
    """After ``import lightning`` (which adds a console handler of its own), neonet's logging prints each line once."""
    code = (
        "import logging, warnings\n"
        "from neonet.run.console import setup_logging, route_lightning_logging\n"
        "setup_logging()\n"
        "import lightning\n"
        "from lightning.pytorch.utilities.rank_zero import rank_zero_info\n"
        "route_lightning_logging()\n"
        "rank_zero_info('GPU available: False')\n"
        "rank_zero_info('\\N{ELECTRIC LIGHT BULB} Tip: try installing litlogger')\n"
        "from lightning.pytorch.utilities import _pytree\n"
        "_pytree._tree_flatten(1)\n"  # Lightning's own use of torch's deprecated LeafSpec
        "import torch\n"
        "from monai.transforms import RemoveSmallObjects\n"
        "x = torch.zeros(1, 6, 6, 6); x[0, 1, 1, 1] = 1; x[0, 3:5, 3:5, 3:5] = 1\n"
        "assert RemoveSmallObjects(min_size=2)(x).sum() == 8\n"  # MONAI passes skimage's deprecated min_size on
        "warnings.warn('a warning of our own', FutureWarning)\n"
    )
    env = {**os.environ, "NEONET_LOG_LEVEL": "INFO"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, encoding="utf-8", timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert [line for line in lines if "GPU available" in line] == [
        next(line for line in lines if line.endswith("INFO lightning.pytorch.utilities.rank_zero: GPU available: False"))
    ]
    assert "Tip" not in proc.stderr and "LeafSpec" not in proc.stderr and "min_size" not in proc.stderr
    assert "FutureWarning: a warning of our own" in proc.stderr  # other warnings are shown as before
