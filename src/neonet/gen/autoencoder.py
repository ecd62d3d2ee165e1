"""``AutoencoderModule``: the KL autoencoder of NeoGen's latent diffusion model (per fold).

Loss: L1 reconstruction + ``kl_weight`` x KL divergence of the posterior, optionally a perceptual
loss (only from a local weights file, never downloaded) and, after ``adv_warmup_epochs``, a
least-squares patch adversarial loss from an injected discriminator (MONAI ``PatchDiscriminator``
with instance norm). With a discriminator the module uses manual optimisation: two optimizers,
gradients clipped by hand with ``self.clip_gradients``.

Validation reconstructs the inner validation patches from the posterior mean and logs MONAI PSNR,
SSIM and MS-SSIM (window and scales chosen to fit the patch size) as ``val/psnr`` (the checkpoint
monitor), ``val/ssim``, ``val/ms_ssim``, and writes a mid-slice reconstruction panel
``reconstruction.png`` to the stage folder (and to W&B when ``wandb_images`` is set).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.loggers import WandbLogger
from monai.losses import PatchAdversarialLoss
from monai.metrics import MultiScaleSSIMMetric, PSNRMetric, SSIMMetric
from monai.networks.nets import AutoencoderKL
from torch import nn

from neonet.errors import NeonetError
from neonet.gen.common import autoencoder_factor, check_divisible, ms_ssim_settings, ssim_window
from neonet.gen.hooks import write_stage_summary
from neonet.gen.panels import reconstruction_panel
from neonet.gen.patch_data import PatchDataModule
from neonet.stage import CVContext, FoldContext, StageModule

log = logging.getLogger(__name__)


def kl_divergence(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma) || N(0, 1)) summed over latent voxels, averaged over the batch."""
    kl = 0.5 * torch.sum(mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2) + 1e-12) - 1.0, dim=list(range(1, mu.dim())))
    return kl.mean()


def build_perceptual_loss(weights: str, network: str = "resnet50") -> nn.Module:
    """MONAI perceptual loss from a **local** weights file (raises instead of downloading)."""
    path = Path(weights)
    if not path.is_file():
        raise NeonetError(
            f"perceptual loss weights {path} not found. NeoGen never downloads weights: put a local "
            "torchvision ResNet-50 state dict there, or set model.init_args.perceptual_weights to null"
        )
    if network != "resnet50":
        raise NeonetError("only network 'resnet50' loads perceptual weights from a local file in MONAI; others download")
    from monai.losses import PerceptualLoss

    try:
        return PerceptualLoss(
            spatial_dims=3, network_type="resnet50", is_fake_3d=True, pretrained=True, pretrained_path=str(path)
        )
    except ImportError as exc:
        raise NeonetError(f"the perceptual loss needs torchvision ({exc}); install it or disable the loss") from exc


