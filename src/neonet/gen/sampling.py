"""Noise schedules and the latent sampling loop (DDIM or DDPM, class guidance, ControlNet scale).

The loop is written out here instead of using MONAI's ``ControlNetLatentDiffusionInferer``, which
always shrinks the conditioning mask to the latent grid and never passes ``conditioning_scale``:
our ControlNet embeds the **full-resolution** one-hot label patch itself.

Both schedulers are built with ``clip_sample=False`` (MONAI's default ``True`` clamps predicted
latents to [-1, 1], which is wrong for scaled latents). MONAI's ``DDPMScheduler.step`` assumes
consecutive timesteps, so DDPM always runs all ``num_train_timesteps`` steps; DDIM runs any number.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler
from torch import nn
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

SAMPLERS = ("ddim", "ddpm")
_BETA_SCHEDULES = ("linear_beta", "scaled_linear_beta", "sigmoid_beta")


@dataclass(frozen=True)
class NoiseSchedule:
    """The forward (noising) process a denoiser was trained with.

    Args:
        num_train_timesteps: diffusion steps T.
        schedule: MONAI schedule name (``scaled_linear_beta``, ``linear_beta``, ``sigmoid_beta``, ``cosine``).
        beta_start: first beta (beta schedules only).
        beta_end: last beta (beta schedules only).
        prediction_type: what the network predicts: ``epsilon``, ``v_prediction`` or ``sample``.
    """

    num_train_timesteps: int = 1000
    schedule: str = "scaled_linear_beta"
    beta_start: float = 0.0015
    beta_end: float = 0.0195
    prediction_type: str = "epsilon"

    def _args(self) -> dict[str, Any]:
        if self.schedule in _BETA_SCHEDULES:
            return {"beta_start": float(self.beta_start), "beta_end": float(self.beta_end)}
        return {}

    def ddpm(self) -> DDPMScheduler:
        """A DDPM scheduler (training noise and ancestral sampling), ``clip_sample=False``."""
        return DDPMScheduler(
            num_train_timesteps=int(self.num_train_timesteps),
            schedule=self.schedule,
            clip_sample=False,
            prediction_type=self.prediction_type,
            **self._args(),
        )

    def ddim(self) -> DDIMScheduler:
        """A DDIM scheduler (fast deterministic or eta-stochastic sampling), ``clip_sample=False``."""
        return DDIMScheduler(
            num_train_timesteps=int(self.num_train_timesteps),
            schedule=self.schedule,
            clip_sample=False,
            prediction_type=self.prediction_type,
            **self._args(),
        )

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (for checkpoints and manifests)."""
        return asdict(self)


def training_target(scheduler: DDPMScheduler, z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the denoiser must predict for ``z_t``: the noise (``epsilon``), the velocity
    (``v_prediction``) or the clean latent (``sample``)."""
    if scheduler.prediction_type == "v_prediction":
        return scheduler.get_velocity(z0, noise, t)
    if scheduler.prediction_type == "sample":
        return z0
    return noise


class Denoiser:
    """``eps(z_t, t)`` of a diffusion UNet, optionally with a ControlNet and classifier-free guidance.

    Args:
        unet: MONAI ``DiffusionModelUNet``.
        controlnet: optional MONAI ``ControlNet`` (built from the UNet).
        cond: full-resolution conditioning ``(B, C, X, Y, Z)`` for the ControlNet.
        conditioning_scale: factor on the ControlNet residuals (0 switches the mask off, 1 as trained).
        class_label: class index per sample ``(B,)`` or None for an unconditional UNet.
        null_class: index of the "no class" embedding (classifier-free guidance).
        guidance_scale: 1 = conditional only; > 1 extrapolates away from the null-class prediction.
    """

    def __init__(
        self,
        unet: nn.Module,
        controlnet: nn.Module | None = None,
        cond: torch.Tensor | None = None,
        conditioning_scale: float = 1.0,
        class_label: torch.Tensor | None = None,
        null_class: int | None = None,
        guidance_scale: float = 1.0,
    ) -> None:
        self.unet, self.controlnet, self.cond = unet, controlnet, cond
        self.conditioning_scale = float(conditioning_scale)
        self.class_label, self.null_class = class_label, null_class
        self.guidance = float(guidance_scale)
        if self.guidance != 1.0 and (class_label is None or null_class is None):
            raise ValueError("classifier-free guidance needs a class-conditioned model (class_label and null_class)")

    def _eps(self, z: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None, cond: torch.Tensor | None) -> torch.Tensor:
        down, mid = None, None
        if self.controlnet is not None:
            down, mid = self.controlnet(
                x=z, timesteps=t, controlnet_cond=cond, conditioning_scale=self.conditioning_scale, class_labels=labels
            )
        return self.unet(
            x=z, timesteps=t, class_labels=labels, down_block_additional_residuals=down, mid_block_additional_residual=mid
        )

    def __call__(self, z: torch.Tensor, t: int) -> torch.Tensor:
        ts = torch.full((z.shape[0],), int(t), device=z.device, dtype=torch.long)
        if self.guidance == 1.0:
            return self._eps(z, ts, self.class_label, self.cond)
        label, null_class = self.class_label, self.null_class
        if label is None or null_class is None:  # ruled out in __init__
            raise ValueError("classifier-free guidance needs a class-conditioned model (class_label and null_class)")
        null = torch.full_like(label, int(null_class))
        cond = None if self.cond is None else torch.cat([self.cond, self.cond])
        eps = self._eps(torch.cat([z, z]), torch.cat([ts, ts]), torch.cat([label, null]), cond)
        eps_c, eps_u = eps.chunk(2)
        return eps_u + self.guidance * (eps_c - eps_u)


@torch.no_grad()
def sample_latents(
    denoiser: Denoiser,
    schedule: NoiseSchedule,
    noise: torch.Tensor,
    sampler: str = "ddim",
    steps: int = 50,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Run the reverse process from ``noise`` (scaled latent space) and return the final latents.

    Args:
        denoiser: the noise predictor.
        schedule: the schedule the denoiser was trained with.
        noise: initial Gaussian latents ``(B, C, x, y, z)``.
        sampler: ``ddim`` (default, ``steps`` steps) or ``ddpm`` (all ``num_train_timesteps`` steps).
        steps: DDIM steps.
        eta: DDIM stochasticity (0 deterministic, 1 DDPM-like).
        generator: random generator for the stochastic steps (DDPM, DDIM with eta > 0).
        progress: show a tqdm bar over the steps.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if sampler == "ddpm":
        scheduler: DDPMScheduler | DDIMScheduler = schedule.ddpm()
        scheduler.set_timesteps(int(schedule.num_train_timesteps), device=noise.device)
    else:
        scheduler = schedule.ddim()
        scheduler.set_timesteps(int(steps), device=noise.device)
    z = noise
    for t in tqdm(scheduler.timesteps, desc=f"{sampler}", leave=False, disable=not progress):
        model_out = denoiser(z, int(t))
        if isinstance(scheduler, DDIMScheduler):
            z, _ = scheduler.step(model_out, int(t), z, eta=float(eta), generator=generator)
        else:
            z, _ = scheduler.step(model_out, int(t), z, generator=generator)
    return z


def effective_steps(schedule: NoiseSchedule, sampler: str, steps: int) -> int:
    """The number of denoising steps a sampler really runs."""
    return int(schedule.num_train_timesteps) if sampler == "ddpm" else int(steps)
