"""Learnable soft-histogram pooling of a 3D feature map over a region.

Average and max pooling summarise each channel by one number, so they cannot say "more voxels of
this kind of tissue" when that tissue's response lies *between* the responses of its neighbours
(the perineural cuff sits between tumour and liver). A histogram of each channel over the region
can: each channel is standardised, then binned with ``bins`` triangular kernels
``max(0, 1 - |x - centre| / width)`` whose centres and widths are learned (the learnable histogram
of Wang, Lu, Lin and Wang, ECCV 2016), and the bin memberships are averaged over the region with
the given per-voxel weights. The output has ``channels * bins`` values per sample, each the share of
the region falling in that bin.

Standardisation (``norm``): ``"batch"`` uses batch statistics over whole patches (running
statistics in eval mode); ``"region"`` uses each sample's own weighted mean and standard deviation
over the region, so a histogram describes the *shape* of the region's distribution, does not depend
on the other samples of the batch, and is the same in training and eval mode. With a few patches
per batch the batch statistics are noisy and differ from the running ones used at test time.
"""

from __future__ import annotations

import math
from typing import Literal

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
        norm: how each channel is standardised before binning: ``"batch"`` (batch statistics over
            whole patches, BatchNorm) or ``"region"`` (each sample's weighted statistics over its
            region).
    """

    def __init__(
        self, channels: int, bins: int = 8, low: float = -2.0, high: float = 2.0, norm: Literal["batch", "region"] = "batch"
    ) -> None:
        super().__init__()
        if norm not in ("batch", "region"):
            raise ValueError(f"norm must be 'batch' or 'region', got {norm!r}")
        if bins < 2:
            raise ValueError(f"bins must be >= 2, got {bins}")
        if not high > low:
            raise ValueError(f"high must exceed low, got low={low}, high={high}")
        self.channels = int(channels)
        self.bins = int(bins)
        self.eps = 1e-5
        # no affine part in either standardisation: the bins are the learnable part
        self.norm = nn.BatchNorm3d(channels, affine=False, eps=self.eps) if norm == "batch" else None
        self.centres = nn.Parameter(torch.linspace(low, high, bins).repeat(channels, 1))
        step = (high - low) / (bins - 1)
        self.log_width = nn.Parameter(torch.full((channels, bins), math.log(step)))

    @property
    def out_features(self) -> int:
        """Length of the pooled vector, ``channels * bins``."""
        return self.channels * self.bins

    def standardise(self, x: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        """Each channel in standard deviations: of the batch (``batch``) or of the sample's own region (``region``)."""
        if self.norm is not None:
            return self.norm(x)
        x = x.float()  # region statistics in float32, also under bf16/fp16 autocast (as BatchNorm is)
        w = torch.ones_like(x[:, :1]) if weights is None else weights.float()
        total = w.sum(dim=(2, 3, 4), keepdim=True).clamp_min(1e-6)
        mean = (x * w).sum(dim=(2, 3, 4), keepdim=True) / total
        var = ((x - mean) ** 2 * w).sum(dim=(2, 3, 4), keepdim=True) / total
        return (x - mean) / (var + self.eps).sqrt()

    def forward(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """Histogram of ``x`` ``(B, C, d, h, w)`` over ``weights`` ``(B, 1, d, h, w)`` (all ones if None).

        Returns:
            ``(B, C * bins)``: for each channel and bin, the weighted share of the region in that bin.
        """
        if x.shape[1] != self.channels:
            raise ValueError(f"expected {self.channels} channels, got {x.shape[1]}")
        z = self.standardise(x, weights).unsqueeze(2)  # (B, C, 1, d, h, w)
        centres = self.centres.view(1, self.channels, self.bins, 1, 1, 1).to(z.dtype)
        widths = self.log_width.exp().view(1, self.channels, self.bins, 1, 1, 1).to(z.dtype)
        member = F.relu(1.0 - (z - centres).abs() / widths)  # (B, C, bins, d, h, w)
        if weights is None:
            return member.mean(dim=(3, 4, 5)).flatten(1)
        w = weights.to(z.dtype).unsqueeze(2)  # (B, 1, 1, d, h, w)
        total = w.sum(dim=(3, 4, 5)).clamp_min(1e-6)
        return ((member * w).sum(dim=(3, 4, 5)) / total).flatten(1)
