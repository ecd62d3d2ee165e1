"""PattenNet (NeoCls) and the adapter that turns a MONAI ``AutoencoderKL`` into its frozen encoder.

PattenNet = frozen encoder of the latent diffusion model's autoencoder -> two 3D Dual Attention
Blocks -> pooling -> MLP -> one PNI logit per patch. Pooling is global by default; with
``region_labels`` it covers only the TLCR label patch's region (e.g. the peritumoral shell), which
the input then carries as its last channel.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal, cast

import torch
import torch.nn.functional as F
from monai.networks.nets import AutoencoderKL
from monai.networks.nets.autoencoderkl import Encoder
from torch import nn

from neonet.nets.attention import DualAttentionBlock3d
from neonet.nets.histogram import SoftHistogramPool3d

__all__ = ["AutoencoderKLEncoder", "PattenNet"]


class AutoencoderKLEncoder(nn.Module):
    """The encoder half of a MONAI ``AutoencoderKL``, exposed as a feature extractor.

    MONAI's ``Encoder.blocks`` is ``[conv_in, res/attention/downsample blocks..., (non-local res,
    attention, res), GroupNorm, Conv3d(channels[-1] -> latent_channels)]``; there is no activation
    between the final norm and conv. The taps are:

    - ``"features"``: output of ``blocks[:-2]``, i.e. the last feature map *before* the final
      GroupNorm and the conv to latent channels; ``channels[-1]`` channels, spatial size
      ``input / 2**(len(channels) - 1)`` (e.g. 96x96x48 with three levels gives 24x24x12).
    - ``"latent"``: the posterior mean ``z_mu = quant_conv_mu(encoder(x))``; ``latent_channels``
      channels, same size as ``"features"``.
    - ``"level<k>"`` (``k`` from 0 to ``len(channels) - 1``): the feature map of resolution level
      ``k``, after its residual (and attention) blocks and before its downsampling;
      ``channels[k]`` channels at ``input / 2**k``. ``"level0"`` is full resolution, which keeps
      structures a voxel or two wide (a perineural cuff) that the coarser maps average away.
      The last level is ``"features"`` without the non-local blocks, when the encoder has them.

    Only the modules a tap uses are kept (the decoder is dropped), so a PattenNet checkpoint holds
    no unused weights and fine-tuning under DDP has no unused parameters. The modules are shared
    with ``autoencoder`` (no copy): load the autoencoder's weights before or after wrapping, both
    work.

    Args:
        autoencoder: a MONAI ``AutoencoderKL`` (normally with trained weights loaded).
        tap: which output to return: ``"features"``, ``"latent"`` or ``"level<k>"``.
    """

    def __init__(self, autoencoder: AutoencoderKL, tap: str = "features") -> None:
        super().__init__()
        encoder = cast(Encoder, autoencoder.encoder)  # AutoencoderKL types it as a plain nn.Module
        blocks = list(encoder.blocks)
        if len(blocks) < 3 or not isinstance(blocks[-2], nn.GroupNorm):
            raise TypeError(
                "unexpected AutoencoderKL encoder layout: expected its blocks to end with GroupNorm and the conv "
                f"to latent channels, got {[type(b).__name__ for b in blocks[-3:]]}"
            )
        levels = len(encoder.channels)
        taps = ("features", "latent", *(f"level{k}" for k in range(levels)))
        if tap not in taps:
            raise ValueError(f"tap must be one of {', '.join(taps)} for this {levels}-level autoencoder, got {tap!r}")
        self.tap = tap
        self._latent_channels = int(autoencoder.latent_channels)
        self.spatial_dims = int(encoder.spatial_dims)
        self.quant_conv_mu: nn.Module | None = None
        if tap.startswith("level"):
            level = int(tap[len("level") :])
            downsamples = [i for i, b in enumerate(blocks) if type(b).__name__.endswith("Downsample")]
            if len(downsamples) != levels - 1:
                raise TypeError(
                    f"unexpected AutoencoderKL encoder layout: {len(downsamples)} downsampling blocks for {levels} levels"
                )
            if level < levels - 1:
                end = downsamples[level]
            else:  # the last level's blocks, without the non-local (mid) blocks that follow them
                per_level = encoder.num_res_blocks[level] * (2 if encoder.attention_levels[level] else 1)
                end = (downsamples[-1] + 1 if downsamples else 1) + per_level
            self.blocks = nn.ModuleList(blocks[:end])
            self._channels, self._factor = int(encoder.channels[level]), 2**level
        else:
            self._channels = int(encoder.channels[-1]) if tap == "features" else self._latent_channels
            self._factor = 2 ** (levels - 1)
            self.blocks = nn.ModuleList(blocks[:-2] if tap == "features" else blocks)
            if tap == "latent":
                self.quant_conv_mu = autoencoder.quant_conv_mu

    @property
    def out_channels(self) -> int:
        """Channels of the returned feature map."""
        return self._channels

    @property
    def downsample_factor(self) -> int:
        """Spatial reduction factor per axis: ``2**k`` for ``level<k>``, else ``2**(levels - 1)``."""
        return self._factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode ``x`` of shape ``(B, in_channels, D, H, W)`` into the tapped feature map."""
        for block in self.blocks:
            x = block(x)
        if self.quant_conv_mu is not None:
            x = self.quant_conv_mu(x)
        return x


