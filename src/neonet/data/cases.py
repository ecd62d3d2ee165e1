"""The case manifest (``cases.csv``) and the label map.

``cases.csv`` columns: ``case_id``, ``image``, ``label``, ``pni`` and optionally ``patient_id``,
``group`` (patients that must share a fold, e.g. the matched sets of a matched phantom cohort) and
``split`` (``train``/``val``/``test``: a given one-fold split instead of k-fold cross-validation).
Paths are relative to the CSV's folder (absolute paths are accepted). ``label`` may be empty for
a case without a manual mask; ``pni`` may be empty only for cases used for segmentation alone.

A ``case_id`` names the case's files (``patches/images/<case_id>.nii.gz``,
``seg/predictions/<case_id>.nii.gz``), so it must be one safe file name (:func:`case_id_problem`):
letters, digits, ``.``, ``_`` and ``-``, starting with a letter or digit, at most
:data:`CASE_ID_MAX_LENGTH` characters. :func:`case_file` is the one way a case id becomes a path.

The file is read as UTF-8 with or without a byte-order mark (Excel's "CSV UTF-8"); blank lines are
skipped, and every message names the row by its line number in the file.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from neonet.errors import DataError

REQUIRED_COLUMNS = ("case_id", "image", "label", "pni")
OPTIONAL_COLUMNS = ("patient_id", "group", "split")
#: Values of the optional ``split`` column (a given one-fold split, :mod:`neonet.data.splits`).
SPLIT_VALUES = ("train", "val", "test")

#: What a case id may be: one file name that cannot leave its folder (no ``/``, no leading ``.``).
CASE_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
#: Longest case id (file systems allow 255 bytes per name, and suffixes such as ``.nii.gz`` are added).
CASE_ID_MAX_LENGTH = 100
#: How the case id rule reads in messages.
CASE_ID_RULE = f"letters, digits, '.', '_' and '-' only, starting with a letter or digit, at most {CASE_ID_MAX_LENGTH} characters"
#: At most this many row problems are listed in one error message.
MAX_ROW_ERRORS = 20

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

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> LabelMap:
        """The label map of a DataModule's ``init_args`` (absent keys take the defaults; ``tumor: []`` stays
        empty: a liver-only label set lists no tumour values)."""
        given = {key: args.get(key) for key in ("liver", "tumor", "other")}
        return cls(**{key: tuple(value) for key, value in given.items() if value is not None})

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
        row: the row's line number in the CSV file (the header's line is 1 when it is the first line;
            blank lines count), for error messages.
        group: patients with the same non-empty group are always put in the same fold (empty: the
            patient is a group of its own).
        split: ``train``, ``val`` or ``test`` from the optional ``split`` column (a given one-fold
            split), or empty.
    """

    case_id: str
    image: Path
    label: Path | None
    pni: int | None
    patient_id: str
    row: int = 0
    group: str = ""
    split: str = ""
    extra: dict[str, str] = field(default_factory=dict, compare=False, repr=False)


def case_id_problem(case_id: str) -> str | None:
    """Why ``case_id`` cannot name a case's files, or None when it can.

    A case id is used as a file name (``<folder>/<case_id>.nii.gz``), so it must be one path
    component that stays inside its folder: it matches :data:`CASE_ID_PATTERN` and is at most
    :data:`CASE_ID_MAX_LENGTH` characters long.
    """
    if not case_id:
        return "empty case_id; give every row a unique case id"
    if len(case_id) <= CASE_ID_MAX_LENGTH and CASE_ID_PATTERN.fullmatch(case_id):
        return None
    if "/" in case_id or "\\" in case_id:
        why = "it contains a path separator, so its files would be written in other folders"
    elif case_id.startswith("."):
        why = "it starts with '.'"
    elif len(case_id) > CASE_ID_MAX_LENGTH:
        why = f"it is {len(case_id)} characters long"
    else:
        bad = sorted({c for c in case_id if not (c.isascii() and (c.isalnum() or c in "._-"))})
        why = f"it contains {', '.join(repr(c) for c in bad)}" if bad else f"it starts with {case_id[0]!r}"
    return (
        f"case_id {case_id!r} cannot be used as a file name ({why}); rename the case id in the manifest, "
        f"e.g. to {safe_file_name(case_id)!r} ({CASE_ID_RULE})"
    )


