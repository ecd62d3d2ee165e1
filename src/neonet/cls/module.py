"""NeoCls stages: :class:`ClassifierModule` trains any injected classifier network (the baselines);
:class:`PattenNetModule` is the PattenNet stage on top of it, the one that takes the frozen encoder.

Every classifier shares loss, optimiser, metrics, model selection and test-prediction files. The stage
folder comes from the ``stage`` argument (``pattennet``, ``resnet18``, ``pattennet_syn``, ...), so each
model of the ablation runs in its own ``<runs>/<experiment>/<stage>/fold<k>/``; what the fold's model is
(its name in reports, real only or real + synthetic, the network class) is recorded in its
``artifact.json`` (:meth:`ClassifierModule.describe`), which the report reads.

``PattenNetModule.setup("fit")`` loads the frozen encoder from **the same fold's** autoencoder
checkpoint (``encoder_checkpoint: auto``), refuses one whose artifact says it saw the fold's test
patients, and gives encoder weights only to a network that declares it takes them
(``takes_autoencoder_encoder``, e.g. :class:`neonet.nets.PattenNet`).
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any, ClassVar, Literal, cast

import pandas as pd
import torch
import torch.nn.functional as F
from monai.losses import FocalLoss
from torch import nn

from neonet.cls.datamodule import ClsDataModule, labels_of
from neonet.cls.encoder import check_encoder_fold, find_encoder, load_encoder_checkpoint, resolve_encoder_checkpoint
from neonet.cls.metrics import ScoreCollector, split_metrics, youden
from neonet.errors import NeonetError
from neonet.run.atomic import write_csv
from neonet.stage import CVContext, FoldContext, StageModule

log = logging.getLogger(__name__)

PREDICTION_COLUMNS = ["case_id", "patient_id", "fold", "y_true", "prob", "logit", "threshold_youden_val"]
REAL, SYNTHETIC = "real only", "real + synthetic"


class ClassifierModule(StageModule):
    """Binary PNI classifier of one fold with any injected network (``net`` returns logits of shape (B,)).

    Logs ``{train,val,test}/loss``, ``/auc``, ``/ap``, and accuracy, sensitivity, specificity, F1 at the
    Youden threshold chosen on the inner validation split (``_youden``) and at 0.5 (``_05``).
    ``val/selection`` (``val/auc``, ties broken by ``val/loss``) selects ``best.ckpt``; the
    validation threshold of that epoch is stored in the
    checkpoint (buffer ``val_threshold``) and applied to the test patients. ``neonet test`` writes
    ``<stage>/fold<k>/test_predictions.csv``.

    Args:
        net: the classifier, e.g. ``neonet.nets.PattenNet`` or ``neonet.nets.ResNet18Classifier``.
        cosine: with no ``scheduler``, anneal the learning rate with a cosine to ``min_lr_ratio * lr``.
        min_lr_ratio: final learning rate of the cosine schedule relative to the initial one.
        stage: stage folder name (``resnet18``, ``resnet18_syn``, ...).
        model_name: the model's name in reports and the ablation table (a model trained on real patches
            and the same model trained on real + synthetic ones share it); None uses the stage name
            without a trailing ``_syn``. Whether the fold trained with synthetic patches is recorded from
            its data (``data.use_synthetic``), not read from the name.
        loss: ``bce`` (binary cross-entropy with logits) or ``focal`` (MONAI sigmoid focal loss).
        pos_weight: BCE weight of positives: a number, ``auto`` (negatives / positives of the
            fold's training set, synthetic included), or None.
        focal_gamma: focusing parameter of the focal loss.
        focal_alpha: weight of positives in the focal loss (None: unweighted).
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
        **kwargs: ``optimizer`` (AdamW by default; only trainable parameters are passed) and ``scheduler``
            of :class:`~neonet.stage.StageModule`; with no scheduler, ``cosine`` applies.
    """

    stage = "classifier"
    monitor = "val/selection"
    monitor_mode = "max"

    val_threshold: torch.Tensor  # a registered buffer

    def __init__(
        self,
        net: nn.Module,
        cosine: bool = True,
        min_lr_ratio: float = 0.01,
        stage: str = "classifier",
        model_name: str | None = None,
        loss: Literal["bce", "focal"] = "bce",
        pos_weight: float | Literal["auto"] | None = None,
        focal_gamma: float = 2.0,
        focal_alpha: float | None = None,
        write_predictions: bool = True,
        monitor: Literal["val/selection", "val/auc", "val/loss"] = "val/selection",
        select_from_epoch: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", stage or ""):
            raise ValueError(f"stage must be a plain folder name, got {stage!r}")
        if loss not in ("bce", "focal"):
            raise ValueError(f"loss must be 'bce' or 'focal', got {loss!r}")
        if loss == "focal" and pos_weight is not None:
            raise ValueError("pos_weight is for the BCE loss; use focal_alpha to weight positives in the focal loss")
        if model_name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", model_name):
            raise ValueError(f"model_name must be a plain name (letters, digits, _ . + -), got {model_name!r}")
        self.net = net
        self.stage = stage  # type: ignore[misc]  # per instance: NeonetCLI files the run under <stage>/fold<k>
        self.monitor = monitor  # type: ignore[misc]  # per instance: NeonetCLI's best.ckpt criterion
        self.monitor_mode = "min" if monitor == "val/loss" else "max"  # type: ignore[misc]
        if select_from_epoch < 0:
            raise ValueError(f"select_from_epoch must be >= 0, got {select_from_epoch}")
        self.select_from_epoch = int(select_from_epoch)
        self.focal = FocalLoss(gamma=focal_gamma, alpha=focal_alpha, use_softmax=False) if loss == "focal" else None
        self.pos_weight_value: float | None = float(pos_weight) if isinstance(pos_weight, (int, float)) else None
        self.register_buffer("val_threshold", torch.tensor(0.5))
        self.scores = nn.ModuleDict({f"{s}_scores": ScoreCollector() for s in ("train", "val", "test")})
        self._encoder_record: dict[str, Any] | None = None
        self._test_rows: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str) -> None:
        """Before fitting: the fold's pos_weight (``auto``) from its training patches."""
        if stage != "fit":
            return
        dm = self.fold_data
        if not isinstance(dm, ClsDataModule):
            raise NeonetError(
                f"{type(self).__name__} trains on neonet.cls.ClsDataModule (the fold's TLCR patches), not {type(dm).__name__}"
            )
        if self.hparams.pos_weight == "auto":
            neg, pos = dm.class_counts()
            if pos == 0:
                raise NeonetError(f"fold {dm.fold}: no PNI+ training patches")
            self.pos_weight_value = neg / pos
            log.info("fold %d: pos_weight = %d / %d = %.3f", dm.fold, neg, pos, self.pos_weight_value)

    def upstream(self) -> dict[str, Any]:
        """Upstream inputs of this fit (encoder checkpoint and hash, patch/synthetic manifests), for ``artifact.json``."""
        out: dict[str, Any] = {}
        if self._encoder_record is not None:
            out["encoder_checkpoint"] = self._encoder_record
        out.update(super().upstream())
        out["pos_weight"] = self.pos_weight_value
        return out

    def describe(self) -> dict[str, Any]:
        """The fold's model for ``artifact.json``: its name in reports, variant (real only / + synthetic), network,
        and for a control (:meth:`~neonet.cls.datamodule.ClsDataModule.control`) what makes it one."""
        dm = self.fold_data
        synthetic = isinstance(dm, ClsDataModule) and dm.use_synthetic
        name = self.hparams.model_name or (
            self.stage[: -len("_syn")] if synthetic and self.stage.endswith("_syn") else self.stage
        )
        net = type(self.net)
        record = {
            "model": name,
            "variant": SYNTHETIC if synthetic else REAL,
            "use_synthetic": synthetic,
            "network": f"{net.__module__}.{net.__qualname__}",
            "module": type(self).__name__,
        }
        control = dm.control() if isinstance(dm, ClsDataModule) else {}
        if control:  # a diagnostic control (manual-mask patches, constant image): its own rows in the report
            record["control"] = control
        return {"classifier": record}

    # ------------------------------------------------------------------ cv hooks
    @classmethod
    def after_fold(cls, ctx: FoldContext) -> dict[str, Any]:
        """Test the fold's best checkpoint on its held-out patients (``test_predictions.csv``); returns the test metrics."""
        from neonet.cls.evaluate import test_fold

        return test_fold(ctx)

    @classmethod
    def after_folds(cls, ctx: CVContext) -> None:
        """The experiment's classification report over every classifier stage (:func:`neonet.report.cls_report.report`)."""
        from neonet.report.cls_report import report

        report(experiment=ctx.ws.experiment, runs_dir=ctx.ws.runs_dir)

    # ------------------------------------------------------------------ steps
    def _scores(self, split: str) -> ScoreCollector:
        """The split's score collector (``nn.ModuleDict`` types its items as plain modules)."""
        return cast(ScoreCollector, self.scores[f"{split}_scores"])

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
            raise FloatingPointError(
                f"stage {self.stage}, step {self.global_step}: loss is {loss.item()}; lower the learning rate"
            )
        self._scores("train").update(logits, labels)
        self.log("train/loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=labels.numel())
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss, logits, labels = self.model_step(batch)
        self._scores("val").update(logits, labels)
        self.log("val/loss", loss, on_epoch=True, batch_size=labels.numel(), sync_dist=True)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss, logits, labels = self.model_step(batch)
        self._scores("test").update(logits, labels)
        self.log("test/loss", loss, on_epoch=True, batch_size=labels.numel(), sync_dist=True)
        for i, logit in enumerate(logits.detach().float().cpu().tolist()):
            self._test_rows.append(
                {
                    "case_id": batch["case_id"][i],
                    "patient_id": batch["patient_id"][i],
                    "y_true": int(labels[i].item()),
                    "prob": 1.0 / (1.0 + math.exp(-logit)),
                    "logit": logit,
                }
            )

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """PNI probabilities of the batch's cases."""
        logits = self(batch["image"]).float()
        return {"case_id": list(batch["case_id"]), "prob": torch.sigmoid(logits).cpu(), "logit": logits.cpu()}

    # ------------------------------------------------------------------ epoch ends
    def _log_split(self, split: str, threshold: float | None = None) -> dict[str, float] | None:
        collected = self._scores(split).compute()
        self._scores(split).reset()
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
        collected = self._scores("val").compute()
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
        dm = self.fold_data
        if not self.hparams.write_predictions or dm is None or not self.trainer.is_global_zero:
            return
        frame = pd.DataFrame(rows).drop_duplicates("case_id")  # DistributedSampler may repeat cases
        frame.insert(2, "fold", int(dm.fold))
        frame["threshold_youden_val"] = float(self.val_threshold)
        path = dm.workspace.test_predictions(self.stage, dm.fold)
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


class PattenNetModule(ClassifierModule):
    """The PattenNet stage: a :class:`ClassifierModule` whose network takes the fold's frozen autoencoder encoder.

    Before fitting, the encoder weights of **the same fold's** autoencoder (``encoder_checkpoint: auto``) are
    loaded into ``net.encoder``, after checking that the autoencoder never saw the fold's test patients.
    Only a network that declares ``takes_autoencoder_encoder = True`` (e.g. :class:`neonet.nets.PattenNet`)
    is accepted.

    Args:
        net: the PattenNet network (``neonet.nets.PattenNet``).
        stage: stage folder name (``pattennet``, ``pattennet_syn``, ``pattennet_hist``, ...).
        encoder_checkpoint: ``auto`` loads the net's encoder from the fold's own
            ``<encoder_stage>/fold<k>/checkpoints/best.ckpt``; a path loads that file; None keeps
            the encoder's initial weights.
        encoder_stage: stage folder of the autoencoder.
        encoder_prefix: prefix of the AutoencoderKL tensors in that checkpoint's ``state_dict``.
        encoder_config: the autoencoder's config, named in the error when its checkpoint is missing.
        **kwargs: every other option of :class:`ClassifierModule` (optimizer, loss, monitor, ...).
    """

    stage = "pattennet"
    takes_encoder: ClassVar[bool] = True

    def __init__(
        self,
        net: nn.Module,
        stage: str = "pattennet",
        encoder_checkpoint: str | None = "auto",
        encoder_stage: str = "autoencoder",
        encoder_prefix: str = "autoencoder.",
        encoder_config: str = "experiments/demo/autoencoder.yaml",
        **kwargs: Any,
    ) -> None:
        super().__init__(net, stage=stage, **kwargs)

    def setup(self, stage: str) -> None:
        """Before fitting: load the fold's encoder into the network, then the classifier's setup."""
        if stage == "fit":
            dm = self.fold_data
            if dm is None:
                raise NeonetError("PattenNetModule needs a neonet FoldDataModule (it knows the fold and the workspace)")
            self._load_fold_encoder(dm)
        super().setup(stage)

    def _load_fold_encoder(self, dm: Any) -> None:
        if not getattr(type(self.net), "takes_autoencoder_encoder", False):
            raise NeonetError(
                f"PattenNetModule loads the fold's autoencoder encoder into its network, but {type(self.net).__name__} "
                "does not declare that it takes one (takes_autoencoder_encoder = True). Train other networks with "
                "model.class_path: neonet.cls.ClassifierModule (see experiments/demo/baseline_resnet18.yaml)."
            )
        encoder = find_encoder(self.net)
        if encoder is None:
            raise NeonetError(f"{type(self.net).__name__} declares takes_autoencoder_encoder but has no `encoder` module")
        spec = self.hparams.encoder_checkpoint
        ws, fold = dm.workspace, int(dm.fold)
        path = resolve_encoder_checkpoint(spec, ws, fold, self.hparams.encoder_stage, self.hparams.encoder_config)
        if path is None:
            log.warning("encoder_checkpoint is None: PattenNet's encoder keeps its initial (untrained) weights")
            return
        if spec == "auto":
            check_encoder_fold(ws, self.hparams.encoder_stage, fold, dm.split.test, dm.split.val)
        else:
            log.warning(
                "encoder loaded from an explicit path %s: make sure it was trained on fold %d's training cases only", path, fold
            )
        load_encoder_checkpoint(encoder, path, self.hparams.encoder_prefix)
        self._encoder_record = {
            "stage": self.hparams.encoder_stage,
            "fold": fold,
            "prefix": self.hparams.encoder_prefix,
            **ws.checkpoint_record(path),
        }
