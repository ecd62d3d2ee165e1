"""Small helpers shared by the NeoGen stages: hyperparameters, freezing, label one-hot, SSIM settings.

Intensity convention: NeoGen works on TLCR image patches **as written by** ``neonet crop``, i.e. in
[0, 1] (each volume was scaled between its 0.5th and 99.5th intensity percentiles before cropping).
The autoencoder reconstructs that range, PSNR/SSIM use ``data_range = 1`` and synthetic patches are
clipped to [0, 1] and written in the same range, so real and synthetic patches reach NeoCls alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar, cast

import torch
import torch.nn.functional as F
from torch import nn

from neonet.data.patches import PATCH_LIVER, PATCH_SHELL, PATCH_TUMOR
from neonet.errors import NeonetError

_ModuleT = TypeVar("_ModuleT", bound=nn.Module)

#: Label-patch values that become the conditioning channels of the ControlNet (in this order).
CONDITION_VALUES: tuple[int, ...] = (PATCH_LIVER, PATCH_SHELL, PATCH_TUMOR)

#: Default MS-SSIM scale weights (Wang et al. 2003), truncated to the scales a patch allows.
MS_SSIM_WEIGHTS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def freeze(module: _ModuleT) -> _ModuleT:
    """Set ``requires_grad=False`` on every parameter and put the module in eval mode."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


def label_onehot(label: torch.Tensor, values: Sequence[int] = CONDITION_VALUES) -> torch.Tensor:
    """Label patches ``(B, 1, X, Y, Z)`` or ``(B, X, Y, Z)`` → float one-hot ``(B, len(values), X, Y, Z)``.

    Background is implied by all channels being 0 (the ControlNet input has no background channel).
    """
    if label.dim() == 5:
        label = label[:, 0]
    return torch.stack([(label == v) for v in values], dim=1).float()


def region_weight_map(label: torch.Tensor, latent_shape: Sequence[int], extra: float) -> torch.Tensor:
    """Loss weights on the latent grid: ``1 + extra * fraction of tumour/shell voxels`` per latent voxel.

    Args:
        label: label patches ``(B, 1, X, Y, Z)`` (values 0-3).
        latent_shape: spatial shape of the latent grid.
        extra: additional weight inside tumour + shell (0 gives uniform weights).
    """
    region = ((label == PATCH_TUMOR) | (label == PATCH_SHELL)).float()
    if region.dim() == 4:
        region = region[:, None]
    frac = F.adaptive_avg_pool3d(region, cast("tuple[int, int, int]", tuple(int(s) for s in latent_shape)))
    return 1.0 + float(extra) * frac


def ms_ssim_settings(shape: Sequence[int]) -> tuple[int, tuple[float, ...]]:
    """MS-SSIM ``(kernel_size, weights)`` that work on patches of ``shape`` (spatial dims).

    MONAI's MS-SSIM needs ``size // (scales - 1)**2 > kernel - 1`` per axis (its own check) and a
    kernel that fits the coarsest scale ``size / 2**(scales - 1)``. The default (5 scales, kernel 11)
    fails on 96x96x48 and anything smaller; this picks the most scales (then the largest odd kernel
    up to 7) that satisfy both, with the default weights truncated and renormalised.
    """
    smallest = int(min(shape))
    for scales in (5, 4, 3, 2):
        div = max(1, scales - 1) ** 2
        for kernel in (7, 5, 3):
            if smallest // div > kernel - 1 and smallest // 2 ** (scales - 1) >= kernel:
                w = MS_SSIM_WEIGHTS[:scales]
                total = sum(w)
                return kernel, tuple(x / total for x in w)
    raise NeonetError(f"patches of shape {tuple(shape)} are too small for MS-SSIM (need at least 6 voxels per axis)")


def ssim_window(shape: Sequence[int], largest: int = 7) -> int:
    """An odd SSIM window that fits ``shape`` (at most ``largest``)."""
    w = min(int(largest), int(min(shape)))
    return w if w % 2 == 1 else w - 1


def check_divisible(shape: Sequence[int], factor: int, what: str) -> None:
    """Raise NeonetError when a patch shape is not divisible by a network's downsampling factor."""
    bad = [int(s) for s in shape if int(s) % factor]
    if bad:
        raise NeonetError(
            f"{what}: patch shape {tuple(int(s) for s in shape)} is not divisible by {factor} "
            f"(the network downsamples by {factor}); crop patches with a divisible --patch_size "
            "or use fewer levels"
        )


def autoencoder_factor(autoencoder: nn.Module) -> int:
    """Spatial downsampling factor of a MONAI ``AutoencoderKL`` (``2**(levels - 1)``)."""
    channels = getattr(getattr(autoencoder, "encoder", None), "channels", None)
    if channels is None:
        raise TypeError(f"{type(autoencoder).__name__} is not a MONAI AutoencoderKL (no encoder.channels)")
    return 2 ** (len(channels) - 1)