def safe_file_name(text: str, default: str = "case_001") -> str:
    """``text`` made one safe file name under the case id rule: every run of other characters
    becomes ``_``, leading and trailing ``.``/``_``/``-`` are dropped, and it is cut to
    :data:`CASE_ID_MAX_LENGTH` characters; ``default`` when nothing is left."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-")[:CASE_ID_MAX_LENGTH].rstrip("._-")
    return name or default


def case_file(folder: str | os.PathLike, case_id: str, suffix: str = ".nii.gz") -> Path:
    """``<folder>/<case_id><suffix>``: the one way a case id becomes a path.

    Raises:
        DataError: ``case_id`` is not one safe file name (see :func:`case_id_problem`), so the path
            could leave ``folder``.
    """
    problem = case_id_problem(case_id)
    if problem is not None:
        raise DataError(problem)
    return Path(folder) / f"{case_id}{suffix}"


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


class ManifestRow(dict[str, str]):
    """One row of ``cases.csv`` (column → value, whitespace stripped) and where it is in the file.

    Attributes:
        line: the row's (first) line number in the file, counting from 1 (the header's line
            included, blank lines too), as a text editor shows it.
        surplus: the non-empty values beyond the header's columns (a row with more fields than the
            header; trailing empty fields are ignored).
    """

    def __init__(self, values: dict[str, str], line: int, surplus: tuple[str, ...] = ()) -> None:
        super().__init__(values)
        self.line = line
        self.surplus = surplus


def parse_manifest(csv_path: str | os.PathLike) -> tuple[list[str], list[ManifestRow]]:
    """Parse ``cases.csv`` into (header, rows) without judging the values.

    UTF-8 with or without a byte-order mark; blank lines (also lines of empty fields only, as Excel
    writes them) are skipped; each row keeps its line number in the file. A short row's missing
    fields read as empty.

    Raises:
        DataError: the file is missing, unreadable, not UTF-8 text or not CSV; the message names the
            file, the line where possible and what to do.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: case manifest not found (create it as described in data/README.md)")
    header: list[str] | None = None
    rows: list[ManifestRow] = []
    line = 1
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            while True:
                line = reader.line_num + 1  # the first line of the next record
                try:
                    fields = next(reader)
                except StopIteration:
                    break
                values = [f.strip() for f in fields]
                if not any(values):
                    continue  # a blank line
                if header is None:
                    header = values
                    continue
                surplus = tuple(v for v in values[len(header) :] if v)
                padded = values[: len(header)] + [""] * (len(header) - len(values))
                rows.append(ManifestRow(dict(zip(header, padded)), line, surplus))
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{csv_path}: line {_first_non_utf8_line(csv_path)}: the case manifest is not UTF-8 text "
            f"({exc.reason}); save it as UTF-8 (Excel: 'CSV UTF-8 (Comma delimited)')"
        ) from exc
    except csv.Error as exc:
        raise DataError(f"{csv_path}: line {line}: not a valid CSV row ({exc}); fix or remove that line") from exc
    except OSError as exc:
        raise DataError(f"{csv_path}: cannot read the case manifest: {exc}") from exc
    return header or [], rows


def _first_non_utf8_line(csv_path: Path) -> int | str:
    """The line of the first byte that is not UTF-8 ("?" if the file cannot be read again)."""
    try:
        raw = csv_path.read_bytes()
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return raw[: exc.start].count(b"\n") + 1
    except OSError:
        pass
    return "?"


def header_problem(csv_path: str | os.PathLike, header: list[str]) -> str | None:
    """What is wrong with the manifest's header (no header, a missing or repeated column), or None."""
    if not header:
        return f"{csv_path}: the case manifest is empty; its first line must be the header {','.join(REQUIRED_COLUMNS)}"
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        hint = ""
        if len(header) == 1 and any(sep in header[0] for sep in ";\t"):
            hint = "; the columns look separated by ';' or tabs: save the file as comma-separated CSV"
        return (
            f"{csv_path}: missing column(s) {', '.join(missing)}; "
            f"expected {', '.join(REQUIRED_COLUMNS)} (+ optional patient_id, group){hint}"
        )
    repeated = sorted({c for c in header if c and header.count(c) > 1})
    if repeated:
        return f"{csv_path}: column(s) {', '.join(repeated)} appear more than once in the header; keep one of each"
    return None


