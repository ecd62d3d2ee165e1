"""``DiffusionModule``: a DDPM on a fold's cached autoencoder latents (NeoGen step 1).

- Latents are multiplied by a **scale factor = 1 / std** of the first training batch's latents,
  computed once (all-reduced across ranks: every rank's sum, sum of squares and count are
  gathered), stored in the registered buffer ``scale_factor`` — so it is in every checkpoint, is
  restored on resume instead of recomputed, and travels with the weights to sampling.
- The noise schedule uses ``clip_sample=False`` (see :mod:`neonet.gen.sampling`).
- An exponential moving average of the UNet (``ema``, a ``torch.optim.swa_utils.AveragedModel``
  of the UNet only) is kept in the module and checkpointed; validation and sampling use it.
  (Lightning's ``EMAWeightAveraging`` callback would average the whole LightningModule — with its
  buffers, including the scale factor — and swap weights around validation; an explicit EMA copy
  of the denoiser keeps sampling weights addressable as ``ema.module.*`` in the checkpoint.)
- Optional PNI class conditioning with classifier-free guidance: the UNet needs
  ``num_class_embeds = num_classes + 1``; the extra index is the null class, used for a random
  ``class_dropout`` fraction of training samples and for the unconditional branch at sampling.

Validation loss (``val/loss``, the checkpoint monitor) uses fixed noise and timesteps per batch
(seeded), so epochs are comparable.
"""

from __future__ import annotations

import logging
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from neonet.errors import NeonetError
from neonet.gen.hooks import SummaryHooks
from neonet.gen.sampling import NoiseSchedule, training_target
from neonet.stage import StageModule

log = logging.getLogger(__name__)


def check_class_embeds(unet: nn.Module, num_classes: int | None, what: str = "unet") -> None:
    """Raise when the UNet's class embedding does not fit ``num_classes`` (+1 null class)."""
    embeds = getattr(unet, "num_class_embeds", None)
    want = None if num_classes is None else int(num_classes) + 1
    if embeds != want:
        raise NeonetError(
            f"{what}: num_class_embeds is {embeds} but num_classes={num_classes} needs "
            f"{want} (classes + a null class for classifier-free guidance)"
        )


def class_labels(pni: torch.Tensor, num_classes: int | None, drop: float = 0.0) -> torch.Tensor | None:
    """Class indices for a class-conditioned UNet: unknown labels and a random ``drop`` fraction get the
    null class (index ``num_classes``); None without class conditioning."""
    if num_classes is None:
        return None
    labels = pni.long().clone()
    labels[(labels < 0) | (labels >= num_classes)] = int(num_classes)
    if drop > 0:
        labels[torch.rand(labels.shape, device=labels.device) < drop] = int(num_classes)
    return labels


