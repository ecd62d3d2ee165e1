"""Phantom cohort: synthetic T1 hepatobiliary-phase abdominal MRI with a known PNI signal.

Each case is an abdomen (fat-suppressed subcutaneous fat, soft tissue, spine, aorta, spleen), a
bright liver with dark vessels and bright bile ducts, one dark textured tumour inside the liver
and a thin nerve that hugs the tumour surface 3-7 mm outside it. In PNI+ cases the nerve segment
next to the tumour is infiltrated: it becomes several mm thick with an intensity halfway between the
tumour's and the liver's (a perineural cuff, ``CUFF_LEVEL``) over a length that grows with
``strength``. The cuff is darker than liver and clearly brighter than the tumour, so where the
tumour label ends can be learned from the image (a cuff with the tumour's own intensity and
texture would make the label boundary invisible). The infiltration is *not* labelled, and
inside the tumour label the image does not depend on PNI, so tumour volume and mean tumour
intensity carry no label information. All random draws are made in the same order whatever the
PNI status, so with ``strength=0`` a PNI+ case is byte-identical to the PNI- case with the same
seed (a null cohort: a pipeline scoring well above AUC 0.5 on it is leaking).

A *matched* cohort (``synth --matched K``) comes in sets of K cases that share every anatomical
draw and differ only in their image noise (Rician noise and the fine parenchymal texture) and,
for the set's PNI+ members, the infiltration. Each set has the same number of PNI+ cases and is a
``group`` in ``cases.csv``, so it is never split over folds: no anatomical parameter (tumour size,
intensity, ...) can be associated with PNI by chance, in the cohort or in any fold. With
``strength=0`` that makes the null exact by design, while a pipeline that lets test patients into
training can still memorise their noise.

Everything is computed in physical millimetres (anisotropic spacing), with soft masks from signed
distances for partial volume, a multiplicative bias field and Rician noise. The output follows
``neonet.data.cases``: ``cases.csv`` + ``images/<case>.nii.gz`` (float32) + ``labels/<case>.nii.gz``
(uint8: 0 background, 1 liver, 2 tumour).
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import nibabel as nib
import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from neonet.data.cases import BACKGROUND, LIVER, TUMOR, Case, write_cases

log = logging.getLogger(__name__)

Seed = int | np.random.SeedSequence | np.random.Generator

#: Mean intensities relative to the liver (T1 hepatobiliary phase, fat-suppressed).
FAT, SOFT_TISSUE, BONE, AORTA, SPLEEN = 0.18, 0.38, 0.28, 0.12, 0.55
#: Ranges (mm) of the infiltrated nerve's radius and length at strength 1 (PNI+ cases).
INFIL_RADIUS_MM, INFIL_LENGTH_MM = (6.0, 8.0), (60.0, 90.0)
#: Where the infiltrated nerve's intensity lies between the tumour's (0, texture included) and the
#: liver's (1). At 0 the cuff cannot be told from tumour in the image, and a segmentation model has
#: no way to keep it out of the tumour label; near the nerve's own level (0.55-0.70 of liver, i.e.
#: ~0.2-0.4 here) a CPU-sized NeoSeg still labels a third to a half of it as tumour.
CUFF_LEVEL = 0.5


def _rng(seed: Seed) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


def _ramp(sdf: np.ndarray, width: float) -> np.ndarray:
    """Soft (partial-volume) mask from a signed distance in mm: 1 inside, 0 outside, 0.5 on the surface."""
    return np.clip(0.5 - sdf / width, 0.0, 1.0).astype(np.float32)


def _lerp(base: np.ndarray, value: Any, weight: np.ndarray) -> np.ndarray:
    return base + weight * (value - base)


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], spacing: np.ndarray, scale_mm: float) -> np.ndarray:
    """Smooth random field with unit standard deviation and correlation length ~``scale_mm``."""
    extent = np.asarray(shape) * spacing
    coarse = tuple(int(max(3, np.ceil(e / (scale_mm / 2)) + 3)) for e in extent)
    field = ndimage.gaussian_filter(rng.normal(size=coarse).astype(np.float32), 1.0, mode="wrap")
    field = ndimage.zoom(field[1:-1, 1:-1, 1:-1], [s / (c - 2) for s, c in zip(shape, coarse)], order=1)
    field = field[: shape[0], : shape[1], : shape[2]]
    return ((field - field.mean()) / (field.std() + 1e-8)).astype(np.float32)


def _ellipsoid_sdf(px: Any, py: Any, pz: Any, semi: np.ndarray) -> np.ndarray:
    """Approximate signed distance (mm, along the ray from the centre) to an axis-aligned ellipsoid."""
    q = np.sqrt((px / semi[0]) ** 2 + (py / semi[1]) ** 2 + (pz / semi[2]) ** 2)
    r = np.sqrt(px**2 + py**2 + pz**2)
    return np.where(q > 1e-6, r * (1.0 - 1.0 / np.maximum(q, 1e-6)), -semi.min()).astype(np.float32)


class _Blob:
    """Star-shaped irregular blob: radius R0 * (1 + quadratic + cubic harmonics of the direction)."""

    def __init__(self, rng: np.random.Generator, center: np.ndarray, radius: float) -> None:
        m = rng.normal(size=(3, 3))
        a = (m + m.T) / 2
        a -= np.trace(a) / 3 * np.eye(3)
        self.quad = a / np.abs(np.linalg.eigvalsh(a)).max() * rng.uniform(0.05, 0.15)
        self.cub = np.stack([_unit(rng) for _ in range(3)])
        self.cub_amp = rng.uniform(0.0, 0.10)
        self.center, self.r0 = np.asarray(center, float), float(radius)

    def radius(self, u: np.ndarray) -> np.ndarray:
        """Surface radius (mm) in unit directions ``u`` (..., 3)."""
        quad = np.einsum("...i,ij,...j->...", u, self.quad, u)
        cub = self.cub_amp * np.prod(u @ self.cub.T, axis=-1)
        return self.r0 * (1.0 + quad + cub)

    def sdf(self, px: np.ndarray, py: np.ndarray, pz: np.ndarray) -> np.ndarray:
        p = np.stack(np.broadcast_arrays(px - self.center[0], py - self.center[1], pz - self.center[2]), -1)
        r = np.linalg.norm(p, axis=-1)
        u = p / np.maximum(r, 1e-6)[..., None]
        return (r - self.radius(u)).astype(np.float32)


def _tube(
    points: np.ndarray, radius: np.ndarray, shape: tuple[int, int, int], spacing: np.ndarray, origin: np.ndarray, width: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Soft mask of a tube around polyline samples (N, 3 mm) with per-sample radius, on nearby voxels only.

    Returns flat voxel indices, soft mask values there, and the index of the nearest sample.
    """
    reach = float(radius.max()) + width
    lo, hi = origin - reach, origin + (np.asarray(shape) - 1) * spacing + reach
    keep = np.all((points >= lo) & (points <= hi), axis=1)
    points, radius = points[keep], radius[keep]
    if len(points) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64)
    k = np.ceil(reach / spacing).astype(int)
    base = np.unique(np.rint((points - origin) / spacing).astype(np.int64), axis=0)
    offsets = np.stack(np.meshgrid(*[np.arange(-kk, kk + 1) for kk in k], indexing="ij"), -1).reshape(-1, 3)
    cand = (base[:, None, :] + offsets[None]).reshape(-1, 3)
    cand = cand[np.all((cand >= 0) & (cand < np.asarray(shape)), axis=1)]
    flat = np.unique(np.ravel_multi_index(tuple(cand.T), shape))
    coords = np.stack(np.unravel_index(flat, shape), 1) * spacing + origin
    dist, idx = cKDTree(points).query(coords, k=min(4, len(points)))
    dist, idx = dist.reshape(len(coords), -1), idx.reshape(len(coords), -1)
    sd = dist - radius[idx]
    best = np.argmin(sd, axis=1)
    rows = np.arange(len(coords))
    soft = _ramp(sd[rows, best], width)
    ok = soft > 0
    return flat[ok], soft[ok], np.flatnonzero(keep)[idx[rows, best]][ok]


