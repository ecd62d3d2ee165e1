"""IBSI first-order and morphological features of a TLCR patch's tumour and peritumoral shell.

The features follow the definitions of the Image Biomarker Standardisation Initiative (IBSI 1 reference
manual, Zwanenburg et al., Radiology 2020) and carry its feature tags (``stat_mean``, ``morph_volume``...),
prefixed by the region: ``tumour.stat_mean``, ``shell.morph_sphericity``. They are computed here with
numpy, scipy and scikit-image because pyradiomics, the field library, cannot be installed by
``make install``: on PyPI it has no wheel for Python 3.11, the 3.1.0 sdist declares a different version in
its metadata (pip discards it), and the 3.0.1 sdist imports numpy in its ``setup.py`` without declaring it,
so pip's isolated build fails; it builds only with numpy, ``wheel`` and a C compiler installed beforehand
and ``--no-build-isolation`` (checked with pip 26 on Python 3.11.7).

Per region (intensities of the image patch, voxel spacing in mm from the patch's affine):

- intensity statistics (IBSI 3.3; ``stat_``): ``mean``, ``var`` (1/N), ``skew``, ``kurt`` (excess),
  ``median``, ``min``, ``p10``, ``p90``, ``max``, ``iqr``, ``range``, ``mad`` (mean absolute deviation
  from the mean), ``rmad`` (robust: over the voxels between p10 and p90), ``medad`` (mean absolute
  deviation from the median), ``cov`` (coefficient of variation), ``qcod`` (quartile coefficient of
  dispersion), ``energy`` (sum of squares), ``rms``. Skewness and kurtosis are 0 for a constant region;
- intensity histogram (IBSI 3.4; ``ih_``): ``entropy`` (log2) and ``uniformity`` of the intensities
  discretised to a fixed number of bins between the region's minimum and maximum (IBSI "fixed bin number";
  a constant region is one bin);
- morphology (IBSI 3.1; ``morph_``) on a marching-cubes mesh of the region (scikit-image, level 0.5, the
  mask padded by one voxel so the mesh is closed): ``volume`` (mesh), ``vol_approx`` (voxel count x voxel
  volume), ``area_mesh``, ``av`` (area / volume), ``comp_1``, ``comp_2``, ``sph_dispr``, ``sphericity``,
  ``asphericity``, ``diam`` (largest distance between mesh vertices), and from the principal components
  of the voxel centres (mm) ``pca_maj_axis``, ``pca_min_axis``, ``pca_least_axis`` (4 sqrt(lambda)),
  ``pca_elongation`` and ``pca_flatness``. A shell's mesh has an outer and an inner surface: its area is
  both, its volume the enclosed difference.

A region without voxels (e.g. a patch cut where NeoSeg found no tumour) gives NaN for all of its features;
the classifier imputes them with its training medians (:mod:`neonet.radiomics.model`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import pdist
from skimage.measure import marching_cubes, mesh_surface_area

from neonet.data.patches import PATCH_SHELL, PATCH_TUMOR
from neonet.errors import DataError

#: The regions of a TLCR label patch, by name, and their label value.
REGIONS: dict[str, int] = {"tumour": PATCH_TUMOR, "shell": PATCH_SHELL}

#: IBSI intensity statistics (feature tags without the region prefix).
STAT = (
    "stat_mean",
    "stat_var",
    "stat_skew",
    "stat_kurt",
    "stat_median",
    "stat_min",
    "stat_p10",
    "stat_p90",
    "stat_max",
    "stat_iqr",
    "stat_range",
    "stat_mad",
    "stat_rmad",
    "stat_medad",
    "stat_cov",
    "stat_qcod",
    "stat_energy",
    "stat_rms",
)
#: IBSI intensity-histogram features.
HISTOGRAM = ("ih_entropy", "ih_uniformity")
#: IBSI morphological features.
MORPH = (
    "morph_volume",
    "morph_vol_approx",
    "morph_area_mesh",
    "morph_av",
    "morph_comp_1",
    "morph_comp_2",
    "morph_sph_dispr",
    "morph_sphericity",
    "morph_asphericity",
    "morph_diam",
    "morph_pca_maj_axis",
    "morph_pca_min_axis",
    "morph_pca_least_axis",
    "morph_pca_elongation",
    "morph_pca_flatness",
)


def feature_names(regions: Sequence[str] = tuple(REGIONS)) -> list[str]:
    """Every feature column, ``<region>.<IBSI tag>``, in a fixed order."""
    return [f"{r}.{tag}" for r in regions for tag in (*STAT, *HISTOGRAM, *MORPH)]


def intensity_statistics(values: np.ndarray) -> dict[str, float]:
    """IBSI intensity statistics of a region's voxel intensities (NaN for an empty region)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        return dict.fromkeys(STAT, math.nan)
    mean = float(x.mean())
    dev = x - mean
    var = float(np.mean(dev**2))
    p10, p25, median, p75, p90 = (float(v) for v in np.percentile(x, [10, 25, 50, 75, 90]))
    inner = x[(x >= p10) & (x <= p90)]
    flat = var <= 1e-12 * max(1.0, mean * mean)
    return {
        "stat_mean": mean,
        "stat_var": var,
        "stat_skew": 0.0 if flat else float(np.mean(dev**3) / var**1.5),
        "stat_kurt": 0.0 if flat else float(np.mean(dev**4) / var**2 - 3.0),
        "stat_median": median,
        "stat_min": float(x.min()),
        "stat_p10": p10,
        "stat_p90": p90,
        "stat_max": float(x.max()),
        "stat_iqr": p75 - p25,
        "stat_range": float(x.max() - x.min()),
        "stat_mad": float(np.mean(np.abs(dev))),
        "stat_rmad": float(np.mean(np.abs(inner - inner.mean()))),
        "stat_medad": float(np.mean(np.abs(x - median))),
        "stat_cov": math.sqrt(var) / mean if mean != 0 else math.nan,
        "stat_qcod": (p75 - p25) / (p75 + p25) if p75 + p25 != 0 else math.nan,
        "stat_energy": float(np.sum(x * x)),
        "stat_rms": float(np.sqrt(np.mean(x * x))),
    }


