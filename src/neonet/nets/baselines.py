"""Baseline 3D classifiers (MONAI) that return one logit per patch, shape ``(B,)``.

Each baseline is a small class with typed arguments, so a LightningCLI/jsonargparse config can
inject it as the classifier's ``net``::

    net:
      class_path: neonet.nets.ResNet18Classifier
      init_args: {in_channels: 1}

:func:`build_baseline` builds the same classes by name. Nothing is ever downloaded: MONAI's
``pretrained=True`` paths are never used; ``pretrained_path`` loads a *local* state dict (e.g.
MedicalNet weights) into the backbone, strictly except for the classification head.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.networks.nets import DenseNet121 as MonaiDenseNet121
from monai.networks.nets import SEResNet50 as MonaiSEResNet50
from monai.networks.nets import ViT, resnet18
from torch import nn

__all__ = [
    "BASELINES",
    "DenseNet121Classifier",
    "ResNet18Classifier",
    "SEResNet50Classifier",
    "SqueezeLogit",
    "ViTClassifier",
    "build_baseline",
    "load_backbone_weights",
]


class SqueezeLogit(nn.Module):
    """Wrap a classifier so that a single-output head gives logits of shape ``(B,)``.

    A tuple output (e.g. MONAI ViT's ``(logits, hidden_states)``) is reduced to its first element;
    an output of shape ``(B, 1)`` is squeezed to ``(B,)``; other shapes pass through unchanged.

    Args:
        net: the wrapped classifier.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits of ``x`` (shape ``(B, C, D, H, W)``)."""
        out = self.net(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        if out.ndim == 2 and out.shape[-1] == 1:
            out = out.squeeze(-1)
        return out


def load_backbone_weights(net: nn.Module, path: str | Path, head_prefixes: Sequence[str] = ()) -> None:
    """Load a local state dict into ``net``, strictly for every parameter outside the head.

    Accepts a plain state dict or one nested under ``"state_dict"`` (MedicalNet, Lightning), and
    strips ``"module."`` (DataParallel) prefixes. Keys under ``head_prefixes`` may be missing or
    mismatched in shape (the head is trained from scratch).

    Args:
        net: the network to load into.
        path: the checkpoint file.
        head_prefixes: state-dict key prefixes of the classification head.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        RuntimeError: if backbone keys are missing, unexpected or of the wrong shape.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    state = {k.removeprefix("module."): v for k, v in state.items()}

    def in_head(key: str) -> bool:
        return any(key.startswith(p) for p in head_prefixes)

    own = net.state_dict()
    backbone = {k: v for k, v in state.items() if not in_head(k)}
    missing = sorted(k for k in own if not in_head(k) and k not in backbone)
    unexpected = sorted(k for k in backbone if k not in own)
    wrong = sorted(k for k in backbone if k in own and own[k].shape != backbone[k].shape)
    if missing or unexpected or wrong:
        raise RuntimeError(
            f"cannot load backbone weights from {path}: missing {missing[:5]} ({len(missing)}), "
            f"unexpected {unexpected[:5]} ({len(unexpected)}), wrong shape {wrong[:5]} ({len(wrong)})"
        )
    net.load_state_dict(backbone, strict=False)


class ResNet18Classifier(SqueezeLogit):
    """3D ResNet-18 (MONAI) with a single-logit head.

    Args:
        in_channels: input channels.
        num_classes: outputs of the head (1 for a binary logit).
        shortcut_type: residual shortcut type, ``"A"`` or ``"B"`` (MedicalNet ResNet-18 uses ``"A"``).
        bias_downsample: bias in the downsampling shortcut convolutions.
        widen_factor: channel multiplier of every stage (1.0 is the standard 64-128-256-512; the CPU
            demo uses 0.5). Pretrained weights need 1.0.
        pretrained_path: optional local backbone state dict (the ``fc`` head is not loaded).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 1,
        shortcut_type: str = "B",
        bias_downsample: bool = True,
        widen_factor: float = 1.0,
        pretrained_path: str | None = None,
    ) -> None:
        if widen_factor <= 0:
            raise ValueError(f"widen_factor must be > 0, got {widen_factor}")
        net = resnet18(
            pretrained=False,
            spatial_dims=3,
            n_input_channels=in_channels,
            num_classes=num_classes,
            shortcut_type=shortcut_type,
            bias_downsample=bias_downsample,
            widen_factor=widen_factor,
        )
        if pretrained_path:
            load_backbone_weights(net, pretrained_path, head_prefixes=("fc.",))
        super().__init__(net)


class DenseNet121Classifier(SqueezeLogit):
    """3D DenseNet-121 (MONAI) with a single-logit head.

    It downsamples by 32 (stem /4, three transitions /2), so every spatial axis must be at least
    32 voxels (96x96x48 is fine; 32x32x16 is not).

    Args:
        in_channels: input channels.
        num_classes: outputs of the head (1 for a binary logit).
        dropout_prob: dropout inside the dense layers.
        pretrained_path: optional local backbone state dict (``class_layers.out`` is not loaded).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 1,
        dropout_prob: float = 0.0,
        pretrained_path: str | None = None,
    ) -> None:
        net = MonaiDenseNet121(spatial_dims=3, in_channels=in_channels, out_channels=num_classes, dropout_prob=dropout_prob)
        if pretrained_path:
            load_backbone_weights(net, pretrained_path, head_prefixes=("class_layers.out.",))
        super().__init__(net)


