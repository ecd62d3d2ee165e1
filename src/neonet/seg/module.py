"""``SegModule``: NeoSeg, 3D liver + tumour segmentation with an injected MONAI network."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric
from torch import nn

from neonet.data.cases import LIVER, TUMOR
from neonet.stage import CVContext, FoldContext, StageModule


def sliding_window_logits(
    predictor: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    roi_size: Sequence[int] | None,
    sw_batch_size: int,
    overlap: float,
) -> torch.Tensor:
    """MONAI sliding-window inference of ``predictor`` over ``image`` (B, C, X, Y, Z): NeoSeg's logits.

    ``roi_size`` None runs the whole volume as one window. :meth:`SegModule.infer` and
    ``neonet predict-case`` (a fold's network, or its TorchScript copy in a bundle) both use it.
    """
    roi = tuple(int(r) for r in roi_size) if roi_size else tuple(image.shape[2:])
    logits = sliding_window_inference(image, roi, int(sw_batch_size), predictor, overlap=float(overlap))
    return cast(torch.Tensor, logits)  # a tensor, as the predictor returns one


def region_onehot(labels: torch.Tensor) -> torch.Tensor:
    """(B, 1, ...) labels → (B, 2, ...) regions [whole liver incl. tumour, tumour]."""
    return torch.cat([(labels >= LIVER), (labels == TUMOR)], dim=1).float()


class SegModule(StageModule):
    """NeoSeg: trains any 3-class 3D segmentation network on liver and tumour.

    Loss is MONAI Dice + cross-entropy over {background, liver, tumour}. Validation runs
    sliding-window inference on whole volumes and logs MONAI Dice for the liver region (liver
    including tumour) and the tumour as ``val/dice_liver``, ``val/dice_tumor`` and their mean
    ``val/dice_mean`` (the checkpoint monitor).

    Args:
        net: the network (e.g. ``monai.networks.nets.DynUNet``) with 1 input and 3 output channels.
        roi_size: sliding-window size for inference; None uses the whole volume.
        sw_batch_size: windows per forward pass.
        overlap: sliding-window overlap.
        lambda_dice: weight of the Dice loss.
        lambda_ce: weight of the cross-entropy loss.
        batch_dice: compute the Dice loss over the whole batch instead of per sample (as nnU-Net
            does; steadier gradients for small tumours).
        min_tumor_voxels: tumour components smaller than this are removed at prediction.
        channels_last: run the network in ``channels_last_3d`` memory format (much faster 3D
            convolution backward passes on CPU, and usually on GPU with mixed precision).
        **kwargs: ``optimizer`` and ``scheduler`` of :class:`~neonet.stage.StageModule`.
    """

    stage = "seg"
    monitor = "val/dice_mean"
    monitor_mode = "max"

    def __init__(
        self,
        net: nn.Module,
        roi_size: Sequence[int] | None = None,
        sw_batch_size: int = 2,
        overlap: float = 0.25,
        lambda_dice: float = 1.0,
        lambda_ce: float = 1.0,
        batch_dice: bool = True,
        min_tumor_voxels: int = 10,
        channels_last: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # Module.to accepts memory_format at runtime; torch's overloads leave it out
        self.net = net.to(memory_format=torch.channels_last_3d) if channels_last else net  # type: ignore[call-overload]
        self.channels_last = channels_last
        self.roi_size = tuple(roi_size) if roi_size else None
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=lambda_dice, lambda_ce=lambda_ce, batch=batch_dice)
        # ignore_empty: a case without tumour does not score the tumour channel; get_not_nans: how many did
        self.val_dice = DiceMetric(include_background=True, reduction="mean_batch", ignore_empty=True, get_not_nans=True)
        self.test_dice = DiceMetric(include_background=True, reduction="mean_batch", ignore_empty=True, get_not_nans=True)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Logits (B, 3, X, Y, Z)."""
        return self.net(self._format(image))

    def _format(self, image: torch.Tensor) -> torch.Tensor:
        return image.contiguous(memory_format=torch.channels_last_3d) if self.channels_last else image

    def infer(self, image: torch.Tensor) -> torch.Tensor:
        """Sliding-window (or whole-volume) logits (:func:`sliding_window_logits`)."""
        return sliding_window_logits(self.forward, image, self.roi_size, self.hparams.sw_batch_size, self.hparams.overlap)

    def model_step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Shared step: (loss, logits)."""
        logits = self(batch["image"])
        return self.loss(logits, batch["label"].long()), logits

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, _ = self.model_step(batch)
        self.log("train/loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=batch["image"].shape[0])
        return loss

    def _evaluate(self, batch: dict[str, Any], metric: DiceMetric, split: str) -> None:
        logits = self.infer(batch["image"])
        loss = self.loss(logits, batch["label"].long())
        pred = logits.argmax(1, keepdim=True)
        metric(region_onehot(pred), region_onehot(batch["label"]))
        self.log(f"{split}/loss", loss, on_epoch=True, batch_size=1)

    def _log_dice(self, metric: DiceMetric, split: str) -> None:
        dice, scored_cases = metric.aggregate()
        metric.reset()
        # MONAI reports 0 for a channel that no case scored (a liver-only cohort's tumour): that is "not scored", not 0
        liver, tumor = (float(d) if float(n) > 0 else math.nan for d, n in zip(dice[:2], scored_cases[:2], strict=True))
        for name, value in (("dice_liver", liver), ("dice_tumor", tumor)):
            if math.isfinite(value):
                self.log(f"{split}/{name}", value, sync_dist=True)
        scored = [v for v in (liver, tumor) if math.isfinite(v)]
        self.log(f"{split}/dice_mean", sum(scored) / len(scored) if scored else 0.0, prog_bar=True, sync_dist=True)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, self.val_dice, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_dice(self.val_dice, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, self.test_dice, "test")

    def on_test_epoch_end(self) -> None:
        self._log_dice(self.test_dice, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Softmax maps (B, 3, X, Y, Z) on the canonical grid: :class:`~neonet.seg.SegMaskWriter` takes them back to
        each input's grid, takes the argmax there and post-processes (:func:`~neonet.seg.postprocess.postprocess_labels`)."""
        return {"prob": torch.softmax(self.infer(batch["image"]).float(), dim=1)}

    # ------------------------------------------------------------------ cv hooks
    @classmethod
    def after_fold(cls, ctx: FoldContext) -> dict[str, Any]:
        """Write the fold's out-of-fold masks (its held-out cases) with its best checkpoint."""
        ctx.run("predict", ["--ckpt_path", str(ctx.ws.best_checkpoint(cls.stage, ctx.fold)), "--data.predict_split=test"])
        return {"predictions": str(ctx.ws.seg_predictions_dir)}

    @classmethod
    def after_folds(cls, ctx: CVContext) -> None:
        """Out-of-fold Dice per case, per fold and pooled in ``reports/`` (see :mod:`neonet.seg.evaluate`), and
        the stage's pictures: training curves, best/median/worst overlays, Dice per fold (:mod:`neonet.report.figures`)."""
        from neonet.report.figures import write_stage
        from neonet.seg.evaluate import write_oof_report

        write_oof_report(ctx)
        write_stage(ctx.ws, cls.stage)
