"""TLCR on synthetic arrays: centring, border padding, mm shell, several tumours, no tumour."""

from __future__ import annotations

import numpy as np
import pytest

from neonet.seg.tlcr import (
    crop_box,
    extract_patch,
    label_patch,
    largest_component,
    liver_reference_scale,
    patch_affine,
    peritumoral_shell,
    shrunk_tumor,
    tlcr,
)

SHAPE = (64, 64, 32)
PATCH = (32, 32, 16)


def ball(shape, center, radius_vox):
    """Boolean ellipsoid with per-axis radii in voxels."""
    grid = np.indices(shape, dtype=float)
    radius = np.broadcast_to(np.asarray(radius_vox, dtype=float), (3,))
    dist = sum(((grid[i] - center[i]) / radius[i]) ** 2 for i in range(3))
    return dist <= 1.0


def case(tumors=(((30, 34, 15), 3),), liver_center=(32, 32, 16), shape=SHAPE, seed=0):
    """Image and project-convention mask (1 liver, 2 tumour)."""
    mask = np.zeros(shape, dtype=np.uint8)
    mask[ball(shape, liver_center, (20, 20, 10))] = 1
    for center, radius in tumors:
        mask[ball(shape, center, radius)] = 2
    image = np.random.default_rng(seed).random(shape).astype(np.float32)
    return image, mask


# ----------------------------------------------------------------------------- building blocks
def test_largest_component_counts_and_picks_largest():
    m = np.zeros((20, 20, 20), bool)
    m[1:3, 1:3, 1:3] = True  # 8 voxels
    m[10:14, 10:14, 10:14] = True  # 64 voxels
    m[5, 5, 5] = True
    m[6, 6, 6] = True  # diagonal neighbour of (5,5,5): same component under 26-connectivity
    comp, n = largest_component(m)
    assert n == 3
    assert comp.sum() == 64 and comp[12, 12, 12]
    empty, n0 = largest_component(np.zeros((4, 4, 4), bool))
    assert n0 == 0 and not empty.any()


def test_crop_box_centre_convention_and_padding():
    box = crop_box((10.4, 10.6, 2.5), (8, 7, 4), (20, 20, 10))
    assert box["center"] == (10, 11, 3)  # nearest voxel, halves round up
    assert box["start"] == (6, 8, 1) and box["stop"] == (14, 15, 5)
    assert [c - s for c, s in zip(box["center"], box["start"])] == [4, 3, 2]  # index p // 2
    corner = crop_box((1, 18, 0), (8, 8, 4), (20, 20, 10))
    assert corner["start"] == (-3, 14, -2) and corner["stop"] == (5, 22, 2)
    assert corner["pad_before"] == (3, 0, 2) and corner["pad_after"] == (0, 2, 0)


def test_extract_patch_pads_with_value():
    arr = np.arange(4 * 4 * 4, dtype=np.float32).reshape(4, 4, 4) + 1
    box = crop_box((0, 0, 3), (4, 4, 4), arr.shape)
    patch = extract_patch(arr, box, pad_value=-1)
    assert patch.shape == (4, 4, 4)
    assert patch[0, 0, 0] == -1  # before the volume
    assert patch[2, 2, 2] == arr[0, 0, 3]
    assert patch[2, 2, 3] == -1  # beyond the volume along z


def test_label_patch_precedence():
    liver = np.ones((2, 2, 1), bool)
    shell = np.array([[[1], [1]], [[0], [0]]], bool)
    tumor = np.array([[[1], [0]], [[0], [0]]], bool)
    out = label_patch(liver, tumor, shell)
    assert out.dtype == np.uint8
    assert out[:, :, 0].tolist() == [[3, 2], [1, 1]]


def test_patch_affine_keeps_world_coordinates():
    affine = np.array([[-2.0, 0, 0, 10], [0, 2, 0, -5], [0, 0, 4, 3], [0, 0, 0, 1]])
    start = (-3, 5, 2)
    pa = patch_affine(affine, start)
    for ijk in [(0, 0, 0), (4, 1, 2)]:
        world_patch = pa @ np.r_[ijk, 1]
        world_vol = affine @ np.r_[np.add(ijk, start), 1]
        np.testing.assert_allclose(world_patch, world_vol)