def histogram_features(values: np.ndarray, bins: int = 32) -> dict[str, float]:
    """IBSI intensity-histogram entropy and uniformity with a fixed bin number between the region's min and max."""
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        return dict.fromkeys(HISTOGRAM, math.nan)
    lo, hi = float(x.min()), float(x.max())
    if hi - lo <= 0:
        levels = np.ones(x.size, dtype=np.int64)
    else:  # IBSI fixed bin number: floor(Ng (x - min) / (max - min)) + 1, the maximum in bin Ng
        levels = np.minimum(np.floor(bins * (x - lo) / (hi - lo)).astype(np.int64) + 1, bins)
    p = np.bincount(levels)[1:] / x.size
    p = p[p > 0]
    return {"ih_entropy": float(-np.sum(p * np.log2(p))), "ih_uniformity": float(np.sum(p * p))}


def morphology(mask: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """IBSI morphological features of a binary region with voxel ``spacing`` (mm), NaN when it is empty.

    Raises:
        ValueError: ``mask`` is not 3D or ``spacing`` has not three positive values.
    """
    mask = np.asarray(mask, dtype=bool)
    spacing = tuple(float(s) for s in spacing)
    if mask.ndim != 3 or len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"morphology needs a 3D mask and three positive spacings, got shape {mask.shape}, spacing {spacing}")
    n = int(mask.sum())
    if n == 0:
        return dict.fromkeys(MORPH, math.nan)
    padded = np.pad(mask, 1).astype(np.float32)
    verts, faces, _, _ = marching_cubes(padded, level=0.5, spacing=spacing)
    area = float(mesh_surface_area(verts, faces))
    a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    volume = abs(float(np.sum(np.einsum("ij,ij->i", a, np.cross(b, c)))) / 6.0)  # divergence theorem
    out: dict[str, float] = {
        "morph_volume": volume,
        "morph_vol_approx": n * spacing[0] * spacing[1] * spacing[2],
        "morph_area_mesh": area,
    }
    if volume > 0 and area > 0:
        sphere = (36.0 * math.pi * volume * volume) ** (1.0 / 3.0)  # area of the sphere of this volume
        out.update(
            {
                "morph_av": area / volume,
                "morph_comp_1": volume / (math.sqrt(math.pi) * area**1.5),
                "morph_comp_2": 36.0 * math.pi * volume * volume / area**3,
                "morph_sph_dispr": area / sphere,
                "morph_sphericity": sphere / area,
                "morph_asphericity": area / sphere - 1.0,
            }
        )
    else:
        out.update(dict.fromkeys(("morph_av", "morph_comp_1", "morph_comp_2", "morph_sph_dispr"), math.nan))
        out.update(dict.fromkeys(("morph_sphericity", "morph_asphericity"), math.nan))
    out["morph_diam"] = _max_diameter(verts)
    coords = np.argwhere(mask) * np.asarray(spacing)
    lam = np.sort(np.linalg.eigvalsh(np.cov(coords, rowvar=False, bias=True)))[::-1] if n > 1 else np.zeros(3)
    lam = np.clip(lam, 0.0, None)
    out["morph_pca_maj_axis"], out["morph_pca_min_axis"], out["morph_pca_least_axis"] = (4.0 * math.sqrt(v) for v in lam)
    out["morph_pca_elongation"] = math.sqrt(lam[1] / lam[0]) if lam[0] > 0 else math.nan
    out["morph_pca_flatness"] = math.sqrt(lam[2] / lam[0]) if lam[0] > 0 else math.nan
    return out


