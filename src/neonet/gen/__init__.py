"""NeoGen: per-fold 3D latent diffusion (KL autoencoder + diffusion UNet) and a mask ControlNet.

Stages (each ``neonet fit``/``neonet cv`` with a config from ``experiments/``):

- ``autoencoder``: :class:`AutoencoderModule` on :class:`PatchDataModule`; its cv hook encodes
  the fold's training patches into the latent cache (:mod:`neonet.gen.latents`).
- ``diffusion``: :class:`DiffusionModule` on :class:`LatentDataModule` (reads the cache).
- ``controlnet``: :class:`ControlNetModule` on :class:`LatentDataModule` with ``masks: true``.

Then ``neonet synthesize`` (:func:`neonet.gen.synthesize.synthesize`) writes PNI+ patches that
balance each fold's training set and a quality report (:mod:`neonet.gen.quality`).
"""

from neonet.gen.autoencoder import AutoencoderModule
from neonet.gen.controlnet import ControlNetModule
from neonet.gen.diffusion import DiffusionModule
from neonet.gen.latent_data import LatentDataModule
from neonet.gen.patch_data import PatchDataModule

__all__ = ["AutoencoderModule", "ControlNetModule", "DiffusionModule", "LatentDataModule", "PatchDataModule"]
