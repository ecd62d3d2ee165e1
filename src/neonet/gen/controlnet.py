"""``ControlNetModule``: a mask ControlNet on the fold's frozen diffusion UNet (NeoGen step 2).

The ControlNet (MONAI ``ControlNet``, injected) sees the **full-resolution** one-hot label patch
(liver / peritumoral shell / tumour channels; background implied) and embeds it down to the latent
grid itself, so its ``conditioning_embedding_num_channels`` needs ``levels(autoencoder)`` entries
(e.g. three for a 3-level autoencoder, 96x96x48 → 24x24x12).

Before training (``configure_model``) the fold's diffusion ``best.ckpt`` is loaded: its EMA (sampling)
UNet is frozen and kept in this module, the ControlNet's shared layers are initialised from it
(``monai.networks.utils.copy_model_state``; every non-ControlNet weight must transfer), and its scale
factor, noise schedule and class conditioning are adopted. MONAI zero-initialises the ControlNet's
output convolutions, so at initialisation the UNet's prediction is unchanged. The frozen UNet's
architecture travels in the checkpoint (``neonet_unet``), so a ControlNet checkpoint is sampled
without its diffusion checkpoint. The autoencoder is not needed for training (latents are cached).

Loss: MSE of the UNet+ControlNet prediction, optionally weighted ``1 + region_weight`` inside tumour
and shell (their voxel fraction per latent voxel).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, cast

import torch
from monai.networks.utils import copy_model_state
from torch import nn

from neonet.errors import NeonetError
from neonet.gen.common import freeze, label_onehot, region_weight_map
from neonet.gen.diffusion import DiffusionModule, check_class_embeds, class_labels
from neonet.gen.hooks import SummaryHooks
from neonet.gen.sampling import NoiseSchedule, training_target
from neonet.gen.upstream import require_checkpoint
from neonet.run.atomic import sha256_file
from neonet.run.reload import build_network, load_checkpoint_fold
from neonet.stage import StageModule

log = logging.getLogger(__name__)

_CONTROLNET_ONLY = ("controlnet_cond_embedding.", "controlnet_down_blocks.", "controlnet_mid_block.")


def init_controlnet_from_unet(controlnet: nn.Module, unet: nn.Module) -> int:
    """Copy the UNet's weights into the ControlNet's shared layers; return how many tensors were copied.

    Raises NeonetError when any shared layer does not transfer (the ControlNet's channels, levels,
    attention or class embedding differ from the UNet's).
    """
    _, updated, unchanged = copy_model_state(controlnet, unet, inplace=True)
    missing = [k for k in unchanged if not k.startswith(_CONTROLNET_ONLY)]
    if missing:
        raise NeonetError(
            f"the ControlNet does not match the diffusion UNet: {len(missing)} shared weight(s) could not be copied "
            f"(e.g. {missing[:3]}); give the ControlNet the UNet's channels, attention_levels, num_res_blocks, "
            "norm_num_groups, num_head_channels and num_class_embeds"
        )
    return len(updated)


def cond_downsampling(controlnet: nn.Module) -> int:
    """How much the ControlNet's conditioning embedding downsamples (``2**(len(channels) - 1)``)."""
    blocks = getattr(getattr(controlnet, "controlnet_cond_embedding", None), "blocks", None)
    return 2 ** (len(blocks) // 2) if blocks is not None else 1


class ControlNetModule(SummaryHooks, StageModule):
    """Trains a ControlNet that makes the frozen diffusion UNet follow a label patch.

    Args:
        controlnet: e.g. ``monai.networks.nets.ControlNet`` with the diffusion UNet's architecture,
            ``conditioning_embedding_in_channels: 3`` and as many
            ``conditioning_embedding_num_channels`` entries as the autoencoder has levels.
        diffusion_checkpoint: diffusion checkpoint to build on; None uses the fold's
            ``diffusion/fold<k>/checkpoints/best.ckpt``.
        region_weight: extra loss weight inside tumour + shell (0 = uniform).
        class_dropout: fraction of training samples given the null class (classifier-free guidance);
            None uses the diffusion model's value.
        val_seed: seed of the fixed validation noise.
        **kwargs: ``optimizer`` (ControlNet parameters only) and ``scheduler`` (stepped per epoch) of
            :class:`~neonet.stage.StageModule`.
    """

    stage = "controlnet"
    monitor = "val/loss"
    monitor_mode = "min"

    scale_factor: torch.Tensor  # a registered buffer

    def __init__(
        self,
        controlnet: nn.Module,
        diffusion_checkpoint: str | None = None,
        region_weight: float = 0.0,
        class_dropout: float | None = None,
        val_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.controlnet = controlnet
        self.unet: nn.Module | None = None
        self.noise_schedule: NoiseSchedule | None = None
        self.num_classes: int | None = None
        self.class_dropout = class_dropout
        self.unet_meta: dict[str, Any] | None = None
        self.register_buffer("scale_factor", torch.tensor(0.0))
        self._checked = False

    # ------------------------------------------------------------------ building on the diffusion model
    def attach_diffusion(self, ckpt: str | Path, init_controlnet: bool = True) -> None:
        """Adopt a diffusion checkpoint: frozen EMA UNet, scale factor, schedule, class conditioning."""
        trained = load_checkpoint_fold(ckpt, expect=DiffusionModule)
        diffusion = cast(DiffusionModule, trained.module)  # load_checkpoint_fold has checked its class
        if float(diffusion.scale_factor) == 0.0:
            raise NeonetError(f"{ckpt}: the diffusion model has no scale factor (it never trained a step)")
        spec = diffusion.network_spec() or ((trained.cfg.get("model") or {}).get("init_args") or {}).get("unet")
        if not isinstance(spec, dict):
            raise NeonetError(f"{ckpt}: the checkpoint has no UNet config; train the diffusion stage with `neonet fit`")
        unet = freeze(copy.deepcopy(diffusion.sampling_unet()))
        self._adopt(
            unet,
            diffusion.noise_schedule,
            diffusion.num_classes,
            float(diffusion.hparams.get("class_dropout", 0.1)),
        )
        self.scale_factor.fill_(float(diffusion.scale_factor))
        self.unet_meta = {
            "spec": spec,
            "noise_schedule": diffusion.noise_schedule.as_dict(),
            "num_classes": diffusion.num_classes,
            "class_dropout": float(diffusion.hparams.get("class_dropout", 0.1)),
            "diffusion_checkpoint": {"path": str(ckpt), "sha256": sha256_file(ckpt)},
        }
        if init_controlnet:
            n = init_controlnet_from_unet(self.controlnet, unet)
            log.info("controlnet: initialised %d tensors from the diffusion UNet of %s", n, ckpt)

    def _adopt(self, unet: nn.Module, schedule: NoiseSchedule, num_classes: int | None, class_dropout: float) -> None:
        check_class_embeds(self.controlnet, num_classes, "controlnet")
        self.unet = unet
        self.noise_schedule = schedule
        self.train_scheduler = schedule.ddpm()
        self.num_classes = num_classes
        if self.class_dropout is None:
            self.class_dropout = class_dropout

    def configure_model(self) -> None:
        """Load the fold's diffusion model before training (and before a resumed state is restored)."""
        if self.unet is not None:
            return
        try:
            self.trainer  # noqa: B018 - raises outside a Trainer
        except RuntimeError:  # reloaded outside a Trainer: the UNet is rebuilt from the checkpoint instead
            return
        ckpt = self.hparams.get("diffusion_checkpoint")
        if not ckpt:
            dm = self.fold_data
            if dm is None:
                raise NeonetError("controlnet: set model.init_args.diffusion_checkpoint or use a neonet DataModule")
            ckpt = require_checkpoint(dm.workspace, "diffusion", dm.fold)
        self.attach_diffusion(ckpt)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["neonet_unet"] = self.unet_meta

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Rebuild the frozen UNet from the checkpoint's own record (its weights follow in the state dict).

        The UNet is built by :func:`neonet.run.reload.build_network` (neonet, monai and torch classes only).
        """
        meta = checkpoint.get("neonet_unet")
        if self.unet is not None:
            return
        if not meta:
            raise NeonetError("this ControlNet checkpoint has no `neonet_unet` record (not written by ControlNetModule)")
        unet = build_network(meta.get("spec"), key="neonet_unet.spec")
        self._adopt(
            freeze(unet), NoiseSchedule(**meta["noise_schedule"]), meta["num_classes"], float(meta.get("class_dropout", 0.1))
        )
        self.unet_meta = meta

    # ------------------------------------------------------------------ model
    @property
    def null_class(self) -> int | None:
        """Index of the null class, or None without class conditioning."""
        return None if self.num_classes is None else int(self.num_classes)

    def class_labels(self, pni: torch.Tensor, drop: float = 0.0) -> torch.Tensor | None:
        """Class indices (unknown labels and a ``drop`` fraction → null class)."""
        return class_labels(pni, self.num_classes, drop)

    def forward(
        self,
        zt: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor,
        labels: torch.Tensor | None = None,
        conditioning_scale: float = 1.0,
    ) -> torch.Tensor:
        """UNet prediction with the ControlNet's residuals added."""
        assert self.unet is not None, "call configure_model() or attach_diffusion() first"
        down, mid = self.controlnet(
            x=zt, timesteps=t, controlnet_cond=cond, conditioning_scale=conditioning_scale, class_labels=labels
        )
        return self.unet(
            x=zt, timesteps=t, class_labels=labels, down_block_additional_residuals=down, mid_block_additional_residual=mid
        )

    def _check_shapes(self, z: torch.Tensor, label: torch.Tensor) -> None:
        if self._checked:
            return
        factor = cond_downsampling(self.controlnet)
        want = tuple(int(s) // factor for s in label.shape[2:])
        if want != tuple(z.shape[2:]):
            raise NeonetError(
                f"controlnet: the conditioning embedding turns {tuple(label.shape[2:])} masks into {want}, but latents are "
                f"{tuple(z.shape[2:])}; give conditioning_embedding_num_channels one entry per autoencoder level"
            )
        self._checked = True

    def step(self, batch: dict[str, Any], drop: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """Weighted noise-prediction loss of one batch."""
        assert self.noise_schedule is not None
        z0 = batch["z"] * self.scale_factor
        self._check_shapes(z0, batch["label"])
        if generator is not None:
            noise = torch.randn(z0.shape, generator=generator).to(z0)
            t = torch.randint(0, self.noise_schedule.num_train_timesteps, (z0.shape[0],), generator=generator).to(z0.device)
        else:
            noise = torch.randn_like(z0)
            t = torch.randint(0, self.noise_schedule.num_train_timesteps, (z0.shape[0],), device=z0.device)
        zt = self.train_scheduler.add_noise(original_samples=z0, noise=noise, timesteps=t)
        target = training_target(self.train_scheduler, z0, noise, t)
        pred = self(zt, t, label_onehot(batch["label"]).to(z0), self.class_labels(batch["pni"], drop))
        weights = region_weight_map(batch["label"], z0.shape[2:], float(self.hparams.region_weight)).to(z0)
        se = (pred.float() - target.float()) ** 2
        return (weights * se).mean() / weights.mean()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.step(batch, float(self.class_dropout or 0.0))
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"stage controlnet, step {self.global_step}: loss is {loss.item()} — lower the learning rate"
            )
        self.log("train/loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=batch["z"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        gen = torch.Generator().manual_seed(int(self.hparams.val_seed) * 100003 + batch_idx)
        loss = self.step(batch, 0.0, generator=gen)
        self.log("val/loss", loss, prog_bar=True, on_epoch=True, batch_size=batch["z"].shape[0], sync_dist=True)

    def on_fit_end(self) -> None:
        """Record the adopted scale factor in ``artifact.json`` (rank zero)."""
        dm = self.fold_data
        if self.trainer.is_global_zero and dm is not None:
            dm.workspace.write_artifact(
                self.stage,
                dm.fold,
                scale_factor=float(self.scale_factor),
                noise_schedule=self.noise_schedule.as_dict() if self.noise_schedule else None,
            )

    def upstream(self) -> dict[str, Any]:
        """The diffusion checkpoint this ControlNet builds on, with the latent cache and its autoencoder checkpoint."""
        return {"diffusion": (self.unet_meta or {}).get("diffusion_checkpoint"), **super().upstream()}

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The ControlNet's parameters (the diffusion UNet and the autoencoder stay frozen)."""
        return list(self.controlnet.parameters())