# ----------------------------------------------------------------------------- tlcr
def test_centroid_at_patch_centre_away_from_borders():
    image, mask = case(tumors=(((30.3, 34.6, 15.2), 3),))
    res = tlcr(image, mask, (1.0, 1.0, 1.0), patch_size=PATCH, shell_mm=3.0)
    assert res.status == "ok" and res.n_tumors == 1 and res.fits
    assert res.image_patch.shape == PATCH and res.label_patch.shape == PATCH
    assert res.image_patch.dtype == np.float32 and res.label_patch.dtype == np.uint8
    assert res.box["pad_before"] == (0, 0, 0) and res.box["pad_after"] == (0, 0, 0)
    tumour_in_patch = np.argwhere(res.label_patch == 3).mean(axis=0)
    centre = np.array(PATCH) // 2
    assert np.all(np.abs(tumour_in_patch - centre) <= 1.0)
    # image patch is the image at the box
    s = res.box["start"]
    np.testing.assert_array_equal(res.image_patch, image[s[0] : s[0] + 32, s[1] : s[1] + 32, s[2] : s[2] + 16])
    assert set(np.unique(res.label_patch)) <= {0, 1, 2, 3}
    assert res.tumor_volume_ml == pytest.approx((mask == 2).sum() / 1000.0)


def test_tumour_at_corner_is_padded_and_fully_inside():
    image, mask = case(tumors=(((2, 2, 1), 2),), liver_center=(10, 10, 5))
    res = tlcr(image, mask, (1.5, 1.5, 3.0), patch_size=PATCH, shell_mm=5.0)
    assert res.status == "ok" and res.fits
    assert res.image_patch.shape == PATCH and res.label_patch.shape == PATCH
    assert all(b > 0 for b in res.box["pad_before"])
    assert res.box["pad_after"] == (0, 0, 0)
    assert res.padding == (res.box["pad_before"], res.box["pad_after"])
    assert (res.label_patch == 3).sum() == (mask == 2).sum()  # every tumour voxel is in the patch
    # padding is background / image minimum
    pb = res.box["pad_before"]
    assert not res.label_patch[: pb[0]].any()
    assert np.all(res.image_patch[: pb[0]] == image.min())


def test_shell_width_follows_mm_on_anisotropic_spacing():
    shape = (60, 60, 30)
    tumor = np.zeros(shape, bool)
    tumor[28:32, 28:32, 14:16] = True
    shell = peritumoral_shell(tumor, (1.0, 1.0, 4.0), width_mm=10.0)
    assert not (shell & tumor).any()
    coords = np.argwhere(shell | tumor)
    extent = coords.max(axis=0) - coords.min(axis=0) + 1
    tumour_extent = np.array([4, 4, 2])
    grow = (extent - tumour_extent) / 2  # voxels per side
    assert grow[0] == pytest.approx(10) and grow[1] == pytest.approx(10)
    assert 2 <= grow[2] <= 3  # 10 mm / 4 mm along z
    # through tlcr: the label patch shows the same shell
    mask = np.zeros(shape, np.uint8)
    mask[tumor] = 2
    res = tlcr(np.zeros(shape, np.float32), mask, (1.0, 1.0, 4.0), patch_size=(40, 40, 16), shell_mm=10.0)
    assert (res.label_patch == 2).sum() == shell.sum()


def test_shell_region_liver_keeps_the_shell_inside_the_liver():
    """A tumour at the liver's edge: with ``shell_region="liver"`` the shell voxels outside the liver become
    background, the ones inside stay shell, and the tumour, liver and image patch do not change."""
    shape = (60, 60, 30)
    mask = np.zeros(shape, np.uint8)
    mask[:34] = 1  # liver: x < 34
    mask[28:36, 26:34, 12:18] = 2  # tumour across the liver's edge
    image = np.random.default_rng(0).random(shape).astype(np.float32)
    kw = dict(patch_size=(40, 40, 16), shell_mm=4.0)
    full = tlcr(image, mask, (1.0, 1.0, 2.0), **kw)
    inner = tlcr(image, mask, (1.0, 1.0, 2.0), shell_region="liver", **kw)
    shell = peritumoral_shell(mask == 2, (1.0, 1.0, 2.0), 4.0)
    s = full.box["start"]
    in_box = shell[s[0] : s[0] + 40, s[1] : s[1] + 40, s[2] : s[2] + 16]
    liver_box = (mask == 1)[s[0] : s[0] + 40, s[1] : s[1] + 40, s[2] : s[2] + 16]
    assert (full.label_patch == 2).sum() == in_box.sum()
    assert (inner.label_patch == 2).sum() == (in_box & liver_box).sum() > 0
    assert (in_box & ~liver_box).sum() > 0  # the case has shell outside the liver to drop
    np.testing.assert_array_equal(inner.label_patch == 2, in_box & liver_box)
    np.testing.assert_array_equal(inner.label_patch[in_box & ~liver_box], 0)
    np.testing.assert_array_equal(inner.label_patch == 3, full.label_patch == 3)
    np.testing.assert_array_equal(inner.label_patch == 1, full.label_patch == 1)
    np.testing.assert_array_equal(inner.image_patch, full.image_patch)
    with pytest.raises(ValueError, match="shell_region"):
        tlcr(image, mask, (1.0, 1.0, 2.0), shell_region="hilum", **kw)


