"""Validation of a case manifest and all its NIfTI files (``neonet check-data``).

Every check reports a :class:`Problem` (case, file, what is wrong) and moves on, so one run lists
every problem of a cohort. Training stages call :func:`assert_valid`, which raises one
:class:`~neonet.errors.DataError` listing all error-level problems.

Checks:

* manifest: file missing or unreadable (not UTF-8, not CSV), missing or repeated columns, no rows,
  a row with more fields than the header, empty ``case_id``, a ``case_id`` that is not one safe
  file name (:func:`neonet.data.cases.case_id_problem`), duplicate ``case_id``, ``pni`` not 0/1,
  empty ``pni`` (error only when ``require_pni``), empty ``image``, empty ``label`` (error when
  ``require_label``, else a warning), the same image listed twice (warning), label path equal to
  the image path. Rows are named by their line number in the file (blank lines are skipped).
* each file (the header checks are :func:`neonet.data.nifti.load_nifti`'s, which every loader
  uses): missing, a folder (e.g. a DICOM series) or a symlink loop, not a readable NIfTI file,
  larger than the voxel limit (``NEONET_MAX_VOXELS``), no voxel size in the header, not 3D (a
  trailing singleton axis is dropped, as when training), truncated or corrupt voxel data,
  singular affine, non-numeric voxels; image: NaN or infinite voxels, constant image, no
  orientation in the header (warning), sheared voxel axes (warning).
* image vs label: shape mismatch, affine mismatch (``np.allclose``, ``atol`` 1e-3 mm).
* label: NaN/inf values, non-integer values, values outside the label map, no liver voxels, no
  tumour voxels, tumour voxels outside the liver (warning).
"""

from __future__ import annotations

import csv
import logging
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage
from tqdm import tqdm

from neonet.data.cases import (
    REQUIRED_COLUMNS,
    LabelMap,
    ManifestRow,
    _resolve,
    case_id_problem,
    header_problem,
    parse_manifest,
    parse_pni,
    split_problem,
    surplus_problem,
)
from neonet.data.nifti import MAX_VOXELS_ENV, load_nifti, max_voxels, read_array
from neonet.errors import DataError

log = logging.getLogger(__name__)

#: Tolerance (mm, and for the rotation part unitless) when comparing image and label affines.
AFFINE_ATOL = 1e-3
#: A label value farther than this from an integer is a non-integer value.
INTEGER_ATOL = 1e-3
#: At most this many distinct values are listed in a message.
MAX_LISTED = 10
#: Voxel axes whose directions' cosine exceeds this are sheared (1e-3: about 0.06 degrees off square).
SHEAR_COS = 1e-3

ERROR, WARNING = "error", "warning"
#: The stages a case can serve, in pipeline order: NeoSeg training/evaluation (image + a label with
#: liver), TLCR crop from the manual mask (+ tumour voxels), classification (+ a PNI label).
STAGES = ("seg", "crop", "cls")
_ALL = ",".join(STAGES)


@dataclass(frozen=True)
class Problem:
    """One problem found in a cohort.

    Args:
        case_id: the case it belongs to; "" for manifest-level problems (an unreadable manifest,
            an empty case_id); ``line N`` for the files of a row whose case_id is empty (N: the
            row's line number in the manifest).
        file: the file the problem is in (the CSV for manifest problems).
        problem: what is wrong and, where useful, what to do about it.
        severity: "error" (the case cannot serve a stage that was asked for) or "warning".
        blocks: the stages (comma-separated, from :data:`STAGES`) the problem keeps the case from;
            an unreadable file blocks every stage, missing tumour voxels only ``crop,cls``, an
            empty ``pni`` only ``cls``.
    """

    case_id: str
    file: str
    problem: str
    severity: str = ERROR
    blocks: str = _ALL


@dataclass
class _Volume:
    """What the cross-file checks need to know about a file that could be read."""

    shape: tuple[int, ...]
    affine: np.ndarray
    zooms: tuple[float, ...]
    axcodes: str


