"""`neonet plan`: the fingerprint's numbers on known volumes, nnU-Net's spacing rule, the TLCR patch that holds
95 % of the tumours (checked by `neonet crop` itself), and crop's warning naming the suggestion."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from neonet.data.cases import LabelMap, read_cases, write_cases
from neonet.data.plans import plan, read_crop_config, seg_patch_size, suggested_patch, target_spacing
from neonet.errors import DataError, NeonetError
from neonet.run.cli import main
from neonet.seg.crop import crop, fit_warning
from neonet.seg.tlcr import crop_box, patch_for_share, patch_needed
from neonet.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- pure rules
def _holds(mask: np.ndarray, centre: np.ndarray, patch) -> bool:
    """Whether the TLCR crop box of ``patch`` voxels around ``centre`` holds every voxel of ``mask``."""
    coords = np.argwhere(mask)
    box = crop_box(centre, patch, mask.shape)
    return bool(np.all(coords.min(0) >= box["start"]) and np.all(coords.max(0) < box["stop"]))


def test_patch_needed_is_the_smallest_box_that_holds_the_component():
    rng = np.random.default_rng(0)
    for _ in range(40):
        mask = np.zeros((30, 30, 20), bool)
        lo = rng.integers(0, 15, 3)
        hi = lo + rng.integers(1, 12, 3)
        mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = rng.random(tuple(hi - lo)) > 0.3
        if not mask.any():
            continue
        centre = np.argwhere(mask).mean(axis=0)
        need = patch_needed(mask, centre)
        assert _holds(mask, centre, need)
        for axis in range(3):
            smaller = list(need)
            smaller[axis] -= 1
            assert smaller[axis] == 0 or not _holds(mask, centre, smaller), (need, axis)


def test_patch_for_share_holds_the_share_jointly_and_is_a_multiple_of_the_divisor():
    # per-axis 90th percentiles (9, 9, 9) would hold only 8 of these 10 tumours: each axis has its own outlier
    needs = [(5, 5, 5)] * 8 + [(20, 5, 5), (5, 20, 5)]
    patch, held = patch_for_share(needs, share=0.9)
    assert held >= 9 and np.mean([np.all(np.less_equal(n, patch)) for n in needs]) >= 0.9
    assert patch == (20, 5, 5) or patch == (5, 20, 5)
    patch, held = patch_for_share(needs, share=0.9, divisor=(8, 8, 4))
    assert patch in ((24, 8, 8), (8, 24, 8)) and held == 9
    assert patch_for_share(needs, share=1.0)[0] == (20, 20, 5)


def test_target_spacing_takes_the_median_unless_an_axis_is_anisotropic():
    spacings = np.array([[0.7, 0.7, 5.0], [0.8, 0.8, 6.0], [0.9, 0.9, 4.0], [0.8, 0.8, 8.0], [0.75, 0.75, 2.5]])
    thick = np.array([[512, 512, 40]] * 5)
    target = target_spacing(spacings, thick)
    assert target["anisotropic_axis"] == "z" and "10th percentile" in target["rule"]
    assert target["spacing"][:2] == [0.8, 0.8]
    assert target["spacing"][2] == pytest.approx(np.percentile(spacings[:, 2], 10), abs=1e-4)
    assert target["median_spacing"][2] == 5.0
    # the same spacings with as many slices as rows are not anisotropic in voxels: the median stays
    cube = np.array([[256, 256, 200]] * 5)
    assert target_spacing(spacings, cube)["spacing"] == [0.8, 0.8, 5.0]
    assert target_spacing(spacings, cube)["anisotropic_axis"] is None


def test_seg_patch_size_is_the_median_volume_within_the_budget():
    spacings = np.array([[1.0, 1.0, 4.0]] * 3)
    shapes = np.array([[300, 280, 50], [320, 300, 60], [310, 290, 40]])
    small = seg_patch_size(spacings, shapes, (1.0, 1.0, 4.0), budget=10**9, divisor=(16, 16, 4))
    assert small["patch_size"] == [320, 304, 52]  # median 310 x 290 x 50, rounded up to the divisor
    capped = seg_patch_size(spacings, shapes, (1.0, 1.0, 4.0), budget=160 * 160 * 48, divisor=(16, 16, 4))["patch_size"]
    assert np.prod(capped) <= 160 * 160 * 48
    assert all(p % d == 0 for p, d in zip(capped, (16, 16, 4)))
    mm = np.multiply(capped, (1.0, 1.0, 4.0))
    assert mm.max() - mm.min() <= 16  # the longest axis in mm shrank first, one multiple (16 mm) at a time
    assert np.prod(np.add(capped, (16, 0, 0))) > 160 * 160 * 48  # and no further than the budget needs


def test_shipped_crop_configs_are_read():
    assert read_crop_config(REPO / "experiments/demo/crop.yaml") == ((3.5, 3.5, 6.0), (32, 32, 16))
    assert read_crop_config(REPO / "experiments/paper/crop.yaml") == ((1.5625, 1.5625, 4.0), (96, 96, 48))


# ----------------------------------------------------------------------------- a hand-made cohort with known numbers
def _save(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(array, affine), str(path))


@pytest.fixture(scope="module")
def known(tmp_path_factory):
    """Four cases on different grids: two tumours (RAS), one tumour stored S-R-A, no tumour, no label."""
    folder = tmp_path_factory.mktemp("known")
    rng = np.random.default_rng(3)
    rows = []
    # a: RAS, 2 x 2 x 4 mm; tumours of 5x6x4 and 2x2x2 voxels
    lab = np.zeros((40, 40, 16), np.uint8)
    lab[4:36, 4:36, 2:14] = 1
    lab[10:15, 12:18, 4:8] = 2
    lab[28:30, 28:30, 10:12] = 2
    img = (rng.random(lab.shape) * 10 + 100 * (lab == 1)).astype(np.float32)
    aff = np.diag([2.0, 2.0, 4.0, 1.0])
    _save(folder / "a_img.nii.gz", img, aff)
    _save(folder / "a_seg.nii.gz", lab, aff)
    rows.append(["a", "a_img.nii.gz", "a_seg.nii.gz", 0])
    # b: stored with voxel axes (S, R, A) at 3, 1.5, 1.5 mm: shape (10, 40, 30) -> RAS (40, 30, 10)
    lab_b = np.zeros((10, 40, 30), np.uint8)
    lab_b[1:9, 5:35, 5:25] = 1
    lab_b[3:6, 10:17, 8:12] = 2  # 3 slices (S) x 7 (R) x 4 (A)
    aff_b = np.array([[0, 1.5, 0, 0], [0, 0, 1.5, 0], [3.0, 0, 0, 0], [0, 0, 0, 1]])
    _save(folder / "b_img.nii.gz", (rng.random(lab_b.shape) * 10 + 50).astype(np.float32), aff_b)
    _save(folder / "b_seg.nii.gz", lab_b, aff_b)
    rows.append(["b", "b_img.nii.gz", "b_seg.nii.gz", 1])
    # c: liver, no tumour, 2.5 x 2.5 x 3 mm
    lab_c = np.zeros((30, 30, 12), np.uint8)
    lab_c[5:25, 5:25, 2:10] = 1
    aff_c = np.diag([2.5, 2.5, 3.0, 1.0])
    _save(folder / "c_img.nii.gz", rng.random(lab_c.shape).astype(np.float32), aff_c)
    _save(folder / "c_seg.nii.gz", lab_c, aff_c)
    rows.append(["c", "c_img.nii.gz", "c_seg.nii.gz", 0])
    # d: image only, 1 x 1 x 6 mm
    _save(folder / "d_img.nii.gz", rng.random((20, 20, 8)).astype(np.float32), np.diag([1.0, 1.0, 6.0, 1.0]))
    rows.append(["d", "d_img.nii.gz", "", ""])
    with open(folder / "cases.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case_id", "image", "label", "pni"])
        writer.writerows(rows)
    out = tmp_path_factory.mktemp("known_plan") / "plan" / "plans.json"
    config = REPO / "experiments/demo/crop.yaml"
    assert main(["plan", "--cases", str(folder / "cases.csv"), "--out", str(out), "--crop_configs", str(config)]) == 0
    return folder, out, img, lab


def test_fingerprint_numbers_on_known_volumes(known):
    _, out, img, lab = known
    plans = json.loads(out.read_text(encoding="utf-8"))
    cases = {c["case_id"]: c for c in plans["per_case"]}
    assert plans["counts"] == {"cases": 4, "with_tumor": 2, "without_tumor": 1, "without_label": 1}
    assert cases["c"]["status"] == "no_tumor" and cases["d"]["status"] == "no_label"
    assert plans["fingerprint"]["spacing_mm"]["median"] == [1.75, 1.75, 3.5]  # medians of (2, 1.5, 2.5, 1), (4, 3, 3, 6)
    assert cases["b"]["spacing"] == [1.5, 1.5, 3.0] and cases["b"]["shape"] == [40, 30, 10]
    a = cases["a"]["tumors"]
    assert [t["extent_mm"] for t in a] == [[10.0, 12.0, 16.0], [4.0, 4.0, 8.0]]
    assert [t["volume_ml"] for t in a] == pytest.approx([5 * 6 * 4 * 16 / 1000, 2 * 2 * 2 * 16 / 1000])
    assert cases["b"]["tumors"] == [{"volume_ml": pytest.approx(84 * 6.75 / 1000), "extent_mm": [10.5, 6.0, 9.0]}]
    expected = np.percentile(img[lab == 1], [0.5, 50, 99.5])
    assert list(cases["a"]["liver_percentiles"].values()) == pytest.approx(expected)
    assert plans["fingerprint"]["tumors"]["count"] == 3
    frame = pd.read_csv(out.with_suffix(".csv")).set_index("case_id")
    assert frame.loc["a", "n_tumors"] == 2 and frame.loc["c", "n_tumors"] == 0
    assert frame.loc["b", "largest_extent_x_mm"] == 10.5
    assert out.with_suffix(".md").read_text(encoding="utf-8").startswith("# neonet plan")
    assert out.with_suffix(".png").stat().st_size > 1000
    demo = plans["crop_configs"][0]
    assert demo["config"].endswith("experiments/demo/crop.yaml") and demo["patch_size"] == [32, 32, 16]
    assert demo["n_tumors"] == 2 and demo["n_fit"] == 2  # tumours of at most 16 mm fit 112 x 112 x 96 mm


def test_unreadable_cases_are_all_named_and_nothing_is_written(known, tmp_path):
    folder, _, _, _ = known
    (tmp_path / "bad.nii.gz").write_bytes(b"not a nifti file")
    manifest = tmp_path / "cases.csv"
    manifest.write_text(
        "case_id,image,label,pni\n"
        f"a,{folder / 'a_img.nii.gz'},{folder / 'a_seg.nii.gz'},0\n"
        f"x,bad.nii.gz,,1\n"
        f"y,{folder / 'a_img.nii.gz'},{folder / 'c_seg.nii.gz'},1\n"
    )
    with pytest.raises(DataError) as err:
        plan(manifest, experiment="e", runs_dir=tmp_path / "runs", crop_configs=[])
    text = str(err.value)
    assert "2 of 3 case(s)" in text and "case x" in text and "bad.nii.gz" in text
    assert "case y" in text and "label shape" in text and "neonet check-data" in text
    assert not (tmp_path / "runs").exists()
    with pytest.raises(NeonetError, match="--experiment NAME .* or --out"):
        plan(manifest, crop_configs=[])
    with pytest.raises(NeonetError, match="--out names the plans.json"):
        plan(manifest, out=tmp_path / "plans.csv", crop_configs=[])


# ----------------------------------------------------------------------------- the phantom cohort and neonet crop
@pytest.fixture(scope="module")
def phantom6(phantom_cohort, tmp_path_factory) -> Path:
    """The first 6 cases of the shared phantom cohort (`neonet synth`, 48 x 48 x 16 at 7 x 7 x 12 mm)."""
    return write_cases(tmp_path_factory.mktemp("phantom6") / "cases.csv", read_cases(phantom_cohort)[:6])


@pytest.fixture(scope="module")
def planned(phantom6, tmp_path_factory):
    runs = tmp_path_factory.mktemp("plan_runs")
    assert main(["plan", "--cases", str(phantom6), "--experiment", "p", "--runs_dir", str(runs), "--crop_configs", "[]"]) == 0
    return runs, json.loads(Workspace(runs, "p").plans_file("json").read_text(encoding="utf-8"))


def test_phantom_plan_matches_the_label_files(phantom6, planned):
    _, plans = planned
    assert plans["fingerprint"]["spacing_mm"]["median"] == [7.0, 7.0, 12.0]
    assert plans["target_spacing"]["spacing"] == [7.0, 7.0, 12.0] and plans["seg_patch"]["patch_size"] == [48, 48, 16]
    cases = {c["case_id"]: c for c in plans["per_case"]}
    frame = pd.read_csv(phantom6)
    assert len(frame) == len(cases) == 6
    for row in frame.itertuples():
        label = np.asarray(nib.load(str(phantom6.parent / row.label)).dataobj)
        components, n = ndimage.label(label == 2, structure=np.ones((3, 3, 3)))
        assert len(cases[row.case_id]["tumors"]) == n
        sizes = np.bincount(components.ravel())[1:]
        coords = np.argwhere(components == 1 + int(np.argmax(sizes)))
        extent = (coords.max(0) - coords.min(0) + 1) * np.array([7.0, 7.0, 12.0])
        assert cases[row.case_id]["tumors"][0]["extent_mm"] == pytest.approx(extent)
        assert cases[row.case_id]["tumors"][0]["volume_ml"] == pytest.approx(sizes.max() * 7 * 7 * 12 / 1000, abs=1e-4)


def test_the_suggested_patch_holds_95_percent_when_crop_cuts_it(phantom6, planned, caplog):
    runs, plans = planned
    patch = plans["tlcr"]["patch_size"]
    assert plans["tlcr"]["spacing"] == [7.0, 7.0, 12.0] and plans["tlcr"]["share"] >= 0.95
    args = dict(cases=phantom6, experiment="p", runs_dir=runs, source="manual", spacing=(7.0, 7.0, 12.0))
    with caplog.at_level(logging.WARNING, logger="neonet.seg.crop"):
        manifest = crop(**args, patch_size=tuple(patch), force=True)
    rows = pd.read_csv(manifest)
    tumours = rows[rows["n_tumors"] > 0]
    assert tumours["fits"].astype(bool).mean() >= 0.95
    assert int(tumours["fits"].astype(bool).sum()) == plans["tlcr"]["n_fit"]
    per_case = {c["case_id"]: c["needed_patch"][0]["patch_size"] for c in plans["per_case"] if c["needed_patch"]}
    assert {r.case_id: [r.needed_patch_x, r.needed_patch_y, r.needed_patch_z] for r in tumours.itertuples()} == per_case
    assert "tumours exceed" not in caplog.text

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="neonet.seg.crop"):
        crop(**args, patch_size=(4, 4, 2), force=True)
    shown = "×".join(map(str, patch))
    assert f"exceed 4×4×2; a {shown} patch fits" in caplog.text and "neonet plan" in caplog.text
    assert f"--patch_size {','.join(map(str, patch))}" in caplog.text


def test_crop_without_plans_computes_the_suggestion_from_its_patches(phantom6, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="neonet.seg.crop"):
        manifest = crop(phantom6, "q", tmp_path, "manual", (7.0, 7.0, 12.0), (4, 4, 2))
    rows = pd.read_csv(manifest)
    needs = rows[["needed_patch_x", "needed_patch_y", "needed_patch_z"]].dropna().astype(int).to_numpy()
    n_out = int((~rows["fits"].astype(bool)).sum())
    line = next(r.getMessage() for r in caplog.records if "tumours exceed" in r.getMessage())
    assert line.startswith(f"{n_out} of {len(needs)} tumours exceed 4×4×2; a ") and "from these 6 patches" in line
    suggested = [int(v) for v in line.split("--patch_size ")[1].split()[0].split(",")]
    assert np.mean(np.all(needs <= suggested, axis=1)) >= 0.95
    assert all(s % 8 == 0 for s in suggested)


def test_label_alone_resamples_as_crop_does(tmp_path):
    from neonet.data.phantom import synth
    from neonet.data.transforms import load_canonical, load_canonical_label

    cohort = synth(tmp_path, cases=1, seed=4, shape=(24, 24, 10), spacing=(7.0, 7.0, 12.0), orientation="LPS")
    image, label = tmp_path / "images/phantom_000.nii.gz", tmp_path / "labels/phantom_000.nii.gz"
    assert cohort.is_file()
    _, joint, affine = load_canonical(str(image), str(label), (5.0, 4.0, 9.0), LabelMap())
    alone, affine_alone = load_canonical_label(label, (5.0, 4.0, 9.0), LabelMap())
    np.testing.assert_array_equal(alone, joint)
    np.testing.assert_allclose(affine_alone, affine)


def test_crop_takes_a_suggestion_only_from_a_plan_of_its_manifest_at_its_spacing(tmp_path):
    cases, plans_path = tmp_path / "cases.csv", tmp_path / "plans.json"
    plans = {
        "cases": str(cases),
        "tlcr": {"spacing": [7.0, 7.0, 12.0], "patch_size": [8, 8, 8], "share": 1.0},
        "crop_configs": [{"spacing": [3.5, 3.5, 6.0], "patch_size_for_share": [24, 24, 16], "share_for_share": 0.97}],
    }
    plans_path.write_text(json.dumps(plans))
    assert suggested_patch(plans_path, (7.0, 7.0, 12.0), cases) == ((8, 8, 8), 1.0)
    assert suggested_patch(plans_path, (3.5, 3.5, 6.0), cases) == ((24, 24, 16), 0.97)
    assert suggested_patch(plans_path, (2.0, 2.0, 2.0), cases) is None
    assert suggested_patch(plans_path, (7.0, 7.0, 12.0), tmp_path / "other.csv") is None
    rows = [{"fits": False, "needed_patch_x": 9, "needed_patch_y": 9, "needed_patch_z": 3}, {"fits": True}]
    planned = fit_warning(rows, plans_path, (7.0, 7.0, 12.0), (4, 4, 4), cases)
    assert planned is not None and planned.startswith("1 of 2 tumours exceed 4×4×4; a 8×8×8 patch fits 100 % (neonet plan")
    plans_path.write_text('{"cases": "trunc')  # a damaged plans.json: the suggestion comes from the rows
    rows[1] |= {"needed_patch_x": 3, "needed_patch_y": 3, "needed_patch_z": 3}
    fallback = fit_warning(rows, plans_path, (7.0, 7.0, 12.0), (4, 4, 4), cases)
    assert fallback is not None and "a 16×16×8 patch fits 100 % (from these 2 patches" in fallback
    assert fit_warning([{"fits": True}, {"fits": ""}], plans_path, (7.0, 7.0, 12.0), (4, 4, 4)) is None


def test_real_scans_without_tumours_are_counted_and_their_thick_slices_are_anisotropic(real_samples, tmp_path):
    """CHAOS T2-SPIR samples (1.25 x 1.25 x 7.7 mm, stored L,A,S; liver 1, other organs 2-4, no tumour)."""
    folder = real_samples / "chaos_t2spir"
    manifest = tmp_path / "cases.csv"
    rows = [f"chaos{k},{folder / f'image_{k}.nii.gz'},{folder / f'label_{k}.nii.gz'},\n" for k in (1, 2, 3)]
    manifest.write_text("case_id,image,label,pni\n" + "".join(rows))
    out = plan(manifest, out=tmp_path / "plans.json", crop_configs=[], tumor=[], other=[2, 3, 4])
    plans = json.loads(out.read_text(encoding="utf-8"))
    assert plans["counts"] == {"cases": 3, "with_tumor": 0, "without_tumor": 3, "without_label": 0}
    assert plans["target_spacing"]["anisotropic_axis"] == "z" and plans["target_spacing"]["spacing"] == [1.25, 1.25, 7.7]
    assert plans["tlcr"]["patch_size"] is None and plans["tlcr"]["n_tumors"] == 0
    image = np.asarray(nib.load(str(folder / "image_2.nii.gz")).dataobj)
    label = np.asarray(nib.load(str(folder / "label_2.nii.gz")).dataobj)
    expected = np.percentile(image[np.rint(label) == 1], [0.5, 50, 99.5])
    assert list(plans["per_case"][1]["liver_percentiles"].values()) == pytest.approx(expected)
    assert "| tumour volume (ml) | - | - | - |" in out.with_suffix(".md").read_text(encoding="utf-8")