class DiffusionModule(SummaryHooks, StageModule):
    """Denoising diffusion model on latents of the fold's autoencoder.

    Args:
        unet: the denoiser, e.g. ``monai.networks.nets.DiffusionModelUNet`` with in/out channels equal
            to the autoencoder's latent channels (at most 3 levels for a 24x24x12 latent grid).
        num_train_timesteps: diffusion steps T.
        schedule: MONAI noise schedule name.
        beta_start: first beta of the schedule.
        beta_end: last beta of the schedule.
        prediction_type: ``epsilon``, ``v_prediction`` or ``sample`` (the clean latent).
        num_classes: number of classes for class conditioning (2 for PNI-/PNI+); None = unconditional.
        class_dropout: fraction of training samples whose class is replaced by the null class.
        ema_decay: EMA decay of the sampling weights; 0 disables the EMA (the raw UNet samples).
        ema_start_step: optimizer steps before the EMA starts (it copies the weights until then).
        val_seed: seed of the fixed validation noise.
        **kwargs: ``optimizer`` and ``scheduler`` (stepped per epoch) of :class:`~neonet.stage.StageModule`.
    """

    stage = "diffusion"
    monitor = "val/loss"
    monitor_mode = "min"

    scale_factor: torch.Tensor  # a registered buffer

    def __init__(
        self,
        unet: nn.Module,
        num_train_timesteps: int = 1000,
        schedule: str = "scaled_linear_beta",
        beta_start: float = 0.0015,
        beta_end: float = 0.0195,
        prediction_type: str = "epsilon",
        num_classes: int | None = None,
        class_dropout: float = 0.1,
        ema_decay: float = 0.999,
        ema_start_step: int = 0,
        val_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_class_embeds(unet, num_classes)
        self.unet = unet
        self.noise_schedule = NoiseSchedule(num_train_timesteps, schedule, beta_start, beta_end, prediction_type)
        self.train_scheduler = self.noise_schedule.ddpm()
        self.num_classes = num_classes
        self.ema: AveragedModel | None = None
        if ema_decay > 0:
            self.ema = AveragedModel(unet, multi_avg_fn=get_ema_multi_avg_fn(float(ema_decay)), use_buffers=True)
            for p in self.ema.parameters():
                p.requires_grad_(False)
        # 0 = not computed yet; set from the first training batch, then saved/restored with the weights
        self.register_buffer("scale_factor", torch.tensor(0.0))

    # ------------------------------------------------------------------ helpers
    @property
    def null_class(self) -> int | None:
        """Index of the null class (classifier-free guidance), or None without class conditioning."""
        return None if self.num_classes is None else int(self.num_classes)

    def sampling_unet(self) -> nn.Module:
        """The weights to sample with: the EMA UNet if kept, else the trained UNet."""
        return self.ema.module if self.ema is not None else self.unet

    def class_labels(self, pni: torch.Tensor, drop: float = 0.0) -> torch.Tensor | None:
        """Class indices for the UNet (unknown labels and a ``drop`` fraction → null class)."""
        return class_labels(pni, self.num_classes, drop)

    @torch.no_grad()
    def compute_scale_factor(self, z: torch.Tensor) -> float:
        """1 / std of latents ``z``, pooled over all ranks."""
        z = z.detach().float()
        stats = torch.stack([z.sum(), (z * z).sum(), torch.tensor(float(z.numel()), device=z.device)])
        trainer = self._trainer  # None outside a Trainer (then there is only this process)
        gathered = cast(torch.Tensor, self.all_gather(stats)) if trainer is not None and trainer.world_size > 1 else stats
        if gathered.dim() > 1:
            gathered = gathered.sum(0)
        total, sq, n = gathered.tolist()
        std = max((sq / n - (total / n) ** 2), 1e-12) ** 0.5
        return 1.0 / std

    def on_train_batch_start(self, batch: dict[str, Any], batch_idx: int) -> None:
        if float(self.scale_factor) == 0.0:
            value = self.compute_scale_factor(batch["z"])
            self.scale_factor.fill_(value)
            log.info("%s: scale factor %.5f (1/std of the first batch's latents)", self.stage, value)

    def noisy_step(
        self, z0: torch.Tensor, pni: torch.Tensor, drop: float, generator: torch.Generator | None = None, **net_kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(prediction, target, timesteps) for scaled latents ``z0``; ``net_kwargs`` go to the denoiser."""
        noise = torch.randn(z0.shape, generator=generator, device="cpu").to(z0) if generator else torch.randn_like(z0)
        T = int(self.noise_schedule.num_train_timesteps)
        if generator is not None:
            t = torch.randint(0, T, (z0.shape[0],), generator=generator).to(z0.device)
        else:
            t = torch.randint(0, T, (z0.shape[0],), device=z0.device)
        zt = self.train_scheduler.add_noise(original_samples=z0, noise=noise, timesteps=t)
        target = training_target(self.train_scheduler, z0, noise, t)
        pred = self.denoise(zt, t, self.class_labels(pni, drop), **net_kwargs)
        return pred, target, t

    def denoise(
        self, zt: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None, unet: nn.Module | None = None, **_: Any
    ) -> torch.Tensor:
        """The denoiser's output (the trained UNet unless ``unet`` is given)."""
        return (unet or self.unet)(x=zt, timesteps=t, class_labels=labels)

    def loss(self, pred: torch.Tensor, target: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        """MSE between prediction and target."""
        return F.mse_loss(pred.float(), target.float())

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        z0 = batch["z"] * self.scale_factor
        pred, target, _ = self.noisy_step(z0, batch["pni"], float(self.hparams.class_dropout))
        loss = self.loss(pred, target, batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"stage {self.stage}, step {self.global_step}: loss is {loss.item()} — lower the learning rate"
            )
        self.log("train/loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=z0.shape[0], sync_dist=True)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.ema is None:
            return
        if self.global_step <= int(self.hparams.ema_start_step):
            self.ema.module.load_state_dict(self.unet.state_dict())
        else:
            self.ema.update_parameters(self.unet)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if float(self.scale_factor) == 0.0:
            return  # sanity check before the first training batch
        gen = torch.Generator().manual_seed(int(self.hparams.val_seed) * 100003 + batch_idx)
        z0 = batch["z"] * self.scale_factor
        bs = z0.shape[0]
        pred, target, _ = self.noisy_step(z0, batch["pni"], 0.0, generator=gen, unet=self.sampling_unet())
        self.log("val/loss", self.loss(pred, target, batch), prog_bar=True, on_epoch=True, batch_size=bs, sync_dist=True)
        if self.ema is not None:
            gen = torch.Generator().manual_seed(int(self.hparams.val_seed) * 100003 + batch_idx)
            pred, target, _ = self.noisy_step(z0, batch["pni"], 0.0, generator=gen)
            self.log("val/loss_raw", self.loss(pred, target, batch), on_epoch=True, batch_size=bs, sync_dist=True)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the checkpoint's hyperparameters (they hold the UNet config that the ControlNet records)."""
        self.checkpoint_hparams = dict(checkpoint.get("hyper_parameters") or {})

    def network_spec(self) -> dict[str, Any] | None:
        """The UNet's ``{"class_path", "init_args"}`` config, when known (modules built by the CLI)."""
        for store in (self.hparams, getattr(self, "checkpoint_hparams", {})):
            spec = store.get("unet")
            if isinstance(spec, dict) and "class_path" in spec:
                return spec
        return None

    def on_fit_end(self) -> None:
        """Record the scale factor and schedule in ``artifact.json`` (rank zero)."""
        dm = self.fold_data
        if self.trainer.is_global_zero and dm is not None:
            dm.workspace.write_artifact(
                self.stage, dm.fold, scale_factor=float(self.scale_factor), noise_schedule=self.noise_schedule.as_dict()
            )

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The UNet's parameters (the EMA copy is updated by averaging, not by the optimizer)."""
        return [p for p in self.unet.parameters() if p.requires_grad]