# ----------------------------------------------------------------------------------------------
# helpers


def _fmt_values(values: list) -> str:
    shown = ", ".join(_fmt_number(v) for v in values[:MAX_LISTED])
    more = f", ... ({len(values)} distinct)" if len(values) > MAX_LISTED else ""
    return f"[{shown}{more}]"


def _fmt_number(value: float) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() else f"{value:g}"


def _fmt_tuple(values: tuple | list | np.ndarray, digits: int = 3) -> str:
    return "(" + ", ".join(f"{float(v):.{digits}g}" if isinstance(v, float | np.floating) else str(v) for v in values) + ")"


def _strip_path(message: str, path: Path) -> str:
    """Drop the ``<path>: `` prefix of a DataError message (the Problem names the file)."""
    prefix = f"{path}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


def _path_key(path: Path) -> Path:
    """``path`` resolved, for telling whether two manifest entries are one file (a symlink loop stays as given)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a symlink loop: load_nifti reports it with the case
        return path.absolute()


class _Collector:
    """Collects problems of one run, logging each at debug level."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def add(self, case_id: str, file: str | Path, problem: str, severity: str = ERROR, blocks: str = _ALL) -> None:
        item = Problem(
            case_id=case_id, file=str(file), problem=problem, severity=severity, blocks=blocks if severity == ERROR else ""
        )
        log.debug("%s: case %r: %s: %s", severity, case_id, file, problem)
        self.problems.append(item)


# ----------------------------------------------------------------------------------------------
# manifest


def _read_manifest(cases_csv: Path, out: _Collector) -> tuple[list[str], list[ManifestRow]] | None:
    """Read the manifest; report missing/unreadable files and header problems (missing columns).

    With a header problem the rows are still returned so that the columns that are there can be
    checked; returns None when the file cannot be read at all.
    """
    try:
        header, rows = parse_manifest(cases_csv)
    except DataError as exc:
        out.add("", cases_csv, _strip_path(str(exc), cases_csv))
        return None
    problem = header_problem(cases_csv, header)
    if problem is not None:
        out.add("", cases_csv, _strip_path(problem, cases_csv))
    return header, rows


# ----------------------------------------------------------------------------------------------
# files


def _load(path: Path, case_id: str, kind: str, out: _Collector) -> tuple[nib.Nifti1Image, np.ndarray] | None:
    """Load a NIfTI file and its voxels once; report and return None if that fails."""
    if not path.exists() and not path.is_symlink():
        out.add(
            case_id,
            path,
            f"{kind} file not found (check the path in the manifest; relative paths are relative to the manifest's folder)",
        )
        return None
    try:
        img = load_nifti(path, kind=kind)  # header checks (size, voxel size, 3D) before any voxel is read
        data = read_array(img, path, kind=kind)
    except DataError as exc:
        out.add(case_id, path, _strip_path(str(exc), path))
        return None
    return img, data


def _shear_degrees(affine: np.ndarray) -> tuple[int, int, float] | None:
    """The most sheared pair of voxel axes ``(i, j, angle in degrees)``, or None if they are square."""
    cols = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    cos = cols.T @ cols
    i, j = max(((0, 1), (0, 2), (1, 2)), key=lambda ij: abs(cos[ij]))
    if abs(cos[i, j]) <= SHEAR_COS:
        return None
    return i, j, float(np.degrees(np.arccos(np.clip(cos[i, j], -1.0, 1.0))))