#: Pooling modes of :class:`PattenNet`.
POOLS = ("avg", "max", "avgmax", "hist", "avgmaxhist")


class PattenNet(nn.Module):
    """PNI-Attention Network: encoder -> Dual Attention Blocks -> pooling (global or over a region) -> MLP -> logit.

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
        pool: how the attended feature map becomes one vector: ``avg``, ``max``, ``avgmax`` (both,
            concatenated), ``hist`` (a learnable soft histogram of each channel,
            :class:`~neonet.nets.histogram.SoftHistogramPool3d`: the share of the region in each of
            ``hist_bins`` bins) or ``avgmaxhist`` (all three, concatenated).
        hist_bins: histogram bins per channel for the ``hist`` pools.
        hist_norm: how the ``hist`` pools standardise each channel before binning: ``"batch"``
            (BatchNorm over whole patches) or ``"region"`` (each patch's own mean and standard
            deviation over the pooled region, independent of the batch; the histogram then
            describes the shape of the region's distribution).
        region_labels: None pools over the whole patch (the input is the image alone). Otherwise the
            input's last channel is the TLCR label patch (0 background, 1 liver, 2 peritumoral shell,
            3 tumour; ``ClsDataModule(label_channel=True)``), the encoder sees the other channels,
            and pooling covers only the feature-grid cells overlapping these labels (e.g. ``[2]``:
            the peritumoral shell, where PNI spreads); a patch without such voxels falls back to
            global pooling.
        head_norm: batch-normalise the pooled descriptor before the MLP (the frozen encoder's
            features are not standardised: channel means far exceed their spread).
    """

    #: ``neonet.cls.PattenNetModule`` loads the fold's autoencoder encoder weights into ``encoder``. A network
    #: receives such weights only when it declares this; a baseline with an ``encoder`` attribute does not.
    takes_autoencoder_encoder: ClassVar[bool] = True

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
        pool: Literal["avg", "max", "avgmax", "hist", "avgmaxhist"] = "avg",
        hist_bins: int = 8,
        hist_norm: Literal["batch", "region"] = "batch",
        region_labels: Sequence[int] | None = None,
        head_norm: bool = False,
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
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
        self.pool_mode = pool
        self.region_labels = None if region_labels is None else [int(v) for v in region_labels]
        self.histogram = SoftHistogramPool3d(encoder_channels, hist_bins, norm=hist_norm) if "hist" in pool else None
        pooled = encoder_channels * {"avg": 1, "max": 1, "avgmax": 2, "hist": 0, "avgmaxhist": 2}[pool]
        pooled += self.histogram.out_features if self.histogram is not None else 0
        self.head = nn.Sequential(
            nn.BatchNorm1d(pooled) if head_norm else nn.Identity(),
            nn.Linear(pooled, hidden),
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

    def split_input(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(image channels, label patch or None) of an input batch."""
        if self.region_labels is None:
            return x, None
        if x.shape[1] < 2:
            raise ValueError(
                f"PattenNet with region_labels={self.region_labels} expects the label patch as the last input channel "
                f"(got {x.shape[1]} channel): set the data's label_channel: true"
            )
        return x[:, :-1], x[:, -1:]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Attended feature map ``(B, encoder_channels, d, h, w)`` before pooling (image channels only)."""
        return self.attention(self.encode(self.split_input(x)[0]))

    def region_weights(self, label: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        """Fraction of each feature-grid cell inside the region, ``(B, 1, d, h, w)``; all ones where a patch has none."""
        inside = torch.zeros_like(label, dtype=torch.float32)
        for value in self.region_labels or []:
            inside = inside + (label.round() == value).float()
        weights = F.adaptive_avg_pool3d(inside, cast("tuple[int, int, int]", tuple(grid)))
        empty = weights.flatten(1).sum(1) <= 0
        return torch.where(empty.view(-1, 1, 1, 1, 1), torch.ones_like(weights), weights)

    def pool(self, feats: torch.Tensor, label: torch.Tensor | None) -> torch.Tensor:
        """``(B, C')`` descriptor of the attended features, over the region when a label patch is given."""
        w = None if label is None else self.region_weights(label, feats.shape[2:]).to(feats.dtype)
        parts = []
        if self.pool_mode in ("avg", "avgmax", "avgmaxhist"):
            parts.append(
                feats.mean(dim=(2, 3, 4)) if w is None else (feats * w).sum(dim=(2, 3, 4)) / w.sum(dim=(2, 3, 4)).clamp_min(1e-6)
            )
        if self.pool_mode in ("max", "avgmax", "avgmaxhist"):
            parts.append(
                feats.amax(dim=(2, 3, 4))
                if w is None
                else feats.masked_fill(w <= 0, torch.finfo(feats.dtype).min).amax(dim=(2, 3, 4))
            )
        if self.histogram is not None:
            parts.append(self.histogram(feats, w))
        return torch.cat(parts, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map patches ``(B, C_in, D, H, W)`` to PNI logits of shape ``(B,)``."""
        image, label = self.split_input(x)
        feats = self.attention(self.encode(image))
        return self.head(self.pool(feats, label)).squeeze(-1)
