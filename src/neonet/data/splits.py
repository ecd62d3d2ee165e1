"""Patient-level, PNI-stratified, seeded k-fold splits, written once per experiment.

Patients that share a ``group`` in ``cases.csv`` always land in the same fold (and on the same side
of the inner validation split); groups are stratified by their make-up of PNI labels.

``splits.json`` holds for every fold the test patients' cases, the training cases and an inner
validation split taken from the training patients (used for model selection, never the test fold).
Once written it is only read: if the case manifest changes, the run stops instead of re-splitting,
and once any fold of the experiment is trained a missing split file is an error, never re-made (the
trained folds' test patients would land in other folds). Every reader goes through :func:`read_splits`,
which names the file and the way on when it is damaged.

A manifest with a ``split`` column (``train``/``val``/``test`` in every row) gives the split instead:
exactly one fold (``"folds": 1, "given": true``) whose test set is the ``test`` rows and whose inner
validation is the ``val`` rows; ``neonet cv`` then runs that one fold, and reports say
"1 fold, given split" (:func:`folds_phrase`) instead of a spread over folds.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from neonet.data.cases import Case
from neonet.errors import DataError, SplitMismatchError
from neonet.run.atomic import read_json, write_json

if TYPE_CHECKING:
    from neonet.workspace import Workspace

#: The way on when ``splits.json`` is damaged: it cannot be re-made without invalidating trained folds.
SPLITS_REMEDY = (
    "It is the experiment's split file, which every trained fold of the experiment was trained and tested "
    "by: restore it from a backup or a copy of the experiment (neonet never re-makes it while folds exist). "
    "To start over with new splits, use a new experiment name (--data.experiment NAME)."
)


@dataclass(frozen=True)
class Fold:
    """The case ids of one fold."""

    fold: int
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]

    @property
    def fit(self) -> tuple[str, ...]:
        """All training-patient cases (train + inner validation)."""
        return self.train + self.val


def _patient_table(cases: list[Case]) -> dict[str, dict[str, Any]]:
    patients: dict[str, dict[str, Any]] = {}
    for case in cases:
        entry = patients.setdefault(case.patient_id, {"cases": [], "pni": set(), "group": case.group})
        entry["cases"].append(case.case_id)
        entry["pni"].add(case.pni)
        if case.group != entry["group"]:
            raise DataError(
                f"patient {case.patient_id}: case {case.case_id} is in group {case.group!r} but the patient's "
                f"other cases are in group {entry['group']!r}; give all cases of a patient the same group"
            )
    for pid, entry in patients.items():
        labels = entry["pni"] - {None}
        if len(labels) > 1:
            raise DataError(f"patient {pid}: cases {entry['cases']} have different pni labels")
        entry["pni"] = labels.pop() if labels else -1  # -1: unlabelled (stratified as its own class)
    return patients


def _unit_table(patients: dict[str, dict[str, Any]]) -> dict[tuple[int, str], dict[str, Any]]:
    """The units that are dealt into folds: a patient of its own, or all patients of one ``group``.

    A unit's stratum is the sorted tuple of its patients' labels, so a patient without a group is
    stratified by its own label and matched sets of equal make-up are dealt
    evenly over the folds.
    """
    units: dict[tuple[int, str], dict[str, Any]] = {}
    for pid in sorted(patients):
        group = patients[pid]["group"]
        key = (1, group) if group else (0, pid)
        units.setdefault(key, {"patients": []})["patients"].append(pid)
    for unit in units.values():
        unit["stratum"] = tuple(sorted(patients[p]["pni"] for p in unit["patients"]))
    return units


def _deal(ids: list[Any], n: int, rng: np.random.Generator, offset: int = 0) -> list[list[Any]]:
    """Shuffle ``ids`` and deal them round-robin into ``n`` bins, starting at bin ``offset``."""
    order = list(rng.permutation(len(ids)))
    bins: list[list[Any]] = [[] for _ in range(n)]
    for j, idx in enumerate(order):
        bins[(j + offset) % n].append(ids[idx])
    return bins


def manifest_fingerprint(cases: list[Case]) -> str:
    """Hash of (case_id, patient_id, pni[, group][, split]) of all cases; paths may move without changing it."""
    grouped, given = any(c.group for c in cases), any(c.split for c in cases)
    rows = sorted(
        (c.case_id, c.patient_id, c.pni, *((c.group,) if grouped else ()), *((c.split,) if given else ())) for c in cases
    )
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def _record(case: Case) -> dict[str, Any]:
    return {
        "patient_id": case.patient_id,
        "pni": case.pni,
        **({"group": case.group} if case.group else {}),
        **({"split": case.split} if case.split else {}),
    }


def is_given(cases: list[Case]) -> bool:
    """Whether the manifest gives its own split (a ``split`` column)."""
    return any(c.split for c in cases)


def planned_folds(cases: list[Case], folds: int) -> int:
    """How many folds the experiment has: 1 for a given split, else ``folds``."""
    return 1 if is_given(cases) else int(folds)


def folds_phrase(doc: dict[str, Any] | None) -> str:
    """How reports name the folds of a split document: ``"1 fold, given split"`` or ``"5 folds"``."""
    if not doc:
        return "folds unknown (no splits.json)"
    n = int(doc["folds"])
    return "1 fold, given split" if doc.get("given") else f"{n} fold{'s' if n != 1 else ''}"


def given_split(cases: list[Case]) -> dict[str, Any]:
    """The split document of a manifest with a ``split`` column: one fold, test = ``test`` rows, inner
    validation = ``val`` rows, training = ``train`` rows.

    Raises:
        DataError: a row has no split, a patient or group spans several splits, or a split is empty.
    """
    ids = [c.case_id for c in cases]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise DataError(f"duplicate case ids in the manifest: {', '.join(dupes)}")
    _patient_table(cases)  # one pni label and one group per patient
    empty = [c.case_id for c in cases if not c.split]
    if empty:
        raise DataError(f"cases {', '.join(empty[:10])} have no split: give train, val or test in every row of the split column")
    for key, what in ((lambda c: c.patient_id, "patient"), (lambda c: c.group, "group")):
        seen: dict[str, set[str]] = {}
        for c in cases:
            if key(c):
                seen.setdefault(key(c), set()).add(c.split)
        mixed = sorted(k for k, v in seen.items() if len(v) > 1)
        if mixed:
            raise DataError(
                f"{what}(s) {', '.join(mixed[:10])} have cases in several splits ({', '.join(sorted(seen[mixed[0]]))} "
                f"for {mixed[0]}): that would test on patients the model trained on; give all cases of a {what} one split"
            )
    parts = {s: sorted(c.case_id for c in cases if c.split == s) for s in ("train", "val", "test")}
    missing = [s for s, v in parts.items() if not v]
    if missing:
        raise DataError(
            f"the split column has no {' and no '.join(missing)} rows; a given split needs training (train), inner "
            "validation (val, for model selection) and test cases"
        )
    return {
        "folds": 1,
        "given": True,
        "seed": None,
        "val_fraction": None,
        "fingerprint": manifest_fingerprint(cases),
        "cases": {c.case_id: _record(c) for c in sorted(cases, key=lambda c: c.case_id)},
        "splits": [{"fold": 0, **parts}],
    }


def make_splits(cases: list[Case], folds: int = 5, seed: int = 0, val_fraction: float = 0.2) -> dict[str, Any]:
    """Build the split document (not written).

    Args:
        cases: all cases of the experiment.
        folds: number of folds k (>= 2).
        seed: random seed.
        val_fraction: fraction of each fold's training patients held out as inner validation.
    """
    if folds < 2:
        raise ValueError("folds must be >= 2")
    ids = [c.case_id for c in cases]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise DataError(f"duplicate case ids in the manifest: {', '.join(dupes)}")
    patients = _patient_table(cases)
    units = _unit_table(patients)
    if len(units) < folds:
        what = "patient groups" if any(c.group for c in cases) else "patients"
        raise DataError(f"{len(units)} {what} cannot be split into {folds} folds")
    rng = np.random.default_rng(seed)
    by_stratum: dict[tuple[int, ...], list[tuple[int, str]]] = {}
    for key in sorted(units):
        by_stratum.setdefault(units[key]["stratum"], []).append(key)
    test_bins: list[list[tuple[int, str]]] = [[] for _ in range(folds)]
    offset = 0
    for stratum in sorted(by_stratum):
        for k, bin_ in enumerate(_deal(by_stratum[stratum], folds, rng, offset)):
            test_bins[k].extend(bin_)
        offset += len(by_stratum[stratum])  # keep fold sizes balanced across strata
    doc_folds = []
    for k in range(folds):
        test_u = set(test_bins[k])
        train_u = [u for u in sorted(units) if u not in test_u]
        val_u: list[tuple[int, str]] = []
        fold_rng = np.random.default_rng([seed, k])
        for stratum in sorted(by_stratum):
            cls = [u for u in train_u if units[u]["stratum"] == stratum]
            n_val = int(round(val_fraction * len(cls)))
            if val_fraction > 0 and len(cls) >= 2:
                n_val = max(1, n_val)
            val_u += [cls[i] for i in sorted(fold_rng.permutation(len(cls))[:n_val])]
        val_set = set(val_u)

        def cases_of(keys: set[tuple[int, str]] | list[tuple[int, str]]) -> list[str]:
            return sorted(cid for u in keys for p in units[u]["patients"] for cid in patients[p]["cases"])

        doc_folds.append(
            {
                "fold": k,
                "train": cases_of([u for u in train_u if u not in val_set]),
                "val": cases_of(val_set),
                "test": cases_of(test_u),
            }
        )
    return {
        "folds": folds,
        "seed": seed,
        "val_fraction": val_fraction,
        "fingerprint": manifest_fingerprint(cases),
        "cases": {c.case_id: _record(c) for c in sorted(cases, key=lambda c: c.case_id)},
        "splits": doc_folds,
    }


def check_splits_match(doc: dict[str, Any], cases: list[Case], path: Path) -> None:
    """Raise SplitMismatchError when ``cases`` differ from the cases recorded in ``doc``."""
    if doc.get("fingerprint") == manifest_fingerprint(cases):
        return
    recorded = doc.get("cases", {})
    now = {c.case_id: _record(c) for c in cases}
    added = sorted(set(now) - set(recorded))
    removed = sorted(set(recorded) - set(now))
    parts: list[str] = []
    changed = sorted(cid for cid in set(now) & set(recorded) if now[cid] != recorded[cid])
    if bool(doc.get("given")) != is_given(cases):
        parts.append("the split column was " + ("removed" if doc.get("given") else "added"))
    if added:
        parts.append(f"added: {', '.join(added[:10])}{' ...' if len(added) > 10 else ''}")
    if removed:
        parts.append(f"removed: {', '.join(removed[:10])}{' ...' if len(removed) > 10 else ''}")
    if changed:
        what = "pni/patient/group/split" if doc.get("given") or is_given(cases) else "pni/patient/group"
        parts.append(f"{what} changed: {', '.join(changed[:10])}{' ...' if len(changed) > 10 else ''}")
    raise SplitMismatchError(
        f"the case manifest no longer matches {path} ({'; '.join(parts) or 'contents differ'}). "
        "Splits are never silently remade, because results of earlier folds would become invalid. "
        "Either restore the manifest, or use a new experiment name (--data.experiment NAME), "
        f"or delete {path} and every result of this experiment to re-split."
    )


def read_splits(path: str | Path) -> dict[str, Any]:
    """A split file written by :func:`ensure_splits`, checked for its shape.

    Raises:
        FileNotFoundError: there is no split file at ``path``.
        NeonetError: the file is truncated, not JSON, or not a split file; the message names it and the way on.
    """
    path = Path(path)
    doc = read_json(path, remedy=SPLITS_REMEDY)
    try:
        n = int(doc["folds"])
        entries = doc["splits"]
        shaped = (n >= 2 or (n == 1 and bool(doc.get("given")))) and isinstance(entries, list) and len(entries) == n
        shaped = shaped and all(isinstance(e, dict) and {"train", "val", "test"} <= set(e) for e in entries)
    except (TypeError, KeyError, ValueError):
        shaped = False
    if not shaped:
        raise SplitMismatchError(
            f"{path}: not a split file written by neonet (it needs `folds` (2 or more, or 1 with `given`) and "
            f"one `splits` entry with train/val/test per fold). {SPLITS_REMEDY}"
        )
    return dict(doc)


def check_missing_splits(ws: Workspace) -> None:
    """Refuse to make a new split file for an experiment whose folds are already trained.

    Raises:
        SplitMismatchError: ``splits.json`` is missing but fold results (``artifact.json``, checkpoints)
            exist; the message names them and the ways on.
    """
    if ws.splits_path.exists():
        return
    found = ws.fold_results()
    if not found:
        return
    shown = ", ".join(str(p) for p in found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
    raise SplitMismatchError(
        f"{ws.splits_path} is missing, but experiment {ws.experiment!r} has trained folds ({shown}). They were "
        "trained and tested by that split file, and a new one would put cases they trained on into other folds' "
        "test sets, so it is not re-made. Restore splits.json from a backup or a copy of the experiment; or train "
        "in a new experiment (--data.experiment NAME); or, to re-split this one, move its fold folders "
        f"(<stage>/fold<k> under {ws.root}) elsewhere first."
    )


def ensure_splits(
    path: str | Path,
    cases: list[Case],
    folds: int = 5,
    seed: int = 0,
    val_fraction: float = 0.2,
    workspace: Workspace | None = None,
) -> dict[str, Any]:
    """Read the split file, or write it if it does not exist yet; check it matches ``cases``.

    A manifest with a ``split`` column gives one fold (:func:`given_split`); ``folds``, ``seed`` and
    ``val_fraction`` are then not used.

    Args:
        path: the split file.
        cases: every case of the manifest.
        folds: number of folds of a new split file (an existing one must have as many, unless the split is given).
        seed: random seed of a new split file.
        val_fraction: inner validation fraction of a new split file.
        workspace: the experiment ``path`` belongs to; when given, a missing split file is refused
            while the experiment has trained folds (:func:`check_missing_splits`).
    """
    path = Path(path)
    if path.exists():
        doc = read_splits(path)
        check_splits_match(doc, cases, path)
        if not doc.get("given") and int(doc["folds"]) != int(folds):
            raise SplitMismatchError(
                f"{path} has {doc['folds']} folds but {folds} were requested; "
                "use the recorded number of folds or a new experiment name"
            )
        return doc
    if workspace is not None:
        check_missing_splits(workspace)
    doc = given_split(cases) if is_given(cases) else make_splits(cases, folds=folds, seed=seed, val_fraction=val_fraction)
    write_json(path, doc)
    return doc


def get_fold(doc: dict[str, Any], fold: int) -> Fold:
    """The ``Fold`` record of fold ``k`` from a split document."""
    n = int(doc["folds"])
    if not 0 <= int(fold) < n:
        raise ValueError(f"fold {fold} does not exist: the split file has folds 0..{n - 1}")
    entry = doc["splits"][int(fold)]
    fold_ = Fold(int(fold), tuple(entry["train"]), tuple(entry["val"]), tuple(entry["test"]))
    for name, part in (("train", fold_.train), ("val", fold_.val)):
        shared = sorted(set(part) & set(fold_.test))
        if shared:
            raise SplitMismatchError(
                f"fold {fold} of the split file lists {len(shared)} case(s) in both test and {name} "
                f"({', '.join(shared[:5])}{' ...' if len(shared) > 5 else ''}): that would train on test patients. "
                "Restore the split file neonet wrote, or delete it (and the experiment's results) to re-split."
            )
    return fold_
