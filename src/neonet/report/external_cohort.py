"""Checks that an external cohort may be evaluated with an experiment's folds (``neonet evaluate``).

An external cohort took no part in the experiment's cross-validation: no case of it may carry a case
id of the experiment's cohort (``splits.json``) or hold a scan whose content (SHA-256,
:func:`neonet.data.nifti.scan_sha256`) is one of the experiment's scans, under any id. Its manual
labels must use the label map the NeoSeg folds were trained with (``liver``/``tumor``/``other`` of
their ``config.yaml``), so that Dice compares the same regions. Every refusal names the cases, the
files and the way on, before anything is written.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from neonet.data.cases import Case, LabelMap, read_cases
from neonet.data.nifti import load_nifti, read_array, scan_sha256
from neonet.data.splits import read_splits
from neonet.errors import DataError, NeonetError
from neonet.workspace import Workspace

log = logging.getLogger(__name__)

#: At most this many cases are named in one refusal.
SHOWN = 10


def fold_data_args(ws: Workspace, stage: str, fold: int) -> dict[str, Any]:
    """``data.init_args`` of a fold's ``config.yaml`` (read with ``yaml.safe_load``; empty when absent)."""
    path = ws.config_path(stage, fold)
    if not path.is_file():
        return {}
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise NeonetError(
            f"{path}: cannot read the fold's config ({exc}); re-train the fold:\n    {ws.retrain_command(stage, fold)}"
        ) from exc
    return dict(((cfg.get("data") or {}).get("init_args")) or {})


def experiment_label_map(ws: Workspace, folds: list[int]) -> tuple[LabelMap, Path | None]:
    """The label map of the NeoSeg folds (their ``config.yaml``) and the file it was read from.

    Raises:
        NeonetError: the folds were trained with different label maps.
    """
    found: dict[LabelMap, Path] = {}
    for k in folds:
        args = fold_data_args(ws, "seg", k)
        if not args:
            continue
        given = {key: args.get(key) for key in ("liver", "tumor", "other")}
        label_map = LabelMap(
            tuple([1] if given["liver"] is None else given["liver"]),
            tuple([2] if given["tumor"] is None else given["tumor"]),  # [] stays []: a liver-only label set
            tuple(given["other"] or []),
        )
        found.setdefault(label_map, ws.config_path("seg", k))
    if len(found) > 1:
        listed = ", ".join(f"{p}: {describe(m)}" for m, p in found.items())
        raise NeonetError(f"the NeoSeg folds were trained with different label maps: {listed}")
    if not found:
        return LabelMap(), None
    ((label_map, path),) = found.items()
    return label_map, path


def describe(label_map: LabelMap) -> str:
    """``liver=[1], tumor=[2], other=[]``."""
    return f"liver={list(label_map.liver)}, tumor={list(label_map.tumor)}, other={list(label_map.other)}"


def check_label_map(given: LabelMap | None, ours: LabelMap, source: Path | None, cases: list[Case], csv: Path) -> None:
    """Refuse an external cohort whose label map differs from the NeoSeg folds': the one stated with
    ``--liver/--tumor/--other``, or one its label files show (values the folds' map does not know).

    Raises:
        DataError: naming both maps, the cases and values found, and the way on.
    """
    where = f" ({source})" if source else " (the default)"
    remedy = (
        f"Relabel the external masks to the experiment's values ({describe(ours)}), e.g. with a script that maps "
        "each value, and run neonet evaluate again without --liver/--tumor/--other"
    )
    if given is not None and given != ours:
        raise DataError(
            f"{csv}: the external cohort's label map ({describe(given)}) differs from the one the experiment's NeoSeg "
            f"folds were trained with{where}: {describe(ours)}. Dice, HD95 and NSD would compare other regions than "
            f"NeoSeg learned. {remedy}"
        )
    bad = []
    for case in cases:
        if case.label is None:
            continue
        values = np.unique(np.rint(read_array(load_nifti(case.label, case.case_id, "label"), case.label, case.case_id, "label")))
        unknown = sorted(set(values.astype(np.int64).tolist()) - ours.known_values)
        if unknown:
            bad.append(f"case {case.case_id}: {case.label}: values {unknown[:8]}")
    if bad:
        raise DataError(
            f"{csv}: {len(bad)} external label file(s) hold values the experiment's label map does not know, so their "
            f"label map differs from the NeoSeg folds'{where} ({describe(ours)}):\n  "
            + "\n  ".join(bad[:SHOWN])
            + (f"\n  ... and {len(bad) - SHOWN} more" if len(bad) > SHOWN else "")
            + f"\n{remedy}"
        )


