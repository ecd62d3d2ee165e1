"""best.ckpt follows the monitor; last.ckpt is the latest epoch even when the monitor stops improving."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.demos.boring_classes import BoringModel

from neonet.run.lightning_cli import checkpoint_callbacks


class WorseningModel(BoringModel):
    """Its validation score is best in epoch 0 and falls every epoch after."""

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> dict[str, torch.Tensor]:
        out = super().validation_step(batch, batch_idx)
        self.log("val/score", torch.tensor(-float(self.current_epoch)))
        return out


def fit(tmp_path: Path, epochs: int, check_val_every_n_epoch: int = 1, ckpt_path: str | None = None) -> Trainer:
    trainer = Trainer(
        max_epochs=epochs,
        limit_train_batches=3,
        limit_val_batches=1,
        check_val_every_n_epoch=check_val_every_n_epoch,
        callbacks=checkpoint_callbacks(tmp_path, "val/score", "max"),
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
    )
    trainer.fit(WorseningModel(), ckpt_path=ckpt_path)
    return trainer


def saved(path: Path) -> tuple[int, int]:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    return ckpt["epoch"], ckpt["global_step"]


def test_last_is_the_final_epoch_and_best_the_best_one(tmp_path: Path) -> None:
    trainer = fit(tmp_path, epochs=3)
    assert trainer.checkpoint_callback.monitor == "val/score"
    assert saved(tmp_path / "best.ckpt") == (0, 3)
    assert saved(tmp_path / "last.ckpt") == (2, 9)  # Lightning's save_last on `best` would leave (0, 3) here
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt", "last.ckpt"]


def test_last_is_written_in_epochs_without_validation_and_resumes_there(tmp_path: Path) -> None:
    fit(tmp_path, epochs=3, check_val_every_n_epoch=2)
    assert saved(tmp_path / "last.ckpt") == (2, 9)
    fit(tmp_path, epochs=4, check_val_every_n_epoch=2, ckpt_path=str(tmp_path / "last.ckpt"))
    assert saved(tmp_path / "last.ckpt") == (3, 12)  # continued from step 9, not from the best epoch
    assert saved(tmp_path / "best.ckpt") == (1, 6)
