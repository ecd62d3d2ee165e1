"""Issue 20, the input rows: careless or hostile manifests and command lines get a clear outcome.

Each test replays one finding: the message names the file, the line or case and the way on, nothing
is written outside the experiment and no earlier result is lost. Rows:

* 1 (data loss by case id): a ``case_id`` with ``../`` or ``/`` is refused by ``check-data``, by every
  verb that reads the manifest and by the path builders; predict-case's folder name is one component.
* 3 and 6 (manifest parsing): a row with more fields than the header, a UTF-8 byte-order mark, blank
  lines (exact file line numbers).
* 5 (silent): ``crop`` exits non-zero naming each failed case, after writing the manifest.
* 6 (unclear): ``synth --shape 48,48,16`` and the other spellings of a list of numbers.
* fuzz: randomly corrupted manifests give cases or a DataError, never another exception.
"""

from __future__ import annotations

import hashlib
import random
import shutil
from pathlib import Path

import nibabel as nib
import pandas as pd
import pytest

from neonet.data.cases import CASE_ID_MAX_LENGTH, Case, case_file, case_id_problem, read_cases
from neonet.data.validate import check_cases
from neonet.errors import DataError
from neonet.predict.case import image_name
from neonet.run.cli import _lightning_number_lists, _list_values, main, normalise_overrides
from neonet.workspace import Workspace

