"""Hostile and careless image volumes (issue 20, rows 3-6): each must end in a message that names the
file (and the case) and the way on, never in a traceback, a memory blow-up or a silent guess.

The header checks live in one place, :func:`neonet.data.nifti.load_nifti`, which ``check-data``, the
training/crop/prediction transforms (:class:`neonet.data.transforms.NeonetNiftiReader`), ``crop`` and
``predict-case`` all go through; these tests replay each finding through the verbs that met it.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from neonet.data.cases import LabelMap
from neonet.data.nifti import DEFAULT_MAX_VOXELS, MAX_VOXELS_ENV, load_nifti, read_array
from neonet.data.validate import ERROR, WARNING, Problem, check_cases, check_data
from neonet.errors import DataError
from neonet.predict.case import predict_case
from neonet.run.cli import main

REPO = Path(__file__).resolve().parents[1]
SPACING = (7.0, 7.0, 12.0)


# ------------------------------------------------------------------------------------------ helpers
@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-case phantom cohort (``neonet synth``), 48x48x16 voxels at 7x7x12 mm; returns its cases.csv."""
    out = tmp_path_factory.mktemp("hostile_cohort")
    args = ["synth", "--out", str(out), "--cases", "3", "--seed", "3", "--shape", "[48,48,16]", "--spacing", "[7,7,12]"]
    assert main(args) == 0
    return out / "cases.csv"


