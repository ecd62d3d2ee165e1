"""Scans as people have them: DICOM series folders, NRRD and MetaImage read like NIfTI, bad series named."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from neonet.data.itk_io import write_dicom_series
from neonet.data.nifti import load_nifti, read_array, save_nifti
from neonet.data.validate import check_cases
from neonet.errors import DataError
from neonet.run.cli import main

REPO = Path(__file__).resolve().parents[1]
# an oblique, anisotropic grid: a rotation about z and 7 x 6 x 12 mm voxels, so an axis swap or a sign error shows
_C, _S = np.cos(np.radians(20)), np.sin(np.radians(20))
AFFINE = np.array([[7 * _C, -6 * _S, 0, -150.0], [7 * _S, 6 * _C, 0, -120.0], [0, 0, 12.0, -90.0], [0, 0, 0, 1]])


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-case phantom cohort whose images are integers (DICOM stores int16), with NIfTI, DICOM, NRRD and MHA copies."""
    out = tmp_path_factory.mktemp("formats")
    args = ["synth", "--out", str(out), "--cases", "2", "--seed", "5", "--shape", "[48,48,16]", "--spacing", "[7,6,12]"]
    assert main(args) == 0
    frame = pd.read_csv(out / "cases.csv")
    rows = {"nifti": [], "dicom": [], "nrrd": [], "mha": []}
    for _, row in frame.iterrows():
        cid = row["case_id"]
        image = np.rint(read_array(nib.load(out / row["image"]), row["image"]) * 1000).astype(np.int16)
        label = read_array(nib.load(out / row["label"]), row["label"]).astype(np.uint8)
        paths = {
            "nifti": save_nifti(out / "nifti" / f"{cid}.nii.gz", image.astype(np.float32), AFFINE),
            "dicom": write_dicom_series(image, AFFINE, out / "dicom" / cid),
            "nrrd": out / "nrrd" / f"{cid}.nrrd",
            "mha": out / "mha" / f"{cid}.mha",
        }
        label_path = save_nifti(out / "labels_oblique" / f"{cid}.nii.gz", label, AFFINE)
        for fmt in ("nrrd", "mha"):
            paths[fmt].parent.mkdir(exist_ok=True)
            sitk.WriteImage(sitk.ReadImage(str(paths["nifti"])), str(paths[fmt]))
        for fmt, path in paths.items():
            rows[fmt].append({**row.to_dict(), "image": str(path), "label": str(label_path)})
    for fmt, items in rows.items():
        pd.DataFrame(items).to_csv(out / f"cases_{fmt}.csv", index=False)
    return out


@pytest.mark.parametrize("fmt", ["dicom", "nrrd", "mha"])
def test_scan_reads_with_the_nifti_geometry_and_voxels(cohort: Path, fmt: str) -> None:
    nifti = pd.read_csv(cohort / "cases_nifti.csv").iloc[0]
    other = pd.read_csv(cohort / f"cases_{fmt}.csv").iloc[0]
    ref, img = load_nifti(nifti["image"]), load_nifti(other["image"], "c0", "image")
    assert img.shape == ref.shape == (48, 48, 16)
    np.testing.assert_allclose(img.affine, ref.affine, atol=1e-4)
    np.testing.assert_array_equal(read_array(img, other["image"]).astype(np.float32), read_array(ref, nifti["image"]))


def test_dicom_cohort_crops_like_its_nifti(cohort: Path, tmp_path: Path) -> None:
    """The issue's round trip: the same cases as DICOM series and as NIfTI give the same TLCR patches."""
    runs = tmp_path / "runs"
    for fmt in ("nifti", "dicom"):
        args = ["crop", "--config", str(REPO / "tests" / "conf" / "crop.yaml"), f"--cases={cohort / f'cases_{fmt}.csv'}"]
        assert main([*args, f"--runs_dir={runs}", f"--experiment={fmt}", "--source=manual"]) == 0
    worst = 0.0
    for fmt_dir in ("images", "labels"):
        for ref in sorted((runs / "nifti" / "patches" / fmt_dir).glob("*.nii.gz")):
            a = nib.load(ref)
            b = nib.load(runs / "dicom" / "patches" / fmt_dir / ref.name)
            np.testing.assert_allclose(b.affine, a.affine, atol=1e-4)
            worst = max(worst, float(np.max(np.abs(b.get_fdata() - a.get_fdata()))))
    assert worst < 1e-5, f"max |DICOM - NIfTI| over the patches = {worst}"


def test_check_data_accepts_dicom_and_names_a_broken_series(cohort: Path, tmp_path: Path) -> None:
    assert not [p for p in check_cases(cohort / "cases_dicom.csv", progress=False) if p.severity == "error"]
    frame = pd.read_csv(cohort / "cases_dicom.csv")
    broken = tmp_path / "broken"
    shutil.copytree(frame.loc[0, "image"], broken)
    (broken / "slice0007.dcm").unlink()  # one slice lost in transfer
    frame.loc[0, "image"] = str(broken)
    frame.to_csv(tmp_path / "cases.csv", index=False)
    errors = [p for p in check_cases(tmp_path / "cases.csv", progress=False) if p.severity == "error"]
    assert len(errors) == 1 and errors[0].case_id == frame.loc[0, "case_id"] and errors[0].file == str(broken)
    assert "1 slice(s) missing" in errors[0].problem and "re-export" in errors[0].problem


def test_dicom_folder_with_two_series_is_named(cohort: Path, tmp_path: Path) -> None:
    first = pd.read_csv(cohort / "cases_dicom.csv").loc[0, "image"]
    mixed = tmp_path / "mixed"
    shutil.copytree(first, mixed)
    image = np.zeros((48, 48, 16), np.int16)
    write_dicom_series(image, AFFINE, tmp_path / "other")
    for k, item in enumerate(sorted((tmp_path / "other").iterdir())):
        shutil.copy(item, mixed / f"b{k:04d}.dcm")
    with pytest.raises(DataError, match=r"case x: .*mixed: image folder holds 2 DICOM series .*(16 files).*own folder"):
        load_nifti(mixed, "x", "image")


def test_uneven_slices_segmentation_objects_and_single_files_are_refused(cohort: Path, tmp_path: Path) -> None:
    uneven = AFFINE.copy()
    image = np.zeros((16, 16, 6), np.int16)
    folder = write_dicom_series(image, uneven, tmp_path / "uneven")
    files = sorted(folder.iterdir())
    reader = sitk.ReadImage(str(files[-1]))
    pos = [float(v) for v in reader.GetMetaData("0020|0032").split("\\")]
    reader.SetMetaData("0020|0032", "\\".join(str(v) for v in (pos[0], pos[1], pos[2] + 5.0)))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(str(files[-1]))
    writer.Execute(reader)
    with pytest.raises(DataError, match=r"not one evenly spaced volume: slices unevenly spaced"):
        load_nifti(folder, "u", "image")
    seg = write_dicom_series(image, AFFINE, tmp_path / "seg", **{"0008|0060": "SEG"})
    with pytest.raises(DataError, match=r"label series is a DICOM-SEG object.*dcmqi"):
        load_nifti(seg, "s", "label")
    with pytest.raises(DataError, match=r"one DICOM file; .*series folder"):
        load_nifti(files[0], "f", "image")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"no DICOM series in it"):
        load_nifti(empty, "e", "image")
