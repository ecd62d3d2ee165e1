"""``PattenNetModule``: NeoCls training for PattenNet and, with another injected ``net``, the baselines.

One LightningModule for every classifier, so PattenNet and the 3D CNN baselines share loss,
optimiser, metrics, model selection and test-prediction files. The stage folder comes from the
``stage`` argument (``pattennet``, ``resnet18``, ``pattennet_syn``, ...), so each model of the
ablation runs in its own ``<runs>/<experiment>/<stage>/fold<k>/``.

For PattenNet (a ``net`` with an ``encoder``), ``setup("fit")`` loads the frozen encoder from
**the same fold's** autoencoder checkpoint (``encoder_checkpoint: auto``) and refuses one whose
artifact says it saw the fold's test patients.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any, Literal

import pandas as pd
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from monai.losses import FocalLoss
from torch import nn

from neonet.atomic import write_csv
from neonet.cls.datamodule import labels_of
from neonet.cls.encoder import check_encoder_fold, find_encoder, load_encoder_checkpoint, resolve_encoder_checkpoint
from neonet.cls.metrics import ScoreCollector, split_metrics, youden
from neonet.errors import NeonetError

log = logging.getLogger(__name__)

PREDICTION_COLUMNS = ["case_id", "patient_id", "fold", "y_true", "prob", "logit", "threshold_youden_val"]


class PattenNetModule(LightningModule):
    """Binary PNI classifier of one fold: PattenNet or a baseline (``net`` returns logits of shape (B,)).

    Logs ``{train,val,test}/loss``, ``/auc``, ``/ap``, and accuracy, sensitivity, specificity, F1 at the
    Youden threshold chosen on the inner validation split (``_youden``) and at 0.5 (``_05``).
    ``val/selection`` (``val/auc``, ties broken by ``val/loss``) selects ``best.ckpt``; the
    validation threshold of that epoch is stored in the
    checkpoint (buffer ``val_threshold``) and applied to the test patients. ``neonet test`` writes
    ``<stage>/fold<k>/test_predictions.csv``.

    Args:
        net: the classifier, e.g. ``neonet.nets.PattenNet`` or ``neonet.nets.ResNet18Classifier``.
        optimizer: optimizer factory (AdamW by default); only trainable parameters are passed.
        scheduler: learning-rate scheduler factory; None uses cosine annealing over
            ``trainer.max_epochs`` when ``cosine`` is true.
        cosine: with no ``scheduler``, anneal the learning rate with a cosine to ``min_lr_ratio * lr``.
        min_lr_ratio: final learning rate of the cosine schedule relative to the initial one.
        stage: stage folder name (``pattennet``, ``resnet18``, ...); names containing ``_syn`` must
            train with ``data.use_synthetic: true`` and the others without, so the ablation table
            cannot mix them up.
        loss: ``bce`` (binary cross-entropy with logits) or ``focal`` (MONAI sigmoid focal loss).
        pos_weight: BCE weight of positives: a number, ``auto`` (negatives / positives of the
            fold's training set, synthetic included), or None.
        focal_gamma: focusing parameter of the focal loss.
        focal_alpha: weight of positives in the focal loss (None: unweighted).
        encoder_checkpoint: ``auto`` loads the net's encoder from the fold's own
            ``<encoder_stage>/fold<k>/checkpoints/best.ckpt``; a path loads that file; None keeps
            the encoder's initial weights. Ignored for nets without an ``encoder``.
        encoder_stage: stage folder of the autoencoder.
        encoder_prefix: prefix of the AutoencoderKL tensors in that checkpoint's ``state_dict``.
        encoder_config: the autoencoder's config, named in the error when its checkpoint is missing.
        write_predictions: write ``test_predictions.csv`` at the end of ``neonet test``.
        monitor: what selects ``best.ckpt`` on the inner validation split: ``val/selection`` is
            ``val/auc`` with ties broken by the lower ``val/loss`` (``val/auc - 1e-4 * min(val/loss, 9.99)``,
            a shift below any AUC step of validation sets up to ~1000 positive-negative pairs; small
            validation sets give many AUC ties, and the first tied epoch is usually undertrained);
            ``val/auc`` (max) or ``val/loss`` (min) select on one metric alone.
        select_from_epoch: epochs before this one do not compete for ``best.ckpt``: their
            ``val/selection`` is logged as -1, below any AUC. A small inner validation split (the
            demo's has 9 patients) often gives an undertrained epoch 0 or 1 the highest AUC by
            chance; this makes the selected model one that has trained for a while. 0 keeps every
            epoch in the running. Applies to the ``val/selection`` monitor.
    """

    stage = "pattennet"
    monitor = "val/selection"
    monitor_mode = "max"
    cv_hooks = "neonet.cls.evaluate:ClsCVHooks"

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        cosine: bool = True,
        min_lr_ratio: float = 0.01,
        stage: str = "pattennet",
        loss: Literal["bce", "focal"] = "bce",
        pos_weight: float | Literal["auto"] | None = None,
        focal_gamma: float = 2.0,
        focal_alpha: float | None = None,
        encoder_checkpoint: str | None = "auto",
        encoder_stage: str = "autoencoder",
        encoder_prefix: str = "autoencoder.",
        encoder_config: str = "experiments/demo/autoencoder.yaml",
        write_predictions: bool = True,
        monitor: Literal["val/selection", "val/auc", "val/loss"] = "val/selection",
        select_from_epoch: int = 0,
    ) -> None:
        super().__init__()
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", stage or ""):
            raise ValueError(f"stage must be a plain folder name, got {stage!r}")
        if loss not in ("bce", "focal"):
            raise ValueError(f"loss must be 'bce' or 'focal', got {loss!r}")
        if loss == "focal" and pos_weight is not None:
            raise ValueError("pos_weight is for the BCE loss; use focal_alpha to weight positives in the focal loss")
        self.save_hyperparameters(ignore=["net"])
        self.net = net
        self.stage = stage  # instance attribute: NeonetCLI files the run under <stage>/fold<k>
        self.monitor = monitor  # instance attributes: NeonetCLI's best.ckpt criterion
        self.monitor_mode = "min" if monitor == "val/loss" else "max"
        if select_from_epoch < 0:
            raise ValueError(f"select_from_epoch must be >= 0, got {select_from_epoch}")
        self.select_from_epoch = int(select_from_epoch)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.focal = FocalLoss(gamma=focal_gamma, alpha=focal_alpha, use_softmax=False) if loss == "focal" else None
        self.pos_weight_value: float | None = float(pos_weight) if isinstance(pos_weight, (int, float)) else None
        self.register_buffer("val_threshold", torch.tensor(0.5))
        self.scores = nn.ModuleDict({f"{s}_scores": ScoreCollector() for s in ("train", "val", "test")})
        self._encoder_record: dict[str, Any] | None = None
        self._test_rows: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ setup
    def _datamodule(self) -> Any:
        trainer = self._trainer
        return getattr(trainer, "datamodule", None) if trainer is not None else None

    def setup(self, stage: str) -> None:
        """Before fitting: check the stage name against ``use_synthetic``, load the fold's encoder, set pos_weight."""
        if stage != "fit":
            return
        dm = self._datamodule()
        if dm is None:
            raise NeonetError("PattenNetModule needs a neonet FoldDataModule (it knows the fold and the workspace)")
        use_syn = bool(getattr(dm, "use_synthetic", False))
        if ("_syn" in self.stage) != use_syn:
            raise NeonetError(
                f"stage {self.stage!r} with data.use_synthetic={use_syn}: stages trained with synthetic patches are "
                "named with '_syn' (e.g. pattennet_syn) and only those; set --model.stage accordingly"
            )
        self._load_fold_encoder(dm)
        if self.hparams.pos_weight == "auto":
            neg, pos = dm.class_counts()
            if pos == 0:
                raise NeonetError(f"fold {dm.fold}: no PNI+ training patches")
            self.pos_weight_value = neg / pos
            log.info("fold %d: pos_weight = %d / %d = %.3f", dm.fold, neg, pos, self.pos_weight_value)

    def _load_fold_encoder(self, dm: Any) -> None:
        encoder = find_encoder(self.net)
        spec = self.hparams.encoder_checkpoint
        if encoder is None:
            if spec not in (None, "auto"):
                raise NeonetError(f"encoder_checkpoint={spec!r} given, but {type(self.net).__name__} has no encoder")
            return
        ws, fold = dm.workspace, int(dm.fold)
        path = resolve_encoder_checkpoint(spec, ws, fold, self.hparams.encoder_stage, self.hparams.encoder_config)
        if path is None:
            log.warning("encoder_checkpoint is None: PattenNet's encoder keeps its initial (untrained) weights")
            return
        if spec == "auto":
            check_encoder_fold(ws, self.hparams.encoder_stage, fold, dm.split.test, dm.split.val)
        else:
            log.warning("encoder loaded from an explicit path %s: make sure it was trained on fold %d's training cases only", path, fold)
        load_encoder_checkpoint(encoder, path, self.hparams.encoder_prefix)
        self._encoder_record = {"stage": self.hparams.encoder_stage, "fold": fold, "prefix": self.hparams.encoder_prefix,
                                **ws.checkpoint_record(path)}

    def upstream(self) -> dict[str, Any]:
        """Upstream inputs of this fit (encoder checkpoint and hash, patch/synthetic manifests), for ``artifact.json``."""
        out: dict[str, Any] = {}
        if self._encoder_record is not None:
            out["encoder_checkpoint"] = self._encoder_record
        dm = self._datamodule()
        if dm is not None and callable(getattr(dm, "upstream", None)):
            out.update(dm.upstream())
        out["pos_weight"] = self.pos_weight_value
        return out

    # ------------------------------------------------------------------ steps
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Logits of shape (B,)."""
        return self.net(image).reshape(image.shape[0])

    def compute_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """BCE (optionally weighted) or focal loss of logits (B,) against labels (B,)."""
        if self.focal is not None:
            return self.focal(logits.view(-1, 1), labels.view(-1, 1))
        weight = None if self.pos_weight_value is None else logits.new_tensor(self.pos_weight_value)
        return F.binary_cross_entropy_with_logits(logits, labels, pos_weight=weight)

    def model_step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Shared step: (loss, logits, labels)."""
        labels = labels_of(batch).to(self.device)
        logits = self(batch["image"])
        return self.compute_loss(logits, labels), logits, labels

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, logits, labels = self.model_step(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"stage {self.stage}, step {self.global_step}: loss is {loss.item()}; lower the learning rate")
        self.scores["train_scores"].update(logits, labels)
        self.log("train/loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=labels.numel())
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss, logits, labels = self.model_step(batch)
        self.scores["val_scores"].update(logits, labels)
        self.log("val/loss", loss, on_epoch=True, batch_size=labels.numel(), sync_dist=True)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss, logits, labels = self.model_step(batch)
        self.scores["test_scores"].update(logits, labels)
        self.log("test/loss", loss, on_epoch=True, batch_size=labels.numel(), sync_dist=True)
        for i, logit in enumerate(logits.detach().float().cpu().tolist()):
            self._test_rows.append(
                {"case_id": batch["case_id"][i], "patient_id": batch["patient_id"][i], "y_true": int(labels[i].item()),
                 "prob": 1.0 / (1.0 + math.exp(-logit)), "logit": logit}
            )

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """PNI probabilities of the batch's cases."""
        logits = self(batch["image"]).float()
        return {"case_id": list(batch["case_id"]), "prob": torch.sigmoid(logits).cpu(), "logit": logits.cpu()}

    # ------------------------------------------------------------------ epoch ends
    def _log_split(self, split: str, threshold: float | None = None) -> dict[str, float] | None:
        collected = self.scores[f"{split}_scores"].compute()
        self.scores[f"{split}_scores"].reset()
        if collected is None:
            return None
        logits, labels = collected
        if threshold is None:
            threshold = float(self.val_threshold)
        metrics = split_metrics(logits, labels, threshold)
        for key, value in metrics.items():
            self.log(f"{split}/{key}", value, prog_bar=key == "auc")
        return metrics

    def on_train_epoch_end(self) -> None:
        self._log_split("train")

    def on_validation_epoch_end(self) -> None:
        collected = self.scores["val_scores"].compute()
        if collected is None:
            return
        logits, labels = collected
        threshold = youden(torch.sigmoid(logits.float()), labels, default=float(self.val_threshold))
        metrics = self._log_split("val", threshold)
        if metrics is not None:
            loss = float(self.compute_loss(logits.to(self.device), labels.float().to(self.device)))  # whole split
            selection = metrics["auc"] - 1e-4 * min(loss, 9.99) if math.isfinite(loss) else metrics["auc"]
            self.log("val/selection", selection if self.current_epoch >= self.select_from_epoch else -1.0)
        if not self.trainer.sanity_checking:
            self.val_threshold.fill_(threshold)

    def on_test_epoch_start(self) -> None:
        self._test_rows = []

    def on_test_epoch_end(self) -> None:
        self._log_split("test")
        rows = self._gather_rows(self._test_rows)
        self._test_rows = []
        dm = self._datamodule()
        if not self.hparams.write_predictions or dm is None or not self.trainer.is_global_zero:
            return
        frame = pd.DataFrame(rows).drop_duplicates("case_id")  # DistributedSampler may repeat cases
        frame.insert(2, "fold", int(dm.fold))
        frame["threshold_youden_val"] = float(self.val_threshold)
        path = dm.workspace.stage_dir(self.stage, dm.fold) / "test_predictions.csv"
        write_csv(path, frame[PREDICTION_COLUMNS].sort_values("case_id"))
        log.info("%s fold %d: %d test predictions -> %s", self.stage, dm.fold, len(frame), path)

    def _gather_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self.trainer.world_size <= 1 or not torch.distributed.is_initialized():
            return rows
        gathered: list[Any] = [None] * self.trainer.world_size
        torch.distributed.all_gather_object(gathered, rows)
        return [r for part in gathered for r in part]

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is not None:
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "epoch"}}
        if not self.hparams.cosine:
            return optimizer
        max_epochs = self.trainer.max_epochs if self._trainer is not None else None
        if max_epochs is not None and max_epochs > 0:
            t_max, interval = max_epochs, "epoch"
        else:
            t_max, interval = max(1, int(self.trainer.estimated_stepping_batches)), "step"
        eta_min = [g["lr"] * self.hparams.min_lr_ratio for g in optimizer.param_groups][0]
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=t_max, eta_min=eta_min)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": interval}}