def _check_geometry(img: nib.Nifti1Image, affine: np.ndarray, path: Path, case_id: str, out: _Collector) -> None:
    """Warnings about an image's geometry that the pipeline handles, but that may be a mistake."""
    header = img.header
    if isinstance(header, nib.Nifti1Header) and not int(header["qform_code"]) and not int(header["sform_code"]):
        out.add(
            case_id,
            path,
            f"image header has no orientation (qform_code and sform_code 0): read with voxel size "
            f"{_fmt_tuple(tuple(float(z) for z in header.get_zooms()[:3]))} mm from pixdim and nibabel's default "
            f"orientation {''.join(nib.aff2axcodes(affine))}; set the sform/qform (e.g. re-convert with dcm2niix) "
            "if the scan is oriented otherwise",
            WARNING,
        )
    shear = _shear_degrees(affine)
    if shear is not None:
        i, j, angle = shear
        out.add(
            case_id,
            path,
            f"image affine is sheared: voxel axes {'ijk'[i]} and {'ijk'[j]} meet at {angle:.2f} degrees, not 90; "
            "neonet resamples it onto a square grid at its world position (a gantry tilt does this), "
            "but a shear can also be a mis-written sform: check the header if the scan should be square",
            WARNING,
        )


def _check_volume(img: nib.Nifti1Image, data: np.ndarray, path: Path, case_id: str, kind: str, out: _Collector) -> _Volume | None:
    """Checks common to images and labels; returns the geometry if the volume can be used.

    ``load_nifti`` has made the volume 3D (or refused it) already.
    """
    shape = tuple(int(s) for s in data.shape[:3])
    if not np.issubdtype(data.dtype, np.number) or np.issubdtype(data.dtype, np.complexfloating):
        out.add(case_id, path, f"{kind} has unsupported voxel type {data.dtype} (expected real numbers)")
        return None
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        out.add(
            case_id,
            path,
            f"{kind} has an invalid (singular or non-finite) affine; the voxel spacing / orientation in the header is broken",
        )
        return None
    if kind == "image":
        _check_geometry(img, affine, path, case_id, out)
    try:
        axcodes = "".join(nib.aff2axcodes(affine))
    except Exception:  # noqa: BLE001 - only used in messages
        axcodes = "?"
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    return _Volume(shape=shape, affine=affine, zooms=zooms, axcodes=axcodes)


def _check_image_voxels(data: np.ndarray, path: Path, case_id: str, out: _Collector) -> None:
    if np.issubdtype(data.dtype, np.floating):
        n_nan = int(np.count_nonzero(np.isnan(data)))
        n_inf = int(np.count_nonzero(np.isinf(data)))
        if n_nan:
            out.add(case_id, path, f"image contains {n_nan} NaN voxel(s) of {data.size}; replace them (e.g. by 0) before use")
        if n_inf:
            out.add(case_id, path, f"image contains {n_inf} infinite voxel(s) of {data.size}; replace or clip them before use")
        finite = data[np.isfinite(data)] if (n_nan or n_inf) else data
    else:
        finite = data
    if finite.size and float(finite.min()) == float(finite.max()):
        value = _fmt_number(finite.min())
        what = "all zeros" if float(finite.min()) == 0.0 else f"every voxel is {value}"
        out.add(
            case_id,
            path,
            f"image is constant ({what}): it holds no scan to segment or crop; "
            "re-export or re-convert the scan (a blank volume is what a failed conversion often leaves)",
        )


