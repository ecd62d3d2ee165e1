"""3D attention blocks of PattenNet: channel attention, spatial attention and the Dual Attention Block.

The blocks follow CBAM (Woo et al., ECCV 2018) lifted to 3D, as NeoNet's PattenNet describes them:
channel attention from average- and max-pooled descriptors through a shared MLP, then spatial
attention whose map comes from a 7x7x7 3D convolution over the channel-wise average and max maps.
All blocks keep the input shape ``(B, C, D, H, W)``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ChannelAttention3d", "DualAttentionBlock3d", "SpatialAttention3d"]


def _hidden_width(channels: int, reduction: int, min_hidden: int) -> int:
    """Width of the channel-attention MLP: ``channels // reduction``, never below ``min(min_hidden, channels)``."""
    return max(channels // reduction, min(min_hidden, channels), 1)


class ChannelAttention3d(nn.Module):
    """3D channel attention: ``x * sigmoid(MLP(avgpool(x)) + MLP(maxpool(x)))``.

    The MLP (two 1x1x1 convolutions with a ReLU between them) is shared by both descriptors.

    Args:
        channels: number of input (and output) channels C.
        reduction: channel reduction ratio of the MLP's hidden layer.
        min_hidden: lower bound of the hidden width (capped at ``channels``), so small C never
            gives a zero- or one-unit bottleneck by accident.
    """

    def __init__(self, channels: int, reduction: int = 16, min_hidden: int = 4) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        if reduction < 1:
            raise ValueError(f"reduction must be >= 1, got {reduction}")
        self.channels = channels
        self.hidden = _hidden_width(channels, reduction, min_hidden)
        self.mlp = nn.Sequential(
            nn.Conv3d(channels, self.hidden, kernel_size=1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv3d(self.hidden, channels, kernel_size=1, bias=False),
        )

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The channel weights in (0, 1), shape ``(B, C, 1, 1, 1)``."""
        avg = torch.mean(x, dim=(2, 3, 4), keepdim=True)
        mx = torch.amax(x, dim=(2, 3, 4), keepdim=True)
        return torch.sigmoid(self.mlp(avg) + self.mlp(mx))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reweight the channels of ``x`` (shape ``(B, C, D, H, W)``)."""
        return x * self.attention(x)


class SpatialAttention3d(nn.Module):
    """3D spatial attention: ``x * sigmoid(conv([mean_c(x), max_c(x)]))``.

    Args:
        kernel_size: odd edge length of the cubic convolution kernel (NeoNet: 7, i.e. 7x7x7);
            padding keeps the spatial size.
    """

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}")
        self.kernel_size = kernel_size
        self.conv = nn.Conv3d(2, 1, kernel_size=kernel_size, padding=kernel_size // 2, bias=True)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The voxel weights in (0, 1), shape ``(B, 1, D, H, W)``."""
        avg = torch.mean(x, dim=1, keepdim=True)
        mx = torch.amax(x, dim=1, keepdim=True)
        return torch.sigmoid(self.conv(torch.cat([avg, mx], dim=1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reweight the voxels of ``x`` (shape ``(B, C, D, H, W)``)."""
        return x * self.attention(x)


class DualAttentionBlock3d(nn.Module):
    """Dual Attention Block (DAB): channel attention, then spatial attention, with an optional residual.

    ``out = x + SA(CA(x))`` when ``residual`` is true, otherwise ``out = SA(CA(x))``.

    Args:
        channels: number of input (and output) channels C.
        reduction: channel reduction ratio of the channel-attention MLP.
        kernel_size: kernel edge length of the spatial-attention convolution.
        residual: add the input to the attended features (identity shortcut).
        min_hidden: lower bound of the channel-attention MLP's hidden width.
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 16,
        kernel_size: int = 7,
        residual: bool = True,
        min_hidden: int = 4,
    ) -> None:
        super().__init__()
        self.channel_attention = ChannelAttention3d(channels, reduction=reduction, min_hidden=min_hidden)
        self.spatial_attention = SpatialAttention3d(kernel_size=kernel_size)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block to ``x`` of shape ``(B, C, D, H, W)``; the output has the same shape."""
        attended = self.spatial_attention(self.channel_attention(x))
        return x + attended if self.residual else attended
