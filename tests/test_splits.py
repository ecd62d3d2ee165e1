"""Patient-level, stratified, seeded, write-once splits."""

from __future__ import annotations

from pathlib import Path

import pytest

from neonet.data.cases import Case
from neonet.data.splits import ensure_splits, get_fold, make_splits
from neonet.errors import DataError, SplitMismatchError


def cohort(n: int = 30, n_pos: int = 10, two_scans: int = 3) -> list[Case]:
    cases = []
    for i in range(n):
        pni = int(i < n_pos)
        cases.append(Case(f"c{i:02d}", Path(f"i{i}.nii.gz"), Path(f"l{i}.nii.gz"), pni, f"p{i:02d}"))
    for j in range(two_scans):  # second scans of some patients
        first = cases[j * 5]
        cases.append(Case(f"c{j:02d}b", Path("x.nii.gz"), Path("y.nii.gz"), first.pni, first.patient_id))
    return cases


def test_folds_partition_patients_and_stratify() -> None:
    cases = cohort()
    doc = make_splits(cases, folds=5, seed=3)
    pid = {c.case_id: c.patient_id for c in cases}
    pni = {c.case_id: c.pni for c in cases}
    tested: list[str] = []
    for k in range(5):
        fold = get_fold(doc, k)
        tested += fold.test
        assert not set(fold.test) & set(fold.fit)
        assert not set(fold.train) & set(fold.val)
        assert set(fold.test) | set(fold.fit) == set(pid)
        # patient-level: no patient on both sides, and none split between train and val
        assert not {pid[c] for c in fold.test} & {pid[c] for c in fold.fit}
        assert not {pid[c] for c in fold.train} & {pid[c] for c in fold.val}
        # stratified: 10 PNI+ patients over 5 folds -> 2 per fold
        assert len({pid[c] for c in fold.test if pni[c] == 1}) == 2
        assert {pni[c] for c in fold.val} == {0, 1}
    assert sorted(tested) == sorted(pid)  # every case tested exactly once


def test_seeded_and_deterministic() -> None:
    cases = cohort()
    assert make_splits(cases, 5, seed=1) == make_splits(cases, 5, seed=1)
    assert make_splits(cases, 5, seed=1)["splits"] != make_splits(cases, 5, seed=2)["splits"]


def test_written_once_and_mismatch_stops(tmp_path: Path) -> None:
    path = tmp_path / "splits.json"
    cases = cohort()
    doc = ensure_splits(path, cases, folds=5, seed=0)
    mtime = path.stat().st_mtime_ns
    assert ensure_splits(path, cases, folds=5, seed=99) == doc  # read, not remade
    assert path.stat().st_mtime_ns == mtime
    changed = cases[:-1] + [Case("new", Path("a"), Path("b"), 1, "pnew")]
    with pytest.raises(SplitMismatchError, match="added: new.*removed: c02b"):
        ensure_splits(path, changed, folds=5)
    relabelled = [Case(c.case_id, c.image, c.label, 1 - c.pni, c.patient_id) if c.case_id == "c20" else c for c in cases]
    with pytest.raises(SplitMismatchError, match="pni/patient/group changed: c20"):
        ensure_splits(path, relabelled, folds=5)
    with pytest.raises(SplitMismatchError, match="3 were requested"):
        ensure_splits(path, cases, folds=3)


def test_bad_cohorts() -> None:
    cases = cohort(n=4, n_pos=2, two_scans=0)
    with pytest.raises(DataError, match="cannot be split"):
        make_splits(cases, folds=5)
    dup = cohort(n=10, n_pos=3, two_scans=0)
    dup.append(dup[0])
    with pytest.raises(DataError, match="duplicate"):
        make_splits(dup, folds=3)
    inconsistent = cohort(n=10, n_pos=3, two_scans=0)
    inconsistent.append(Case("c00b", Path("a"), Path("b"), 0, inconsistent[0].patient_id))
    with pytest.raises(DataError, match="different pni"):
        make_splits(inconsistent, folds=3)


def test_drop_last_counts_each_ranks_share(phantom_cohort) -> None:
    from types import SimpleNamespace

    from neonet.data.base import FoldDataModule

    dm = FoldDataModule(str(phantom_cohort), experiment="t", runs_dir="unused", folds=3)
    assert dm.drop_last(24, 16) is True  # one process: 24 samples hold a full batch of 16
    dm.trainer = SimpleNamespace(world_size=2)
    assert dm.drop_last(24, 16) is False  # two ranks of 12: dropping would leave each without a batch
    assert dm.drop_last(40, 16) is True


def matched_cohort(sets: int = 12, size: int = 3) -> list[Case]:
    """Matched sets of ``size`` patients (one PNI+ each), as written by ``neonet synth --matched``."""
    cases = []
    for j in range(sets):
        for m in range(size):
            i = j * size + m
            cases.append(Case(f"c{i:02d}", Path(f"i{i}.nii.gz"), None, int(m == j % size), f"p{i:02d}", group=f"set{j:02d}"))
    return cases


def test_groups_share_a_fold_and_the_train_val_side() -> None:
    cases = matched_cohort()
    group = {c.case_id: c.group for c in cases}
    doc = make_splits(cases, folds=3, seed=0)
    for k in range(3):
        fold = get_fold(doc, k)
        test_g, train_g, val_g = ({group[c] for c in part} for part in (fold.test, fold.train, fold.val))
        assert not test_g & (train_g | val_g) and not train_g & val_g
        assert len(test_g) == 4 and len(val_g) == 2  # 12 sets dealt evenly; 20 % of the 8 training sets
        assert len(fold.test) == 12  # whole sets: 4 x 3 cases, 4 of them PNI+
        assert sum(c.pni for c in cases if c.case_id in fold.test) == 4
    assert doc["cases"]["c00"]["group"] == "set00"


def test_groups_recorded_in_fingerprint_only_when_used(tmp_path: Path) -> None:
    plain = cohort()
    # without groups the fingerprint (and so every existing splits.json) is unchanged by the group column
    assert "group" not in make_splits(plain, 5)["cases"]["c00"]
    path = tmp_path / "splits.json"
    cases = matched_cohort()
    ensure_splits(path, cases, folds=3)
    regrouped = [
        Case(c.case_id, c.image, c.label, c.pni, c.patient_id, group="set99") if c.case_id == "c05" else c for c in cases
    ]
    with pytest.raises(SplitMismatchError, match="group changed: c05"):
        ensure_splits(path, regrouped, folds=3)


def test_group_errors() -> None:
    cases = matched_cohort(sets=2)
    with pytest.raises(DataError, match="2 patient groups cannot be split into 3 folds"):
        make_splits(cases, folds=3)
    split_patient = cases + [Case("c00b", Path("x"), None, cases[0].pni, "p00", group="set01")]
    with pytest.raises(DataError, match="patient p00: case c00b is in group 'set01'"):
        make_splits(split_patient, folds=2)


def test_a_hand_edited_split_that_trains_on_test_cases_stops() -> None:
    doc = make_splits(cohort(), folds=5, seed=0)
    leaked = doc["splits"][2]["test"][:2]
    doc["splits"][2]["train"] = doc["splits"][2]["train"] + leaked
    get_fold(doc, 1)  # other folds are untouched
    with pytest.raises(SplitMismatchError, match=f"fold 2 .* 2 case\\(s\\) in both test and train \\({leaked[0]}"):
        get_fold(doc, 2)