def _check_label_values(data: np.ndarray, path: Path, case_id: str, label_map: LabelMap, out: _Collector) -> None:
    if np.issubdtype(data.dtype, np.floating):
        bad = ~np.isfinite(data)
        if bad.any():
            out.add(
                case_id, path, f"label contains {int(bad.sum())} NaN/infinite voxel(s); a label must hold integer class values"
            )
            data = np.where(bad, 0, data)
        rounded = np.rint(data)
        off = np.abs(data - rounded) > INTEGER_ATOL
        if off.any():
            values = np.unique(data[off]).tolist()
            out.add(
                case_id,
                path,
                f"label has non-integer values {_fmt_values(values)} in {int(off.sum())} "
                "voxel(s); a label must hold integer class values (was it resampled "
                "with linear instead of nearest-neighbour interpolation?)",
            )
        raw = rounded.astype(np.int64)
    else:
        raw = data.astype(np.int64, copy=False)
    present = np.unique(raw)
    unexpected = sorted(set(present.tolist()) - label_map.known_values)
    if unexpected:
        out.add(
            case_id,
            path,
            f"label values {_fmt_values(unexpected)} are not in the label map "
            f"(liver={list(label_map.liver)}, tumor={list(label_map.tumor)}, "
            f"other={list(label_map.other)}); list other organs' values with --other",
        )
    if not np.isin(present, label_map.liver).any():
        out.add(
            case_id,
            path,
            f"label has no liver voxels (liver values {list(label_map.liver)}; values present {_fmt_values(present.tolist())})",
        )
    if not np.isin(present, label_map.tumor).any():
        why = (
            f"tumour values {list(label_map.tumor)}; values present {_fmt_values(present.tolist())}"
            if label_map.tumor
            else "the label map lists no tumour values (--tumor []): a liver-only label set"
        )
        out.add(
            case_id,
            path,
            f"label has no tumour voxels ({why}); the case serves NeoSeg (liver) but not TLCR crop or "
            "classification, unless crop's no-tumour fallback (--no_tumor liver) is chosen",
            blocks="crop,cls",
        )
    elif np.isin(present, label_map.liver).any():
        _check_tumour_in_liver(raw, path, case_id, label_map, out)


def _check_tumour_in_liver(raw: np.ndarray, path: Path, case_id: str, label_map: LabelMap, out: _Collector) -> None:
    """Warn when tumour voxels lie in parts of the mask that touch no liver voxel (a shifted or foreign mask)."""
    tumour = np.isin(raw, label_map.tumor)
    components, _ = ndimage.label(tumour | np.isin(raw, label_map.liver))
    with_liver = np.unique(components[np.isin(raw, label_map.liver)])
    outside = tumour & ~np.isin(components, with_liver)
    n_out, n_all = int(outside.sum()), int(tumour.sum())
    if n_out:
        out.add(
            case_id,
            path,
            f"{100.0 * n_out / n_all:.1f}% of the tumour voxels ({n_out} of {n_all}) lie outside the liver "
            "(in parts of the mask that touch no liver voxel); check that this mask belongs to this image and "
            "that --liver/--tumor name the right label values",
            WARNING,
        )


def _check_pair(image: _Volume, label: _Volume, label_path: Path, case_id: str, out: _Collector) -> None:
    if image.shape != label.shape:
        out.add(
            case_id,
            label_path,
            f"label shape {label.shape} differs from image shape {image.shape} "
            f"(spacing: image {_fmt_tuple(image.zooms)} mm, "
            f"label {_fmt_tuple(label.zooms)} mm)",
        )
    if not np.allclose(image.affine, label.affine, rtol=0.0, atol=AFFINE_ATOL):
        diff = float(np.max(np.abs(image.affine - label.affine)))
        out.add(
            case_id,
            label_path,
            f"label affine differs from image affine (max difference {diff:.4g}): "
            f"image spacing {_fmt_tuple(image.zooms)} mm, origin {_fmt_tuple(tuple(image.affine[:3, 3]), 5)}, "
            f"orientation {image.axcodes}; label spacing {_fmt_tuple(label.zooms)} mm, "
            f"origin {_fmt_tuple(tuple(label.affine[:3, 3]), 5)}, orientation {label.axcodes}; "
            "the label must be on the image's voxel grid (resample it with nearest neighbour)",
        )