class AutoencoderModule(StageModule):
    """Trains a 3D KL autoencoder (MONAI ``AutoencoderKL``) on a fold's image patches.

    Args:
        autoencoder: the autoencoder, e.g. ``monai.networks.nets.AutoencoderKL`` with 1 in/out channel.
        discriminator: optional patch discriminator (``monai.networks.nets.PatchDiscriminator`` with
            ``norm: INSTANCE``); None trains without adversarial loss.
        optimizer: optimizer factory for the autoencoder.
        disc_optimizer: optimizer factory for the discriminator.
        kl_weight: weight of the KL term.
        adv_weight: weight of the adversarial terms (generator and discriminator).
        adv_warmup_epochs: epochs of pure reconstruction training before the adversarial loss starts.
        perceptual_weights: local file of ResNet-50 weights for MONAI's perceptual loss; None (default)
            disables it. Weights are never downloaded.
        perceptual_weight: weight of the perceptual loss.
        grad_clip: maximum gradient norm for both networks (clipped by hand); None disables clipping.
        panel_patches: validation patches shown in the reconstruction panel.
        wandb_images: also log the panel to W&B (off by default: image logging of patient data is opt-in).
        latent_samples: posterior samples per training patch and flip in the latent cache that
            ``neonet cv`` builds after each fold (see :mod:`neonet.gen.latents`).
        latent_flip_axes: axes whose flips (all combinations) augment the latent cache.
    """

    stage = "autoencoder"
    monitor = "val/psnr"
    monitor_mode = "max"

    def __init__(
        self,
        autoencoder: nn.Module,
        discriminator: nn.Module | None = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        disc_optimizer: OptimizerCallable = torch.optim.Adam,
        kl_weight: float = 1e-6,
        adv_weight: float = 0.01,
        adv_warmup_epochs: int = 5,
        perceptual_weights: str | None = None,
        perceptual_weight: float = 1e-3,
        grad_clip: float | None = 1.0,
        panel_patches: int = 4,
        wandb_images: bool = False,
        latent_samples: int = 4,
        latent_flip_axes: list[int] | None = None,
    ) -> None:
        super().__init__(optimizer)
        self.autoencoder = autoencoder
        self.discriminator = discriminator
        self.disc_optimizer_factory = disc_optimizer
        if discriminator is not None:
            self.automatic_optimization = False
            if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in discriminator.modules()):
                log.warning("the discriminator uses batch norm; instance norm (norm: INSTANCE) is recommended")
        self.adv_loss = PatchAdversarialLoss(criterion="least_squares")
        self.perceptual = build_perceptual_loss(perceptual_weights) if perceptual_weights else None
        self.val_psnr = PSNRMetric(max_val=1.0)
        self._ssim: SSIMMetric | None = None
        self._ms_ssim: MultiScaleSSIMMetric | None = None
        self._panel: dict[str, Any] | None = None

    # ------------------------------------------------------------------ model
    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstruction, z_mu, z_sigma) with a sampled latent."""
        return self.autoencoder(image)

    def generator_loss(
        self, image: torch.Tensor, recon: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Reconstruction terms of the autoencoder loss (without the adversarial term)."""
        terms = {"l1": (recon.float() - image.float()).abs().mean(), "kl": kl_divergence(mu.float(), sigma.float())}
        total = terms["l1"] + self.hparams.kl_weight * terms["kl"]
        if self.perceptual is not None:
            terms["perceptual"] = self.perceptual(recon.float(), image.float())
            total = total + self.hparams.perceptual_weight * terms["perceptual"]
        terms["loss"] = total
        return terms

    def adversarial_active(self) -> bool:
        """Whether the adversarial loss is on (after the warm-up epochs)."""
        return self.discriminator is not None and self.current_epoch >= self.hparams.adv_warmup_epochs

    def _check_finite(self, loss: torch.Tensor, what: str) -> None:
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"stage autoencoder, step {self.global_step}: {what} is {loss.item()} — lower the learning rate, "
                "the adversarial weight, or check the patch intensities"
            )

    def on_fit_start(self) -> None:
        dm = self.fold_data
        if isinstance(dm, PatchDataModule):
            check_divisible(dm.patch_shape(), autoencoder_factor(self.autoencoder), "autoencoder")

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        image = batch["image"]
        bs = image.shape[0]
        if self.automatic_optimization:
            recon, mu, sigma = self(image)
            terms = self.generator_loss(image, recon, mu, sigma)
            self._check_finite(terms["loss"], "the loss")
            self.log_dict({f"train/{k}": v for k, v in terms.items()}, on_step=False, on_epoch=True, batch_size=bs)
            return terms["loss"]

        discriminator = self.discriminator
        if discriminator is None:  # manual optimisation is switched on only with a discriminator
            raise NeonetError("the autoencoder trains with manual optimisation but has no discriminator")
        # two LightningOptimizers; each is also an instance of the optimizer class it wraps
        opt_g, opt_d = cast("list[torch.optim.Optimizer]", self.optimizers())
        adversarial = self.adversarial_active()
        # generator (autoencoder) step
        self.toggle_optimizer(opt_g)
        recon, mu, sigma = self(image)
        terms = self.generator_loss(image, recon, mu, sigma)
        loss_g = terms["loss"]
        if adversarial:
            logits_fake = discriminator(recon.contiguous().float())[-1]
            terms["adv_g"] = self.adv_loss(logits_fake, target_is_real=True, for_discriminator=False)
            loss_g = loss_g + self.hparams.adv_weight * terms["adv_g"]
        self._check_finite(loss_g, "the autoencoder loss")
        opt_g.zero_grad()
        self.manual_backward(loss_g)
        if self.hparams.grad_clip:
            self.clip_gradients(opt_g, gradient_clip_val=self.hparams.grad_clip, gradient_clip_algorithm="norm")
        opt_g.step()
        self.untoggle_optimizer(opt_g)
        # discriminator step
        if adversarial:
            self.toggle_optimizer(opt_d)
            logits_fake = discriminator(recon.detach().contiguous().float())[-1]
            logits_real = discriminator(image.contiguous().float())[-1]
            loss_d = 0.5 * (
                self.adv_loss(logits_fake, target_is_real=False, for_discriminator=True)
                + self.adv_loss(logits_real, target_is_real=True, for_discriminator=True)
            )
            loss_d = self.hparams.adv_weight * loss_d
            self._check_finite(loss_d, "the discriminator loss")
            opt_d.zero_grad()
            self.manual_backward(loss_d)
            if self.hparams.grad_clip:
                self.clip_gradients(opt_d, gradient_clip_val=self.hparams.grad_clip, gradient_clip_algorithm="norm")
            opt_d.step()
            self.untoggle_optimizer(opt_d)
            terms["adv_d"] = loss_d.detach()
        terms["loss"] = loss_g.detach()
        self.log_dict({f"train/{k}": v for k, v in terms.items()}, on_step=False, on_epoch=True, batch_size=bs)
        return None

    # ------------------------------------------------------------------ validation
    def _metrics_for(self, shape: tuple[int, ...]) -> tuple[SSIMMetric, MultiScaleSSIMMetric]:
        if self._ssim is None or self._ms_ssim is None:
            kernel, weights = ms_ssim_settings(shape)
            self._ssim = SSIMMetric(spatial_dims=3, data_range=1.0, win_size=ssim_window(shape))
            self._ms_ssim = MultiScaleSSIMMetric(spatial_dims=3, data_range=1.0, kernel_size=kernel, weights=weights)
        return self._ssim, self._ms_ssim

    @torch.no_grad()
    def reconstruct(self, image: torch.Tensor) -> torch.Tensor:
        """Deterministic reconstruction from the posterior mean, clipped to [0, 1]."""
        return cast(AutoencoderKL, self.autoencoder).reconstruct(image).clamp(0.0, 1.0)  # an AutoencoderKL by contract

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        image = batch["image"].float()
        recon = self.reconstruct(image).float()
        ssim, ms_ssim = self._metrics_for(tuple(image.shape[2:]))
        self.val_psnr(recon, image)
        ssim(recon, image)
        ms_ssim(recon, image)
        self.log("val/l1", (recon - image).abs().mean(), on_epoch=True, batch_size=image.shape[0], sync_dist=True)
        if batch_idx == 0:
            n = int(self.hparams.panel_patches)
            self._panel = {
                "images": image[:n, 0].cpu().numpy(),
                "recons": recon[:n, 0].cpu().numpy(),
                "case_ids": list(batch["case_id"][:n]),
            }

    def on_validation_epoch_end(self) -> None:
        if self._ssim is None or self._ms_ssim is None:
            return  # no validation batches
        ssim, ms_ssim = self._ssim, self._ms_ssim
        values = {
            # built without get_not_nans, so each aggregates to one tensor
            "val/psnr": float(cast(torch.Tensor, self.val_psnr.aggregate()).item()),
            "val/ssim": float(cast(torch.Tensor, ssim.aggregate()).item()),
            "val/ms_ssim": float(cast(torch.Tensor, ms_ssim.aggregate()).item()),
        }
        for metric in (self.val_psnr, ssim, ms_ssim):
            metric.reset()
        self.log("val/psnr", values["val/psnr"], prog_bar=True)
        self.log("val/ssim", values["val/ssim"])
        self.log("val/ms_ssim", values["val/ms_ssim"])
        if self._panel is not None and self.trainer.is_global_zero and not self.trainer.sanity_checking:
            self._write_panel(values)
        self._panel = None

    def _panel_path(self) -> Path:
        dm = self.fold_data
        if dm is not None:
            return dm.workspace.reconstruction_panel(self.stage, dm.fold)
        return Path(self.trainer.default_root_dir) / "reconstruction.png"  # outside neonet fit (no workspace)

    def _write_panel(self, values: dict[str, float]) -> None:
        assert self._panel is not None
        title = f"epoch {self.current_epoch}: PSNR {values['val/psnr']:.2f} dB, SSIM {values['val/ssim']:.3f}"
        path = reconstruction_panel(
            self._panel_path(),
            np.asarray(self._panel["images"]),
            np.asarray(self._panel["recons"]),
            self._panel["case_ids"],
            title=title,
        )
        if self.hparams.wandb_images:
            for lg in self.loggers:
                if isinstance(lg, WandbLogger):
                    lg.log_image(key="val/reconstruction", images=[str(path)], step=self.global_step)

    # ------------------------------------------------------------------ optimizers
    # ------------------------------------------------------------------ cv hooks
    @classmethod
    def after_fold(cls, ctx: FoldContext) -> dict[str, Any]:
        """Reconstruction metrics of ``best.ckpt`` on the inner validation patches, then the fold's latent cache."""
        from neonet.gen.hooks import autoencoder_after_fold

        return autoencoder_after_fold(ctx)

    @classmethod
    def after_folds(cls, ctx: CVContext) -> None:
        """Per-fold table of the stage in ``reports/autoencoder_summary.*`` and a W&B summary run."""
        write_stage_summary(ctx.ws, cls.stage, ctx.folds, ctx.config)

    def configure_optimizers(self) -> Any:
        """Adam for the autoencoder and, with a discriminator, one for it (manual optimisation)."""
        opt_g = self.optimizer_factory(self.autoencoder.parameters())
        if self.discriminator is None:
            return opt_g
        opt_d = self.disc_optimizer_factory(self.discriminator.parameters())
        return [opt_g, opt_d]
