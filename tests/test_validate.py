"""Tests of ``neonet.data.validate`` (``neonet check-data``) on tiny NIfTI fixtures."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from neonet.data.cases import LabelMap
from neonet.data.validate import Problem, assert_valid, check_cases, check_data
from neonet.errors import DataError

SHAPE = (8, 8, 4)
AFFINE = np.diag([1.5, 1.5, 3.0, 1.0])
REAL_SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "real_samples"


def _save(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> str:
    img = nib.Nifti1Image(np.asarray(array), affine)
    img.set_data_dtype(np.asarray(array).dtype)
    nib.save(img, str(path))
    return path.name


def _image(seed: int = 0, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).normal(100.0, 10.0, shape).astype(np.float32)


def _label(shape: tuple[int, ...] = SHAPE, liver: int = 1, tumor: int | None = 2, dtype=np.uint8) -> np.ndarray:
    lab = np.zeros(shape, dtype=dtype)
    lab[2:6, 2:6, 1:3] = liver
    if tumor is not None:
        lab[3:5, 3:5, 1:2] = tumor
    return lab


def _write_manifest(path: Path, rows: list[dict[str, str]], columns=("case_id", "image", "label", "pni")) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in columns})
    return path


def _valid_case(root: Path, cid: str, pni: str = "0", seed: int = 0) -> dict[str, str]:
    return {
        "case_id": cid,
        "image": _save(root / f"{cid}_img.nii.gz", _image(seed)),
        "label": _save(root / f"{cid}_lab.nii.gz", _label()),
        "pni": pni,
    }


def _bad_cohort(root: Path) -> tuple[Path, dict[str, list[str]]]:
    """A cohort with every problem type in its own case; returns (csv, case_id -> message fragments)."""
    rows: list[dict[str, str]] = []
    expected: dict[str, list[str]] = {}
    for i, cid in enumerate(("ok1", "ok2", "ok3")):
        rows.append(_valid_case(root, cid, pni=str(i % 2), seed=i))

    # missing image file
    rows.append({"case_id": "missing", "image": "nope.nii.gz", "label": _save(root / "m_lab.nii.gz", _label()), "pni": "1"})
    expected["missing"] = ["file not found"]

    # truncated gzip: a valid file cut in half (header readable, voxels not)
    good = root / "trunc_full.nii.gz"
    _save(good, _image(5, (32, 32, 16)))
    blob = good.read_bytes()
    (root / "trunc.nii.gz").write_bytes(blob[: len(blob) // 2])
    rows.append(
        {"case_id": "truncated", "image": "trunc.nii.gz", "label": _save(root / "t_lab.nii.gz", _label((32, 32, 16))), "pni": "0"}
    )
    expected["truncated"] = ["truncated or corrupt"]

    # text file renamed .nii.gz
    (root / "text.nii.gz").write_text("this is not a nifti file\n")
    rows.append({"case_id": "text", "image": "text.nii.gz", "label": _save(root / "x_lab.nii.gz", _label()), "pni": "0"})
    expected["text"] = ["not a readable NIfTI"]

    # gzip of garbage bytes (valid gzip, not NIfTI)
    (root / "garbage.nii.gz").write_bytes(gzip.compress(b"\x00" * 10))
    rows.append({"case_id": "garbage", "image": "garbage.nii.gz", "label": _save(root / "g_lab.nii.gz", _label()), "pni": "0"})
    expected["garbage"] = ["not a readable NIfTI"]

    # real 4D image
    rows.append(
        {
            "case_id": "four_d",
            "image": _save(root / "4d_img.nii.gz", _image(6, (*SHAPE, 3))),
            "label": _save(root / "4d_lab.nii.gz", _label()),
            "pni": "1",
        }
    )
    expected["four_d"] = ["image is 4D with shape (8, 8, 4, 3)"]

    # shape mismatch
    rows.append(
        {
            "case_id": "shape",
            "image": _save(root / "s_img.nii.gz", _image(7)),
            "label": _save(root / "s_lab.nii.gz", _label((8, 8, 5))),
            "pni": "0",
        }
    )
    expected["shape"] = ["label shape (8, 8, 5) differs from image shape (8, 8, 4)"]

    # affine mismatch (spacing differs)
    rows.append(
        {
            "case_id": "affine",
            "image": _save(root / "a_img.nii.gz", _image(8)),
            "label": _save(root / "a_lab.nii.gz", _label(), np.diag([1.5, 1.5, 2.0, 1.0])),
            "pni": "0",
        }
    )
    expected["affine"] = ["affine differs"]

    # value outside the label map
    lab = _label()
    lab[0, 0, 0] = 7
    rows.append(
        {
            "case_id": "outside",
            "image": _save(root / "o_img.nii.gz", _image(9)),
            "label": _save(root / "o_lab.nii.gz", lab),
            "pni": "1",
        }
    )
    expected["outside"] = ["label values [7] are not in the label map"]

    # float label with a non-integer value
    lab = _label(dtype=np.float64)
    lab[0, 0, 0] = 0.5
    rows.append(
        {
            "case_id": "nonint",
            "image": _save(root / "f_img.nii.gz", _image(10)),
            "label": _save(root / "f_lab.nii.gz", lab),
            "pni": "0",
        }
    )
    expected["nonint"] = ["non-integer values [0.5]"]

    # no liver (tumour only)
    lab = np.zeros(SHAPE, np.uint8)
    lab[3:5, 3:5, 1:2] = 2
    rows.append(
        {
            "case_id": "noliver",
            "image": _save(root / "nl_img.nii.gz", _image(11)),
            "label": _save(root / "nl_lab.nii.gz", lab),
            "pni": "0",
        }
    )
    expected["noliver"] = ["no liver voxels"]

    # no tumour
    rows.append(
        {
            "case_id": "notumor",
            "image": _save(root / "nt_img.nii.gz", _image(12)),
            "label": _save(root / "nt_lab.nii.gz", _label(tumor=None)),
            "pni": "0",
        }
    )
    expected["notumor"] = ["no tumour voxels"]

    # NaN voxels / inf voxels
    img = _image(13)
    img[0, 0, 0] = np.nan
    img[1, 1, 1] = np.nan
    rows.append(
        {
            "case_id": "nan",
            "image": _save(root / "nan_img.nii.gz", img),
            "label": _save(root / "nan_lab.nii.gz", _label()),
            "pni": "1",
        }
    )
    expected["nan"] = ["2 NaN voxel"]
    img = _image(14)
    img[0, 0, 0] = np.inf
    rows.append(
        {
            "case_id": "inf",
            "image": _save(root / "inf_img.nii.gz", img),
            "label": _save(root / "inf_lab.nii.gz", _label()),
            "pni": "1",
        }
    )
    expected["inf"] = ["1 infinite voxel"]

    # duplicate case id (its files are valid)
    dup = _valid_case(root, "dupx", seed=15)
    rows.append(dup)
    rows.append({**dup, "image": _save(root / "dupx2_img.nii.gz", _image(16))})
    expected["dupx"] = ["duplicate case_id"]

    # bad pni values
    rows.append({**_valid_case(root, "pni2", seed=17), "pni": "2"})
    expected["pni2"] = ["pni must be 0 or 1"]
    rows.append({**_valid_case(root, "pniyes", seed=18), "pni": "yes"})
    expected["pniyes"] = ["pni must be 0 or 1"]

    # empty pni (an error with require_pni) and empty label (an error with require_label)
    rows.append({**_valid_case(root, "nopni", seed=19), "pni": ""})
    expected["nopni"] = ["empty pni"]
    rows.append({**_valid_case(root, "nolabel", seed=20), "label": ""})
    expected["nolabel"] = ["empty label path"]

    # empty case id
    rows.append({**_valid_case(root, "anon", seed=21), "case_id": ""})
    expected[""] = ["empty case_id"]

    return _write_manifest(root / "cases.csv", rows), expected


def _errors(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity == "error"]


def _has(problems: list[Problem], case_id: str, fragment: str) -> bool:
    return any(p.case_id == case_id and fragment in p.problem for p in problems)


def test_one_run_reports_every_problem(tmp_path: Path) -> None:
    cases_csv, expected = _bad_cohort(tmp_path)
    problems = check_cases(cases_csv, progress=False)
    errors = _errors(problems)
    missing = [(cid, frag) for cid, frags in expected.items() for frag in frags if not _has(errors, cid, frag)]
    assert not missing, f"not reported: {missing}\nreported: {problems}"
    for cid in ("ok1", "ok2", "ok3"):
        assert not [p for p in problems if p.case_id == cid], f"valid case {cid} has problems"
    assert all(p.file for p in problems)


def test_problems_name_the_file(tmp_path: Path) -> None:
    cases_csv, _ = _bad_cohort(tmp_path)
    problems = check_cases(cases_csv, progress=False)

    def files(cid: str) -> set[str]:
        return {Path(p.file).name for p in problems if p.case_id == cid}

    assert files("missing") == {"nope.nii.gz"}
    assert files("truncated") == {"trunc.nii.gz"}
    assert files("shape") == {"s_lab.nii.gz"}
    assert files("nan") == {"nan_img.nii.gz"}
    assert files("pni2") == {"cases.csv"}
    assert files("dupx") == {"cases.csv"}
    affine = next(p for p in problems if p.case_id == "affine")
    assert "(1.5, 1.5, 3)" in affine.problem and "(1.5, 1.5, 2)" in affine.problem


def test_optional_label_and_pni(tmp_path: Path) -> None:
    rows = [_valid_case(tmp_path, "a"), {**_valid_case(tmp_path, "b", seed=1), "label": "", "pni": ""}]
    cases_csv = _write_manifest(tmp_path / "cases.csv", rows)
    problems = check_cases(cases_csv, require_label=False, require_pni=False, progress=False)
    assert not _errors(problems)
    assert _has(problems, "b", "no label")
    assert _errors(check_cases(cases_csv, progress=False))


def test_singleton_4th_dim_and_float_labels_accepted(tmp_path: Path) -> None:
    rows = [
        {
            "case_id": "s4",
            "image": _save(tmp_path / "img.nii.gz", _image(0, (*SHAPE, 1))),
            "label": _save(tmp_path / "lab.nii.gz", _label(dtype=np.float64)),
            "pni": "1.0",
        }
    ]
    cases_csv = _write_manifest(tmp_path / "cases.csv", rows)
    assert not check_cases(cases_csv, progress=False)


def test_manifest_level_problems(tmp_path: Path) -> None:
    missing = check_cases(tmp_path / "absent.csv", progress=False)
    assert len(missing) == 1 and missing[0].case_id == "" and "not found" in missing[0].problem

    no_pni = _write_manifest(tmp_path / "nopni.csv", [_valid_case(tmp_path, "a")], columns=("case_id", "image", "label"))
    problems = check_cases(no_pni, progress=False)
    assert _has(problems, "", "missing column(s) pni")
    assert len(_errors(problems)) == 1  # the files themselves were still checked and are fine

    empty = _write_manifest(tmp_path / "empty.csv", [])
    assert _has(check_cases(empty, progress=False), "", "no rows")


def test_multi_organ_label_with_other(tmp_path: Path) -> None:
    lab = _label()
    lab[0:2, 0:2, :] = 3
    lab[6:8, 6:8, :] = 4
    rows = [
        {
            "case_id": "mo",
            "image": _save(tmp_path / "img.nii.gz", _image()),
            "label": _save(tmp_path / "lab.nii.gz", lab),
            "pni": "0",
        }
    ]
    cases_csv = _write_manifest(tmp_path / "cases.csv", rows)
    assert _has(check_cases(cases_csv, progress=False), "mo", "label values [3, 4] are not in the label map")
    assert not check_cases(cases_csv, LabelMap(other=(3, 4)), progress=False)
    assert check_data(cases_csv, other=[3, 4]) == 0
    assert check_data(cases_csv) == 1


def test_check_data_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases_csv, expected = _bad_cohort(tmp_path)
    report = tmp_path / "report.csv"
    assert check_data(cases_csv, report=report) == 1
    out = capsys.readouterr().out
    assert "nope.nii.gz" in out and "error(s)" in out
    with open(report, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["case_id"] for r in rows} >= set(expected)
    assert set(rows[0]) == {"case_id", "file", "problem", "severity", "blocks"}

    report_json = tmp_path / "report.json"
    assert check_data(cases_csv, report=report_json) == 1
    data = json.loads(report_json.read_text(encoding="utf-8"))
    assert data["n_errors"] >= len(expected) and data["problems"]


def test_check_data_clean(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [_valid_case(tmp_path, f"c{i}", pni=str(i % 2), seed=i) for i in range(3)]
    cases_csv = _write_manifest(tmp_path / "cases.csv", rows)
    report = tmp_path / "report.json"
    assert check_data(cases_csv, report=report) == 0
    assert "3 cases OK" in capsys.readouterr().out
    assert json.loads(report.read_text(encoding="utf-8"))["problems"] == []
    assert_valid(cases_csv)  # does not raise


def test_check_data_rejects_overlapping_label_map(tmp_path: Path) -> None:
    cases_csv = _write_manifest(tmp_path / "cases.csv", [_valid_case(tmp_path, "a")])
    with pytest.raises(DataError, match="listed under both"):
        check_data(cases_csv, tumor=[2], other=[2])


def test_assert_valid_names_case_and_file(tmp_path: Path) -> None:
    rows = [_valid_case(tmp_path, "good"), {**_valid_case(tmp_path, "bad", seed=1), "label": "gone.nii.gz"}]
    cases_csv = _write_manifest(tmp_path / "cases.csv", rows)
    with pytest.raises(DataError) as info:
        assert_valid(cases_csv)
    message = str(info.value)
    assert "bad" in message and "gone.nii.gz" in message and "file not found" in message
    assert "case good" not in message


def test_real_chaos_samples(tmp_path: Path) -> None:
    folder = REAL_SAMPLES / "chaos_t2spir"
    if not folder.is_dir():
        pytest.skip(f"real samples not present at {REAL_SAMPLES}")
    rows = [
        {
            "case_id": f"chaos{i}",
            "image": str(folder / f"image_{i}.nii.gz"),
            "label": str(folder / f"label_{i}.nii.gz"),
            "pni": str(i % 2),
        }
        for i in (1, 2, 3)
        if (folder / f"image_{i}.nii.gz").is_file()
    ]
    if not rows:
        pytest.skip("no CHAOS volumes in the real samples")
    cases_csv = _write_manifest(tmp_path / "cases.csv", rows)
    label_map = LabelMap(liver=(1,), tumor=(5,), other=(2, 3, 4))
    problems = check_cases(cases_csv, label_map, progress=False)
    for row in rows:
        mine = [p for p in problems if p.case_id == row["case_id"]]
        assert len(mine) == 1, mine
        assert "no tumour voxels" in mine[0].problem and mine[0].severity == "error"
        assert Path(mine[0].file).name == Path(row["label"]).name
    # without the other organs in the map, their values are reported
    problems = check_cases(cases_csv, LabelMap(liver=(1,), tumor=(5,)), progress=False)
    assert _has(problems, rows[0]["case_id"], "label values [2, 3, 4] are not in the label map")