def _check_case(case_id: str, image_path: Path | None, label_path: Path | None, label_map: LabelMap, out: _Collector) -> None:
    """Check one case's files, loading each once (the image's voxels are freed before the label's)."""
    image_vol = None
    loaded = _load(image_path, case_id, "image", out) if image_path is not None else None
    if image_path is not None and loaded is not None:
        img, data = loaded
        image_vol = _check_volume(img, data, image_path, case_id, "image", out)
        if np.issubdtype(data.dtype, np.number):
            _check_image_voxels(data, image_path, case_id, out)
        del data, loaded  # free the image before the label is read
    if label_path is None:
        return
    loaded = _load(label_path, case_id, "label", out)
    if loaded is None:
        return
    img, data = loaded
    label_vol = _check_volume(img, data, label_path, case_id, "label", out)
    if np.issubdtype(data.dtype, np.number) and not np.issubdtype(data.dtype, np.complexfloating):
        _check_label_values(data, label_path, case_id, label_map, out)
    if image_vol is not None and label_vol is not None:
        _check_pair(image_vol, label_vol, label_path, case_id, out)


# ----------------------------------------------------------------------------------------------
# public API


def claimed_stages(label_map: LabelMap, require_pni: bool) -> tuple[str, ...]:
    """The stages a cohort is checked for when none is named: NeoSeg always; TLCR crop when the label
    map lists tumour values; classification when PNI labels are required as well."""
    if not label_map.tumor:
        return ("seg",)
    return STAGES if require_pni else ("seg", "crop")


def parse_stages(stage: list[str] | None, label_map: LabelMap, require_pni: bool) -> tuple[str, ...]:
    """``--stage`` as a tuple in pipeline order (default: :func:`claimed_stages`).

    Raises:
        DataError: a name that is not one of :data:`STAGES`.
    """
    if not stage:
        return claimed_stages(label_map, require_pni)
    unknown = [s for s in stage if s not in STAGES]
    if unknown:
        raise DataError(f"--stage {', '.join(unknown)}: not a stage; choose from {', '.join(STAGES)} (several allowed)")
    return tuple(s for s in STAGES if s in stage)


def _for_stages(problems: list[Problem], stages: tuple[str, ...]) -> list[Problem]:
    """Problems as seen by ``stages``: an error that blocks none of them becomes a warning."""
    out = []
    for p in problems:
        if p.severity == ERROR and not set(p.blocks.split(",")) & set(stages):
            p = replace(p, severity=WARNING, problem=f"{p.problem} [keeps the case from {p.blocks.replace(',', ', ')} only]")
        out.append(p)
    return out


@dataclass(frozen=True)
class CaseStages:
    """Which stages one case can serve, and why not where it cannot.

    Args:
        case_id: the case.
        serves: stage name -> whether the case can serve it.
        why: the first problem that keeps it from a stage ("" when it serves them all).
    """

    case_id: str
    serves: dict[str, bool]
    why: str = ""

    def line(self) -> str:
        """``seg ✓ crop ✗ cls ✗: <why>``."""
        marks = " ".join(f"{s} {'✓' if ok else '✗'}" for s, ok in self.serves.items())
        return f"{marks}: {self.why}" if self.why else marks


def case_stages(case_ids: list[str], problems: list[Problem]) -> list[CaseStages]:
    """Per case, the stages it can serve given ``problems`` (a manifest-level problem blocks every case)."""
    blocking: dict[str, list[Problem]] = {}
    for p in problems:
        if p.blocks:
            blocking.setdefault(p.case_id, []).append(p)
    rows = []
    for cid in case_ids:
        found = blocking.get(cid, []) + blocking.get("", [])
        serves = {s: not any(s in p.blocks.split(",") for p in found) for s in STAGES}
        why = re.split(r" \(|; | \[keeps the case", found[0].problem)[0] if found else ""
        rows.append(CaseStages(cid, serves, why))
    return rows