def surplus_problem(row: ManifestRow, n_columns: int) -> str | None:
    """The problem of a row with more (non-empty) fields than the header has columns, or None."""
    if not row.surplus:
        return None
    return (
        f"{n_columns + len(row.surplus)} or more fields but the header has {n_columns} columns "
        f"(extra value(s) {', '.join(repr(v) for v in row.surplus[:3])}); quote a value that contains a comma "
        '("a,b") or remove the extra fields'
    )


def read_cases_raw(csv_path: str | os.PathLike) -> tuple[list[str], list[ManifestRow]]:
    """Read ``cases.csv`` as (header, rows of strings); raises DataError if it cannot be read
    or lacks a required column. Each row knows its line number in the file (``row.line``)."""
    header, rows = parse_manifest(csv_path)
    problem = header_problem(csv_path, header)
    if problem is not None:
        raise DataError(problem)
    return header, rows


def split_problem(row: ManifestRow, header: list[str]) -> str | None:
    """What is wrong with the row's ``split`` value (the column is optional; when present every row needs one
    of :data:`SPLIT_VALUES`, in any case), or None."""
    if "split" not in header or row.get("split", "").lower() in SPLIT_VALUES:
        return None
    return (
        f"split {row.get('split', '')!r}: give train, val or test in every row of the split column "
        "(or remove the column for k-fold cross-validation)"
    )


def _raise_row_errors(csv_path: Path, errors: list[str]) -> None:
    if not errors:
        return
    shown = errors[:MAX_ROW_ERRORS]
    more = f"\n  ... and {len(errors) - len(shown)} more" if len(errors) > len(shown) else ""
    if len(errors) == 1:
        raise DataError(f"{csv_path}: {errors[0]}")
    raise DataError(
        f"{csv_path}: {len(errors)} problem(s) in the case manifest; fix them "
        f"(`neonet check-data --cases {csv_path}` lists every problem):\n  " + "\n  ".join(shown) + more
    )


def read_cases(csv_path: str | os.PathLike) -> list[Case]:
    """Read and resolve ``cases.csv``.

    This checks only the manifest itself (every case id one safe file name and unique, ``pni``
    0/1/empty, no row with more fields than the header); ``neonet.data.validate.check_cases``
    checks the files.

    Raises:
        DataError: the manifest cannot be read, or rows are invalid; the message names the file and
            each row by its line number.
    """
    csv_path = Path(csv_path)
    header, rows = read_cases_raw(csv_path)
    base = csv_path.resolve().parent
    cases: list[Case] = []
    errors: list[str] = []
    first_line: dict[str, int] = {}
    for row in rows:
        cid = row.get("case_id", "")
        bad_id = case_id_problem(cid)
        where = f"line {row.line}" + ("" if bad_id else f" (case {cid})")
        problems = [surplus_problem(row, len(header)), bad_id]
        if cid and cid in first_line:
            problems.append(f"duplicate case_id {cid!r} (first used on line {first_line[cid]}); case ids must be unique")
        first_line.setdefault(cid, row.line)
        try:
            pni = parse_pni(row.get("pni", ""))
        except ValueError as exc:
            problems.append(str(exc))
            pni = None
        split = row.get("split", "").lower()
        problems.append(split_problem(row, header))
        found = [p for p in problems if p]
        if found:
            errors += [f"{where}: {p}" for p in found]
            continue
        label = row.get("label", "")
        cases.append(
            Case(
                case_id=cid,
                image=_resolve(base, row.get("image", "")),
                label=_resolve(base, label) if label else None,
                pni=pni,
                patient_id=row.get("patient_id") or cid,
                row=row.line,
                group=row.get("group", ""),
                split=split,
                extra={k: v for k, v in row.items() if k not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS},
            )
        )
    _raise_row_errors(csv_path, errors)
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
            | ({"split": c.split} if any(o.split for o in cases) else {})
            for c in cases
        ]
    )
    return write_csv(csv_path, frame)
