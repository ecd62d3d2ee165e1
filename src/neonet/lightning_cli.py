"""``NeonetCLI``: LightningCLI that files every run under the experiment's fixed folders."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger

from neonet.callbacks import FiniteLossGuard
from neonet.data.base import FoldDataModule

log = logging.getLogger(__name__)


def wandb_mode() -> str:
    """W&B mode: ``WANDB_MODE`` if set (online/offline/disabled), else offline (no account needed)."""
    return os.environ.get("WANDB_MODE", "offline").lower()


def make_loggers(stage: str, fold: int, experiment: str, stage_dir: Path, job: str = "fit") -> list[Logger]:
    """CSV log in the stage folder, plus a W&B run unless ``WANDB_MODE=disabled``."""
    # fit logs to <stage_dir>/metrics.csv; other verbs to <stage_dir>/<verb>/ so they never overwrite it
    loggers: list[Logger] = [CSVLogger(save_dir=str(stage_dir), name="", version="" if job == "fit" else job)]
    mode = wandb_mode()
    if mode != "disabled":
        (stage_dir / "wandb").mkdir(parents=True, exist_ok=True)
        loggers.append(
            WandbLogger(
                project=os.environ.get("WANDB_PROJECT", "neonet"),
                group=experiment,
                job_type=stage if job == "fit" else f"{stage}-{job}",
                name=f"{stage}-fold{fold}" if job == "fit" else f"{stage}-fold{fold}-{job}",
                save_dir=str(stage_dir),
                offline=mode != "online",
                tags=[f"fold{fold}", stage],
            )
        )
    return loggers


class NeonetCLI(LightningCLI):
    """LightningCLI in subclass mode, with the experiment/stage/fold folder convention."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("parser_kwargs", {"default_env": False})
        super().__init__(LightningModule, FoldDataModule, *args, **kwargs)

    # ------------------------------------------------------------------ trainer wiring
    def _stage_fold(self) -> tuple[str, int, Any]:
        model, dm = self.model, self.datamodule
        stage = getattr(model, "stage", None)
        if stage is None:
            raise TypeError(f"{type(model).__name__} has no `stage` attribute; neonet modules define one")
        return stage, int(dm.fold), dm.workspace

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Any:
        stage, fold, ws = self._stage_fold()
        stage_dir = ws.stage_dir(stage, fold)
        stage_dir.mkdir(parents=True, exist_ok=True)
        if not config.get("default_root_dir") or config.get("default_root_dir") == os.getcwd():
            config["default_root_dir"] = str(stage_dir)
        job = self.subcommand or "fit"
        logger = config.get("logger")
        if job == "predict":
            config["logger"] = False
        elif logger is None or logger is True:
            config["logger"] = make_loggers(stage, fold, self.datamodule.experiment, stage_dir, job)
        existing = list(config.get("callbacks") or []) + list(callbacks)
        if not any(isinstance(c, ModelCheckpoint) for c in existing):
            callbacks.append(
                ModelCheckpoint(
                    dirpath=str(ws.checkpoint_dir(stage, fold)),
                    filename="best",
                    monitor=getattr(self.model, "monitor", None),
                    mode=getattr(self.model, "monitor_mode", "min"),
                    save_last=True,
                    auto_insert_metric_name=False,
                    enable_version_counter=False,
                )
            )
        if job == "fit" and not any(isinstance(c, FiniteLossGuard) for c in existing):
            callbacks.append(FiniteLossGuard(stage, fold))
        if job == "fit" and config["logger"] and not any(isinstance(c, LearningRateMonitor) for c in existing):
            callbacks.append(LearningRateMonitor(logging_interval="epoch"))
        return super()._instantiate_trainer(config, callbacks)

    # ------------------------------------------------------------------ after each verb
    def before_fit(self) -> None:
        """Check the fold's data before spending compute."""
        check = getattr(self.datamodule, "check_inputs", None)
        if callable(check):
            check()

    def after_fit(self) -> None:
        """Write ``artifact.json`` (rank zero) and close the W&B run."""
        trainer = self.trainer
        if trainer.is_global_zero and not trainer.interrupted:
            stage, fold, ws = self._stage_fold()
            ckpt_cb = trainer.checkpoint_callback
            best = Path(ckpt_cb.best_model_path) if ckpt_cb and ckpt_cb.best_model_path else None
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
            fields: dict[str, Any] = {
                "status": "fit-complete",
                "epochs": trainer.current_epoch,
                "global_step": trainer.global_step,
                "best_checkpoint": ws.checkpoint_record(best) if best and best.exists() else None,
                "best_score": float(ckpt_cb.best_model_score) if ckpt_cb and ckpt_cb.best_model_score is not None else None,
                "monitor": getattr(self.model, "monitor", None),
                "final_metrics": metrics,
                "config": str(ws.stage_dir(stage, fold) / "config.yaml"),
                "precision": str(trainer.precision),
                "world_size": trainer.world_size,
            }
            fields.update(self.datamodule.split_record())
            upstream = getattr(self.model, "upstream", None)
            if callable(upstream):
                fields["upstream"] = upstream()
            ws.write_artifact(stage, fold, **fields)
            log.info("%s fold %d finished: %s", stage, fold, ws.stage_dir(stage, fold))
        self._finish_wandb()

    def after_test(self) -> None:
        """Close the W&B run."""
        self._finish_wandb()

    def after_validate(self) -> None:
        """Close the W&B run."""
        self._finish_wandb()

    def _finish_wandb(self) -> None:
        for lg in self.trainer.loggers:
            if isinstance(lg, WandbLogger):
                lg.finalize("success")
                import wandb

                if wandb.run is not None:
                    wandb.finish()