def _max_diameter(verts: np.ndarray) -> float:
    """The largest distance between two mesh vertices (searched among the convex hull's vertices)."""
    points = verts
    try:
        points = verts[ConvexHull(verts).vertices]
    except (QhullError, ValueError):  # a flat or tiny mesh: all vertices
        pass
    return float(pdist(points).max()) if len(points) > 1 else 0.0


def region_features(
    image: np.ndarray, label: np.ndarray, spacing: Sequence[float], regions: Sequence[str] = tuple(REGIONS), bins: int = 32
) -> dict[str, float]:
    """Every feature (:func:`feature_names`) of a patch: its image, its TLCR label patch and the voxel spacing.

    Raises:
        ValueError: image and label differ in shape, or a region name is unknown.
    """
    if image.shape != label.shape:
        raise ValueError(f"image shape {image.shape} and label shape {label.shape} differ")
    unknown = [r for r in regions if r not in REGIONS]
    if unknown:
        raise ValueError(f"unknown region(s) {unknown}: choose from {sorted(REGIONS)}")
    out: dict[str, float] = {}
    for region in regions:
        mask = label == REGIONS[region]
        values = image[mask]
        parts = {**intensity_statistics(values), **histogram_features(values, bins), **morphology(mask, spacing)}
        out.update({f"{region}.{k}": v for k, v in parts.items()})
    return out


def patch_features(
    case_id: str, image_path: Path, label_path: Path, regions: Sequence[str] = tuple(REGIONS), bins: int = 32
) -> dict[str, float]:
    """The features of one TLCR patch read from its NIfTI files (spacing from the image patch's affine).

    Raises:
        DataError: a file cannot be read, or the image and label patches differ in shape or spacing.
    """
    try:
        image_nii, label_nii = nib.load(image_path), nib.load(label_path)
        image = np.asarray(image_nii.dataobj, dtype=np.float64)  # type: ignore[attr-defined]
        label = np.rint(np.asarray(label_nii.dataobj)).astype(np.int16)  # type: ignore[attr-defined]
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(
            f"case {case_id}: cannot read its TLCR patch ({image_path}, {label_path}): {exc}. "
            "Re-run `neonet crop --force` for this experiment."
        ) from exc
    spacing = tuple(float(s) for s in image_nii.header.get_zooms()[:3])  # type: ignore[attr-defined]
    label_spacing = tuple(float(s) for s in label_nii.header.get_zooms()[:3])  # type: ignore[attr-defined]
    if image.shape[:3] != label.shape[:3] or not np.allclose(spacing, label_spacing, rtol=1e-4):
        raise DataError(
            f"case {case_id}: image patch {image_path} ({image.shape}, spacing {spacing}) and label patch {label_path} "
            f"({label.shape}, spacing {label_spacing}) do not match; re-run `neonet crop --force` for this experiment."
        )
    return region_features(image.reshape(image.shape[:3]), label.reshape(label.shape[:3]), spacing, regions, bins)