@pytest.fixture(scope="module")
def cropped(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Experiment ``hostile`` with TLCR settings and patches from the manual masks; returns its runs folder."""
    runs = tmp_path_factory.mktemp("hostile_runs") / "runs"
    args = ["crop", "--config", str(REPO / "tests" / "conf" / "crop.yaml"), f"--cases={cohort}", f"--runs_dir={runs}"]
    assert main([*args, "--experiment=hostile", "--source=manual"]) == 0
    return runs


def _case(cohort: Path, k: int = 0) -> tuple[Path, Path]:
    row = pd.read_csv(cohort).iloc[k]
    return cohort.parent / row["image"], cohort.parent / row["label"]


def _save_like(path: Path, array: np.ndarray, like: nib.Nifti1Image, affine: np.ndarray | None = None) -> Path:
    """Save ``array`` with ``like``'s header, under ``affine`` (default ``like``'s) as both qform and sform."""
    affine = like.affine if affine is None else affine
    img = nib.Nifti1Image(np.asarray(array), affine, header=like.header.copy())
    img.set_data_dtype(np.asarray(array).dtype)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    nib.save(img, str(path))
    return path


def _manifest(path: Path, rows: list[tuple[str, Path | str, Path | str]]) -> Path:
    lines = ["case_id,image,label,pni"] + [f"{cid},{image},{label},0" for cid, image, label in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def _of(problems: list[Problem], case_id: str, severity: str | None = None) -> list[Problem]:
    return [p for p in problems if p.case_id == case_id and (severity is None or p.severity == severity)]


def _one(problems: list[Problem], case_id: str, fragment: str, severity: str = ERROR) -> Problem:
    hits = [p for p in _of(problems, case_id, severity) if fragment in p.problem]
    assert len(hits) == 1, f"expected one {severity} with {fragment!r} for case {case_id}; got {problems}"
    return hits[0]


def _listing(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")}


def _header_bytes(
    shape: tuple[int, ...], dtype: type = np.float32, zooms: tuple[float, ...] = (0.5, 0.5, 1.0), nifti2: bool = False
) -> bytes:
    """A single-file NIfTI-1 (or NIfTI-2: 64-bit dims) header and its 4-byte extension flag, oriented (codes 1)."""
    header = nib.Nifti2Header() if nifti2 else nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_zooms(zooms[: len(shape)] + (1.0,) * (len(shape) - len(zooms)))
    affine = np.diag([*zooms[:3], 1.0])
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    header["vox_offset"] = len(header.binaryblock) + 4
    return header.binaryblock + b"\0" * 4


def _zero_bomb(path: Path, shape: tuple[int, int, int]) -> Path:
    """A small ``.nii.gz`` of float32 zeros that declares ``shape``: the header plus repeated gzip members
    of one compressed zero block (a valid gzip stream that decompresses to the full volume)."""
    block = 1 << 24
    n_bytes = int(np.prod(shape)) * 4
    zeros = gzip.compress(b"\0" * block, compresslevel=9)
    with open(path, "wb") as handle:
        handle.write(gzip.compress(_header_bytes(shape)))
        for _ in range(n_bytes // block):
            handle.write(zeros)
        handle.write(gzip.compress(b"\0" * (n_bytes % block)))
    return path


PEAK_RSS_KB = """
def peak_rss_kb():
    # VmHWM: this process's own peak (ru_maxrss would include the forking parent's size on Linux)
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
"""


def _run_child(code: str, env: dict[str, str] | None = None, timeout: float = 120) -> dict:
    """Run ``code`` in a fresh interpreter (neonet from this checkout); it prints one JSON line last."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "WANDB_MODE": "disabled", **(env or {})}
    done = subprocess.run(
        [sys.executable, "-c", PEAK_RSS_KB + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=full_env,
        timeout=timeout,
    )
    assert done.returncode == 0, f"child failed:\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------ row 4: memory (size limit)
def test_zero_bomb_is_refused_from_its_header_with_bounded_memory(cohort: Path, tmp_path: Path) -> None:
    """A ~2 MB .nii.gz of zeros declaring 1024x1024x512 float32 (2 GiB) took check-data to 4.25 GB RSS."""
    bomb = _zero_bomb(tmp_path / "bomb.nii.gz", (1024, 1024, 512))
    assert bomb.stat().st_size < 16 * 2**20
    _, label = _case(cohort)
    cases = _manifest(tmp_path / "cases.csv", [("bomb", bomb, label)])
    before = _listing(tmp_path)
    out = _run_child(
        f"""
        import contextlib, io, json
        from neonet.run.cli import main
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            rc = main(["check-data", "--cases", {str(cases)!r}])
        print(json.dumps({{"rc": rc, "out": buffer.getvalue(), "maxrss_kb": peak_rss_kb()}}))
        """
    )
    assert out["rc"] == 1
    assert "bomb" in out["out"] and str(bomb) in out["out"]
    assert "1024x1024x512 = 536,870,912 voxels" in out["out"] and f"{MAX_VOXELS_ENV}=536870912" in out["out"]
    assert out["maxrss_kb"] < 600 * 1024, f"check-data peaked at {out['maxrss_kb'] / 1024:.0f} MB on a header-declared bomb"
    assert _listing(tmp_path) == before  # check-data writes nothing


def test_absurd_header_is_a_size_error_in_check_data_and_predict_case(cohort: Path, tmp_path: Path) -> None:
    """A header claiming 100000^3 voxels was "truncated or corrupt ()" in check-data, a MemoryError in predict-case."""
    huge = tmp_path / "huge.nii.gz"
    huge.write_bytes(gzip.compress(_header_bytes((100000, 100000, 100000), nifti2=True)))
    _, label = _case(cohort)
    problems = check_cases(_manifest(tmp_path / "cases.csv", [("huge", huge, label)]), progress=False)
    hit = _one(problems, "huge", "100000x100000x100000")
    assert hit.file == str(huge) and MAX_VOXELS_ENV in hit.problem and f"{DEFAULT_MAX_VOXELS:,}" in hit.problem
    assert not any("truncated or corrupt" in p.problem for p in problems)

    with pytest.raises(DataError, match=rf"huge\.nii\.gz: image header declares 100000x100000x100000 .*{MAX_VOXELS_ENV}"):
        predict_case(huge, experiment="nothing", runs_dir=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_memory_error_is_named_not_swallowed_as_truncation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the limit raised past the machine, reading fails for lack of memory and says so."""
    huge = tmp_path / "huge.nii.gz"
    huge.write_bytes(gzip.compress(_header_bytes((100000, 100000, 100000), nifti2=True)))
    monkeypatch.setenv(MAX_VOXELS_ENV, str(10**16))
    img = load_nifti(huge)
    with pytest.raises(DataError, match=r"not enough memory to read the volume's 1,000,000,000,000,000 voxels") as info:
        read_array(img, huge)
    assert "truncated" not in str(info.value)


def test_the_limit_is_configurable_and_a_bad_setting_is_named(cohort: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image, _ = _case(cohort)
    monkeypatch.setenv(MAX_VOXELS_ENV, "1000")
    with pytest.raises(DataError, match=r"48x48x16 = 36,864 voxels .* limit of 1,000 voxels"):
        load_nifti(image)
    monkeypatch.setenv(MAX_VOXELS_ENV, "0")  # 0: no limit
    assert load_nifti(image).shape == (48, 48, 16)
    monkeypatch.setenv(MAX_VOXELS_ENV, "lots")
    with pytest.raises(DataError, match=rf"{MAX_VOXELS_ENV}='lots' is not a whole number"):
        check_data(cohort)


def test_valid_volumes_load_exactly_as_before(cohort: Path) -> None:
    """The checks read headers only: arrays and affines of valid volumes are those of nibabel and MONAI."""
    from monai.transforms import LoadImage

    from neonet.data.transforms import NeonetNiftiReader, load_canonical

    image, label = _case(cohort, 1)
    for path in (image, label):
        ours, plain = load_nifti(path), nib.load(str(path))
        assert ours.shape == plain.shape and np.array_equal(ours.affine, plain.affine)
        assert np.asanyarray(read_array(ours, path)).tobytes() == np.asanyarray(plain.dataobj).tobytes()
        a = LoadImage(reader=NeonetNiftiReader(), image_only=True)(str(path))
        b = LoadImage(reader="NibabelReader", image_only=True)(str(path))
        assert np.array_equal(np.asarray(a), np.asarray(b)) and np.array_equal(np.asarray(a.affine), np.asarray(b.affine))
    img, lab, aff = load_canonical(str(image), str(label), SPACING)
    assert img.shape == lab.shape == (48, 48, 16) and np.allclose(aff, nib.load(str(image)).affine)


# ---------------------------------------------------------------- row 3: a singleton 4th axis, and 4D
def test_singleton_4th_axis_is_squeezed_everywhere(cohort: Path, cropped: Path, tmp_path: Path) -> None:
    """``(x, y, z, 1)`` passed check-data, then cv died in MONAI ``Orientationd``; now every loader drops the axis."""
    from neonet.data.transforms import load_canonical
    from neonet.seg.crop import load_case
    from neonet.seg.datamodule import SegDataModule

    image, label = _case(cohort)
    src = nib.load(str(image))
    four = _save_like(tmp_path / "four.nii.gz", np.asanyarray(src.dataobj)[..., None], src)
    assert nib.load(str(four)).shape == (48, 48, 16, 1)

    assert not check_cases(_manifest(tmp_path / "cases.csv", [("s4", four, label)]), progress=False)
    # training transforms (what cv runs) and crop: the same arrays as from the 3D file
    ref = load_canonical(str(image), str(label), SPACING)
    for got in (load_canonical(str(four), str(label), SPACING), load_case(four, label, SPACING, LabelMap(), "s4")):
        assert all(np.array_equal(a, b) for a, b in zip(got, ref))
    dm = SegDataModule(cases=str(cohort), experiment="hostile", runs_dir=str(cropped), spacing=list(SPACING), divisible=8)
    a = dm.base_transform(True)({"image": str(four), "label": str(label)})
    b = dm.base_transform(True)({"image": str(image), "label": str(label)})
    assert np.array_equal(np.asarray(a["image"]), np.asarray(b["image"])) and a["image"].shape[0] == 1
    # predict-case on the 4D-singleton scan, with its mask (no NeoSeg folds needed)
    out = tmp_path / "pred"
    args = ["predict-case", str(four), "--experiment", "hostile", "--runs_dir", str(cropped), "--out", str(out)]
    assert main([*args, "--mask", str(label), "--classifier", "none"]) == 0
    seg = nib.load(str(out / "segmentation.nii.gz"))
    assert seg.shape == (48, 48, 16) and np.allclose(seg.affine, src.affine)
    assert json.loads((out / "prediction.json").read_text(encoding="utf-8"))["tumor_found"]


def test_real_4d_volume_is_refused_with_the_way_on(cohort: Path, cropped: Path, tmp_path: Path) -> None:
    from neonet.data.transforms import load_canonical

    image, label = _case(cohort)
    src = nib.load(str(image))
    data = np.asanyarray(src.dataobj)
    four = _save_like(tmp_path / "dyn.nii.gz", np.stack([data, data], axis=-1), src)
    hit = _one(check_cases(_manifest(tmp_path / "cases.csv", [("dyn", four, label)]), progress=False), "dyn", "4D")
    assert hit.file == str(four) and "(48, 48, 16, 2)" in hit.problem and "extract the one volume" in hit.problem
    with pytest.raises(Exception) as info:  # MONAI wraps the reader's error; the cause names the file
        load_canonical(str(four), str(label), SPACING)
    chain = [info.value, *_causes(info.value)]
    assert any(isinstance(e, DataError) and "dyn.nii.gz" in str(e) and "4D" in str(e) for e in chain)
    with pytest.raises(DataError, match=r"dyn\.nii\.gz: image is 4D with shape \(48, 48, 16, 2\)"):
        predict_case(four, experiment="hostile", runs_dir=cropped, out=tmp_path / "p", mask=label, classifier="none")
    assert not (tmp_path / "p").exists()


def _causes(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
        out.append(exc)
    return out


# ----------------------------------------------------------------------------- row 3: symlink loop
def test_symlink_loop_is_a_problem_of_its_case_only(cohort: Path, tmp_path: Path) -> None:
    """A symlink loop aborted all of check-data."""
    loop = tmp_path / "loop.nii.gz"
    loop.symlink_to(tmp_path / "loop2.nii.gz")
    (tmp_path / "loop2.nii.gz").symlink_to(loop)
    rows = [("good0", *_case(cohort, 0)), ("looped", loop, _case(cohort, 1)[1]), ("good2", *_case(cohort, 2))]
    problems = check_cases(_manifest(tmp_path / "cases.csv", rows), progress=False)
    hit = _one(problems, "looped", "symbolic link loop")
    assert hit.file == str(loop) and "point it at the scan" in hit.problem
    assert not _of(problems, "good0") and not _of(problems, "good2")  # the rest was still checked, and is fine


# ------------------------------------------------------------------------------ row 5: silent guesses
def _strip_spatial_info(path: Path, like: nib.Nifti1Image, pixdim: float = 0.0) -> Path:
    """Write ``like``'s voxels with qform/sform codes 0 and ``pixdim[1:4] = pixdim`` (bytes patched after saving)."""
    img = nib.Nifti1Image(np.asanyarray(like.dataobj), None)
    img.header.set_qform(None, code=0)
    img.header.set_sform(None, code=0)
    raw = bytearray(img.header.binaryblock)
    header = nib.Nifti1Header(bytes(raw), check=False)
    header["pixdim"][1:4] = pixdim
    data = np.asanyarray(like.dataobj).astype(np.float32)
    header.set_data_dtype(np.float32)
    header["vox_offset"] = 352
    path.write_bytes(gzip.compress(header.binaryblock + b"\0" * 4 + data.tobytes(order="F")))
    return path


def test_image_without_spatial_information_is_refused(cohort: Path, cropped: Path, tmp_path: Path) -> None:
    """pixdim 0 with qform/sform codes 0 was read as 1 mm voxels (crop lost the tumour)."""
    from neonet.seg.crop import load_case

    image, label = _case(cohort)
    bare = _strip_spatial_info(tmp_path / "bare.nii.gz", nib.load(str(image)))
    hit = _one(check_cases(_manifest(tmp_path / "cases.csv", [("bare", bare, label)]), progress=False), "bare", "no spatial")
    assert hit.file == str(bare) and "pixdim (0, 0, 0)" in hit.problem and "fix the header" in hit.problem
    with pytest.raises(DataError, match=r"case bare: .*bare\.nii\.gz: image header holds no spatial information"):
        load_case(bare, label, SPACING, LabelMap(), "bare")
    with pytest.raises(DataError, match=r"bare\.nii\.gz: image header holds no spatial information"):
        predict_case(bare, experiment="hostile", runs_dir=cropped, out=tmp_path / "p", mask=label, classifier="none")
    assert not (tmp_path / "p").exists()


def test_no_orientation_but_a_voxel_size_is_a_warning(cohort: Path, tmp_path: Path) -> None:
    image, _ = _case(cohort)
    src = nib.load(str(image))
    bare = _strip_spatial_info(tmp_path / "noorient.nii.gz", src, pixdim=7.0)
    lab = _strip_spatial_info(tmp_path / "noorient_lab.nii.gz", nib.load(str(_case(cohort)[1])), pixdim=7.0)
    problems = check_cases(_manifest(tmp_path / "cases.csv", [("noorient", bare, lab)]), progress=False)
    assert not _of(problems, "noorient", ERROR), problems
    hit = _one(problems, "noorient", "no orientation", WARNING)
    assert hit.file == str(bare) and "(7, 7, 7) mm" in hit.problem


def test_sheared_affine_warns_and_the_pipeline_keeps_its_world_geometry(cohort: Path, tmp_path: Path) -> None:
    """A sheared affine passed without a word. The pipeline resamples it correctly (checked here at 2 mm,
    by the tumour's world centroid), so check-data warns rather than refuses."""
    from neonet.data.transforms import load_canonical

    image, label = _case(cohort)
    src, lab = nib.load(str(image)), nib.load(str(label))
    shear = np.eye(4)
    shear[0, 2] = 0.5  # x moves 0.5 mm per mm of z
    affine = shear @ src.affine
    sheared_img = _save_like(tmp_path / "shear.nii.gz", np.asanyarray(src.dataobj), src, affine)
    sheared_lab = _save_like(tmp_path / "shear_lab.nii.gz", np.asanyarray(lab.dataobj), lab, affine)
    problems = check_cases(_manifest(tmp_path / "cases.csv", [("sheared", sheared_img, sheared_lab)]), progress=False)
    assert not _of(problems, "sheared", ERROR), problems
    angle = np.degrees(np.arccos(affine[:3, 2] @ affine[:3, 0] / np.linalg.norm(affine[:3, 2]) / np.linalg.norm(affine[:3, 0])))
    hit = _one(problems, "sheared", "sheared", WARNING)
    assert hit.file == str(sheared_img) and f"{angle:.2f} degrees" in hit.problem

    tumour = np.asanyarray(lab.dataobj) == 2
    truth = (affine @ np.r_[np.argwhere(tumour).mean(0), 1.0])[:3]
    _, canon, canon_affine = load_canonical(str(sheared_img), str(sheared_lab), (2.0, 2.0, 2.0))
    assert canon is not None
    got = (canon_affine @ np.r_[np.argwhere(canon == 2).mean(0), 1.0])[:3]
    assert np.linalg.norm(got - truth) < 1.0, (got, truth)  # well under a 2 mm voxel
    assert np.allclose(canon_affine[:3, :3], np.diag([2.0, 2.0, 2.0]))  # a square output grid
    volume = float(tumour.sum() * abs(np.linalg.det(affine[:3, :3])))  # the sheared voxels' true volume, mm^3
    assert float((canon == 2).sum() * 8.0) == pytest.approx(volume, rel=0.1)


def test_tumour_outside_the_liver_warns_with_the_fraction(cohort: Path, tmp_path: Path) -> None:
    image, label = _case(cohort)
    lab = nib.load(str(label))
    values = np.asanyarray(lab.dataobj).copy()
    n_inside = int((values == 2).sum())
    values[1:4, 1:4, 1:3] = 2  # a tumour blob in a corner, far from the liver (18 voxels)
    assert not (np.asanyarray(lab.dataobj)[0:5, 0:5, 0:4] > 0).any()
    moved = _save_like(tmp_path / "outside_lab.nii.gz", values, lab)
    problems = check_cases(_manifest(tmp_path / "cases.csv", [("stray", image, moved)]), progress=False)
    hit = _one(problems, "stray", "outside the liver", WARNING)
    expected = 100.0 * 18 / (18 + n_inside)
    assert hit.file == str(moved) and f"{expected:.1f}% of the tumour voxels (18 of {18 + n_inside})" in hit.problem
    assert not _of(problems, "stray", ERROR)
    assert not check_cases(_manifest(tmp_path / "ok.csv", [("ok", image, label)]), progress=False)


# ---------------------------------------------------------------------------- row 6: unclear errors
def test_unreadable_dicom_folder_and_single_dicom_file_are_named(cohort: Path, cropped: Path, tmp_path: Path) -> None:
    """A folder is read as one DICOM series (tests/test_scan_formats.py); one that holds none, or a single
    DICOM file where the series folder belongs, is named with the way on."""
    series = tmp_path / "series"
    series.mkdir()
    for k in range(3):  # "DICOM" files with a preamble and magic but no parsable elements
        (series / f"IM{k:04d}").write_bytes(b"\0" * 128 + b"DICM" + os.urandom(64))
    _, label = _case(cohort)
    problems = check_cases(_manifest(tmp_path / "cases.csv", [("dicom", series, label)]), progress=False)
    hit = _one(problems, "dicom", "no DICOM series in it")
    assert hit.file == str(series) and "NIfTI / NRRD / MHA" in hit.problem
    with pytest.raises(DataError, match=r"series: image path is a folder with no DICOM series"):
        predict_case(series, experiment="hostile", runs_dir=cropped, out=tmp_path / "p", mask=label, classifier="none")
    single = series / "IM0000"
    hit = _one(check_cases(_manifest(tmp_path / "one.csv", [("dcmfile", single, label)]), progress=False), "dcmfile", "DICOM")
    assert "series folder" in hit.problem and str(series) in hit.problem


@pytest.mark.parametrize("value", [0.0, 37.5])
def test_constant_image_is_named_by_check_data(cohort: Path, tmp_path: Path, value: float) -> None:
    """A constant image was blamed on "median liver intensity 0" by crop."""
    image, label = _case(cohort)
    src = nib.load(str(image))
    flat = _save_like(tmp_path / "flat.nii.gz", np.full(src.shape, value, np.float32), src)
    hit = _one(check_cases(_manifest(tmp_path / "cases.csv", [("flat", flat, label)]), progress=False), "flat", "constant")
    assert hit.file == str(flat) and ("all zeros" if value == 0 else "every voxel is 37.5") in hit.problem
    assert "re-export" in hit.problem


def test_crop_of_a_constant_image_says_so(cohort: Path, tmp_path: Path) -> None:
    from neonet.seg.tlcr import liver_reference_scale

    liver = np.zeros((4, 4, 4), bool)
    liver[1:3, 1:3, 1:3] = True
    with pytest.raises(ValueError, match=r"the image is constant \(every voxel is 0 after loading\)"):
        liver_reference_scale(np.zeros((4, 4, 4), np.float32), liver, 0.75)


# ---------------------------------------------------------------------------- the fuzz of headers
FUZZ_CHILD = """
import gzip, json, sys, traceback
from pathlib import Path
import numpy as np, nibabel as nib
from neonet.data.validate import check_cases

root = Path(sys.argv[1]); n = int(sys.argv[2]); rng = np.random.default_rng(int(sys.argv[3]))
data = np.random.default_rng(0).normal(100, 10, (8, 8, 4)).astype(np.float32)
label = np.zeros((8, 8, 4), np.uint8); label[2:6, 2:6, 1:3] = 1; label[3:5, 3:5, 1:2] = 2
affine = np.diag([1.5, 1.5, 3.0, 1.0])
lab = root / "lab.nii"; nib.save(nib.Nifti1Image(label, affine), str(lab))
good = nib.Nifti1Image(data, affine); good.header["vox_offset"] = 352
base = bytearray(good.header.binaryblock + b"\\0" * 4 + data.tobytes(order="F"))
FIELDS = {  # byte offset and struct format of NIfTI-1 header fields
    "dim": (40, "<8h"), "datatype": (70, "<h"), "bitpix": (72, "<h"), "pixdim": (76, "<8f"),
    "vox_offset": (108, "<f"), "scl_slope": (112, "<f"), "scl_inter": (116, "<f"),
    "qform_code": (252, "<h"), "sform_code": (254, "<h"), "srow": (280, "<12f"), "quatern": (256, "<6f"),
}
SPECIAL = [0, -1, 1, 2, 3, 4, 7, 8, 255, 256, 511, 1024, 2**15 - 1, -2**15]
FLOATS = [0.0, -1.0, 1e-30, 1e30, float("nan"), float("inf"), -float("inf"), 352.0, 348.0, 2.0**31]
import struct
outcomes = {"error": 0, "pass": 0, "warning_only": 0}
crashes, unexpected = [], []
for i in range(n):
    blob = bytearray(base)
    what = []
    for _ in range(int(rng.integers(1, 4))):
        name = list(FIELDS)[int(rng.integers(len(FIELDS)))] if rng.random() < 0.8 else "bytes"
        if name == "bytes":
            for _ in range(int(rng.integers(1, 9))):
                blob[int(rng.integers(0, 352))] = int(rng.integers(0, 256))
        else:
            off, fmt = FIELDS[name]
            values = list(struct.unpack_from(fmt, blob, off))
            k = int(rng.integers(len(values)))
            pool = FLOATS if fmt.endswith("f") else SPECIAL
            values[k] = pool[int(rng.integers(len(pool)))] if rng.random() < 0.7 else (
                float(rng.normal(0, 1e4)) if fmt.endswith("f") else int(rng.integers(-2**15, 2**15)))
            struct.pack_into(fmt, blob, off, *values)
        what.append(name)
    if rng.random() < 0.2:
        blob = blob[: int(rng.integers(0, len(blob)))]
        what.append("cut")
    gz = rng.random() < 0.5
    path = root / f"f{i}.nii{'.gz' if gz else ''}"
    path.write_bytes(gzip.compress(bytes(blob)) if gz else bytes(blob))
    csv = root / f"c{i}.csv"; csv.write_text(f"case_id,image,label,pni\\nfz{i},{path.name},{lab.name},0\\n")
    try:
        problems = check_cases(csv, progress=False)
    except BaseException as exc:
        crashes.append([i, what, traceback.format_exc()[-600:]])
        continue
    bad = [p.problem for p in problems if "unexpected error" in p.problem]
    if bad:
        unexpected.append([i, what, bad])
    errs = [p for p in problems if p.severity == "error"]
    outcomes["error" if errs else ("warning_only" if problems else "pass")] += 1
    path.unlink(); csv.unlink()
print(json.dumps({"outcomes": outcomes, "crashes": crashes, "unexpected": unexpected,
                  "maxrss_kb": peak_rss_kb()}))
"""


def test_fuzzed_nifti_headers_are_reported_or_pass_never_crash(tmp_path: Path) -> None:
    """Seeded, bounded: corrupt dims, datatype, pixdim, vox_offset, codes, srow, scaling, raw bytes, length."""
    script = tmp_path / "fuzz.py"
    script.write_text(PEAK_RSS_KB + FUZZ_CHILD)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "WANDB_MODE": "disabled"}
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path), "150", "20"],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert not result["crashes"], result["crashes"][:3]
    assert not result["unexpected"], result["unexpected"][:3]
    assert result["outcomes"]["error"] > 50 and sum(result["outcomes"].values()) == 150
    assert result["maxrss_kb"] < 700 * 1024, f"fuzz peaked at {result['maxrss_kb'] / 1024:.0f} MB"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fuzz.py", "lab.nii"]  # nothing else written


@pytest.mark.slow
def test_fit_on_a_cohort_of_singleton_4d_images(tmp_path: Path) -> None:
    """The row as met: ``(x, y, z, 1)`` images pass check-data and NeoSeg trains on them (it died in ``Orientationd``)."""
    out = tmp_path / "cohort"
    assert (
        main(["synth", "--out", str(out), "--cases", "6", "--seed", "4", "--shape", "[48,48,16]", "--spacing", "[7,7,12]"]) == 0
    )
    cases = out / "cases.csv"
    for image in pd.read_csv(cases)["image"]:
        src = nib.load(str(out / image))
        _save_like(out / image, np.asanyarray(src.dataobj)[..., None], src)
        assert nib.load(str(out / image)).shape == (48, 48, 16, 1)
    assert check_data(cases) == 0
    runs = tmp_path / "runs"
    fit = ["fit", "--config", str(REPO / "tests" / "conf" / "seg.yaml"), f"--data.cases={cases}", f"--data.runs_dir={runs}"]
    assert main([*fit, "--data.fold=0", "--trainer.enable_progress_bar=false"]) == 0
    assert list((runs / "test" / "seg" / "fold0").rglob("*.ckpt")), "fit left no checkpoint"
