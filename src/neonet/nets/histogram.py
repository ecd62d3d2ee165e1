"""Learnable soft-histogram pooling of a 3D feature map over a region.

Average and max pooling summarise each channel by one number, so they cannot say "more voxels of
this kind of tissue" when that tissue's response lies *between* the responses of its neighbours
(the perineural cuff sits between tumour and liver). A histogram of each channel over the region
can: each channel, standardised by batch statistics, is binned with ``bins`` triangular kernels
``max(0, 1 - |x - centre| / width)`` whose centres and widths are learned (the learnable histogram
of Wang, Lu, Lin and Wang, ECCV 2016), and the bin memberships are averaged over the region with
the given per-voxel weights. The output has ``channels * bins`` values per sample, each the share of
the region falling in that bin.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class SoftHistogramPool3d(nn.Module):
    """Per-channel learnable soft histogram over a weighted region.

    Args:
        channels: channels of the input feature map.
        bins: histogram bins per channel.
        low: centre of the first bin, in standard deviations of the channel.
        high: centre of the last bin, in standard deviations of the channel.
    """

    def __init__(self, channels: int, bins: int = 8, low: float = -2.0, high: float = 2.0) -> None:
        super().__init__()
        if bins < 2:
            raise ValueError(f"bins must be >= 2, got {bins}")
        if not high > low:
            raise ValueError(f"high must exceed low, got low={low}, high={high}")
        self.channels = int(channels)
        self.bins = int(bins)
        # batch statistics standardise each channel; no affine part (the bins are the learnable part)
        self.norm = nn.BatchNorm3d(channels, affine=False)
        self.centres = nn.Parameter(torch.linspace(low, high, bins).repeat(channels, 1))
        step = (high - low) / (bins - 1)
        self.log_width = nn.Parameter(torch.full((channels, bins), math.log(step)))

    @property
    def out_features(self) -> int:
        """Length of the pooled vector, ``channels * bins``."""
        return self.channels * self.bins

    def forward(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """Histogram of ``x`` ``(B, C, d, h, w)`` over ``weights`` ``(B, 1, d, h, w)`` (all ones if None).

        Returns:
            ``(B, C * bins)``: for each channel and bin, the weighted share of the region in that bin.
        """
        if x.shape[1] != self.channels:
            raise ValueError(f"expected {self.channels} channels, got {x.shape[1]}")
        z = self.norm(x).unsqueeze(2)  # (B, C, 1, d, h, w)
        centres = self.centres.view(1, self.channels, self.bins, 1, 1, 1).to(z.dtype)
        widths = self.log_width.exp().view(1, self.channels, self.bins, 1, 1, 1).to(z.dtype)
        member = F.relu(1.0 - (z - centres).abs() / widths)  # (B, C, bins, d, h, w)
        if weights is None:
            return member.mean(dim=(3, 4, 5)).flatten(1)
        w = weights.to(z.dtype).unsqueeze(2)  # (B, 1, 1, d, h, w)
        total = w.sum(dim=(3, 4, 5)).clamp_min(1e-6)
        return ((member * w).sum(dim=(3, 4, 5)) / total).flatten(1)