def experiment_manifests(ws: Workspace, stages: dict[str, list[int]]) -> list[Path]:
    """The ``cases.csv`` files the folds of ``stages`` were trained on (``data.init_args.cases`` of each fold;
    a relative path found as :func:`neonet.predict.membership.resolve_manifest` finds it, else as named)."""
    from neonet.predict.membership import resolve_manifest

    found: list[Path] = []
    for stage, folds in stages.items():
        for k in folds:
            cases = fold_data_args(ws, stage, k).get("cases")
            path = (resolve_manifest(ws, cases) or Path(cases)) if cases else None
            if path is not None and path not in found:
                found.append(path)
    return found


def check_disjoint(ws: Workspace, external: list[Case], csv: Path, stages: dict[str, list[int]]) -> dict[str, Any]:
    """Refuse external cases that belong to the experiment's cohort, by case id or by scan content.

    The experiment's cohort is every case of ``splits.json`` and every case of the manifests its folds
    were trained on (:func:`experiment_manifests`).

    Returns:
        What was compared (for ``external.json``): the manifests and how many scans were hashed.

    Raises:
        DataError: naming each reused case (and the experiment case whose scan it is), and the way on.
        NeonetError: a manifest the folds were trained on cannot be read, so content cannot be checked.
    """
    ids: set[str] = set()
    if ws.splits_path.is_file():
        ids |= set(read_splits(ws.splits_path).get("cases", {}))
    manifests = experiment_manifests(ws, stages)
    ours: list[Case] = []
    for path in manifests:
        if not path.is_file():
            raise NeonetError(
                f"{path}: the cohort the experiment's folds were trained on (named in their config.yaml) is not there, so "
                "the external scans cannot be checked against its scans' content. Restore it at that path."
            )
        ours += read_cases(path)
    ids |= {c.case_id for c in ours}
    reused = [c.case_id for c in external if c.case_id in ids]
    if reused:
        raise DataError(
            f"{csv}: case id(s) {', '.join(reused[:SHOWN])}{' ...' if len(reused) > SHOWN else ''} belong to experiment "
            f"{ws.experiment!r}'s cohort ({ws.splits_path}): an external cohort must take no part in the experiment's "
            "cross-validation. Remove those rows (or, if they are other patients, give them their own case ids)."
        )
    digests: dict[str, str] = {}
    for case in ours:
        if case.image.exists():
            digests.setdefault(scan_sha256(case.image), case.case_id)
    same = []
    for case in external:
        hit = digests.get(scan_sha256(case.image)) if case.image.exists() else None
        if hit is not None:
            same.append(f"{case.case_id} ({case.image}) is experiment case {hit}")
    if same:
        raise DataError(
            f"{csv}: {len(same)} external scan(s) have the same content (SHA-256) as scans of experiment "
            f"{ws.experiment!r}'s cohort, under other case ids: {'; '.join(same[:SHOWN])}"
            f"{' ...' if len(same) > SHOWN else ''}. The folds trained or were tested on them; remove those rows."
        )
    return {"manifests": [str(p) for p in manifests], "ids_compared": len(ids), "scans_hashed": len(digests)}
