"""IBSI features of neonet.radiomics against closed forms: spheres, ellipsoids, shells, constant and two-valued regions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from neonet.radiomics.features import (
    HISTOGRAM,
    MORPH,
    STAT,
    feature_names,
    histogram_features,
    intensity_statistics,
    morphology,
    region_features,
)


def ellipsoid(shape: tuple[int, int, int], spacing: tuple[float, float, float], axes: tuple[float, float, float]) -> np.ndarray:
    """A solid ellipsoid with semi-axes ``axes`` (mm) centred in a grid of voxel centres."""
    grids = np.meshgrid(*[(np.arange(n) + 0.5) * s - n * s / 2 for n, s in zip(shape, spacing)], indexing="ij")
    return sum((g / a) ** 2 for g, a in zip(grids, axes)) <= 1.0


def test_sphere_morphology_matches_closed_form() -> None:
    r = 12.0
    m = ellipsoid((40, 40, 40), (1.0, 1.0, 1.0), (r, r, r))
    f = morphology(m, (1.0, 1.0, 1.0))
    assert f["morph_volume"] == pytest.approx(4 / 3 * math.pi * r**3, rel=0.02)
    assert f["morph_vol_approx"] == pytest.approx(m.sum())
    # a marching-cubes mesh of a voxelised sphere is a little larger than the sphere (its faces follow the voxel steps)
    assert 1.0 < f["morph_area_mesh"] / (4 * math.pi * r**2) < 1.10
    assert 0.9 < f["morph_sphericity"] <= 1.0
    assert f["morph_asphericity"] == pytest.approx(1 / f["morph_sphericity"] - 1)
    assert f["morph_comp_2"] == pytest.approx(f["morph_sphericity"] ** 3)
    assert f["morph_diam"] == pytest.approx(2 * r, abs=1.01)  # mesh vertices lie half a voxel outside the centres
    # PCA of a solid ball: variance r^2 / 5 on every axis, axis length 4 sqrt(r^2 / 5)
    assert f["morph_pca_maj_axis"] == pytest.approx(4 * r / math.sqrt(5), rel=0.01)
    assert f["morph_pca_elongation"] == pytest.approx(1.0, abs=1e-6)
    assert f["morph_pca_flatness"] == pytest.approx(1.0, abs=1e-6)


def test_sphere_morphology_agrees_with_pyradiomics() -> None:
    """pyradiomics 3.0.1 (built by hand in a separate venv, see neonet.radiomics.features) on this very mask gave
    MeshVolume 7126.8333, SurfaceArea 1934.5236, Sphericity 0.9257801 and Maximum3DDiameter 25.0."""
    z, y, x = np.mgrid[:40, :40, :40]
    m = (x - 20) ** 2 + (y - 20) ** 2 + (z - 20) ** 2 <= 12**2
    f = morphology(m, (1.0, 1.0, 1.0))
    assert f["morph_volume"] == pytest.approx(7126.8333, rel=1e-5)
    assert f["morph_area_mesh"] == pytest.approx(1934.5236, rel=1e-5)
    assert f["morph_sphericity"] == pytest.approx(0.9257801, rel=1e-5)
    assert f["morph_diam"] == pytest.approx(25.0, rel=1e-6)


def test_anisotropic_spacing_is_taken_in_millimetres() -> None:
    spacing = (2.0, 2.0, 4.0)  # a sphere of 30 mm radius on a grid with thicker slices
    m = ellipsoid((40, 40, 24), spacing, (30.0, 30.0, 30.0))
    f = morphology(m, spacing)
    assert f["morph_volume"] == pytest.approx(4 / 3 * math.pi * 30**3, rel=0.02)
    assert f["morph_vol_approx"] == pytest.approx(m.sum() * 16.0)
    assert f["morph_pca_maj_axis"] == pytest.approx(4 * 30 / math.sqrt(5), rel=0.03)
    assert f["morph_pca_elongation"] > 0.97
    in_voxels = morphology(m, (1.0, 1.0, 1.0))  # the same mask read as isotropic: flattened along z
    assert in_voxels["morph_pca_flatness"] == pytest.approx(0.5, abs=0.03)


def test_ellipsoid_elongation_flatness_and_diameter() -> None:
    a, b, c = 20.0, 10.0, 5.0
    f = morphology(ellipsoid((48, 28, 16), (1.0, 1.0, 1.0), (a, b, c)), (1.0, 1.0, 1.0))
    assert f["morph_pca_elongation"] == pytest.approx(b / a, abs=0.02)
    assert f["morph_pca_flatness"] == pytest.approx(c / a, abs=0.02)
    assert f["morph_pca_maj_axis"] == pytest.approx(4 * a / math.sqrt(5), rel=0.02)
    assert f["morph_diam"] == pytest.approx(2 * a, abs=1.01)
    assert f["morph_volume"] == pytest.approx(4 / 3 * math.pi * a * b * c, rel=0.03)
    assert f["morph_sphericity"] < 0.85  # well below a sphere's


def test_shell_volume_is_the_enclosed_difference() -> None:
    outer = ellipsoid((40, 40, 40), (1.0, 1.0, 1.0), (15.0, 15.0, 15.0))
    inner = ellipsoid((40, 40, 40), (1.0, 1.0, 1.0), (8.0, 8.0, 8.0))
    shell, ball = morphology(outer & ~inner, (1.0, 1.0, 1.0)), morphology(outer, (1.0, 1.0, 1.0))
    core = morphology(inner, (1.0, 1.0, 1.0))
    assert shell["morph_volume"] == pytest.approx(ball["morph_volume"] - core["morph_volume"], rel=1e-6)
    assert shell["morph_area_mesh"] == pytest.approx(ball["morph_area_mesh"] + core["morph_area_mesh"], rel=1e-6)


def test_constant_region_has_no_spread() -> None:
    f = {**intensity_statistics(np.full(500, 0.75)), **histogram_features(np.full(500, 0.75), bins=32)}
    assert f["stat_mean"] == pytest.approx(0.75)
    for key in ("stat_var", "stat_skew", "stat_kurt", "stat_iqr", "stat_range", "stat_mad", "stat_rmad", "stat_medad"):
        assert f[key] == pytest.approx(0.0, abs=1e-12), key
    assert f["stat_cov"] == pytest.approx(0.0, abs=1e-12)
    assert f["stat_energy"] == pytest.approx(500 * 0.75**2)
    assert f["ih_entropy"] == pytest.approx(0.0, abs=1e-12) and f["ih_uniformity"] == pytest.approx(1.0)


def test_two_valued_region_matches_bernoulli_moments() -> None:
    p = 0.3  # 30 % of the voxels at 1, the rest at 0: a Bernoulli(p) distribution
    x = np.r_[np.ones(300), np.zeros(700)]
    f = {**intensity_statistics(x), **histogram_features(x, bins=32)}
    q = p * (1 - p)
    assert f["stat_mean"] == pytest.approx(p)
    assert f["stat_var"] == pytest.approx(q)
    assert f["stat_skew"] == pytest.approx((1 - 2 * p) / math.sqrt(q))
    assert f["stat_kurt"] == pytest.approx((1 - 6 * q) / q)  # excess kurtosis
    assert f["stat_mad"] == pytest.approx(2 * q)
    assert f["stat_medad"] == pytest.approx(p)  # the median is 0
    assert f["stat_rms"] == pytest.approx(math.sqrt(p))
    assert f["ih_entropy"] == pytest.approx(-(p * math.log2(p) + (1 - p) * math.log2(1 - p)))
    assert f["ih_uniformity"] == pytest.approx(p**2 + (1 - p) ** 2)


def test_sample_moments_are_the_biased_ibsi_ones() -> None:
    x = np.random.default_rng(0).gamma(2.0, 1.5, size=5000)
    f = intensity_statistics(x)
    assert f["stat_var"] == pytest.approx(np.var(x))
    assert f["stat_skew"] == pytest.approx(stats.skew(x))
    assert f["stat_kurt"] == pytest.approx(stats.kurtosis(x))  # Fisher (excess), biased: IBSI's definition
    assert f["stat_skew"] == pytest.approx(2 / math.sqrt(2.0), rel=0.1)  # the gamma's skewness, to sampling error
    assert f["stat_p10"] == pytest.approx(np.percentile(x, 10)) and f["stat_p90"] == pytest.approx(np.percentile(x, 90))
    inner = x[(x >= f["stat_p10"]) & (x <= f["stat_p90"])]
    assert f["stat_rmad"] == pytest.approx(np.mean(np.abs(inner - inner.mean())))


def test_region_features_names_regions_and_gives_nan_for_an_empty_one() -> None:
    label = np.zeros((20, 20, 10), dtype=np.int16)
    label[5:15, 5:15, 3:7] = 3  # a tumour block, no shell
    image = np.where(label == 3, 0.4, 0.75)
    f = region_features(image, label, (2.0, 2.0, 4.0))
    assert list(f) == feature_names()
    assert len(f) == 2 * (len(STAT) + len(HISTOGRAM) + len(MORPH))
    assert f["tumour.stat_mean"] == pytest.approx(0.4)
    assert f["tumour.morph_vol_approx"] == pytest.approx(10 * 10 * 4 * 16.0)
    assert all(math.isnan(v) for k, v in f.items() if k.startswith("shell."))
    with pytest.raises(ValueError, match="unknown region"):
        region_features(image, label, (2.0, 2.0, 4.0), regions=["liver"])