HEADER = "case_id,image,label,pni,patient_id"
#: Crop settings for the 48x48x16 phantom at 7x7x12 mm (tests/conf/crop.yaml's grid), as a user types them.
CROP = ["--source", "manual", "--spacing", "7,7,12", "--patch_size", "16 16 8", "--shell_mm", "10"]
UNSAFE_IDS = ["../../../../c2/images/phantom_001", "sub/dir", "..", ".hidden", "a b", "back\\slash", "x" * 101, "-x", "é1"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three phantom cases at 48x48x16 voxels, written by `neonet synth` with `--shape 48,48,16` (row 6)."""
    out = tmp_path_factory.mktemp("cohort") / "c2"
    args = ["synth", "--out", str(out), "--cases", "3", "--seed", "0", "--shape", "48,48,16", "--spacing", "7,7,12"]
    assert main(args) == 0
    return out / "cases.csv"


def _copy_cohort(cohort: Path, root: Path) -> Path:
    """A private copy of the cohort at ``root/c2`` (so a test may hash and tamper with it)."""
    shutil.copytree(cohort.parent, root / "c2")
    return root / "c2" / "cases.csv"


def _tree(root: Path) -> dict[str, str]:
    """sha256 of every file below ``root``, by relative path."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def _lines(cases_csv: Path) -> list[str]:
    return cases_csv.read_text(encoding="utf-8").splitlines()


# --------------------------------------------------------------------------------------- row 1
def test_unsafe_case_ids_are_refused_and_nothing_outside_the_experiment_changes(
    cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = _copy_cohort(cohort, tmp_path)
    runs = tmp_path / "runs"
    assert main(["crop", "--cases", str(cases), "--experiment", "e", "--runs_dir", str(runs), *CROP]) == 0
    lines = _lines(cases)  # header on line 1, phantom_000..002 on lines 2..4
    lines[2] = lines[2].replace("phantom_001,", "../../../../c2/images/phantom_001,", 1)
    lines[3] = lines[3].replace("phantom_002,", "sub/dir,", 1)
    hostile = cases.parent / "hostile.csv"
    hostile.write_text("\n".join(lines) + "\n")
    before = _tree(tmp_path)  # the source MRIs, the manifests and the earlier crop of experiment e
    capsys.readouterr()

    assert main(["check-data", "--cases", str(hostile)]) == 1
    out = capsys.readouterr().out
    assert (
        "line 3: case_id '../../../../c2/images/phantom_001' cannot be used as a file name (it contains a path "
        "separator, so its files would be written in other folders); rename the case id in the manifest, "
        "e.g. to 'c2_images_phantom_001'"
    ) in out
    assert "line 4: case_id 'sub/dir' cannot be used as a file name" in out and "2 error(s)" in out

    assert main(["crop", "--cases", str(hostile), "--experiment", "e", "--runs_dir", str(runs), *CROP]) == 2
    err = capsys.readouterr().err
    assert f"neonet crop: error: {hostile}: 2 problem(s) in the case manifest" in err
    assert "line 3: case_id '../../../../c2/images/phantom_001' cannot be used as a file name" in err
    assert "line 4: case_id 'sub/dir' cannot be used as a file name" in err and "e.g. to 'sub_dir'" in err
    assert f"`neonet check-data --cases {hostile}` lists every problem" in err
    assert _tree(tmp_path) == before  # no source MRI overwritten, no folder made, the earlier crop intact


@pytest.mark.parametrize("bad", UNSAFE_IDS)
def test_every_path_built_from_a_case_id_refuses_an_unsafe_one(bad: str, tmp_path: Path) -> None:
    problem = case_id_problem(bad)
    assert problem is not None and "rename the case id" in problem
    ws = Workspace(tmp_path / "runs", "e")
    with pytest.raises(DataError, match="cannot be used as a file name"):
        ws.seg_prediction(bad)
    with pytest.raises(DataError, match="cannot be used as a file name"):
        case_file(ws.patches_dir / "images", bad)
    manifest = tmp_path / "cases.csv"
    manifest.write_text(f"{HEADER}\n{bad},i.nii.gz,l.nii.gz,1,p1\n", encoding="utf-8")
    with pytest.raises(DataError, match=f"{manifest}: line 2: case_id .* cannot be used as a file name"):
        read_cases(manifest)
    assert not (tmp_path / "runs").exists()


def test_valid_case_ids_name_their_files_as_before(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "runs", "e")
    for ok in ("phantom_005", "CHAOSMR_01", "CCA-001", "a.b", "x" * CASE_ID_MAX_LENGTH):
        assert case_id_problem(ok) is None
        assert ws.seg_prediction(ok) == tmp_path / "runs" / "e" / "seg" / "predictions" / f"{ok}.nii.gz"
        assert case_file("images", ok) == Path("images") / f"{ok}.nii.gz"


def test_predict_case_output_folder_is_one_safe_component(tmp_path: Path) -> None:
    folder = tmp_path / "runs" / "e" / "predict_case"
    names = {
        "scans/phantom_005.nii.gz": "phantom_005",
        "scan.nii": "scan",
        "my scan (1).nii.gz": "my_scan_1",
        "x/...nii.gz": "image",  # '..': was the experiment folder
        "x/..nii.gz": "image",  # '.': was predict_case itself
        "x/.nii.gz": "image",
    }
    for given, expected in names.items():
        assert image_name(Path(given)) == expected
        assert (folder / image_name(Path(given))).resolve().parent == folder.resolve()


# ---------------------------------------------------------------------------------- rows 3, 6
def test_a_row_with_more_fields_than_the_header_names_the_line(cohort: Path, tmp_path: Path, capsys) -> None:
    cases = _copy_cohort(cohort, tmp_path)
    lines = _lines(cases)
    lines[2] += ",extra,more"  # line 3
    cases.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as info:
        read_cases(cases)
    assert str(info.value) == (
        f"{cases}: line 3 (case phantom_001): 7 or more fields but the header has 5 columns "
        "(extra value(s) 'extra', 'more'); quote a value that contains a comma (\"a,b\") or remove the extra fields"
    )
    assert main(["check-data", "--cases", str(cases)]) == 1
    out = capsys.readouterr().out
    assert "line 3: 7 or more fields but the header has 5 columns" in out and "1 error(s)" in out
    assert "AttributeError" not in out


def test_a_utf8_byte_order_mark_is_read(cohort: Path, tmp_path: Path, capsys) -> None:
    cases = _copy_cohort(cohort, tmp_path)
    cases.write_bytes(b"\xef\xbb\xbf" + cases.read_bytes().replace(b"\n", b"\r\n"))  # Excel's "CSV UTF-8"
    assert [c.case_id for c in read_cases(cases)] == ["phantom_000", "phantom_001", "phantom_002"]
    assert main(["check-data", "--cases", str(cases)]) == 0
    assert "3 cases OK" in capsys.readouterr().out


def test_blank_lines_are_skipped_and_rows_are_named_by_their_file_line(cohort: Path, tmp_path: Path, capsys) -> None:
    cases = _copy_cohort(cohort, tmp_path)
    header, *rows = _lines(cases)
    bad = rows[2].replace(",1,", ",yes,").replace(",0,", ",yes,")
    cases.write_text("\n".join([header, "", rows[0], "   ", ",,,,", rows[1], "", bad, ""]) + "\n")
    with pytest.raises(DataError) as info:
        read_cases(cases)
    assert str(info.value) == f"{cases}: line 8 (case phantom_002): pni must be 0 or 1 (or empty), got 'yes'"
    assert main(["check-data", "--cases", str(cases)]) == 1
    out = capsys.readouterr().out
    assert "line 8: pni must be 0 or 1 (or empty), got 'yes'" in out and "1 error(s), 0 warning(s) in 3 case(s)" in out
    cases.write_text("\n".join([header, "", rows[0], "   ", ",,,,", rows[1], "", rows[2], ""]) + "\n")
    assert [(c.case_id, c.row) for c in read_cases(cases)] == [("phantom_000", 3), ("phantom_001", 6), ("phantom_002", 8)]


def test_unreadable_manifests_name_the_file_and_the_way_on(tmp_path: Path) -> None:
    cases = tmp_path / "cases.csv"
    cases.write_bytes(f"{HEADER}\nc1,i.nii.gz,l.nii.gz,1,p1\nc2,caf\xe9.nii.gz,l.nii.gz,0,p2\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"cases.csv: line 3: the case manifest is not UTF-8 text .*save it as UTF-8"):
        read_cases(cases)
    cases.write_text("case_id;image;label;pni\nc1;i;l;1\n")
    with pytest.raises(DataError, match="missing column.*separated by ';' or tabs: save the file as comma-separated"):
        read_cases(cases)
    cases.write_text("\n\n")
    with pytest.raises(DataError, match="the case manifest is empty; its first line must be the header case_id,image,label,pni"):
        read_cases(cases)
    cases.write_text(f"{HEADER},label\nc1,i,l,1,p1,l2\n")
    with pytest.raises(DataError, match="column.s. label appear more than once in the header"):
        read_cases(cases)
    cases.write_text(f"{HEADER}\nc1,i,l,1,p1\nc1,j,m,0,p2\n")
    with pytest.raises(DataError, match=r"line 3 \(case c1\): duplicate case_id 'c1' \(first used on line 2\)"):
        read_cases(cases)


# ------------------------------------------------------------------------------------- row 5
def test_crop_exits_non_zero_naming_failed_cases_after_writing_the_manifest(
    cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = _copy_cohort(cohort, tmp_path)
    runs = tmp_path / "runs"
    ws = Workspace(runs, "e")
    frame = pd.read_csv(cases, dtype=str, keep_default_na=False)
    no_label = cases.parent / "no_label.csv"
    frame.assign(label=["labels/phantom_000.nii.gz", "labels/phantom_001.nii.gz", ""]).to_csv(no_label, index=False)
    crop = ["crop", "--experiment", "e", "--runs_dir", str(runs), *CROP]
    capsys.readouterr()

    assert main([*crop, "--cases", str(no_label)]) == 2
    err = capsys.readouterr().err
    assert (
        "neonet crop: error: 1 of 3 case(s) failed and have no patches:\n"
        "  case phantom_002: error: no manual label in the case manifest (use --source predicted, or --source none for "
        "volumes already cropped around the lesion)\n"
        f"The 2 other case(s) were cropped; {ws.patches_manifest} lists every case with its status. "
        f"Fix the failed cases (`neonet check-data --cases {no_label}` checks every file) or remove them from the "
        "case manifest, then run the same command again: the cases already cropped are reused."
    ) in err
    written = pd.read_csv(ws.patches_manifest, dtype=str, keep_default_na=False).set_index("case_id")
    assert written.loc["phantom_000", "status"] == "ok" and written.loc["phantom_001", "status"] == "ok"
    assert written.loc["phantom_002", "status"].startswith("error: no manual label")
    assert (ws.patches_dir / written.loc["phantom_000", "image"]).is_file()
    assert not list(ws.patches_dir.rglob("*.tmp*")), "a half-written file was left"
    kept = {p: p.stat().st_mtime_ns for p in ws.patches_dir.rglob("*.nii.gz")}

    # the way on: fix the manifest and run the same command again; the cropped cases are reused
    assert main([*crop, "--cases", str(cases)]) == 0
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    assert set(pd.read_csv(ws.patches_manifest, dtype=str)["status"]) == {"ok"}

    # issue 18: a manifest without labels is refused before anything is written, pointing at the sources that need none
    frame.assign(label="").to_csv(no_label, index=False)
    assert main([*crop, "--cases", str(no_label), "--experiment", "f"]) == 2
    err = capsys.readouterr().err
    assert f"{no_label}: no case has a manual label" in err and "--source none" in err and "--source predicted" in err
    assert not Workspace(runs, "f").root.exists()


# ------------------------------------------------------------------------------------- row 6
@pytest.mark.parametrize("shape", [["48,48,16"], ["[48,48,16]"], ["48", "48", "16"], ["48 48 16"], ["(48, 48, 16)"]])
def test_synth_list_options_take_every_spelling(shape: list[str], tmp_path: Path) -> None:
    out = tmp_path / "c"
    assert main(["synth", "--out", str(out), "--cases", "1", "--shape", *shape, "--spacing", "7,", "7,", "12"]) == 0
    image = nib.load(str(read_cases(out / "cases.csv")[0].image))
    assert image.shape == (48, 48, 16) and tuple(float(z) for z in image.header.get_zooms()) == (7.0, 7.0, 12.0)


def test_list_values_of_every_verb_and_after_the_double_dash() -> None:
    from neonet.data.validate import check_data
    from neonet.predict.case import predict_case
    from neonet.run.cv import cv
    from neonet.seg.crop import crop

    assert _list_values(crop, ["--spacing", "1.5,1.5,4", "--patch_size", "(96, 96, 48)", "--other", "3", "4"]) == [
        "--spacing",
        "[1.5,1.5,4]",
        "--patch_size",
        "[96,96,48]",
        "--other",
        "[3,4]",
    ]
    assert _list_values(check_data, ["--liver=5", "--other", "1,2,3"]) == ["--liver", "[5]", "--other", "[1,2,3]"]
    assert _list_values(predict_case, ["--folds", "0,1"]) == ["--folds", "[0,1]"]
    assert _list_values(cv, ["--folds", "null", "--config", "a b.yaml"]) == ["--folds", "null", "--config", "[a b.yaml]"]
    assert normalise_overrides(["--data.init_args.spacing", "5,5,10", "--trainer.max_epochs", "2", "--x", "1", "2"]) == [
        "--data.init_args.spacing=[5,5,10]",
        "--trainer.max_epochs=2",
        "--x=[1,2]",
    ]
    assert normalise_overrides(["--trainer.logger.name=a,b"]) == ["--trainer.logger.name=a,b"]  # not numbers: as given
    assert _lightning_number_lists(["fit", "--config", "s.yaml", "--data.init_args.spacing", "5", "5", "10", "--m=3"]) == [
        "fit",
        "--config",
        "s.yaml",
        "--data.init_args.spacing=[5,5,10]",
        "--m=3",
    ]


# -------------------------------------------------------------------------------------- fuzz
_TOKENS = [b",", b'"', b"\n", b"\r\n", b"\r", b"\x00", b"\xff", b"\xef\xbb\xbf", b"/", b"../", b" ", b"\t", b";", b"\\", b"\xc3"]


def _corrupt(data: bytes, rng: random.Random) -> bytes:
    """One to four random corruptions: flip, insert, delete, duplicate or drop a line, truncate."""
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(6)
        pos = rng.randrange(len(data) + 1)
        if kind == 0 and data:
            i = min(pos, len(data) - 1)
            data = data[:i] + bytes([rng.randrange(256)]) + data[i + 1 :]
        elif kind == 1:
            data = data[:pos] + rng.choice(_TOKENS) * rng.randint(1, 3) + data[pos:]
        elif kind == 2:
            data = data[:pos] + data[pos + rng.randint(1, 20) :]
        elif kind in (3, 4):
            lines = data.split(b"\n")
            i = rng.randrange(len(lines))
            lines[i:i] = [lines[i]] if kind == 3 else []
            if kind == 4:
                del lines[i]
            data = b"\n".join(lines)
        else:
            data = data[:pos]
    return data


def test_fuzz_corrupted_manifests_give_cases_or_a_data_error(tmp_path: Path) -> None:
    """Seeded and bounded (a few seconds): a corrupted cases.csv is parsed or refused with a DataError, and
    check-data reports problems instead of raising; every case read has a safe id and its file line."""
    rows = [f"c{i},images/c{i}.nii.gz,labels/c{i}.nii.gz,{i % 2},p{i},g{i // 2}" for i in range(6)]
    valid = ("case_id,image,label,pni,patient_id,group\n" + "\n".join(rows) + '\nc6,"images/c 6, b.nii.gz",,0,p6,\n').encode()
    path = tmp_path / "cases.csv"
    rng = random.Random(20)
    outcomes = {"cases": 0, "error": 0}
    for trial in range(300):
        data = _corrupt(valid, rng)
        path.write_bytes(data)
        try:
            cases = read_cases(path)
        except DataError as exc:
            assert str(path) in str(exc), (trial, data, exc)
            outcomes["error"] += 1
        except Exception as exc:  # noqa: BLE001 - the point of the test
            pytest.fail(f"trial {trial}: {type(exc).__name__}: {exc} for manifest bytes {data!r}")
        else:
            assert all(isinstance(c, Case) and case_id_problem(c.case_id) is None and c.row >= 2 for c in cases)
            outcomes["cases"] += 1
        if trial % 10 == 0:  # check-data on the same bytes: problems, never an exception (no file exists: fast)
            problems = check_cases(path, progress=False)
            assert all(p.severity in ("error", "warning") for p in problems)
    assert outcomes["cases"] > 20 and outcomes["error"] > 20, outcomes
