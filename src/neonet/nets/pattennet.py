"""PattenNet (NeoCls) and the adapter that turns a MONAI ``AutoencoderKL`` into its frozen encoder.

PattenNet = frozen encoder of the latent diffusion model's autoencoder -> two 3D Dual Attention
Blocks -> global average pooling -> MLP -> one PNI logit per patch.
"""

from __future__ import annotations

from typing import Literal

import torch
from monai.networks.nets import AutoencoderKL
from torch import nn

from neonet.nets.attention import DualAttentionBlock3d

__all__ = ["AutoencoderKLEncoder", "PattenNet"]


class AutoencoderKLEncoder(nn.Module):
    """The encoder half of a MONAI ``AutoencoderKL``, exposed as a feature extractor.

    MONAI's ``Encoder.blocks`` is ``[conv_in, res/attention/downsample blocks..., (non-local res,
    attention, res), GroupNorm, Conv3d(channels[-1] -> latent_channels)]``; there is no activation
    between the final norm and conv. The taps are:

    - ``"features"``: output of ``blocks[:-2]``, i.e. the last feature map *before* the final
      GroupNorm and the conv to latent channels; ``channels[-1]`` channels.
    - ``"latent"``: the posterior mean ``z_mu = quant_conv_mu(encoder(x))``; ``latent_channels``
      channels.

    Both have spatial size ``input / 2**(len(channels) - 1)`` (e.g. 96x96x48 with three levels
    gives 24x24x12). Only the modules a tap uses are kept (the decoder is dropped), so a
    PattenNet checkpoint holds no unused weights and fine-tuning under DDP has no unused
    parameters. The modules are shared with ``autoencoder`` (no copy): load the autoencoder's
    weights before or after wrapping, both work.

    Args:
        autoencoder: a MONAI ``AutoencoderKL`` (normally with trained weights loaded).
        tap: which output to return, ``"features"`` or ``"latent"``.
    """

    def __init__(self, autoencoder: AutoencoderKL, tap: Literal["features", "latent"] = "features") -> None:
        super().__init__()
        if tap not in ("features", "latent"):
            raise ValueError(f"tap must be 'features' or 'latent', got {tap!r}")
        encoder = autoencoder.encoder
        blocks = list(encoder.blocks)
        if len(blocks) < 3 or not isinstance(blocks[-2], nn.GroupNorm):
            raise TypeError(
                "unexpected AutoencoderKL encoder layout: expected its blocks to end with GroupNorm and the conv "
                f"to latent channels, got {[type(b).__name__ for b in blocks[-3:]]}"
            )
        self.tap = tap
        self._feature_channels = int(encoder.channels[-1])
        self._latent_channels = int(autoencoder.latent_channels)
        self._num_levels = len(encoder.channels)
        self.spatial_dims = int(encoder.spatial_dims)
        if tap == "features":
            self.blocks = nn.ModuleList(blocks[:-2])
            self.quant_conv_mu: nn.Module | None = None
        else:
            self.blocks = nn.ModuleList(blocks)
            self.quant_conv_mu = autoencoder.quant_conv_mu

    @property
    def out_channels(self) -> int:
        """Channels of the returned feature map."""
        return self._feature_channels if self.tap == "features" else self._latent_channels

    @property
    def downsample_factor(self) -> int:
        """Spatial reduction factor per axis, ``2**(levels - 1)``."""
        return 2 ** (self._num_levels - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode ``x`` of shape ``(B, in_channels, D, H, W)`` into the tapped feature map."""
        for block in self.blocks:
            x = block(x)
        if self.quant_conv_mu is not None:
            x = self.quant_conv_mu(x)
        return x


class PattenNet(nn.Module):
    """PNI-Attention Network: encoder -> Dual Attention Blocks -> global average pooling -> MLP -> logit.

    With ``freeze_encoder`` the encoder's parameters get ``requires_grad=False``, its forward runs
    under ``torch.no_grad()``, and it stays in eval mode (norm statistics, dropout) even when
    ``.train()`` is called on PattenNet.

    Args:
        encoder: feature extractor mapping ``(B, C_in, D, H, W)`` to ``(B, encoder_channels, d, h, w)``,
            e.g. :class:`AutoencoderKLEncoder`.
        encoder_channels: channels of the encoder output; taken from ``encoder.out_channels`` when None.
        num_blocks: number of Dual Attention Blocks (NeoNet: 2).
        reduction: channel-attention reduction ratio.
        kernel_size: spatial-attention kernel edge length (NeoNet: 7).
        hidden: hidden width of the MLP head.
        dropout: dropout probability before the last linear layer.
        freeze_encoder: freeze the encoder (NeoNet: frozen).
        residual: use the identity shortcut in each Dual Attention Block.
    """

    def __init__(
        self,
        encoder: nn.Module,
        encoder_channels: int | None = None,
        num_blocks: int = 2,
        reduction: int = 16,
        kernel_size: int = 7,
        hidden: int = 128,
        dropout: float = 0.2,
        freeze_encoder: bool = True,
        residual: bool = True,
    ) -> None:
        super().__init__()
        if encoder_channels is None:
            encoder_channels = getattr(encoder, "out_channels", None)
            if not isinstance(encoder_channels, int):
                raise ValueError("encoder_channels is required when the encoder has no integer `out_channels`")
        if num_blocks < 0:
            raise ValueError(f"num_blocks must be >= 0, got {num_blocks}")
        self.encoder = encoder
        self.encoder_channels = encoder_channels
        self.freeze_encoder = freeze_encoder
        self.attention = nn.Sequential(
            *[
                DualAttentionBlock3d(encoder_channels, reduction=reduction, kernel_size=kernel_size, residual=residual)
                for _ in range(num_blocks)
            ]
        )
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.head = nn.Sequential(
            nn.Flatten(1),
            nn.Linear(encoder_channels, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, 1),
        )
        if freeze_encoder:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    def train(self, mode: bool = True) -> PattenNet:
        """Set training mode; a frozen encoder always stays in eval mode."""
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()
        return self

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Run the encoder (without autograd when frozen)."""
        if self.freeze_encoder:
            with torch.no_grad():
                return self.encoder(x)
        return self.encoder(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Attended feature map ``(B, encoder_channels, d, h, w)`` before pooling."""
        return self.attention(self.encode(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map patches ``(B, C_in, D, H, W)`` to PNI logits of shape ``(B,)``."""
        return self.head(self.pool(self.features(x))).squeeze(-1)
