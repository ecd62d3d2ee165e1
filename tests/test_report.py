"""``neonet report``: the wiring from per-fold test predictions to tables, statistics, figures and files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from neonet.errors import NeonetError
from neonet.report.cls_report import report
from neonet.run.atomic import write_json
from neonet.run.cli import main
from neonet.workspace import Workspace

FOLDS = 3


def brute_auc(y: np.ndarray, p: np.ndarray) -> float:
    """AUC by counting every (positive, negative) pair; ties count 1/2."""
    pos, neg = p[y == 1], p[y == 0]
    return float(np.mean([(a > b) + 0.5 * (a == b) for a in pos for b in neg]))


def brute_delong(y: np.ndarray, p1: np.ndarray, p2: np.ndarray) -> tuple[float, float]:
    """DeLong et al. (1988) written out from its definition: (z, two-sided p) of AUC1 - AUC2."""

    def psi(a: float, b: float) -> float:
        return 1.0 if a > b else 0.5 if a == b else 0.0

    comps = []
    for p in (p1, p2):
        pos, neg = p[y == 1], p[y == 0]
        v10 = np.array([np.mean([psi(a, b) for b in neg]) for a in pos])
        v01 = np.array([np.mean([psi(a, b) for a in pos]) for b in neg])
        comps.append((v10, v01))
    m, n = int(y.sum()), int((1 - y).sum())
    s10 = np.cov(np.stack([comps[0][0], comps[1][0]]))
    s01 = np.cov(np.stack([comps[0][1], comps[1][1]]))
    s = s10 / m + s01 / n
    diff = comps[0][0].mean() - comps[1][0].mean()
    z = diff / math.sqrt(s[0, 0] + s[1, 1] - 2 * s[0, 1])
    return z, 2 * sps.norm.sf(abs(z))


def make_experiment(root: Path, n: int = 45, seed: int = 0) -> tuple[Workspace, dict[str, pd.DataFrame]]:
    """Predictions of three stages on the same out-of-fold patients, plus a matching splits.json."""
    rng = np.random.default_rng(seed)
    ws = Workspace(root, "r")
    y = np.array([1] * (n // 3) + [0] * (n - n // 3))
    cases = [f"c{i:03d}" for i in range(n)]
    fold = np.arange(n) % FOLDS
    probs = {
        "pattennet": 1 / (1 + np.exp(-(2.0 * y + rng.normal(0, 1, n)))),
        "resnet18": 1 / (1 + np.exp(-(0.6 * y + rng.normal(0, 1, n)))),
        "pattennet_syn": 1 / (1 + np.exp(-(1.5 * y + rng.normal(0, 1, n)))),
    }
    frames = {}
    for stage, p in probs.items():
        frame = pd.DataFrame(
            {
                "case_id": cases,
                "patient_id": cases,
                "fold": fold,
                "y_true": y,
                "prob": p,
                "logit": np.log(p / (1 - p)),
                "threshold_youden_val": 0.4 + 0.05 * fold,
            }
        )
        for k in range(FOLDS):
            path = ws.stage_dir(stage, k) / "test_predictions.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            frame[frame["fold"] == k].to_csv(path, index=False)
        frames[stage] = frame
    write_json(
        ws.splits_path,
        {
            "folds": FOLDS,
            "splits": [
                {"fold": k, "train": [], "val": [], "test": [c for c, f in zip(cases, fold) if f == k]} for k in range(FOLDS)
            ],
        },
    )
    return ws, frames


@pytest.fixture(scope="module")
def reported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, dict[str, pd.DataFrame], dict]:
    ws, frames = make_experiment(tmp_path_factory.mktemp("report"))
    doc = report("r", ws.runs_dir, n_boot=500, log_wandb=False)
    return ws, frames, doc


def test_report_reproduces_known_auc_and_ci_contains_it(reported) -> None:
    ws, frames, doc = reported
    summary = pd.read_csv(ws.reports_dir / "cls_summary.csv").set_index("stage")
    for stage, frame in frames.items():
        y, p = frame["y_true"].to_numpy(), frame["prob"].to_numpy()
        row = summary.loc[stage]
        assert row["auc_pooled"] == pytest.approx(brute_auc(y, p), abs=1e-12)
        assert row["auc_ci_lo"] <= row["auc_pooled"] <= row["auc_ci_hi"]
        assert row["auc_ci_hi"] - row["auc_ci_lo"] > 0.02  # 45 patients: a real interval, not a point
        fold_aucs = [brute_auc(g["y_true"].to_numpy(), g["prob"].to_numpy()) for _, g in frame.groupby("fold")]
        assert row["auc_mean"] == pytest.approx(np.mean(fold_aucs))
        assert row["auc_sd"] == pytest.approx(np.std(fold_aucs, ddof=1))
        assert row["folds"] == FOLDS and row["n"] == len(frame)


def test_report_thresholded_metrics_use_each_folds_validation_threshold(reported) -> None:
    ws, frames, _ = reported
    folds = pd.read_csv(ws.reports_dir / "cls_per_fold.csv")
    frame = frames["pattennet"]
    for k in range(FOLDS):
        part = frame[frame["fold"] == k]
        t = 0.4 + 0.05 * k
        pos = part[part["y_true"] == 1]
        row = folds[(folds["stage"] == "pattennet") & (folds["fold"] == k)].iloc[0]
        assert row["threshold_youden_val"] == pytest.approx(t)
        assert row["sensitivity_youden"] == pytest.approx(np.mean(pos["prob"] >= t))
        assert row["sensitivity_05"] == pytest.approx(np.mean(pos["prob"] >= 0.5))


def test_report_delong_matches_definition(reported) -> None:
    ws, frames, _ = reported
    delong = pd.read_csv(ws.reports_dir / "cls_delong.csv")
    y = frames["pattennet"]["y_true"].to_numpy()
    for a, b, kind in [
        ("pattennet", "resnet18", "reference vs baseline"),
        ("pattennet_syn", "resnet18", "reference vs baseline"),
        ("pattennet_syn", "pattennet", "synthetic vs real only"),
    ]:
        row = delong[(delong["stage_a"] == a) & (delong["stage_b"] == b)]
        assert len(row) == 1 and row["comparison"].iloc[0] == kind
        z, p = brute_delong(y, frames[a]["prob"].to_numpy(), frames[b]["prob"].to_numpy())
        assert row["z"].iloc[0] == pytest.approx(z, rel=1e-9)
        assert row["p_value"].iloc[0] == pytest.approx(p, rel=1e-9)
    assert len(delong) == 3  # pattennet_syn vs pattennet is the ablation row, not a "baseline" row


def test_report_files_and_ablation_table(reported) -> None:
    ws, _, doc = reported
    out = ws.reports_dir
    for name in (
        "cls_summary.csv",
        "cls_per_fold.csv",
        "cls_delong.csv",
        "cls_ablation.csv",
        "cls_oof_predictions.csv",
        "cls_report.json",
        "cls_report.md",
        "roc_pooled.png",
        "calibration.png",
        "roc_pattennet.png",
        "roc_resnet18.png",
    ):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "roc_pooled.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ablation = pd.read_csv(out / "cls_ablation.csv").set_index("model")
    assert set(ablation.index) == {"pattennet", "resnet18"}
    assert ablation.loc["resnet18", "real + synthetic"] == "not run"
    assert ablation.loc["pattennet", "real + synthetic"].startswith(f"{doc['summary'][1]['auc_pooled']:.3f}")
    assert json.loads((out / "cls_report.json").read_text(encoding="utf-8"))["stages"][0] == "pattennet"
    md = (out / "cls_report.md").read_text(encoding="utf-8")
    assert "## Ablation" in md and "## DeLong" in md and "| pattennet |" in md


def test_report_rejects_predictions_that_are_not_out_of_fold(tmp_path: Path) -> None:
    ws, frames = make_experiment(tmp_path)
    path = ws.stage_dir("resnet18", 1) / "test_predictions.csv"
    part = pd.read_csv(path)
    part.loc[0, "case_id"] = "c000"  # a fold-0 test case predicted by the fold-1 model
    part.to_csv(path, index=False)
    with pytest.raises(NeonetError, match="more than one fold|not out-of-fold"):
        report("r", ws.runs_dir, n_boot=50, log_wandb=False)


def test_report_command_line_selects_stages(tmp_path: Path) -> None:
    ws, _ = make_experiment(tmp_path)
    assert (
        main(
            [
                "report",
                "--experiment",
                "r",
                "--runs_dir",
                str(ws.runs_dir),
                "--stages",
                "pattennet",
                "resnet18",
                "--n_boot",
                "100",
                "--log_wandb",
                "false",
            ]
        )
        == 0
    )
    summary = pd.read_csv(ws.reports_dir / "cls_summary.csv")
    assert list(summary["stage"]) == ["pattennet", "resnet18"]


def test_clusters_follow_groups_and_patients_only_when_needed() -> None:
    from neonet.report.cls_report import clusters_of

    single = {"cases": {"a": {"patient_id": "a", "pni": 1}, "b": {"patient_id": "b", "pni": 0}}}
    assert clusters_of(single) is None  # one case per patient: the stratified bootstrap stays
    matched = {
        "cases": {
            "a": {"patient_id": "a", "pni": 1, "group": "s0"},
            "b": {"patient_id": "b", "pni": 0, "group": "s0"},
            "c": {"patient_id": "c", "pni": 0},
            "c2": {"patient_id": "c", "pni": 0},
        }
    }
    assert clusters_of(matched) == {"a": "group:s0", "b": "group:s0", "c": "patient:c", "c2": "patient:c"}
    assert clusters_of({}) is None


def test_report_uses_clustered_delong_when_groups_hold_several_cases(tmp_path: Path) -> None:
    from neonet.report.stats import delong_ci, delong_test
    from neonet.run.atomic import read_json

    ws, frames = make_experiment(tmp_path)
    splits = read_json(ws.splits_path)
    cases = list(frames["pattennet"]["case_id"])
    groups = {c: f"set_{i // 3}" for i, c in enumerate(cases)}  # matched sets of 3 consecutive cases
    splits["cases"] = {
        c: {"patient_id": c, "pni": int(y), "group": groups[c]} for c, y in zip(cases, frames["pattennet"]["y_true"])
    }
    write_json(ws.splits_path, splits)
    doc = report("r", ws.runs_dir, n_boot=200, log_wandb=False)
    assert doc["settings"]["delong_variance"].startswith("Obuchowski")
    ids = np.array([f"group:{groups[c]}" for c in cases])
    a, b = frames["pattennet"], frames["resnet18"]
    row = pd.read_csv(ws.reports_dir / "cls_delong.csv").set_index(["stage_a", "stage_b"]).loc[("pattennet", "resnet18")]
    clustered = delong_test(a["y_true"], a["prob"], b["prob"], clusters=ids)
    assert row["p_value"] == pytest.approx(clustered["p_value"], rel=1e-9)
    assert row["p_value"] != pytest.approx(delong_test(a["y_true"], a["prob"], b["prob"])["p_value"], rel=1e-3)
    summary = pd.read_csv(ws.reports_dir / "cls_summary.csv").set_index("stage").loc["pattennet"]
    assert summary["auc_delong_lo"] == pytest.approx(delong_ci(a["y_true"], a["prob"], clusters=ids)[1], rel=1e-9)
    assert "Obuchowski" in (ws.reports_dir / "cls_report.md").read_text(encoding="utf-8")


def test_report_shows_folds_that_score_on_different_scales(tmp_path: Path) -> None:
    """Each fold ranks its cases equally well, but fold k's scores are shifted by 2k log-odds: the pooled AUC
    drops below the folds' own, and the per-fold medians, the note and the scores figure say why."""
    ws, frames = make_experiment(tmp_path)
    shifted = frames["pattennet"].copy()
    logit = np.log(shifted["prob"] / (1 - shifted["prob"])) + 2.0 * shifted["fold"]
    shifted["prob"] = 1 / (1 + np.exp(-logit))
    for k in range(FOLDS):
        shifted[shifted["fold"] == k].to_csv(ws.stage_dir("pattennet", k) / "test_predictions.csv", index=False)
    report("r", ws.runs_dir, stages=["pattennet", "resnet18"], n_boot=200, log_wandb=False)
    folds = pd.read_csv(ws.reports_dir / "cls_per_fold.csv")
    mine = folds[folds["stage"] == "pattennet"].set_index("fold")
    for k in range(FOLDS):
        part = shifted[shifted["fold"] == k]
        for name, v in (("neg", 0), ("pos", 1)):
            expected = np.median(np.log(part["prob"] / (1 - part["prob"]))[part["y_true"] == v])
            assert mine.loc[k, f"logit_median_{name}"] == pytest.approx(expected, abs=1e-6)
    assert mine.loc[2, "logit_median_neg"] - mine.loc[0, "logit_median_neg"] == pytest.approx(4.0, abs=1.0)
    summary = pd.read_csv(ws.reports_dir / "cls_summary.csv").set_index("stage")
    assert summary.loc["pattennet", "auc_mean"] - summary.loc["pattennet", "auc_pooled"] > 0.03
    md = (ws.reports_dir / "cls_report.md").read_text(encoding="utf-8")
    assert "pattennet: fold mean" in md and "resnet18: fold mean" not in md  # unshifted resnet18 pools fine
    png = ws.reports_dir / "scores_pattennet.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_flags_a_stage_that_ranks_against_the_labels(tmp_path: Path) -> None:
    """A baseline whose scores are the negated PattenNet scores has pooled AUC 1 - AUC(pattennet), its CI wholly
    below 0.5: the report says so for that stage only (a label mix-up or associations that reverse)."""
    ws, frames = make_experiment(tmp_path)
    flipped = frames["pattennet"].copy()
    flipped["prob"], flipped["logit"] = 1 - flipped["prob"], -flipped["logit"]
    for k in range(FOLDS):
        flipped[flipped["fold"] == k].to_csv(ws.stage_dir("resnet18", k) / "test_predictions.csv", index=False)
    report("r", ws.runs_dir, stages=["pattennet", "resnet18"], n_boot=300, log_wandb=False)
    summary = pd.read_csv(ws.reports_dir / "cls_summary.csv").set_index("stage")
    y, p = flipped["y_true"].to_numpy(), flipped["prob"].to_numpy()
    assert summary.loc["resnet18", "auc_pooled"] == pytest.approx(brute_auc(y, p), abs=1e-12)
    assert summary.loc["resnet18", "auc_pooled"] == pytest.approx(1 - summary.loc["pattennet", "auc_pooled"], abs=1e-12)
    assert summary.loc["resnet18", "auc_ci_hi"] < 0.5
    md = (ws.reports_dir / "cls_report.md").read_text(encoding="utf-8")
    note = md.split("Pooled AUC below chance", 1)
    assert len(note) == 2 and "resnet18: 0." in note[1].split("\n")[0] and "pattennet:" not in note[1].split("\n")[0]
