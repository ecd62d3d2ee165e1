"""Tests of the phantom cohort generator (format, determinism, orientation, no leak, signal)."""

from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from scipy.stats import rankdata

from neonet.data.cases import read_cases
from neonet.data.phantom import cohort_plan, iter_cohort, make_case, synth

SMALL = {"shape": (64, 64, 24), "spacing": (3.5, 3.5, 6.0)}
N_COHORT = 80  # >= 60 cases for the leak / signal statistics


def auc(score: np.ndarray, label: np.ndarray) -> float:
    """Mann-Whitney AUC with average ranks for ties."""
    score, label = np.asarray(score, float), np.asarray(label).astype(bool)
    ranks = rankdata(score)
    n1, n0 = label.sum(), (~label).sum()
    return float((ranks[label].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def shell_dark_fraction(image: np.ndarray, label: np.ndarray, spacing: tuple[float, ...], shell_mm: float = 10.0) -> float:
    """Fraction of liver voxels within ``shell_mm`` of the tumour that are darker than liver/tumour midway."""
    dist = ndimage.distance_transform_edt(label != 2, sampling=spacing)
    shell = (dist > 0) & (dist <= shell_mm) & (label == 1)
    liver = np.median(image[(label == 1) & (dist > shell_mm + 5)])
    tumour = np.median(image[label == 2])
    return float((image[shell] < (liver + tumour) / 2).mean())


@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom")
    return synth(out, cases=6, seed=1, pni_fraction=0.5, **SMALL)


@pytest.fixture(scope="module")
def statistics():
    """Tumour volume, mean tumour intensity and the shell statistic for N_COHORT cases at strength 1 and 0."""
    rows = {}
    for strength in (1.0, 0.0):
        pni, volume, intensity, shell = [], [], [], []
        for _, p, image, label, _, _ in iter_cohort(N_COHORT, seed=7, pni_fraction=0.35, strength=strength, **SMALL):
            pni.append(p)
            volume.append(int((label == 2).sum()))
            intensity.append(float(image[label == 2].mean()))
            shell.append(shell_dark_fraction(image, label, SMALL["spacing"]))
        rows[strength] = {
            k: np.asarray(v) for k, v in {"pni": pni, "volume": volume, "intensity": intensity, "shell": shell}.items()
        }
    return rows


def test_format(small_cohort):
    with open(small_cohort, newline="") as handle:
        assert next(csv.reader(handle)) == ["case_id", "image", "label", "pni", "patient_id"]
    cases = read_cases(small_cohort)
    assert [c.case_id for c in cases] == [f"phantom_{i:03d}" for i in range(6)]
    assert sum(c.pni for c in cases) == 3
    raw = list(csv.DictReader(open(small_cohort)))
    assert all(not row["image"].startswith("/") and row["image"] == f"images/{row['case_id']}.nii.gz" for row in raw)
    for case in cases:
        assert case.image.is_file() and case.label is not None and case.label.is_file()
        img, lab = nib.load(case.image), nib.load(case.label)
        assert img.shape == lab.shape == SMALL["shape"]
        assert np.allclose(img.header.get_zooms(), SMALL["spacing"])
        assert np.allclose(np.linalg.norm(img.affine[:3, :3], axis=0), SMALL["spacing"])
        assert np.allclose(img.affine, lab.affine)
        assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
        image, label = np.asanyarray(img.dataobj), np.asanyarray(lab.dataobj)
        assert image.dtype == np.float32 and label.dtype == np.uint8
        assert set(np.unique(label)) == {0, 1, 2}
        tumour = label == 2
        # fully inside the volume, and surrounded mostly by liver
        assert not (tumour[[0, -1]].any() or tumour[:, [0, -1]].any() or tumour[:, :, [0, -1]].any())
        rim = ndimage.binary_dilation(tumour) & ~tumour
        assert (label[rim] == 1).mean() > 0.7
        # MRI-like contrast: liver bright, tumour dark, background near zero
        liver, tumour_mean, background = (np.median(image[label == 1]), image[tumour].mean(), np.median(image[:3, :3]))
        assert tumour_mean < 0.6 * liver and background < 0.1 * liver
    info = list(csv.DictReader(open(small_cohort.parent / "phantom_info.csv")))
    assert [r["case_id"] for r in info] == [c.case_id for c in cases] and "pni" not in info[0]


def test_pni_count_and_plan():
    for n, frac in [(24, 0.35), (10, 0.25), (7, 0.0), (7, 1.0), (61, 0.35)]:
        plan = cohort_plan(n, seed=3, pni_fraction=frac)
        assert sum(p.pni for p in plan) == round(n * frac)
    orders = {tuple(p.pni for p in cohort_plan(24, seed=s)) for s in range(5)}
    assert len(orders) > 1  # shuffled with the seed
    with pytest.raises(ValueError):
        cohort_plan(10, pni_fraction=1.5)


def test_deterministic():
    a = make_case(11, 1, **SMALL)
    b = make_case(11, 1, **SMALL)
    c = make_case(12, 1, **SMALL)
    assert a[0].tobytes() == b[0].tobytes() and a[1].tobytes() == b[1].tobytes()
    assert np.array_equal(a[2], b[2]) and a[3] == b[3]
    assert a[0].tobytes() != c[0].tobytes() and a[1].tobytes() != c[1].tobytes()


def test_synth_same_seed_same_files(small_cohort, tmp_path):
    again = synth(tmp_path / "again", cases=6, seed=1, pni_fraction=0.5, workers=2, **SMALL)
    for first, second in zip(read_cases(small_cohort), read_cases(again), strict=True):
        assert first.pni == second.pni
        for p, q in ((first.image, second.image), (first.label, second.label)):
            assert np.asanyarray(nib.load(p).dataobj).tobytes() == np.asanyarray(nib.load(q).dataobj).tobytes()


@pytest.mark.parametrize("code", ["LPS", "LAS", "PIR"])
def test_orientation(code):
    image, label, affine, _ = make_case(4, 1, orientation="RAS", **SMALL)
    o_image, o_label, o_affine, _ = make_case(4, 1, orientation=code, **SMALL)
    assert "".join(nib.aff2axcodes(o_affine)) == code
    for ras, stored in ((image, o_image), (label, o_label)):
        canon = nib.as_closest_canonical(nib.Nifti1Image(stored, o_affine))
        assert np.allclose(canon.affine, affine)
        assert np.asanyarray(canon.dataobj).tobytes() == ras.tobytes()


def test_orientation_in_files(tmp_path):
    csv_path = synth(tmp_path, cases=1, seed=0, orientation="LPS", **SMALL)
    img = nib.load(read_cases(csv_path)[0].image)
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
    assert np.allclose(img.header.get_zooms(), SMALL["spacing"])


def test_strength_zero_is_an_exact_null():
    for seed in (0, 1):
        positive = make_case(seed, 1, strength=0.0, **SMALL)
        negative = make_case(seed, 0, strength=0.0, **SMALL)
        assert positive[0].tobytes() == negative[0].tobytes()
        negative = make_case(seed, 0, strength=1.0, **SMALL)  # PNI- anatomy does not depend on strength
        assert positive[1].tobytes() == negative[1].tobytes()


def test_pni_changes_only_outside_the_tumour_label():
    image_pos, label_pos, _, info_pos = make_case(2, 1, **SMALL)
    image_neg, label_neg, _, info_neg = make_case(2, 0, **SMALL)
    assert np.array_equal(label_pos, label_neg)
    assert np.array_equal(image_pos[label_pos == 2], image_neg[label_neg == 2])
    darker = image_neg - image_pos > 0.2 * np.median(image_neg[label_neg == 1])
    assert darker.sum() >= 20  # the infiltrated nerve: tens of voxels of dark cuff
    assert info_pos["nerve_infiltration_mm"] > 15 and info_neg["nerve_infiltration_mm"] == 0


def test_cuff_lies_between_tumour_and_liver_intensity():
    """The infiltrated nerve is darker than liver and clearly brighter than the tumour (its boundary is visible)."""
    for seed in (2, 3, 4):
        image_pos, label, _, _ = make_case(seed, 1, **SMALL)
        image_neg, _, _, _ = make_case(seed, 0, **SMALL)
        liver = np.median(image_neg[label == 1])
        cuff = (image_neg - image_pos > 0.2 * liver) & (label != 2)
        tumour = np.median(image_pos[label == 2])
        assert cuff.sum() >= 20
        # with the tumour's own intensity (CUFF_LEVEL = 0) the gap is only partial volume (< 0.08 of liver)
        assert tumour + 0.25 * (liver - tumour) < np.median(image_pos[cuff]) < 0.95 * liver


def test_label_does_not_leak_through_volume_or_intensity(statistics):
    rows = statistics[1.0]
    assert len(rows["pni"]) >= 60
    assert abs(auc(rows["volume"], rows["pni"]) - 0.5) <= 0.1
    assert abs(auc(rows["intensity"], rows["pni"]) - 0.5) <= 0.1


def test_signal_at_strength_one_and_none_at_zero(statistics):
    assert auc(statistics[1.0]["shell"], statistics[1.0]["pni"]) > 0.8
    assert abs(auc(statistics[0.0]["shell"], statistics[0.0]["pni"]) - 0.5) <= 0.15


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        make_case(0, 1, orientation="RAX", **SMALL)
    with pytest.raises(ValueError):
        synth(tmp_path, cases=2, strength=-1.0, **SMALL)


def test_matched_sets_share_anatomy_not_noise(tmp_path):
    plan = cohort_plan(12, seed=0, pni_fraction=0.35, matched=3)
    assert [p.group for p in plan] == [f"set_{j:03d}" for j in range(4) for _ in range(3)]
    assert [sum(p.pni for p in plan[j : j + 3]) for j in range(0, 12, 3)] == [1, 1, 1, 1]
    assert len({tuple(p.pni for p in plan[j : j + 3]) for j in range(0, 12, 3)}) > 1  # PNI+ place shuffled
    cases = {
        cid: (pni, image, label, info)
        for cid, pni, image, label, _, info in iter_cohort(6, seed=0, matched=3, strength=0.0, **SMALL)
    }
    first, second = list(cases.values())[:3], list(cases.values())[3:]
    for members in (first, second):
        labels = {m[2].tobytes() for m in members}
        assert len(labels) == 1  # one anatomy per set
        assert len({m[3]["tumour_volume_ml"] for m in members}) == 1
        a, b = members[0][1], members[1][1]
        assert a.tobytes() != b.tobytes()  # own noise
        liver = members[0][2] == 1
        assert np.abs(a - b)[liver].mean() < 0.1 * np.median(a[liver])  # ... and nothing more at strength 0
    assert first[0][2].tobytes() != second[0][2].tobytes()  # sets differ in anatomy
    # written as groups, which the splits keep in one fold
    csv_path = synth(tmp_path / "m", cases=6, seed=0, pni_fraction=0.35, matched=3, strength=0.0, **SMALL)
    assert [c.group for c in read_cases(csv_path)] == ["set_000"] * 3 + ["set_001"] * 3
    for bad in (4, 5, 1):  # 6 % 4, 6 % 5 != 0; a set of 1 cannot hold both classes
        with pytest.raises(ValueError, match="matched sets need"):
            cohort_plan(6, matched=bad)
    with pytest.raises(ValueError, match="holds both classes"):
        cohort_plan(6, pni_fraction=0.1, matched=3)


def test_matched_null_has_no_chance_association_with_anatomy():
    """Unmatched null cohorts carry chance anatomy-label associations; matched sets carry none."""
    rows = [
        (pni, info["tumour_volume_ml"]) for _, pni, _, _, _, info in iter_cohort(12, seed=0, matched=3, strength=0.0, **SMALL)
    ]
    pni, volume = np.array(rows).T
    assert auc(volume, pni) == 0.5  # every volume is held by one PNI+ and two PNI- cases
