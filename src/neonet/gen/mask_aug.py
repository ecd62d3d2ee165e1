"""Mask augmentation for synthesis: random flips, a small affine and an elastic deformation of a label
patch, with every drawn parameter returned so the manifest can record (and recreate) it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, cast

import numpy as np
import torch
import torchio as tio

from neonet.data.patches import PATCH_TUMOR


@dataclass(frozen=True)
class MaskAugmentation:
    """Ranges of the random mask augmentation.

    Args:
        flip_axes: axes that are each flipped with probability 0.5 (0 = left-right).
        degrees: maximum in-plane rotation (about the through-plane axis) in degrees.
        scale: maximum relative isotropic scaling.
        translation_mm: maximum shift per in-plane axis in mm.
        elastic_mm: maximum elastic displacement in mm (0 disables the elastic deformation).
        control_points: elastic control points per axis.
        min_tumor_fraction: redraw when fewer than this fraction of the tumour voxels survive.
    """

    flip_axes: tuple[int, ...] = (0,)
    degrees: float = 10.0
    scale: float = 0.1
    translation_mm: float = 3.0
    elastic_mm: float = 3.0
    control_points: int = 5
    min_tumor_fraction: float = 0.5

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (for the synthesis settings)."""
        return asdict(self)


def draw_params(rng: np.random.Generator, aug: MaskAugmentation) -> dict[str, Any]:
    """Draw one set of augmentation parameters."""
    return {
        "flip": [int(a) for a in aug.flip_axes if rng.random() < 0.5],
        "degrees": [0.0, 0.0, float(rng.uniform(-aug.degrees, aug.degrees))],
        "scale": float(rng.uniform(1.0 - aug.scale, 1.0 + aug.scale)),
        "translation_mm": [float(rng.uniform(-aug.translation_mm, aug.translation_mm)) for _ in range(2)] + [0.0],
        "elastic_seed": int(rng.integers(0, 2**31 - 1)),
        "elastic_mm": float(aug.elastic_mm),
        "control_points": int(aug.control_points),
    }


def _control_points(seed: int, n: int, max_mm: float) -> np.ndarray:
    """Elastic control-point displacements (as torchio's RandomElasticDeformation draws them)."""
    field = np.random.default_rng(seed).uniform(-1.0, 1.0, (n, n, n, 3)).astype(np.float32) * max_mm
    field[..., 2] *= 0.5  # less through-plane displacement (anisotropic patches)
    for i in range(2):  # locked borders
        field[i, :] = 0
        field[-1 - i, :] = 0
        field[:, i] = 0
        field[:, -1 - i] = 0
    return field


def apply_params(label: np.ndarray, affine: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """Apply drawn parameters to a label patch (X, Y, Z) with nearest-neighbour interpolation.

    The patch is edge-padded first and cropped back afterwards, so rotating or shrinking does not cut
    the liver with an artificial background border where the patch had liver at its edge.
    """
    shape = np.array(label.shape)
    margin = np.ceil(0.2 * shape).astype(int) + 1
    padded = np.pad(label, [(int(m), int(m)) for m in margin], mode="edge")
    pad_affine = np.array(affine, dtype=np.float64)
    pad_affine[:3, 3] -= pad_affine[:3, :3] @ margin
    subject = tio.Subject(label=tio.LabelMap(tensor=torch.as_tensor(padded[None].astype(np.int16)), affine=pad_affine))
    transforms: list[tio.Transform] = []
    if params["elastic_mm"] > 0:
        max_mm = float(params["elastic_mm"])
        transforms.append(
            tio.ElasticDeformation(
                control_points=_control_points(params["elastic_seed"], params["control_points"], max_mm),
                max_displacement=(max_mm, max_mm, max_mm * 0.5),
            )
        )
    s = float(params["scale"])
    transforms.append(
        tio.Affine(
            scales=(s, s, s), degrees=tuple(params["degrees"]), translation=tuple(params["translation_mm"]), default_pad_label=0
        )
    )
    out = cast(tio.Image, tio.Compose(transforms)(subject)["label"]).data[0].numpy()
    out = out[tuple(slice(int(m), int(m) + int(n)) for m, n in zip(margin, shape))]
    for axis in params["flip"]:
        out = np.flip(out, axis=int(axis))
    return np.ascontiguousarray(out).astype(np.uint8)


def augment_mask(
    label: np.ndarray,
    affine: np.ndarray,
    rng: np.random.Generator,
    aug: MaskAugmentation,
    avoid: set[bytes] | None = None,
    tries: int = 20,
) -> tuple[np.ndarray, dict[str, Any]]:
    """A randomly augmented copy of ``label`` that keeps its tumour and differs from every mask in ``avoid``.

    Args:
        label: label patch (X, Y, Z), values 0-3.
        affine: the patch's voxel-to-world affine (for mm-based parameters).
        rng: random generator (seeded per synthetic sample).
        aug: augmentation ranges.
        avoid: digests (:func:`mask_digest`) of masks already used; the result is added to it.
        tries: redraws before giving up.

    Raises:
        RuntimeError: when no acceptable mask was drawn in ``tries`` attempts.
    """
    n_tumour = int((label == PATCH_TUMOR).sum())
    for _ in range(tries):
        params = draw_params(rng, aug)
        out = apply_params(label, affine, params)
        if n_tumour and (out == PATCH_TUMOR).sum() < aug.min_tumor_fraction * n_tumour:
            continue
        digest = mask_digest(out)
        if avoid is not None and digest in avoid:
            continue
        if avoid is not None:
            avoid.add(digest)
        return out, params
    raise RuntimeError(f"no acceptable augmented mask in {tries} draws; widen the augmentation ranges")


def mask_digest(label: np.ndarray) -> bytes:
    """A digest of a label patch's voxels (to keep masks distinct)."""
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(label, dtype=np.uint8).tobytes()).digest()