def _run_checks(
    cases_csv: Path, label_map: LabelMap, require_label: bool, require_pni: bool, progress: bool
) -> tuple[list[str], list[Problem]]:
    """Run every check; returns (the manifest's case ids, in order, problems)."""
    cases_csv = Path(cases_csv)
    max_voxels()  # a malformed NEONET_MAX_VOXELS is one error for the run, not one per file
    out = _Collector()
    manifest = _read_manifest(cases_csv, out)
    if manifest is None:
        return [], out.problems
    header, rows = manifest
    if not rows:
        out.add("", cases_csv, "the case manifest has no rows")
        return [], out.problems
    base = cases_csv.resolve().parent
    has = {c: c in header for c in REQUIRED_COLUMNS}
    first_row: dict[str, int] = {}
    image_owner: dict[Path, str] = {}
    log.info("checking %d case(s) of %s", len(rows), cases_csv)
    for row in tqdm(rows, desc="check-data", unit="case", disable=not progress):
        row_no = row.line
        cid = row.get("case_id", "") if has["case_id"] else ""
        surplus = surplus_problem(row, len(header))
        if surplus is not None:
            out.add(cid, cases_csv, f"line {row_no}: {surplus}")
        if has["case_id"]:
            bad_id = case_id_problem(cid)
            if bad_id is not None:
                out.add(cid, cases_csv, f"line {row_no}: {bad_id}")
            elif cid in first_row:
                out.add(
                    cid,
                    cases_csv,
                    f"line {row_no}: duplicate case_id {cid!r} (first used on line {first_row[cid]}); case ids must be unique",
                )
            else:
                first_row[cid] = row_no
        split = split_problem(row, header)
        if split is not None:
            out.add(cid, cases_csv, f"line {row_no}: {split}")
        if has["pni"]:
            try:
                pni = parse_pni(row.get("pni", ""))
            except ValueError as exc:
                out.add(cid, cases_csv, f"line {row_no}: {exc}")
            else:
                if pni is None and require_pni:
                    out.add(
                        cid,
                        cases_csv,
                        f"line {row_no}: empty pni; every case needs a PNI label "
                        "(0 or 1) for classification (--require_pni false allows "
                        "segmentation-only cases)",
                        blocks="cls",
                    )
        image_path: Path | None = None
        if has["image"]:
            text = row.get("image", "")
            if not text:
                out.add(cid, cases_csv, f"line {row_no}: empty image path")
            else:
                image_path = _resolve(base, text)
                key = _path_key(image_path)
                if key in image_owner:
                    also = f"line {row_no}: image {text} is also the image of case {image_owner[key]!r}"
                    out.add(cid, cases_csv, also, WARNING)
                else:
                    image_owner[key] = cid or f"line {row_no}"
        label_path: Path | None = None
        if has["label"]:
            text = row.get("label", "")
            if not text:
                if require_label:
                    out.add(
                        cid,
                        cases_csv,
                        f"line {row_no}: empty label path; a label (liver + tumour "
                        "mask) is required here (--require_label false allows cases "
                        "without a mask)",
                    )
                else:
                    out.add(cid, cases_csv, f"line {row_no}: no label; the case is used without a manual mask", WARNING)
            else:
                label_path = _resolve(base, text)
                if image_path is not None and _path_key(label_path) == _path_key(image_path):
                    out.add(cid, cases_csv, f"line {row_no}: label path is the same file as the image")
                    label_path = None
        try:
            _check_case(cid or f"line {row_no}", image_path, label_path, label_map, out)
        except MemoryError:
            out.add(
                cid or f"line {row_no}",
                image_path or label_path or cases_csv,
                f"ran out of memory while checking this case's volumes; free memory, or lower {MAX_VOXELS_ENV} "
                "so that volumes this large are refused from their header",
            )
        except Exception as exc:  # noqa: BLE001 - one bad case must not stop the run
            log.debug("unexpected error checking case %r", cid, exc_info=True)
            out.add(
                cid or f"line {row_no}",
                image_path or label_path or cases_csv,
                f"unexpected error while checking: {type(exc).__name__}: {exc}",
            )
    ids = [(row.get("case_id", "") if has["case_id"] else "") or f"line {row.line}" for row in rows]
    return ids, out.problems


