"""Saliency of a NeoCls classifier: Grad-CAM on a patch, and that map placed in the input image's space.

Grad-CAM (Selvaraju et al., ICCV 2017) is MONAI's :class:`monai.visualize.GradCAM`: the feature map of
a target layer, weighted by the spatially averaged gradient of the **PNI+ logit**, rectified, then
upsampled (trilinear) to the patch size. The target layer is by default

* PattenNet: the output of its **last Dual Attention Block** (``attention.<last>``; the encoder
  output when the net has no attention block);
* baselines (ResNet, DenseNet, SE-ResNet, ViT): the **last ``Conv3d``** of the network (for the
  ViT that is its patch embedding, so the map is as coarse as its token grid).

Any other module can be named with ``layer`` (a name from ``net.named_modules()``, e.g.
``net.layer4`` for the ResNet-18 baseline).

The map lives on the TLCR patch grid (the canonical RAS grid at the crop spacing, see
:mod:`neonet.seg.crop`). :func:`patch_to_image` resamples it into the original image's voxel grid
through world coordinates (both affines are in the same nibabel RAS world), with zeros outside the
crop box.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from monai.visualize import GradCAM
from scipy import ndimage
from torch import nn

__all__ = ["LogitColumn", "SaliencyUnavailable", "default_target_layer", "grad_cam", "patch_bounds_in_image", "patch_to_image"]


class SaliencyUnavailable(ValueError):
    """Grad-CAM cannot be computed at the chosen layer (no gradient reaches it, e.g. a frozen encoder)."""


class LogitColumn(nn.Module):
    """Present a one-logit classifier (output ``(B,)``) as ``(B, 1)`` class scores, as MONAI's CAMs expect.

    Args:
        net: the classifier (PattenNet or a baseline) returning logits of shape ``(B,)``.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits as a ``(B, 1)`` column."""
        return self.net(x).reshape(x.shape[0], 1)


def default_target_layer(net: nn.Module) -> str:
    """The Grad-CAM layer of ``net`` (a name from ``net.named_modules()``).

    PattenNet-style nets (with a non-empty ``attention`` sequence): its last Dual Attention Block;
    with no attention block: ``encoder``. Other nets: their last ``nn.Conv3d``.

    Raises:
        ValueError: when the net has neither attention blocks, an encoder nor a ``Conv3d``.
    """
    attention = getattr(net, "attention", None)
    if isinstance(attention, nn.Sequential) and len(attention) > 0:
        return f"attention.{len(attention) - 1}"
    if isinstance(getattr(net, "encoder", None), nn.Module) and isinstance(attention, nn.Sequential):
        return "encoder"
    convs = [name for name, module in net.named_modules() if isinstance(module, nn.Conv3d)]
    if not convs:
        raise ValueError(f"{type(net).__name__} has no attention block and no Conv3d: name a Grad-CAM layer")
    return convs[-1]


def grad_cam(net: nn.Module, patch: torch.Tensor, layer: str | None = None) -> tuple[np.ndarray, str]:
    """Grad-CAM of the PNI+ logit for one patch, scaled to a maximum of 1.

    Args:
        net: the classifier (its parameters after the target layer must require gradients, as they
            do for a trained PattenNet or baseline; a frozen encoder before it is fine). It is put in
            eval mode.
        patch: ``(1, 1, X, Y, Z)`` input exactly as the classifier sees it.
        layer: the target module's name in ``net`` (default: :func:`default_target_layer`).

    Returns:
        ``(map (X, Y, Z) float32 in [0, 1], layer name)``. The map is all zero when no voxel
        raises the PNI+ logit (Grad-CAM's ReLU removes everything).

    Raises:
        ValueError: the layer does not exist in ``net``.
        SaliencyUnavailable: no gradient reaches the layer (e.g. the frozen encoder of a
            PattenNet without attention blocks).
    """
    layer = layer or default_target_layer(net)
    modules = dict(net.named_modules())
    if layer not in modules:
        raise ValueError(f"Grad-CAM layer {layer!r} not found in {type(net).__name__}; e.g. {sorted(modules)[-5:]}")
    wrapped = LogitColumn(net).eval()
    cam = GradCAM(wrapped, target_layers=f"net.{layer}", postprocessing=lambda x: x)
    needs_grad: list[bool] = []
    hook = modules[layer].register_forward_hook(lambda _m, _i, out: needs_grad.append(bool(getattr(out, "requires_grad", False))))
    try:
        with torch.enable_grad(), warnings.catch_warnings():
            # a block whose input needs no gradient (the frozen encoder's output) makes torch warn that
            # its full backward hook fires on the outputs: that is the gradient Grad-CAM needs
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            warnings.filterwarnings("ignore", message="Backward hook for")
            heat = cam(patch, class_idx=0).detach().float().cpu().numpy()[0, 0]
    except (IndexError, RuntimeError) as exc:
        if needs_grad and not any(needs_grad):
            raise SaliencyUnavailable(
                f"no gradient reaches layer {layer!r} of {type(net).__name__} (frozen or run without autograd); "
                "name a later layer"
            ) from exc
        raise
    finally:
        hook.remove()
    heat = np.nan_to_num(heat, nan=0.0, posinf=0.0, neginf=0.0).clip(min=0.0)
    peak = float(heat.max())
    return (heat / peak if peak > 0 else np.zeros_like(heat)).astype(np.float32), layer


def patch_bounds_in_image(
    patch_shape: Sequence[int], patch_affine: np.ndarray, image_shape: Sequence[int], image_affine: np.ndarray
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Index bounding box ``(start, stop)`` of the image voxels that a patch can cover (clipped to the image).

    Args:
        patch_shape: the patch's shape.
        patch_affine: the patch's voxel-to-world affine.
        image_shape: the image's shape.
        image_affine: the image's voxel-to-world affine.
    """
    shape = np.asarray(image_shape[:3], dtype=int)
    size = np.asarray(patch_shape[:3], dtype=np.float64)
    to_image = np.linalg.inv(np.asarray(image_affine, dtype=np.float64)) @ np.asarray(patch_affine, dtype=np.float64)
    corners = np.array(
        [[a, b, c, 1.0] for a in (-0.5, size[0] - 0.5) for b in (-0.5, size[1] - 0.5) for c in (-0.5, size[2] - 0.5)]
    )
    in_image = (to_image @ corners.T)[:3]
    start = np.clip(np.ceil(in_image.min(axis=1) - 1e-6).astype(int), 0, shape)
    stop = np.clip(np.floor(in_image.max(axis=1) + 1e-6).astype(int) + 1, 0, shape)
    return tuple(int(v) for v in start), tuple(int(v) for v in np.maximum(stop, start))


def patch_to_image(
    patch_map: np.ndarray,
    patch_affine: np.ndarray,
    image_shape: Sequence[int],
    image_affine: np.ndarray,
) -> np.ndarray:
    """Resample a map on a patch grid into an image's voxel grid (trilinear), zero outside the patch.

    A voxel of the image is inside the patch when its centre, expressed in patch voxel
    coordinates, lies within ``[-0.5, size - 0.5]`` along every axis (the patch's own voxels);
    only those voxels get a value, so the result is exactly zero outside the crop box.

    Args:
        patch_map: ``(X, Y, Z)`` values on the patch grid.
        patch_affine: the patch's voxel-to-world affine (``neonet.seg.tlcr.patch_affine``).
        image_shape: the image's shape (first three axes are used).
        image_affine: the image's voxel-to-world affine.

    Returns:
        float32 array of ``image_shape[:3]``.
    """
    shape = tuple(int(s) for s in image_shape[:3])
    out = np.zeros(shape, dtype=np.float32)
    start, stop = patch_bounds_in_image(patch_map.shape, patch_affine, shape, image_affine)
    if any(b <= a for a, b in zip(start, stop)):
        return out
    size = np.asarray(patch_map.shape, dtype=np.float64)
    to_patch = np.linalg.inv(np.asarray(patch_affine, dtype=np.float64)) @ np.asarray(image_affine, dtype=np.float64)
    grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(start, stop)], indexing="ij"), axis=0).reshape(3, -1)
    coords = to_patch[:3, :3] @ grid + to_patch[:3, 3:4]
    inside = np.all((coords >= -0.5 - 1e-6) & (coords <= size[:, None] - 0.5 + 1e-6), axis=0)
    values = ndimage.map_coordinates(np.asarray(patch_map, dtype=np.float32), coords, order=1, mode="nearest")
    out[tuple(slice(a, b) for a, b in zip(start, stop))] = np.where(inside, values, 0.0).reshape(
        [b - a for a, b in zip(start, stop)]
    )
    return out
