"""The case manifest (``cases.csv``) and the label map.

``cases.csv`` columns: ``case_id``, ``image``, ``label``, ``pni`` and optionally ``patient_id`` and
``group`` (patients that must share a fold, e.g. the matched sets of a matched phantom cohort).
Paths are relative to the CSV's folder (absolute paths are accepted). ``label`` may be empty for
a case without a manual mask; ``pni`` may be empty only for cases used for segmentation alone.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from neonet.errors import DataError

REQUIRED_COLUMNS = ("case_id", "image", "label", "pni")
OPTIONAL_COLUMNS = ("patient_id", "group")

#: Project label convention for segmentation masks (NeoSeg output and training targets).
BACKGROUND, LIVER, TUMOR = 0, 1, 2


@dataclass(frozen=True)
class LabelMap:
    """Which values of a label file mean liver and tumour.

    Values listed in ``other`` (e.g. kidneys, spleen in a multi-organ map) are mapped to
    background; any value not listed anywhere (and not 0) is an error found by ``check-data``.

    Args:
        liver: label values that mean liver parenchyma.
        tumor: label values that mean tumour.
        other: label values to treat as background.
    """

    liver: tuple[int, ...] = (1,)
    tumor: tuple[int, ...] = (2,)
    other: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "liver", tuple(int(v) for v in self.liver))
        object.__setattr__(self, "tumor", tuple(int(v) for v in self.tumor))
        object.__setattr__(self, "other", tuple(int(v) for v in self.other))
        seen: dict[int, str] = {}
        for name in ("liver", "tumor", "other"):
            for value in getattr(self, name):
                if value == 0:
                    raise ValueError(f"label map: 0 is always background, do not list it under {name}")
                if value in seen:
                    raise ValueError(f"label map: value {value} is listed under both {seen[value]} and {name}")
                seen[value] = name

    @property
    def known_values(self) -> set[int]:
        """All values a valid label file may contain."""
        return {0, *self.liver, *self.tumor, *self.other}

    def apply(self, label: np.ndarray) -> np.ndarray:
        """Map a raw label array to the project convention (0 background, 1 liver, 2 tumour)."""
        raw = np.rint(np.asarray(label)).astype(np.int64)
        out = np.zeros(raw.shape, dtype=np.uint8)
        out[np.isin(raw, self.liver)] = LIVER
        out[np.isin(raw, self.tumor)] = TUMOR
        return out


@dataclass(frozen=True)
class Case:
    """One row of ``cases.csv`` with its paths resolved.

    Args:
        case_id: unique case identifier (used in file names).
        image: path of the MRI volume.
        label: path of the label volume, or None.
        pni: 1 for PNI+, 0 for PNI-, None when unknown.
        patient_id: patient identifier (defaults to ``case_id``); splits are made per patient.
        row: 1-based row number in the CSV (header is row 1), for error messages.
        group: patients with the same non-empty group are always put in the same fold (empty: the
            patient is a group of its own).
    """

    case_id: str
    image: Path
    label: Path | None
    pni: int | None
    patient_id: str
    row: int = 0
    group: str = ""
    extra: dict[str, str] = field(default_factory=dict, compare=False, repr=False)


def _resolve(base: Path, value: str) -> Path:
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else (base / path)


def parse_pni(value: str) -> int | None:
    """Parse the ``pni`` column: '' → None, '0'/'1' → int; anything else raises ValueError."""
    text = (value or "").strip()
    if text == "":
        return None
    if text in ("0", "1", "0.0", "1.0"):
        return int(float(text))
    raise ValueError(f"pni must be 0 or 1 (or empty), got {text!r}")


def read_cases_raw(csv_path: str | os.PathLike) -> tuple[list[str], list[dict[str, str]]]:
    """Read ``cases.csv`` as (header, rows of strings); raises DataError if it cannot be read."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: case manifest not found (create it as described in data/README.md)")
    try:
        with open(csv_path, newline="") as handle:
            reader = csv.DictReader(handle)
            header = [h.strip() for h in (reader.fieldnames or [])]
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{csv_path}: cannot read the case manifest: {exc}") from exc
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise DataError(
            f"{csv_path}: missing column(s) {', '.join(missing)}; "
            f"expected {', '.join(REQUIRED_COLUMNS)} (+ optional patient_id, group)"
        )
    return header, rows


def read_cases(csv_path: str | os.PathLike) -> list[Case]:
    """Read and resolve ``cases.csv``. Raises DataError on an unparsable row.

    This checks only the manifest itself; ``neonet.data.validate.check_cases`` checks the files.
    """
    csv_path = Path(csv_path)
    _, rows = read_cases_raw(csv_path)
    base = csv_path.resolve().parent
    cases: list[Case] = []
    for i, row in enumerate(rows, start=2):
        cid = row.get("case_id", "")
        if not cid:
            raise DataError(f"{csv_path}: row {i}: empty case_id")
        try:
            pni = parse_pni(row.get("pni", ""))
        except ValueError as exc:
            raise DataError(f"{csv_path}: row {i} (case {cid}): {exc}") from exc
        label = row.get("label", "")
        cases.append(
            Case(
                case_id=cid,
                image=_resolve(base, row.get("image", "")),
                label=_resolve(base, label) if label else None,
                pni=pni,
                patient_id=row.get("patient_id") or cid,
                row=i,
                group=row.get("group", ""),
                extra={k: v for k, v in row.items() if k not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS},
            )
        )
    return cases


def write_cases(csv_path: str | os.PathLike, cases: list[Case]) -> Path:
    """Write cases to a manifest with paths relative to the CSV's folder (atomically)."""
    import pandas as pd

    from neonet.run.atomic import write_csv

    csv_path = Path(csv_path)
    base = csv_path.resolve().parent

    def rel(path: Path | None) -> str:
        if path is None:
            return ""
        try:
            return os.path.relpath(Path(path).resolve(), base)
        except ValueError:
            return str(path)

    frame = pd.DataFrame(
        [
            {
                "case_id": c.case_id,
                "image": rel(c.image),
                "label": rel(c.label),
                "pni": "" if c.pni is None else int(c.pni),
                "patient_id": c.patient_id,
            }
            | ({"group": c.group} if any(o.group for o in cases) else {})
            for c in cases
        ]
    )
    return write_csv(csv_path, frame)
