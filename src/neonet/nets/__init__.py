"""Plain ``nn.Module`` networks (no Lightning): PattenNet, its attention blocks, and baseline classifiers."""

from neonet.nets.attention import ChannelAttention3d, DualAttentionBlock3d, SpatialAttention3d
from neonet.nets.baselines import (
    BASELINES,
    DenseNet121Classifier,
    ResNet18Classifier,
    SEResNet50Classifier,
    SqueezeLogit,
    ViTClassifier,
    build_baseline,
    load_backbone_weights,
)
from neonet.nets.histogram import SoftHistogramPool3d
from neonet.nets.pattennet import AutoencoderKLEncoder, PattenNet

__all__ = [
    "BASELINES",
    "AutoencoderKLEncoder",
    "ChannelAttention3d",
    "DenseNet121Classifier",
    "DualAttentionBlock3d",
    "PattenNet",
    "ResNet18Classifier",
    "SEResNet50Classifier",
    "SoftHistogramPool3d",
    "SpatialAttention3d",
    "SqueezeLogit",
    "ViTClassifier",
    "build_baseline",
    "load_backbone_weights",
]