def _random_walk(rng: np.random.Generator, start: np.ndarray, target: np.ndarray, step: float = 1.0) -> np.ndarray:
    """A wiggly curve from ``start`` towards ``target`` (and a little beyond), sampled every ``step`` mm."""
    length = np.linalg.norm(target - start) * rng.uniform(1.0, 1.3)
    direction = (target - start) / max(np.linalg.norm(target - start), 1e-6)
    pts = [start]
    for _ in range(int(length / step)):
        direction = direction + 0.06 * rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        pts.append(pts[-1] + step * direction)
    return np.asarray(pts)


def _nerve_curve(
    rng: np.random.Generator,
    tumour: _Blob,
    gap: float,
    d_liver: np.ndarray,
    origin: np.ndarray,
    spacing: np.ndarray,
    half_arc_mm: float = 35.0,
    step: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """A nerve that hugs the tumour ``gap`` mm outside its surface along an arc, then leaves tangentially.

    Of 12 random arc planes the one whose arc lies deepest inside the liver is kept, so that the
    peritumoral nerve runs through bright parenchyma. Returns samples (N, 3 mm) and their arc
    length (mm, 0 at the middle of the arc).
    """
    wobble, phase = rng.uniform(0.0, 1.5), rng.uniform(0, 2 * np.pi)
    half = min(half_arc_mm / (tumour.r0 + gap), 0.9 * np.pi)
    theta = np.linspace(-half, half, int(np.ceil(2 * half * (tumour.r0 + gap) / step)) + 1)
    offset = np.clip(gap + wobble * np.sin(3 * theta + phase), 2.5, 8.0)
    best, best_score = None, -np.inf
    for _ in range(12):
        u0 = _unit(rng)
        t = _unit(rng)
        t = t - (t @ u0) * u0
        t /= np.linalg.norm(t)
        dirs = np.cos(theta)[:, None] * u0 + np.sin(theta)[:, None] * t
        arc = tumour.center + (tumour.radius(dirs) + offset)[:, None] * dirs
        inside = ndimage.map_coordinates(d_liver, ((arc - origin) / spacing).T, order=1, mode="nearest")
        score = float(np.mean(np.clip(-inside, -10.0, 10.0)))
        if score > best_score:
            best, best_score = arc, score
    assert best is not None
    ends = []
    for a, b in ((best[1], best[0]), (best[-2], best[-1])):
        tangent = (b - a) / np.linalg.norm(b - a)
        ends.append(b + np.arange(1, int(250 / step) + 1)[:, None] * step * tangent)
    nerve = np.concatenate([ends[0][::-1], best, ends[1]])
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(nerve, axis=0), axis=1))])
    return nerve, s - s[len(ends[0]) + len(best) // 2]


def orient(array: np.ndarray, affine: np.ndarray, code: str) -> tuple[np.ndarray, np.ndarray]:
    """Store a RAS-ordered array with axis codes ``code`` (e.g. "LPS"), returning (array, matching affine)."""
    code = code.upper()
    target = nib.orientations.axcodes2ornt(tuple(code))
    transform = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt(("R", "A", "S")), target)
    out = nib.orientations.apply_orientation(array, transform)
    new_affine = affine @ nib.orientations.inv_ornt_aff(transform, array.shape)
    return np.ascontiguousarray(out), new_affine


