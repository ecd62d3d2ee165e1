"""Callbacks that every neonet fit gets from the CLI."""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from neonet.errors import NeonetError
from neonet.run.atomic import write_json

log = logging.getLogger(__name__)


class NonFiniteLossError(NeonetError):
    """A training loss became NaN or infinite."""


class FiniteLossGuard(Callback):
    """Stop a fit at the first NaN/inf training loss, naming stage, fold and step.

    Checks the loss returned by ``training_step`` (automatic optimisation) and every logged
    ``train/*loss*`` value (manual optimisation, e.g. GANs).

    Args:
        stage: stage name, for the message.
        fold: fold number, for the message.
    """

    def __init__(self, stage: str, fold: int) -> None:
        self.stage = stage
        self.fold = fold

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        values: dict[str, float] = {}
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if torch.is_tensor(loss):
            values["loss"] = float(loss.detach())
        for key, value in trainer.callback_metrics.items():
            if key.startswith("train/") and "loss" in key and torch.is_tensor(value) and value.numel() == 1:
                values[key] = float(value)
        bad = {k: v for k, v in values.items() if not math.isfinite(v)}
        if bad:
            raise NonFiniteLossError(
                f"stage {self.stage}, fold {self.fold}, step {trainer.global_step} (epoch {trainer.current_epoch}, "
                f"batch {batch_idx}): non-finite training loss {bad}. Lower the learning rate, enable gradient "
                "clipping (trainer.gradient_clip_val) or check the inputs; the last good checkpoint is "
                "checkpoints/last.ckpt."
            )


def _scalar(value: Any) -> float | None:
    """A one-element tensor or number as a float, else None."""
    if torch.is_tensor(value):
        return float(value) if value.numel() == 1 else None
    return float(value) if isinstance(value, (int, float)) else None


def _first_key(metrics: dict[str, float], names: tuple[str, ...], prefix: str) -> str | None:
    """The first of ``names`` in ``metrics``, else the first key (sorted) of ``prefix`` that contains ``loss``."""
    for name in names:
        if name in metrics:
            return name
    return next((k for k in sorted(metrics) if k.startswith(prefix) and "loss" in k), None)


def _fmt(value: float) -> str:
    return f"{value:.4g}"


class EpochProgress(Callback):
    """After each training epoch (its validation included): the fold's ``progress.json`` and, optionally, one log line.

    ``progress.json`` (:meth:`neonet.workspace.Workspace.fold_progress`) holds the epochs done, ``max_epochs``,
    the training and validation loss, the monitored metric, the epoch's
    time, the mean time per epoch of this run and when the fit started; ``neonet cv --jobs N`` reads
    it to show each fold's progress. With ``log_lines`` (the fit runs without a progress bar, e.g. its
    output goes to a file), each epoch is also one line: ``seg fold 0: epoch 3/30 train/loss 0.51
    val/loss 0.43 val/dice_mean 0.41 12.3 s``. Only rank zero writes.

    Args:
        path: the fold's ``progress.json``.
        stage: stage name, for the line.
        fold: fold number, for the line.
        log_lines: log one line per epoch.
    """

    def __init__(self, path: str | os.PathLike, stage: str, fold: int, log_lines: bool) -> None:
        self.path = Path(path)
        self.stage = stage
        self.fold = fold
        self.log_lines = log_lines
        self._fit_start = time.time()
        self._first_epoch = 0
        self._epoch_start = self._fit_start

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._fit_start = time.time()
        self._first_epoch = trainer.current_epoch  # > 0 when resumed from a checkpoint
        if trainer.is_global_zero:
            write_json(self.path, self.record(trainer, pl_module, done=self._first_epoch, now=self._fit_start))

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._epoch_start = time.time()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        now = time.time()
        record = self.record(trainer, pl_module, done=trainer.current_epoch + 1, now=now)
        write_json(self.path, record)
        if self.log_lines:
            log.info("%s", self.line(record))

    def record(self, trainer: Trainer, pl_module: LightningModule, done: int, now: float) -> dict[str, Any]:
        """The progress record after ``done`` epochs (what ``progress.json`` holds)."""
        metrics = {k: v for k, v in ((k, _scalar(v)) for k, v in trainer.callback_metrics.items()) if v is not None}
        monitor = getattr(pl_module, "monitor", None)
        chosen: dict[str, float] = {}
        for key in (
            _first_key(metrics, ("train/loss", "train/loss_epoch"), "train/"),
            _first_key(metrics, ("val/loss",), "val/"),
            monitor if isinstance(monitor, str) else None,
        ):
            if key is not None and key in metrics:
                chosen[key] = metrics[key]
        ran = done - self._first_epoch
        max_epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs > 0 else None
        return {
            "stage": self.stage,
            "fold": self.fold,
            "epoch": done,
            "max_epochs": max_epochs,
            "monitor": monitor if isinstance(monitor, str) else None,
            "metrics": chosen,
            "epoch_seconds": round(now - self._epoch_start, 3) if ran > 0 else None,
            "seconds_per_epoch": round((now - self._fit_start) / ran, 3) if ran > 0 else None,
            "started": self._fit_start,
            "updated": now,
        }

    def line(self, record: dict[str, Any]) -> str:
        """One line for an epoch's record."""
        total = f"/{record['max_epochs']}" if record.get("max_epochs") else ""
        parts = [f"{self.stage} fold {self.fold}: epoch {record['epoch']}{total}"]
        parts += [f"{key} {_fmt(value)}" for key, value in record["metrics"].items()]
        if record.get("epoch_seconds") is not None:
            parts.append(f"{record['epoch_seconds']:.1f} s")
        return "  ".join(parts)
