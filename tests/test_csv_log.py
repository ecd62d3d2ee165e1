"""metrics.csv keeps its history when a fit resumes from last.ckpt, and a fresh fit starts it anew."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel

from neonet.run.csv_log import ResumableCSVLogger


class LoggingModel(BoringModel):
    def training_step(self, batch: torch.Tensor, batch_idx: int) -> dict[str, torch.Tensor]:
        out = super().training_step(batch, batch_idx)
        self.log("train/loss", out["loss"], on_step=True, on_epoch=True)
        return out

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> dict[str, torch.Tensor]:
        out = super().validation_step(batch, batch_idx)
        self.log("val/loss", out["x"].float().mean())
        return out


def fit(stage_dir: Path, epochs: int, ckpt_path: str | None = None) -> None:
    torch.manual_seed(0)
    trainer = Trainer(
        max_epochs=epochs,
        limit_train_batches=4,
        limit_val_batches=2,
        log_every_n_steps=1,
        logger=ResumableCSVLogger(save_dir=str(stage_dir), name="", version=""),
        callbacks=[ModelCheckpoint(dirpath=stage_dir / "checkpoints", save_last=True)],
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
    )
    trainer.fit(LoggingModel(), ckpt_path=ckpt_path)


def epochs_logged(stage_dir: Path) -> list[int]:
    frame = pd.read_csv(stage_dir / "metrics.csv")
    return frame.dropna(subset=["val/loss"])["epoch"].astype(int).tolist()


def test_resumed_fit_keeps_earlier_rows_once(tmp_path: Path) -> None:
    fit(tmp_path, epochs=2)
    assert epochs_logged(tmp_path) == [0, 1]
    steps_before = pd.read_csv(tmp_path / "metrics.csv")["step"].tolist()
    fit(tmp_path, epochs=4, ckpt_path=str(tmp_path / "checkpoints" / "last.ckpt"))
    frame = pd.read_csv(tmp_path / "metrics.csv")
    assert epochs_logged(tmp_path) == [0, 1, 2, 3]  # Lightning's CSVLogger would keep only [2, 3]
    assert frame["step"].tolist()[: len(steps_before)] == steps_before
    assert frame["step"].is_monotonic_increasing
    assert frame.dropna(subset=["train/loss_step"])["step"].is_unique


def test_rows_after_the_checkpoint_are_replaced_by_the_rerun(tmp_path: Path) -> None:
    fit(tmp_path, epochs=2)
    first_two = tmp_path / "checkpoints" / "after-two.ckpt"
    (tmp_path / "checkpoints" / "last.ckpt").rename(first_two)
    fit(tmp_path, epochs=3, ckpt_path=str(first_two))  # logs epoch 2
    fit(tmp_path, epochs=3, ckpt_path=str(first_two))  # the same epoch 2 again: replaces, not duplicates
    assert epochs_logged(tmp_path) == [0, 1, 2]


def test_fresh_fit_starts_a_new_file(tmp_path: Path) -> None:
    fit(tmp_path, epochs=3)
    fit(tmp_path, epochs=1)
    assert epochs_logged(tmp_path) == [0]