def _check_orientation(code: str) -> str:
    code = str(code).upper()
    axes = sorted(next((i for i, pair in enumerate(("LR", "PA", "IS")) if c in pair), -1) for c in code)
    if axes != [0, 1, 2]:
        raise ValueError(f"orientation must be a 3-letter axis code with one of L/R, A/P, I/S each (e.g. RAS, LPS), got {code!r}")
    return code


def make_case(
    rng: Seed,
    pni: int,
    strength: float = 1.0,
    shape: tuple[int, int, int] = (96, 96, 32),
    spacing: tuple[float, float, float] = (3.5, 3.5, 6.0),
    tumor_radius_mm: tuple[float, float] = (14.0, 24.0),
    noise: float = 0.03,
    orientation: str = "RAS",
    noise_rng: Seed | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Generate one phantom case in memory.

    Args:
        rng: seed, SeedSequence or Generator; the same seed gives byte-identical output.
        pni: 1 for a PNI+ case (infiltrated nerve next to the tumour), 0 for PNI-.
        strength: PNI effect size: the infiltrated nerve is strength * INFIL_LENGTH_MM long and its
            radius grows from ~1.2 mm towards INFIL_RADIUS_MM up to strength 1. 0 makes PNI+
            byte-identical to PNI- with the same seed.
        shape: voxels along the R, A, S axes.
        spacing: voxel size in mm along the R, A, S axes.
        tumor_radius_mm: (min, max) of the uniformly drawn mean tumour radius in mm.
        noise: Rician noise level relative to the liver intensity.
        orientation: axis code of the stored arrays (RAS or e.g. LPS); the affine matches.
        noise_rng: separate seed for the image noise (Rician noise and fine parenchymal texture);
            None draws it from ``rng``. Cases with the same ``rng`` and different ``noise_rng`` have
            the same anatomy (matched cohorts).

    Returns:
        (image float32, label uint8, affine 4x4, info dict).
    """
    code = _check_orientation(orientation)
    rng = _rng(rng)
    nrng = rng if noise_rng is None else _rng(noise_rng)
    shape = tuple(int(s) for s in shape)  # type: ignore[assignment]
    sp = np.asarray(spacing, dtype=float)
    origin = -(np.asarray(shape) - 1) / 2 * sp
    fov = np.asarray(shape) * sp
    width = float(np.prod(sp) ** (1 / 3))  # partial-volume ramp width (mm)
    x, y, z = (
        np.asarray(origin[i] + np.arange(shape[i]) * sp[i], np.float32).reshape([-1 if j == i else 1 for j in range(3)])
        for i in range(3)
    )

    # --- body: elliptic cylinder, fat-suppressed subcutaneous fat, soft tissue, spine, aorta, spleen
    body_semi = np.array([min(165.0, 0.46 * fov[0]), min(125.0, 0.40 * fov[1])]) * rng.uniform(0.92, 1.05, 2)
    q = np.sqrt((x / body_semi[0]) ** 2 + (y / body_semi[1]) ** 2)
    r2 = np.sqrt(x**2 + y**2)
    d_body = np.where(q > 1e-6, r2 * (1 - 1 / np.maximum(q, 1e-6)), -body_semi.min()) + np.zeros(shape, np.float32)
    d_body += 3.0 * smooth_noise(rng, shape, sp, 60.0)
    fat_mm = rng.uniform(8.0, 18.0)
    texture = smooth_noise(rng, shape, sp, 15.0)
    image = _lerp(np.zeros(shape, np.float32), FAT, _ramp(d_body, width))
    image = _lerp(image, SOFT_TISSUE * (1 + 0.15 * texture), _ramp(d_body + fat_mm, width))
    spine_c = np.array([0.0, -body_semi[1] + fat_mm + 28.0])
    image = _lerp(image, BONE, _ramp(np.sqrt((x - spine_c[0]) ** 2 + (y - spine_c[1]) ** 2) - 16.0 + 0 * z, width))
    image = _lerp(image, AORTA, _ramp(np.sqrt((x + 12.0) ** 2 + (y - spine_c[1] - 26.0) ** 2) - 10.0 + 0 * z, width))
    liver_zc = 0.12 * fov[2] + rng.uniform(-0.03, 0.03) * fov[2]
    spleen = np.array([-0.62, -0.25, 0.0]) * [body_semi[0], body_semi[1], 1] + [0, 0, liver_zc]
    spleen_semi = np.array([0.16 * body_semi[0], 0.28 * body_semi[1], min(55.0, 0.28 * fov[2])]) * rng.uniform(0.85, 1.1, 3)
    image = _lerp(image, SPLEEN, _ramp(_ellipsoid_sdf(x - spleen[0], y - spleen[1], z - spleen[2], spleen_semi), width))

    # --- liver: union of a right and a left lobe, irregular surface, inside the abdominal wall
    lobes = [
        (
            np.array([0.38 * body_semi[0], 0.05 * body_semi[1], liver_zc]),
            np.array([0.45 * body_semi[0], 0.62 * body_semi[1], min(80.0, 0.36 * fov[2])]),
        ),
        (
            np.array([-0.05 * body_semi[0], 0.28 * body_semi[1], liver_zc + 0.05 * fov[2]]),
            np.array([0.35 * body_semi[0], 0.32 * body_semi[1], min(55.0, 0.25 * fov[2])]),
        ),
    ]
    d_liver = np.full(shape, np.inf, np.float32)
    for center, semi in lobes:
        center = center + rng.uniform(-0.04, 0.04, 3) * fov
        semi = semi * rng.uniform(0.9, 1.1, 3)
        d_liver = np.minimum(d_liver, _ellipsoid_sdf(x - center[0], y - center[1], z - center[2], semi))
    d_liver = np.maximum(d_liver + 5.0 * smooth_noise(rng, shape, sp, 40.0), d_body + fat_mm + 4.0)
    m_liver = _ramp(d_liver, width)
    liver_int = rng.uniform(0.9, 1.1)
    fine = ndimage.gaussian_filter(nrng.normal(size=shape).astype(np.float32), 2.5 / sp)
    fine /= fine.std() + 1e-8
    image = _lerp(image, liver_int * (1 + 0.03 * fine), m_liver)

    # --- tumour: placed deep enough in the liver, with room for the shell inside the volume
    r0 = rng.uniform(*tumor_radius_mm)
    depth = ndimage.distance_transform_edt(d_liver < 0, sampling=sp)
    grid = [np.broadcast_to(a, shape) for a in (x, y, z)]
    margin = 1.25 * r0 + width + 10.0
    room = np.all([(fov[i] / 2 - sp[i] / 2) - np.abs(grid[i]) >= margin for i in range(3)], axis=0)
    cand = np.flatnonzero((depth >= r0 + 4.0) & room)
    if len(cand) == 0:
        cand = np.flatnonzero((depth >= 0.8 * r0) & room)
    if len(cand) == 0:
        log.warning("phantom: no liver point %.0f mm deep with room for a %.0f mm tumour; using the deepest", 0.8 * r0, r0)
        cand = np.array([np.argmax(np.where(room, depth, -1.0 + depth * 1e-3))])
    pick = cand[rng.integers(len(cand))]
    center = np.array([g.ravel()[pick] for g in grid], float) + rng.uniform(-0.5, 0.5, 3) * sp
    tumour = _Blob(rng, center, r0)
    d_tumour = tumour.sdf(x, y, z)
    m_tumour = _ramp(d_tumour, width)
    tumour_int = rng.uniform(0.30, 0.48) * liver_int
    tumour_img = tumour_int * (1 + 0.12 * fine)

    # --- vessels (dark) and bile ducts (bright) branching from the hilum, inside the liver only
    hilum = lobes[0][0] + np.array([-0.5, -0.1, -0.3]) * lobes[0][1]
    liver_pts = np.flatnonzero(d_liver.ravel() < -5.0)
    pts, rads, vals = [], [], []
    for kind in ["vessel"] * int(rng.integers(4, 7)) + ["duct"] * int(rng.integers(2, 4)):
        target = np.array([g.ravel()[liver_pts[rng.integers(len(liver_pts))]] for g in grid]) if len(liver_pts) else hilum
        curve = _random_walk(rng, hilum + rng.normal(0, 5, 3), target)
        r_start = rng.uniform(1.5, 3.0) if kind == "vessel" else rng.uniform(1.0, 2.0)
        pts.append(curve)
        rads.append(np.linspace(r_start, 0.6 * r_start, len(curve)))
        vals.append(np.full(len(curve), rng.uniform(0.12, 0.25) if kind == "vessel" else rng.uniform(1.15, 1.35)))
    flat, soft, near = _tube(np.concatenate(pts), np.concatenate(rads), shape, sp, origin, width)
    img = image.reshape(-1)
    img[flat] = _lerp(img[flat], liver_int * np.concatenate(vals)[near], soft * m_liver.reshape(-1)[flat])

    # --- nerve: hugs the tumour surface (3-7 mm outside) along an arc, then leaves tangentially
    # (every draw is made for PNI- cases too, so the random stream never depends on PNI)
    gap, infil_draw = rng.uniform(3.0, 7.0), float(strength) * rng.uniform(*INFIL_LENGTH_MM)
    hug = INFIL_LENGTH_MM[1] * max(1.0, float(strength)) / 2 + 10.0  # same nerve path for all strengths <= 1
    nerve, s = _nerve_curve(rng, tumour, gap, d_liver, origin, sp, half_arc_mm=hug)
    r_nerve, r_infil = rng.uniform(1.0, 1.5), rng.uniform(*INFIL_RADIUS_MM)
    nerve_int = rng.uniform(0.55, 0.70) * liver_int
    infil_len = infil_draw if pni else 0.0
    w = np.clip((infil_len / 2 - np.abs(s)) / 4.0, 0.0, 1.0)
    radius = r_nerve + w * (r_infil - r_nerve) * min(1.0, float(strength))
    flat, soft, near = _tube(nerve, radius, shape, sp, origin, width)
    wv = w[near].astype(np.float32)
    near_tumour = tumour_img.reshape(-1)[flat]
    cuff_val = near_tumour + CUFF_LEVEL * (liver_int - near_tumour)
    nerve_val = (1 - wv) * nerve_int + wv * cuff_val
    in_label = (d_tumour <= 0).reshape(-1)
    below = img[flat].copy()
    nerve_mixed = _lerp(below, nerve_val, soft * _ramp(d_body, width).reshape(-1)[flat])
    img[flat] = np.where(in_label[flat], below, nerve_mixed)  # inside the tumour label nothing depends on PNI

    # --- tumour on top, bias field, Rician noise
    image = _lerp(image, tumour_img, m_tumour)
    image *= np.exp(0.12 * smooth_noise(rng, shape, sp, 120.0))
    sigma = noise * liver_int
    n1, n2 = nrng.normal(size=(2, *shape)).astype(np.float32)
    image = np.sqrt((image + sigma * n1) ** 2 + (sigma * n2) ** 2).astype(np.float32)

    label = np.full(shape, BACKGROUND, np.uint8)
    label[d_liver <= 0] = LIVER
    label[d_tumour <= 0] = TUMOR
    affine = np.diag([*sp, 1.0])
    affine[:3, 3] = origin
    voxel_ml = float(np.prod(sp)) / 1000.0
    info = {
        "tumour_volume_ml": round(float((label == TUMOR).sum()) * voxel_ml, 3),
        "tumour_radius_mm": round(float(r0), 3),
        "tumour_intensity": round(float(tumour_int), 4),
        "tumour_mean_image": round(float(image[label == TUMOR].mean()), 4) if (label == TUMOR).any() else float("nan"),
        "liver_volume_ml": round(float((label == LIVER).sum()) * voxel_ml, 1),
        "tumour_center_mm": " ".join(f"{c:.1f}" for c in center),
        "nerve_gap_mm": round(float(gap), 2),
        "nerve_infiltration_mm": round(infil_len, 2),
        "infiltration_radius_mm": round(float(r_infil * min(1.0, float(strength))), 2) if infil_len else 0.0,
    }
    if code != "RAS":
        image, new_affine = orient(image, affine, code)
        label, _ = orient(label, affine, code)
        affine = new_affine
    return image, label, affine, info


class PlannedCase(NamedTuple):
    """One case of a phantom cohort plan."""

    case_id: str
    pni: int
    seed: np.random.SeedSequence
    noise_seed: np.random.SeedSequence | None
    group: str


def cohort_plan(cases: int, seed: int = 0, pni_fraction: float = 0.35, matched: int = 0) -> list[PlannedCase]:
    """Case ids, PNI labels, per-case seeds and groups.

    Unmatched (``matched=0``): exactly round(cases * pni_fraction) positives, shuffled; case ``i``'s
    seed depends only on (seed, i), so its anatomy does not change with ``cases``.
    Matched (``matched=K >= 2``): cases in consecutive sets of K sharing one anatomy seed, each with
    round(K * pni_fraction) positives at shuffled places and its own noise seed; group ``set_<j>``.
    """
    if cases < 1:
        raise ValueError(f"cases must be >= 1, got {cases}")
    if not 0.0 <= pni_fraction <= 1.0:
        raise ValueError(f"pni_fraction must be in [0, 1], got {pni_fraction}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    width = max(3, len(str(cases - 1)))
    label_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
    if matched == 0:
        positives = round(cases * pni_fraction)
        labels = label_rng.permutation(np.array([1] * positives + [0] * (cases - positives)))
        return [
            PlannedCase(f"phantom_{i:0{width}d}", int(labels[i]), np.random.SeedSequence(seed, spawn_key=(0, i)), None, "")
            for i in range(cases)
        ]
    positives = round(matched * pni_fraction)
    if matched < 2 or cases % matched or not 0 < positives < matched:
        raise ValueError(
            f"matched sets need a size K >= 2 that divides cases ({cases}) and holds both classes "
            f"(round(K * pni_fraction) = {positives} PNI+ of K = {matched}); e.g. --matched 3 with pni_fraction 0.35"
        )
    width_set = max(3, len(str(cases // matched - 1)))
    plan = []
    for j in range(cases // matched):
        labels = label_rng.permutation(np.array([1] * positives + [0] * (matched - positives)))
        for m in range(matched):
            i = j * matched + m
            plan.append(
                PlannedCase(
                    f"phantom_{i:0{width}d}",
                    int(labels[m]),
                    np.random.SeedSequence(seed, spawn_key=(0, j)),
                    np.random.SeedSequence(seed, spawn_key=(2, i)),
                    f"set_{j:0{width_set}d}",
                )
            )
    return plan


def iter_cohort(
    cases: int = 24, seed: int = 0, pni_fraction: float = 0.35, matched: int = 0, **params: Any
) -> Iterator[tuple[str, int, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]]:
    """Yield (case_id, pni, image, label, affine, info) in memory; ``params`` go to ``make_case``."""
    for item in cohort_plan(cases, seed, pni_fraction, matched):
        image, label, affine, info = make_case(item.seed, item.pni, noise_rng=item.noise_seed, **params)
        yield item.case_id, item.pni, image, label, affine, info


def _write_case(item: PlannedCase, out: Path, params: dict[str, Any]) -> dict[str, Any]:
    from neonet.data.nifti import save_nifti

    image, label, affine, info = make_case(item.seed, item.pni, noise_rng=item.noise_seed, **params)
    save_nifti(out / "images" / f"{item.case_id}.nii.gz", image, affine)
    save_nifti(out / "labels" / f"{item.case_id}.nii.gz", label, affine)
    return {"case_id": item.case_id, **({"group": item.group} if item.group else {}), **info}


def synth(
    out: Path,
    cases: int = 24,
    seed: int = 0,
    pni_fraction: float = 0.35,
    strength: float = 1.0,
    shape: tuple[int, int, int] = (96, 96, 32),
    spacing: tuple[float, float, float] = (3.5, 3.5, 6.0),
    orientation: str = "RAS",
    tumor_radius_mm: tuple[float, float] = (14.0, 24.0),
    noise: float = 0.03,
    matched: int = 0,
    workers: int = 1,
) -> Path:
    """Write a synthetic T1 hepatobiliary-phase MRI cohort with a known PNI signal (phantom).

    Each case has an abdomen, a bright liver with dark vessels and bright ducts, a dark textured
    tumour and a nerve running just outside the tumour. In PNI+ cases the nerve next to the tumour
    is thickened into a perineural cuff, halfway between tumour and liver in intensity (not labelled;
    see ``CUFF_LEVEL``). Tumour size and intensity are drawn independently of PNI. Writes
    OUT/cases.csv, OUT/images/<case>.nii.gz (float32), OUT/labels/<case>.nii.gz (uint8: 0 background,
    1 liver, 2 tumour) and OUT/phantom_info.csv (debug only: its
    nerve_infiltration_mm column is 0 exactly for PNI- cases, so never feed it to a model).

    Args:
        out: output folder (created if needed).
        cases: number of cases.
        seed: random seed; the same seed gives byte-identical volumes.
        pni_fraction: fraction of PNI+ cases; exactly round(cases * pni_fraction) are PNI+.
        strength: PNI signal strength: at 1 the infiltrated nerve is 6-8 mm in radius and 60-90 mm
            long (a peritumoral dark-voxel statistic separates the classes almost perfectly); the
            length scales with strength; 0 gives a null cohort in which PNI+ cases are identical to
            PNI- ones (a leak detector).
        shape: volume size in voxels along the R, A, S axes.
        spacing: voxel size in mm along the R, A, S axes (anisotropic is fine).
        orientation: axis code of the stored volumes, e.g. RAS or LPS; the affine matches, so
            loaders must reorient.
        tumor_radius_mm: (min, max) of the mean tumour radius in mm, drawn uniformly.
        noise: Rician noise level relative to the liver intensity.
        matched: 0 for independent cases; K >= 2 for matched sets of K cases with one anatomy and
            their own noise, round(K * pni_fraction) of them PNI+, written as one ``group`` each
            (kept in one fold). With strength 0 this is the exact null control.
        workers: number of processes (1 = in this process).

    Returns:
        Path of the written cases.csv.
    """
    from neonet.run.atomic import write_csv

    out = Path(out)
    _check_orientation(orientation)
    if strength < 0 or noise < 0:
        raise ValueError(f"strength and noise must be >= 0, got {strength} and {noise}")
    if len(shape) != 3 or len(spacing) != 3 or min(shape) < 8 or min(spacing) <= 0:
        raise ValueError(f"shape must be 3 sizes >= 8 and spacing 3 positive sizes, got {shape}, {spacing}")
    if not 0 < tumor_radius_mm[0] <= tumor_radius_mm[1]:
        raise ValueError(f"tumor_radius_mm must be (min, max) with 0 < min <= max, got {tumor_radius_mm}")
    plan = cohort_plan(cases, seed, pni_fraction, matched)
    params = {
        "strength": strength,
        "shape": tuple(shape),
        "spacing": tuple(spacing),
        "orientation": orientation,
        "tumor_radius_mm": tuple(tumor_radius_mm),
        "noise": noise,
    }
    task = partial(_write_case, out=out, params=params)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    from tqdm.auto import tqdm

    with tqdm(total=len(plan), desc="phantom cases", unit="case", disable=None) as bar:
        if workers > 1:
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                infos = [bar.update() or info for info in pool.map(task, plan)]
        else:
            infos = [bar.update() or task(item) for item in plan]

    import pandas as pd

    write_csv(out / "phantom_info.csv", pd.DataFrame(infos))
    rows = [
        Case(
            case_id=p.case_id,
            image=out / "images" / f"{p.case_id}.nii.gz",
            label=out / "labels" / f"{p.case_id}.nii.gz",
            pni=p.pni,
            patient_id=p.case_id,
            group=p.group,
        )
        for p in plan
    ]
    csv_path = write_cases(out / "cases.csv", rows)
    log.info("phantom: wrote %d cases (%d PNI+, strength %g) to %s", len(rows), sum(p.pni for p in plan), strength, out)
    return csv_path
