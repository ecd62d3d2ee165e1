"""Post-processing of NeoSeg label maps (project convention 0 background, 1 liver, 2 tumour)."""

from __future__ import annotations

from typing import cast

import torch
from monai.transforms import KeepLargestConnectedComponent, RemoveSmallObjects

from neonet.data.cases import LIVER, TUMOR


def postprocess_labels(labels: torch.Tensor, min_tumor_voxels: int = 10) -> torch.Tensor:
    """Keep the largest liver component (tumour counted as liver) and tumour only inside it.

    Args:
        labels: (1, X, Y, Z) integer label map.
        min_tumor_voxels: tumour components smaller than this are removed (0 keeps all).

    Returns:
        The cleaned (1, X, Y, Z) label map, same dtype.
    """
    region = (labels >= LIVER).to(torch.uint8)
    if region.any():
        region = cast(torch.Tensor, KeepLargestConnectedComponent(applied_labels=[1], connectivity=3)(region))
    tumor = ((labels == TUMOR) & (region > 0)).to(torch.uint8)
    if min_tumor_voxels > 0 and tumor.any():
        tumor = cast(torch.Tensor, RemoveSmallObjects(min_size=min_tumor_voxels, connectivity=3)(tumor))
    out = torch.zeros_like(labels)
    out[region > 0] = LIVER
    out[tumor > 0] = TUMOR
    return out
