"""``neonet cv --jobs N``: one line per fold while the folds train side by side.

Each fold's fit writes ``<stage>/fold<k>/progress.json`` after every epoch
(:class:`neonet.run.callbacks.EpochProgress`); :class:`FoldBoard` reads those files and shows one
line per fold (epoch/max, the monitored metric, the time per epoch and an estimate of the time
left): on a terminal as live lines (tqdm) refreshed every second, otherwise (output to a file or a
pipe) logged every :data:`LOG_EVERY_S` seconds.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from neonet.workspace import Workspace

log = logging.getLogger(__name__)

#: Seconds between two logged progress reports when the output is not a terminal.
LOG_EVERY_S = 60.0
#: Seconds between two refreshes of the live lines on a terminal.
LIVE_EVERY_S = 1.0


def duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``2 h 05 min``."""
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 120 else f"{minutes // 60} h {minutes % 60:02d} min"


def read_progress(path: Path, since: float) -> dict[str, Any] | None:
    """A fold's ``progress.json`` when a fit started at or after ``since`` wrote it, else None.

    None also for a file that is absent, from an earlier run of the fold, or unreadable (it is only a display).
    """
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("started"), (int, float)) or record["started"] < since:
        return None
    return record


def progress_line(fold: int, record: dict[str, Any] | None, now: float, started: float | None) -> str:
    """One fold's line while it runs: ``fold 1: epoch 3/30  val/dice_mean 0.412  25 s/epoch  ETA 11 min``.

    Args:
        fold: the fold.
        record: its latest ``progress.json`` (:func:`read_progress`), or None before its first one.
        now: the current time (``time.time()``).
        started: when the fold's process started, or None while it waits for a free slot.
    """
    if started is None:
        return f"fold {fold}: waiting"
    if record is None:
        return f"fold {fold}: starting ({duration(now - started)})"
    done, total = int(record.get("epoch") or 0), record.get("max_epochs")
    parts = [f"fold {fold}: epoch {done}/{total}" if total else f"fold {fold}: epoch {done}"]
    metrics = record.get("metrics") or {}
    monitor = record.get("monitor")
    shown = monitor if monitor in metrics else next(iter(metrics), None)
    if shown is not None:
        parts.append(f"{shown} {float(metrics[shown]):.4g}")
    per_epoch = record.get("seconds_per_epoch")
    if per_epoch:
        parts.append(f"{duration(float(per_epoch))}/epoch")
    if total and done >= int(total):
        parts.append(f"fit done, finishing the fold ({duration(now - float(record.get('updated') or now))})")
    elif total and per_epoch:
        left = (int(total) - done) * float(per_epoch) - (now - float(record.get("updated") or now))
        parts.append(f"ETA {duration(left)}")
    return "  ".join(parts)


class FoldBoard:
    """The live progress of folds that train side by side (a context manager around them).

    Args:
        ws: the experiment's workspace.
        stage: the stage being trained.
        folds: the folds, in the order they are shown.
        stream: where the live lines go on a terminal (default ``sys.stderr``).
        every: seconds between two reports (default :data:`LIVE_EVERY_S` on a terminal, else :data:`LOG_EVERY_S`).
    """

    def __init__(
        self, ws: Workspace, stage: str, folds: list[int], stream: TextIO | None = None, every: float | None = None
    ) -> None:
        self.ws, self.stage, self.folds = ws, stage, list(folds)
        self.stream = stream if stream is not None else sys.stderr
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = every if every is not None else (LIVE_EVERY_S if self.live else LOG_EVERY_S)
        self.started: dict[int, float] = {}
        self.ended: set[int] = set()
        self._due = 0.0
        self._bars: dict[int, Any] = {}
        self._redirect: Any = None

    def fold_started(self, fold: int) -> None:
        """Mark a fold's process as started (its ``progress.json`` counts from now on)."""
        self.started[fold] = time.time()

    def fold_ended(self, fold: int) -> None:
        """Mark a fold's process as ended (its line is no longer reported)."""
        self.ended.add(fold)

    def lines(self, now: float | None = None) -> dict[int, str]:
        """The line of each fold that has not ended."""
        now = time.time() if now is None else now
        running = {k: self.started.get(k) for k in self.folds if k not in self.ended}
        out = {}
        for k, started in running.items():
            record = read_progress(self.ws.fold_progress(self.stage, k), started) if started is not None else None
            out[k] = progress_line(k, record, now, started)
        return out

    def report(self) -> None:
        """Refresh the live lines (terminal), or log the lines of the running folds."""
        lines = self.lines()
        if self.live:
            for k, bar in self._bars.items():
                bar.set_description_str(lines.get(k, f"fold {k}: ended"), refresh=True)
            return
        for k, line in lines.items():
            if k in self.started:
                log.info("%s", line)

    def tick(self, now: float | None = None) -> None:
        """Report when :attr:`every` seconds have passed since the last report (call it from the waiting loop)."""
        now = time.time() if now is None else now
        if now >= self._due:
            self._due = now + self.every
            if self._bars or not self.live:
                self.report()

    def __enter__(self) -> FoldBoard:
        if self.live:
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            tqdm.monitor_interval = 0  # no tqdm monitor thread: cv forks its fold processes from this one thread
            self._bars = {
                k: tqdm(total=None, position=i, bar_format="{desc}", file=self.stream, leave=False)
                for i, k in enumerate(self.folds)
            }
            self._redirect = logging_redirect_tqdm()
            self._redirect.__enter__()  # the driver's log lines are printed above the live lines
        self._due = time.time() + self.every
        return self

    def __exit__(self, *exc: object) -> None:
        for bar in self._bars.values():
            bar.close()
        if self._redirect is not None:
            self._redirect.__exit__(None, None, None)