def check_cases(
    cases_csv: Path,
    label_map: LabelMap = LabelMap(),
    require_label: bool = True,
    require_pni: bool = True,
    progress: bool = True,
    stages: tuple[str, ...] | None = None,
) -> list[Problem]:
    """Check a case manifest and every file it names; never stops at the first problem.

    Args:
        cases_csv: the case manifest (``case_id, image, label, pni[, patient_id]``).
        label_map: which label values mean liver, tumour and other (background) structures.
        require_label: an empty ``label`` is an error (else a warning).
        require_pni: an empty ``pni`` is an error (else allowed).
        progress: show a progress bar over the cases.
        stages: the stages the cases must serve (default :func:`claimed_stages`); a problem that
            keeps a case only from other stages is a warning.

    Returns:
        Every problem found, in manifest order (errors and warnings).
    """
    stages = stages or claimed_stages(label_map, require_pni)
    ids, problems = _run_checks(Path(cases_csv), label_map, require_label, require_pni, progress)
    problems = _for_stages(problems, stages)
    n_rows = len(ids)
    n_err = sum(p.severity == ERROR for p in problems)
    log.info("%s: %d case(s) checked, %d error(s), %d warning(s)", cases_csv, n_rows, n_err, len(problems) - n_err)
    return problems


def assert_valid(
    cases_csv: Path,
    label_map: LabelMap = LabelMap(),
    require_label: bool = True,
    require_pni: bool = True,
    stages: tuple[str, ...] | None = None,
) -> None:
    """Raise DataError listing every error-level problem (for training stages).

    Warnings are logged. Runs without a progress bar.

    Args:
        cases_csv: the case manifest.
        label_map: which label values mean liver, tumour and other structures.
        require_label: an empty ``label`` is an error.
        require_pni: an empty ``pni`` is an error.
        stages: the stages the cases must serve (default :func:`claimed_stages`).

    Raises:
        DataError: if any error-level problem was found; the message names each case and file.
    """
    problems = check_cases(cases_csv, label_map, require_label, require_pni, progress=False, stages=stages)
    for p in problems:
        if p.severity != ERROR:
            log.warning("case %s: %s: %s", p.case_id or "-", p.file, p.problem)
    errors = [p for p in problems if p.severity == ERROR]
    if errors:
        lines = [f"  case {p.case_id or '-'}: {p.file}: {p.problem}" for p in errors]
        raise DataError(
            f"{cases_csv}: {len(errors)} data error(s); fix them and re-check with "
            f"`neonet check-data --cases {cases_csv}{_stage_flag(stages)}`:\n" + "\n".join(lines)
        )


def _stage_flag(stages: tuple[str, ...] | None) -> str:
    return f" --stage {' '.join(stages)}" if stages else ""


def _format_table(problems: list[Problem]) -> str:
    head = ("severity", "case", "file", "problem")
    rows = [(p.severity, p.case_id or "-", p.file, p.problem) for p in problems]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(3)]
    lines = []
    for r in [head, *rows]:
        lines.append("  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3])
    lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * len(head[3]))
    return "\n".join(lines)


def _write_report(
    report: Path, cases: Path, problems: list[Problem], stages: tuple[str, ...], per_case: list[CaseStages]
) -> None:
    from neonet.run.atomic import write_json, write_text

    n_err = sum(p.severity == ERROR for p in problems)
    if report.suffix.lower() == ".json":
        write_json(
            report,
            {
                "cases_csv": str(cases),
                "n_cases": len(per_case),
                "stages_checked": list(stages),
                "n_errors": n_err,
                "n_warnings": len(problems) - n_err,
                "problems": [asdict(p) for p in problems],
                "cases": [{"case_id": c.case_id, **c.serves, "why": c.why} for c in per_case],
            },
        )
        return
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["case_id", "file", "problem", "severity", "blocks"], lineterminator="\n")
    writer.writeheader()
    for p in problems:
        writer.writerow(asdict(p))
    write_text(report, buffer.getvalue())


