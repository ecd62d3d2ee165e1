"""A ``split`` column in ``cases.csv``: one given fold (test = ``test`` rows, inner validation = ``val`` rows)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from neonet.data.base import FoldDataModule
from neonet.data.cases import read_cases
from neonet.data.splits import get_fold
from neonet.errors import DataError, NeonetError
from neonet.report.cls_report import report
from neonet.run.cv import cv
from neonet.workspace import Workspace

CONF = Path(__file__).resolve().parent / "conf"


def manifest(folder: Path, splits: list[str], patients: list[str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    n = len(splits)
    frame = pd.DataFrame(
        {
            "case_id": [f"c{i:02d}" for i in range(n)],
            "image": [f"images/c{i:02d}.nii.gz" for i in range(n)],
            "label": "",
            "pni": [i % 2 for i in range(n)],
            "patient_id": patients or [f"p{i:02d}" for i in range(n)],
            "split": splits,
        }
    )
    frame.to_csv(folder / "cases.csv", index=False)
    return folder / "cases.csv"


SPLITS = ["train"] * 6 + ["val"] * 2 + ["test", "TEST", "test"]  # values are read case-insensitively


def test_given_split_is_one_fold_with_the_manifests_test_and_val_rows(tmp_path: Path) -> None:
    csv = manifest(tmp_path, SPLITS)
    dm = FoldDataModule(str(csv), experiment="given", runs_dir=str(tmp_path / "runs"), fold=0, folds=5)
    fold = dm.split
    assert (
        fold.test == ("c08", "c09", "c10") and fold.val == ("c06", "c07") and fold.train == tuple(f"c{i:02d}" for i in range(6))
    )
    doc = json.loads(Workspace(tmp_path / "runs", "given").splits_path.read_text(encoding="utf-8"))
    assert doc["folds"] == 1 and doc["given"] is True
    with pytest.raises(ValueError, match="folds 0..0"):
        get_fold(doc, 1)
    # cv runs that one fold: a second fold does not exist (checked before any training)
    args = [f"--data.cases={csv}", f"--data.runs_dir={tmp_path / 'runs'}", "--data.experiment=given"]
    with pytest.raises(NeonetError, match=r"fold\(s\) \[1\] do not exist: the experiment has folds 0..0"):
        cv(config=[CONF / "seg.yaml"], folds=[1], override=args)


def test_given_split_refuses_a_patient_in_two_splits_and_bad_values(tmp_path: Path) -> None:
    patients = [f"p{i:02d}" for i in range(10)] + ["p00"]  # c10 (test) is another scan of p00 (train)
    csv = manifest(tmp_path / "a", SPLITS, patients)
    dm = FoldDataModule(str(csv), experiment="given", runs_dir=str(tmp_path / "runs"))
    with pytest.raises(DataError, match="patient.*p00.*several splits"):
        _ = dm.split
    bad = manifest(tmp_path / "b", [*SPLITS[:-1], "holdout"])
    with pytest.raises(DataError, match="line 12.*split 'holdout'"):
        read_cases(bad)
    no_val = manifest(tmp_path / "c", ["train"] * 8 + ["test"] * 3)
    with pytest.raises(DataError, match="no val rows"):
        _ = FoldDataModule(str(no_val), experiment="c", runs_dir=str(tmp_path / "runs")).split


def test_report_of_a_given_split_says_so_instead_of_an_sd(tmp_path: Path) -> None:
    """One fold has no spread over folds: the report says "1 fold, given split", never ``± nan``."""
    csv = manifest(tmp_path, SPLITS)
    runs = tmp_path / "runs"
    dm = FoldDataModule(str(csv), experiment="given", runs_dir=str(runs))
    test = list(dm.split.test)
    y = [int(c[-1]) % 2 for c in test]
    ws = Workspace(runs, "given")
    path = ws.test_predictions("pattennet", 0)
    path.parent.mkdir(parents=True)
    prob = np.array([0.2, 0.7, 0.4])
    pd.DataFrame(
        {"case_id": test, "patient_id": test, "fold": 0, "y_true": y, "prob": prob, "logit": np.log(prob / (1 - prob))}
    ).assign(threshold_youden_val=0.5).to_csv(path, index=False)
    doc = report("given", runs_dir=runs, n_boot=50, log_wandb=False)
    md = (ws.reports_dir / "cls_report.md").read_text(encoding="utf-8")
    assert doc["folds_text"] == "1 fold, given split" and "(1 fold, given split)" in md
    assert "± nan" not in md and "nan" not in (ws.reports_dir / "cls_ablation.csv").read_text(encoding="utf-8")


def test_check_data_names_a_bad_split_value(tmp_path: Path) -> None:
    from neonet.data.validate import check_cases

    csv = manifest(tmp_path, [*SPLITS[:-1], "holdout"])
    problems = [p.problem for p in check_cases(csv, require_label=False, progress=False)]
    assert any("line 12: split 'holdout'" in p for p in problems)
