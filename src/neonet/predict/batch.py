"""``neonet predict-case`` on many scans: a folder of scans or a CSV of them, the models loaded once.

Each scan is predicted into ``<out>/<name>/`` (the files of one ``predict-case``) and is one row of
``<out>/summary.csv`` (rewritten after every scan, so an interrupted batch leaves a true partial
table). A scan that fails is a row with its error and the others go on; at the end the failures are
named and the exit code is not 0.

Inputs:

* a folder: every NIfTI / NRRD / MetaImage file in it, and every sub-folder holding DICOM files (one
  series each); the case id and folder name come from the file name;
* a CSV: column ``image`` (paths relative to the CSV's folder, or absolute) and optionally ``case_id``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from neonet.data.cases import case_id_problem, safe_file_name
from neonet.data.itk_io import ITK_SUFFIXES, is_dicom_file
from neonet.errors import DataError, NeonetError
from neonet.run.atomic import write_csv

if TYPE_CHECKING:
    from neonet.predict.pipeline import Predictor

log = logging.getLogger(__name__)

#: The batch's table, in ``--out``.
SUMMARY = "summary.csv"
#: File names read as scans in a folder.
SCAN_SUFFIXES = (".nii", ".nii.gz", *ITK_SUFFIXES)
#: Columns of ``summary.csv``, in order.
COLUMNS = (
    "case_id",
    "image",
    "status",
    "pni_probability",
    "tumor_found",
    "n_tumors",
    "tumor_volume_ml",
    "liver_volume_ml",
    "cohort_case",
    "out_of_fold_probability",
    "ood_flags",
    "warnings",
    "output_dir",
    "error",
)


@dataclass(frozen=True)
class Scan:
    """One scan of a batch.

    Attributes:
        case_id: its case id (the output folder's name).
        image: the file or DICOM series folder.
    """

    case_id: str
    image: Path


def is_dicom_series(folder: Path) -> bool:
    """Whether ``folder`` directly holds DICOM files (then it is one scan)."""
    return folder.is_dir() and any(p.is_file() and is_dicom_file(p) for p in folder.iterdir())


def is_batch_input(path: Path) -> bool:
    """A CSV of scans or a folder of scans (not one DICOM series folder)."""
    return (path.is_file() and path.name.lower().endswith(".csv")) or (path.is_dir() and not is_dicom_series(path))


def _scan_name(path: Path) -> str:
    from neonet.predict.case import image_name

    return image_name(path)


def find_scans(path: Path) -> list[Scan]:
    """The scans of a folder or CSV (see the module docstring), in name order.

    Raises:
        DataError: no scans, a CSV without ``image``, a bad case id, or two scans with one case id.
    """
    if path.is_dir():
        found = [
            p
            for p in sorted(path.iterdir())
            if (p.is_file() and p.name.lower().endswith(SCAN_SUFFIXES)) or (p.is_dir() and is_dicom_series(p))
        ]
        scans = [Scan(_scan_name(p), p) for p in found]
        if not scans:
            raise DataError(
                f"{path}: no scans in this folder (NIfTI .nii/.nii.gz, NRRD, MetaImage files or DICOM series sub-folders); "
                "give a folder of scans, a CSV with an `image` column, or one scan"
            )
    else:
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            raise DataError(f"{path}: cannot read this CSV ({exc}); give a CSV with an `image` column") from exc
        if "image" not in frame.columns:
            raise DataError(f"{path}: no `image` column (columns: {list(frame.columns)}); give `image` and optionally `case_id`")
        if frame.empty:
            raise DataError(f"{path}: the CSV has no rows; list one scan per row in column `image`")
        scans = []
        for line, row in enumerate(frame.to_dict("records"), start=2):
            image = Path(row["image"]) if Path(row["image"]).is_absolute() else path.parent / row["image"]
            cid = str(row.get("case_id") or "").strip() or _scan_name(image)
            problem = case_id_problem(cid)
            if problem:
                raise DataError(f"{path}: line {line}: case_id {cid!r}: {problem}")
            scans.append(Scan(safe_file_name(cid), image))
    ids = [s.case_id for s in scans]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise DataError(
            f"{path}: scans {dupes} would share an output folder (same case id / file name); "
            "give each scan its own name, or list them in a CSV with a `case_id` column"
        )
    return scans


def _row(scan: Scan, out_dir: Path, record: dict[str, Any] | None, error: str | None) -> dict[str, Any]:
    row: dict[str, Any] = {c: None for c in COLUMNS}
    row |= {"case_id": scan.case_id, "image": str(scan.image), "output_dir": str(out_dir)}
    if record is None:
        return row | {"status": "failed", "error": error}
    cohort = record.get("cohort") or {}
    oof = cohort.get("out_of_fold") or {}
    return row | {
        "status": "ok",
        "pni_probability": record["pni_probability"],
        "tumor_found": record["tumor_found"],
        "n_tumors": record["n_tumors"],
        "tumor_volume_ml": record["tumor_volume_ml"],
        "liver_volume_ml": record["segmentation"]["liver_volume_ml"],
        "cohort_case": cohort.get("case_id"),
        "out_of_fold_probability": oof.get("probability"),
        "ood_flags": " ".join(f["check"] for f in (record.get("out_of_distribution") or {}).get("flags", [])),
        "warnings": " | ".join(record["warnings"]),
    }


def predict_batch(path: Path, predictor: Predictor, out: Path | None) -> dict[str, Any]:
    """Predict every scan of a folder or CSV into ``out`` (default: the model source's ``predict_case/``).

    Returns:
        ``{"summary": path of summary.csv, "rows": the table's rows}``.

    Raises:
        NeonetError: after every scan ran, when some failed (the message names them and the table).
    """
    from neonet.predict.case import predict_scan

    scans = find_scans(path)
    root = Path(out) if out is not None else predictor.source.default_out(scans[0].case_id).parent
    summary = root / SUMMARY
    rows: list[dict[str, Any]] = []
    for i, scan in enumerate(scans, start=1):
        out_dir = root / scan.case_id
        print(f"[{i}/{len(scans)}] {scan.case_id}: {scan.image}")
        try:
            record, error = predict_scan(predictor, scan.image, out_dir, case_id=scan.case_id), None
        except Exception as exc:  # noqa: BLE001 - one bad scan must not stop the batch; its error is its row
            log.debug("scan %s failed", scan.image, exc_info=True)
            record, error = None, f"{type(exc).__name__}: {exc}" if not isinstance(exc, NeonetError) else str(exc)
            print(f"FAILED {scan.case_id}: {error}")
        rows.append(_row(scan, out_dir, record, error))
        write_csv(summary, pd.DataFrame(rows, columns=list(COLUMNS)))
    print(f"wrote {summary}")
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        names = "; ".join(f"{r['case_id']} ({r['image']}): {str(r['error']).splitlines()[0]}" for r in failed)
        raise NeonetError(
            f"{len(failed)} of {len(rows)} scan(s) failed: {names}. The others are predicted; {summary} lists every scan "
            "with its error. Fix or remove the failed scans and run again."
        )
    return {"summary": str(summary), "rows": rows}