def test_two_tumours_centre_on_larger():
    image, mask = case(tumors=(((20, 20, 10), 2), ((44, 44, 20), 4)))
    res = tlcr(image, mask, (1.0, 1.0, 1.0), patch_size=PATCH, shell_mm=2.0)
    assert res.status == "ok" and res.n_tumors == 2
    np.testing.assert_allclose(res.centroid, (44, 44, 20), atol=0.5)
    assert res.tumor_volume_total_ml > res.tumor_volume_ml > 0
    big = largest_component(mask == 2)[0].sum()
    assert res.tumor_volume_ml == pytest.approx(big / 1000.0)


def test_no_tumour_liver_fallback_and_skip():
    image, mask = case(tumors=(), liver_center=(30, 28, 14))
    res = tlcr(image, mask, (1.0, 1.0, 1.0), patch_size=PATCH, no_tumor="liver")
    assert res.status == "no_tumor_liver_fallback" and res.n_tumors == 0
    assert res.fits is None and res.tumor_volume_ml == 0.0
    np.testing.assert_allclose(res.centroid, (30, 28, 14), atol=0.5)
    assert res.label_patch.shape == PATCH and set(np.unique(res.label_patch)) <= {0, 1}
    assert res.label_patch[tuple(np.array(PATCH) // 2)] == 1

    skipped = tlcr(image, mask, (1.0, 1.0, 1.0), patch_size=PATCH, no_tumor="skip")
    assert skipped.status == "no_tumor_skipped"
    assert skipped.image_patch is None and skipped.label_patch is None and not skipped.has_patch

    nothing = tlcr(image, np.zeros_like(mask), (1.0, 1.0, 1.0), patch_size=PATCH)
    assert nothing.status == "no_liver_no_tumor" and not nothing.has_patch

    with pytest.raises(ValueError):
        tlcr(image, mask, (1.0, 1.0, 1.0), no_tumor="bogus")


def test_liver_level_puts_the_liver_median_at_the_level():
    image, mask = case()
    bright = image * 0.5 + 0.2  # the same anatomy scanned with another scaling
    kw = {"patch_size": (24, 24, 12), "liver_level": 0.6}
    for img in (image, bright):
        whole = tlcr(img, mask, (1.5, 1.5, 3.0), liver_region="volume", **kw)
        assert whole.intensity_reference == "volume"
        assert whole.intensity_scale == pytest.approx(0.6 / np.median(img[mask == 1]))
        local = tlcr(img, mask, (1.5, 1.5, 3.0), liver_region="patch", **kw)  # the patch's own liver outside the shell
        assert local.intensity_reference == "patch"
        assert np.median(local.image_patch[local.label_patch == 1]) == pytest.approx(0.6, abs=1e-6)
        for result in (whole, local):
            assert result.image_patch.min() >= 0.0 and result.image_patch.max() <= 1.0  # clipped
    plain = tlcr(image, mask, (1.5, 1.5, 3.0), patch_size=(24, 24, 12))
    assert plain.intensity_scale == 1.0 and plain.intensity_reference == "none"
    whole = tlcr(image, mask, (1.5, 1.5, 3.0), liver_region="volume", **kw)
    unclipped = plain.image_patch * whole.intensity_scale < 1.0
    np.testing.assert_allclose(whole.image_patch[unclipped], (plain.image_patch * whole.intensity_scale)[unclipped], rtol=1e-6)
    no_liver = np.where(mask == 1, 0, mask).astype(np.uint8)
    with pytest.raises(ValueError, match="no liver voxels|none"):
        tlcr(image, no_liver, (1.5, 1.5, 3.0), **kw)
    with pytest.raises(ValueError, match="liver_level must be > 0"):
        liver_reference_scale(image, mask == 1, 0.0)
    with pytest.raises(ValueError, match="liver_region"):
        tlcr(image, mask, (1.5, 1.5, 3.0), liver_region="lobe", **kw)


def test_patch_liver_reference_follows_a_bias_field_and_falls_back_to_the_volume():
    image, mask = case()
    image = np.where(mask == 1, 0.8, 0.2).astype(np.float32)
    bias = np.linspace(0.6, 1.4, SHAPE[0], dtype=np.float32)[:, None, None]  # a smooth field across x
    biased = image * bias
    kw = {"patch_size": (16, 16, 8), "liver_level": 0.5}
    local = tlcr(biased, mask, (1.5, 1.5, 3.0), liver_region="patch", **kw)
    whole = tlcr(biased, mask, (1.5, 1.5, 3.0), **kw)  # default: the whole volume's liver
    liver_local = local.image_patch[local.label_patch == 1]
    assert abs(np.median(liver_local) - 0.5) < 1e-6
    assert abs(np.median(whole.image_patch[whole.label_patch == 1]) - 0.5) > 0.01  # the field shifts it
    # a patch with almost no liver outside the shell uses the whole volume's liver
    thin = tlcr(biased, mask, (1.5, 1.5, 3.0), shell_mm=30.0, liver_region="patch", **kw)
    assert int((thin.label_patch == 1).sum()) < 50 and thin.intensity_reference == "volume"


def test_shrunk_tumor_erodes_by_physical_distance():
    """A 21-voxel cube at 1 x 1 x 2 mm shrunk by 3 mm loses 3 voxels per side in x and y and 1 in z (a z-voxel is
    2 mm: its centre lies 2 mm from the outside, the next 4 mm); a tumour too thin to survive is kept whole."""
    tumor = np.zeros((40, 40, 40), bool)
    tumor[10:31, 10:31, 10:31] = True
    shrunk = shrunk_tumor(tumor, (1.0, 1.0, 2.0), 3.0)
    lo, hi = np.argwhere(shrunk).min(0), np.argwhere(shrunk).max(0)
    assert lo.tolist() == [13, 13, 11] and hi.tolist() == [27, 27, 29]
    assert not (shrunk & ~tumor).any()
    np.testing.assert_array_equal(shrunk_tumor(tumor, (1.0, 1.0, 2.0), 0.0), tumor)
    sheet = np.zeros((20, 20, 20), bool)
    sheet[5:15, 5:15, 10] = True  # one voxel thick: everything lies within 1 mm of the outside
    np.testing.assert_array_equal(shrunk_tumor(sheet, (1.0, 1.0, 1.0), 2.0), sheet)


def test_tumor_shrink_turns_the_rim_into_shell_and_keeps_the_centre():
    """With ``tumor_shrink_mm`` the eroded rim becomes shell (also under ``shell_region="liver"``, though the
    rim was tumour, not liver, in the mask), the shell is measured from the shrunk tumour, and the patch box,
    image patch and recorded tumour volume stay those of the unshrunk mask."""
    image, mask = case(tumors=(((32, 32, 16), (8, 8, 4)),))
    spacing, kw = (1.0, 1.0, 2.0), dict(patch_size=PATCH, shell_mm=4.0)
    plain = tlcr(image, mask, spacing, **kw)
    for region in ("all", "liver"):
        shrunk = tlcr(image, mask, spacing, tumor_shrink_mm=3.0, shell_region=region, **kw)
        assert shrunk.box == plain.box and shrunk.tumor_volume_ml == plain.tumor_volume_ml
        np.testing.assert_array_equal(shrunk.image_patch, plain.image_patch)
        core = shrunk.label_patch == 3
        assert 0 < core.sum() < (plain.label_patch == 3).sum()
        assert not (core & (plain.label_patch != 3)).any()  # the shrunk tumour lies inside the tumour
        rim = (plain.label_patch == 3) & ~core
        np.testing.assert_array_equal(shrunk.label_patch[rim], 2)  # the rim is shell
        s = shrunk.box["start"]
        core_vol = shrunk_tumor(mask == 2, spacing, 3.0)
        expected = peritumoral_shell(core_vol, spacing, 4.0)
        if region == "liver":
            expected &= mask > 0
        box = expected[s[0] : s[0] + PATCH[0], s[1] : s[1] + PATCH[1], s[2] : s[2] + PATCH[2]]
        np.testing.assert_array_equal(shrunk.label_patch == 2, box)
