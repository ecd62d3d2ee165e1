"""Does a scan belong to an experiment's cohort? By its content (SHA-256) or by its case id.

The cohort is the experiment's ``splits.json`` (case ids, which fold tests each case) and its
``cases.csv`` (found in a trained fold's ``config.yaml``; the scans whose content is compared). The
cohort scans' hashes are cached in ``cohort_sha256.json`` (a file is hashed again only when its size
or modification time changed). ``neonet predict-case`` uses :func:`cohort_matches` to say so when a
"new" scan is one the models were trained or tested on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neonet.data.cases import read_cases
from neonet.data.nifti import scan_sha256
from neonet.data.splits import read_splits
from neonet.errors import NeonetError
from neonet.run.atomic import read_json, write_json
from neonet.workspace import Workspace

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CohortMatch:
    """A scan that belongs to the experiment's cohort.

    Attributes:
        case_id: the cohort case it is.
        by: how it matched: ``content`` (its SHA-256 is the case's image's) and/or ``case_id``.
        test_fold: the fold that holds the case out (None when ``splits.json`` does not list it).
        trained_on: the folds whose training or inner validation set holds the case.
        content_differs: matched by case id alone while the case's scan is known and has other content
            (another scan under the same id: a later scan of the patient, or a reused name).
    """

    case_id: str
    by: tuple[str, ...]
    test_fold: int | None
    trained_on: tuple[int, ...]
    content_differs: bool = False

    def to_json(self) -> dict[str, Any]:
        """The match as plain JSON values."""
        return {
            "case_id": self.case_id,
            "matched_by": list(self.by),
            "test_fold": self.test_fold,
            "trained_on": list(self.trained_on),
            "content_differs": self.content_differs,
        }


def cohort_manifest(ws: Workspace) -> Path | None:
    """The experiment's ``cases.csv``, as a trained fold's ``config.yaml`` names it (None when none does or it is gone).

    A relative path is read from the working directory, else from the folders above the experiment: a
    runs folder opened from elsewhere (``--runs_dir /data/runs``) still finds ``runs/demo/data/cases.csv``.
    """
    import yaml

    for config in sorted(ws.root.glob("*/fold*/config.yaml")) if ws.root.is_dir() else []:
        try:
            args = ((yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("data") or {}).get("init_args") or {}
        except (OSError, yaml.YAMLError):
            continue
        found = resolve_manifest(ws, args["cases"]) if args.get("cases") else None
        if found is not None:
            return found
    return None


def resolve_manifest(ws: Workspace, named: str | Path) -> Path | None:
    """A ``cases.csv`` as a fold's config names it: read from the working directory, else (a relative path)
    from each folder above the experiment; None when it is nowhere."""
    path = Path(named)
    bases = [Path.cwd()] if path.is_absolute() else [Path.cwd(), *ws.root.resolve().parents]
    return next((base / path for base in bases if (base / path).is_file()), None)


def _stamp(path: Path) -> list[int]:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [sum(p.stat().st_size for p in files), max((p.stat().st_mtime_ns for p in files), default=0)]


def cohort_hashes(ws: Workspace, manifest: Path) -> dict[str, str]:
    """Case id → SHA-256 of its image (:func:`neonet.data.nifti.scan_sha256`), cached in ``ws.cohort_hashes``."""
    cached: dict[str, Any] = {}
    if ws.cohort_hashes.is_file():
        try:
            cached = dict(read_json(ws.cohort_hashes))
        except (NeonetError, TypeError, ValueError):
            cached = {}
    out: dict[str, Any] = {}
    for case in read_cases(manifest):
        if not case.image.exists():
            continue
        stamp = _stamp(case.image)
        old = cached.get(case.case_id) or {}
        if old.get("image") == str(case.image) and old.get("stamp") == stamp and old.get("sha256"):
            out[case.case_id] = old
            continue
        out[case.case_id] = {"image": str(case.image), "stamp": stamp, "sha256": scan_sha256(case.image)}
    if out != cached:
        write_json(ws.cohort_hashes, out)
    return {cid: str(v["sha256"]) for cid, v in out.items()}


def cohort_matches(ws: Workspace, case_ids: Sequence[str | None], scans: Sequence[Path]) -> list[CohortMatch | None]:
    """Which of ``scans`` (with their case ids, None when unknown) are cases of the experiment's cohort.

    A content match wins over an id match (a scan renamed is still the case it was). Without
    ``splits.json`` nothing matches; without a reachable ``cases.csv`` only case ids are compared (logged).

    Args:
        ws: the experiment.
        case_ids: each scan's case id (or None).
        scans: the scans (files or DICOM series folders).

    Returns:
        One entry per scan: its :class:`CohortMatch`, or None.
    """
    if not ws.splits_path.is_file():
        return [None] * len(scans)
    doc = read_splits(ws.splits_path)
    test_of: dict[str, int] = {}
    trained: dict[str, list[int]] = {}
    for entry in doc["splits"]:
        for cid in entry["test"]:
            test_of[str(cid)] = int(entry["fold"])
        for cid in [*entry["train"], *entry["val"]]:
            trained.setdefault(str(cid), []).append(int(entry["fold"]))
    known = set(doc.get("cases") or {}) | set(test_of) | set(trained)
    manifest = cohort_manifest(ws)
    by_hash: dict[str, str] = {}
    hash_of: dict[str, str] = {}
    if manifest is None:
        log.warning(
            "%s: no trained fold names a cases.csv that exists; scans are compared with the cohort by case id only", ws.root
        )
    else:
        hash_of = cohort_hashes(ws, manifest)
        by_hash = {h: cid for cid, h in hash_of.items()}
    out: list[CohortMatch | None] = []
    for cid, scan in zip(case_ids, scans):
        digest = scan_sha256(scan) if by_hash else None
        hit = by_hash.get(digest) if digest else None
        by = ["content"] if hit else []
        if cid is not None and cid in known and (hit is None or hit == cid):
            hit = cid
            by.append("case_id")
        if hit is None:
            out.append(None)
            continue
        differs = by == ["case_id"] and hit in hash_of and hash_of[hit] != digest
        out.append(CohortMatch(hit, tuple(by), test_of.get(hit), tuple(sorted(trained.get(hit, []))), differs))
    return out


def out_of_fold_prediction(ws: Workspace, stage: str, case_id: str) -> dict[str, Any] | None:
    """The classifier stage's out-of-fold test prediction of a cohort case (as ``neonet report`` reads it), or None.

    Returns:
        ``{"probability", "fold", "y_true", "file"}`` from ``<stage>/fold<k>/test_predictions.csv``.
    """
    from neonet.report.cls_report import load_predictions

    try:
        frame = load_predictions(ws, [stage])
    except NeonetError as exc:
        log.info("no out-of-fold prediction of %s: %s", case_id, exc)
        return None
    rows = frame[frame["case_id"] == case_id]
    if rows.empty:
        return None
    row = rows.iloc[0]
    fold = int(row["fold"])
    return {
        "probability": float(row["prob"]),
        "fold": fold,
        "y_true": int(row["y_true"]),
        "file": str(ws.test_predictions(stage, fold)),
    }
