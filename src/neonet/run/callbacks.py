"""Callbacks that every neonet fit gets from the CLI."""

from __future__ import annotations

import math
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from neonet.errors import NeonetError


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