def check_data(
    cases: Path,
    liver: list[int] = [1],  # noqa: B006 - not mutated; shown as the CLI default
    tumor: list[int] = [2],  # noqa: B006
    other: list[int] = [],  # noqa: B006
    require_label: bool = True,
    require_pni: bool = True,
    report: Path | None = None,
    stage: list[str] | None = None,
) -> int:
    """Check a case manifest and all its scans, listing every problem in one run, and say per case
    which stages it can serve (``seg ✓ crop ✗ cls ✗: label has no tumour voxels ...``).

    Checks the manifest (columns, unique case ids that are safe file names, pni 0/1, label paths;
    rows are named by their line in the file), each scan (exists, readable NIfTI / NRRD / MHA /
    DICOM series, voxel data not truncated, 3D, no NaN/inf voxels), each image/label pair (same
    shape and affine) and each label (integer values, all in the label map, liver present, tumour
    present for crop and classification). Fails only for what the checked stages need.

    Args:
        cases: the case manifest CSV (``case_id, image, label, pni[, patient_id]``).
        liver: label values that mean liver.
        tumor: label values that mean tumour.
        other: label values of other structures (e.g. kidneys, spleen), treated as background.
        require_label: an empty label path is an error (otherwise a warning).
        require_pni: an empty pni is an error (otherwise allowed).
        report: also write the problems (and, for ``.json``, each case's stages) to this file
            (``.json`` for JSON, otherwise CSV).
        stage: the stages the cohort must serve: ``seg`` (image + label with liver), ``crop``
            (+ tumour voxels), ``cls`` (+ a PNI label); several allowed. Default: what the
            manifest claims: ``seg``, plus ``crop`` when ``--tumor`` lists values, plus ``cls``
            when ``--require_pni``.

    Returns:
        Exit code: 0 if every case serves the checked stages (warnings allowed), 1 otherwise.
    """
    cases = Path(cases)
    try:
        label_map = LabelMap(liver=tuple(liver), tumor=tuple(tumor), other=tuple(other))
    except ValueError as exc:
        raise DataError(str(exc)) from exc
    stages = parse_stages(stage, label_map, require_pni)
    ids, problems = _run_checks(cases, label_map, require_label, require_pni, progress=True)
    problems = _for_stages(problems, stages)
    per_case = case_stages(ids, problems)
    n_cases = len(ids)
    n_err = sum(p.severity == ERROR for p in problems)
    n_warn = len(problems) - n_err
    listed = [p for p in problems if not (p.severity == WARNING and p.blocks)]  # the stage table shows the others
    if listed:
        print(_format_table(listed))
        print()
    if per_case and any(not all(c.serves.values()) for c in per_case):
        shown = per_case if len(per_case) <= 40 else [c for c in per_case if not all(c.serves.values())]
        width = max(len(c.case_id) for c in shown)
        print("stages each case can serve:")
        for c in shown:
            print(f"  {c.case_id.ljust(width)}  {c.line()}")
        print()
    counts = ", ".join(f"{s} {sum(c.serves[s] for c in per_case)}/{n_cases}" for s in STAGES)
    print(f"cases that can serve each stage: {counts} (checked for: {', '.join(stages)})")
    checked = f" for {', '.join(stages)}" if stages != STAGES else ""
    if n_err:
        print(f"{n_err} error(s), {n_warn} warning(s) in {n_cases} case(s) of {cases}{checked}")
    elif n_warn:
        print(f"{n_cases} cases OK{checked} ({n_warn} warning(s))")
    else:
        print(f"{n_cases} cases OK{checked}")
    if report is not None:
        _write_report(Path(report), cases, problems, stages, per_case)
        log.info("wrote the check-data report to %s", report)
    return 1 if n_err else 0
