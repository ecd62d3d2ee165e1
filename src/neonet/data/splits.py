"""Patient-level, PNI-stratified, seeded k-fold splits, written once per experiment.

``splits.json`` holds for every fold the test patients' cases, the training cases and an inner
validation split taken from the training patients (used for model selection, never the test fold).
Once written it is only read: if the case manifest changes, the run stops instead of re-splitting.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from neonet.atomic import read_json, write_json
from neonet.data.cases import Case
from neonet.errors import DataError, SplitMismatchError


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
        entry = patients.setdefault(case.patient_id, {"cases": [], "pni": set()})
        entry["cases"].append(case.case_id)
        entry["pni"].add(case.pni)
    for pid, entry in patients.items():
        labels = entry["pni"] - {None}
        if len(labels) > 1:
            raise DataError(f"patient {pid}: cases {entry['cases']} have different pni labels")
        entry["pni"] = labels.pop() if labels else -1  # -1: unlabelled (stratified as its own class)
    return patients


def _deal(ids: list[str], n: int, rng: np.random.Generator, offset: int = 0) -> list[list[str]]:
    """Shuffle ``ids`` and deal them round-robin into ``n`` bins, starting at bin ``offset``."""
    order = list(rng.permutation(len(ids)))
    bins: list[list[str]] = [[] for _ in range(n)]
    for j, idx in enumerate(order):
        bins[(j + offset) % n].append(ids[idx])
    return bins


def manifest_fingerprint(cases: list[Case]) -> str:
    """Hash of (case_id, patient_id, pni) of all cases; paths may move without changing it."""
    rows = sorted((c.case_id, c.patient_id, c.pni) for c in cases)
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


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
    if len(patients) < folds:
        raise DataError(f"{len(patients)} patients cannot be split into {folds} folds")
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[str]] = {}
    for pid in sorted(patients):
        by_class.setdefault(patients[pid]["pni"], []).append(pid)
    test_bins: list[list[str]] = [[] for _ in range(folds)]
    offset = 0
    for label in sorted(by_class):
        for k, bin_ in enumerate(_deal(by_class[label], folds, rng, offset)):
            test_bins[k].extend(bin_)
        offset += len(by_class[label])  # keep fold sizes balanced across classes
    doc_folds = []
    for k in range(folds):
        test_p = set(test_bins[k])
        train_p = [p for p in sorted(patients) if p not in test_p]
        val_p: list[str] = []
        fold_rng = np.random.default_rng([seed, k])
        for label in sorted(by_class):
            cls = [p for p in train_p if patients[p]["pni"] == label]
            n_val = int(round(val_fraction * len(cls)))
            if val_fraction > 0 and len(cls) >= 2:
                n_val = max(1, n_val)
            val_p += [cls[i] for i in sorted(fold_rng.permutation(len(cls))[:n_val])]
        val_set = set(val_p)

        def cases_of(pids: set[str] | list[str]) -> list[str]:
            return sorted(cid for p in pids for cid in patients[p]["cases"])

        doc_folds.append(
            {
                "fold": k,
                "train": cases_of([p for p in train_p if p not in val_set]),
                "val": cases_of(val_set),
                "test": cases_of(test_p),
            }
        )
    return {
        "folds": folds,
        "seed": seed,
        "val_fraction": val_fraction,
        "fingerprint": manifest_fingerprint(cases),
        "cases": {c.case_id: {"patient_id": c.patient_id, "pni": c.pni} for c in sorted(cases, key=lambda c: c.case_id)},
        "splits": doc_folds,
    }


def check_splits_match(doc: dict[str, Any], cases: list[Case], path: Path) -> None:
    """Raise SplitMismatchError when ``cases`` differ from the cases recorded in ``doc``."""
    if doc.get("fingerprint") == manifest_fingerprint(cases):
        return
    recorded = doc.get("cases", {})
    now = {c.case_id: {"patient_id": c.patient_id, "pni": c.pni} for c in cases}
    added = sorted(set(now) - set(recorded))
    removed = sorted(set(recorded) - set(now))
    changed = sorted(cid for cid in set(now) & set(recorded) if now[cid] != recorded[cid])
    parts = []
    if added:
        parts.append(f"added: {', '.join(added[:10])}{' ...' if len(added) > 10 else ''}")
    if removed:
        parts.append(f"removed: {', '.join(removed[:10])}{' ...' if len(removed) > 10 else ''}")
    if changed:
        parts.append(f"pni/patient changed: {', '.join(changed[:10])}{' ...' if len(changed) > 10 else ''}")
    raise SplitMismatchError(
        f"the case manifest no longer matches {path} ({'; '.join(parts) or 'contents differ'}). "
        "Splits are never silently remade, because results of earlier folds would become invalid. "
        "Either restore the manifest, or use a new experiment name (--data.experiment NAME), "
        f"or delete {path} and every result of this experiment to re-split."
    )


def ensure_splits(
    path: str | Path, cases: list[Case], folds: int = 5, seed: int = 0, val_fraction: float = 0.2
) -> dict[str, Any]:
    """Read the split file, or write it if it does not exist yet; check it matches ``cases``."""
    path = Path(path)
    if path.exists():
        doc = read_json(path)
        check_splits_match(doc, cases, path)
        if int(doc["folds"]) != int(folds):
            raise SplitMismatchError(
                f"{path} has {doc['folds']} folds but {folds} were requested; "
                "use the recorded number of folds or a new experiment name"
            )
        return doc
    doc = make_splits(cases, folds=folds, seed=seed, val_fraction=val_fraction)
    write_json(path, doc)
    return doc


def get_fold(doc: dict[str, Any], fold: int) -> Fold:
    """The ``Fold`` record of fold ``k`` from a split document."""
    n = int(doc["folds"])
    if not 0 <= int(fold) < n:
        raise ValueError(f"fold {fold} does not exist: the split file has folds 0..{n - 1}")
    entry = doc["splits"][int(fold)]
    return Fold(int(fold), tuple(entry["train"]), tuple(entry["val"]), tuple(entry["test"]))