class SEResNet50Classifier(SqueezeLogit):
    """3D SE-ResNet-50 (MONAI) with a single-logit head.

    Args:
        in_channels: input channels.
        num_classes: outputs of the head (1 for a binary logit).
        dropout_prob: dropout before the last linear layer (None: no dropout).
        pretrained_path: optional local backbone state dict (``last_linear`` is not loaded).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 1,
        dropout_prob: float | None = None,
        pretrained_path: str | None = None,
    ) -> None:
        net = MonaiSEResNet50(spatial_dims=3, in_channels=in_channels, num_classes=num_classes, dropout_prob=dropout_prob)
        if pretrained_path:
            load_backbone_weights(net, pretrained_path, head_prefixes=("last_linear.",))
        super().__init__(net)


class ViTClassifier(SqueezeLogit):
    """3D Vision Transformer (MONAI ``ViT``, classification token) with a linear single-logit head.

    The head has no Tanh (MONAI's default would bound the logit to [-1, 1]).

    Args:
        in_channels: input channels.
        num_classes: outputs of the head (1 for a binary logit).
        img_size: input patch size; must be divisible by ``patch_size``.
        patch_size: token patch size (16x16x8 voxels is about 25x25x32 mm at 1.5625x1.5625x4 mm).
        hidden_size: token width.
        mlp_dim: transformer MLP width.
        num_layers: transformer depth.
        num_heads: attention heads (must divide ``hidden_size``).
        dropout_rate: transformer dropout.
        pretrained_path: optional local backbone state dict (``classification_head`` is not loaded).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 1,
        img_size: Sequence[int] = (96, 96, 48),
        patch_size: Sequence[int] = (16, 16, 8),
        hidden_size: int = 384,
        mlp_dim: int = 1536,
        num_layers: int = 6,
        num_heads: int = 6,
        dropout_rate: float = 0.0,
        pretrained_path: str | None = None,
    ) -> None:
        net = ViT(
            in_channels=in_channels,
            img_size=tuple(img_size),
            patch_size=tuple(patch_size),
            hidden_size=hidden_size,
            mlp_dim=mlp_dim,
            num_layers=num_layers,
            num_heads=num_heads,
            classification=True,
            num_classes=num_classes,
            dropout_rate=dropout_rate,
            spatial_dims=3,
            post_activation=None,
        )
        if pretrained_path:
            load_backbone_weights(net, pretrained_path, head_prefixes=("classification_head.",))
        super().__init__(net)


BASELINES: dict[str, Callable[..., SqueezeLogit]] = {
    "resnet18": ResNet18Classifier,
    "densenet121": DenseNet121Classifier,
    "seresnet50": SEResNet50Classifier,
    "vit": ViTClassifier,
}


def build_baseline(name: str, in_channels: int = 1, num_classes: int = 1, **kwargs: Any) -> nn.Module:
    """Build a baseline classifier by name.

    Args:
        name: one of ``resnet18``, ``densenet121``, ``seresnet50``, ``vit`` (case-insensitive).
        in_channels: input channels.
        num_classes: head outputs (1: logits of shape ``(B,)``).
        **kwargs: further arguments of the baseline class (e.g. ``img_size`` for ``vit``).

    Raises:
        ValueError: for an unknown name.
    """
    key = name.lower().replace("-", "").replace("_", "")
    if key not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; choose one of {sorted(BASELINES)}")
    return BASELINES[key](in_channels=in_channels, num_classes=num_classes, **kwargs)
