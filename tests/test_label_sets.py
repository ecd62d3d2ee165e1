"""Label sets as people have them: liver-only masks serve NeoSeg, check-data says per case which stages
it can serve, and NeoSeg's report carries HD95 and surface Dice."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from neonet.data.nifti import save_nifti
from neonet.data.validate import check_cases
from neonet.run.atomic import read_json
from neonet.run.cli import main
from neonet.seg.evaluate import markdown_table, seg_metrics, summarise
from neonet.workspace import Workspace

CONF = Path(__file__).resolve().parent / "conf"
CHAOS = Path(__file__).resolve().parents[2] / "shared" / "real_cohorts" / "chaos_mr_t2spir"


@pytest.fixture(scope="module")
def liver_only(phantom_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The phantom cohort with its tumours delineated as liver and no PNI labels (a healthy-liver set)."""
    out = tmp_path_factory.mktemp("liver_only")
    frame = pd.read_csv(phantom_cohort)
    for i, row in frame.iterrows():
        img = nib.load(phantom_cohort.parent / row["label"])
        label = np.where(np.asarray(img.dataobj) > 0, 1, 0).astype(np.uint8)
        frame.loc[i, "label"] = str(save_nifti(out / f"{row['case_id']}_liver.nii.gz", label, img.affine))
        frame.loc[i, "image"] = str(phantom_cohort.parent / row["image"])
    frame["pni"] = ""
    frame.to_csv(out / "cases.csv", index=False)
    return out / "cases.csv"


def test_check_data_names_the_stages_each_case_serves(
    liver_only: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["check-data", "--cases", str(liver_only), "--require_pni", "false"]
    assert main([*base, "--tumor", "[]"]) == 0  # the manifest claims NeoSeg only
    assert main([*base, "--stage", "seg"]) == 0
    out = capsys.readouterr().out
    assert "seg ✓ crop ✗ cls ✗: label has no tumour voxels" in out and "12 cases OK for seg" in out
    report = tmp_path / "stages.json"
    assert main([*base, "--stage", "crop", "--report", str(report)]) == 1
    data = read_json(report)
    assert data["stages_checked"] == ["crop"] and data["n_errors"] == 12
    assert all(c["seg"] and not c["crop"] and not c["cls"] for c in data["cases"])
    assert main([*base, "--stage", "seg", "--stage", "cls"]) == 1
    # a missing PNI label keeps a case from classification only
    frame = pd.read_csv(liver_only)
    problems = check_cases(liver_only, stages=("seg",), require_pni=True, progress=False)
    assert not [p for p in problems if p.severity == "error"]
    assert {p.blocks for p in problems if "empty pni" in p.problem} == {"cls"}
    assert len([p for p in problems if "empty pni" in p.problem]) == len(frame)
    capsys.readouterr()
    assert main([*base, "--stage", "segmentation"]) != 0
    assert "--stage segmentation: not a stage; choose from seg, crop, cls" in capsys.readouterr().err


@pytest.mark.slow  # a NeoSeg cv fold: about a minute on an idle 2-core machine
def test_neoseg_trains_and_reports_a_liver_only_cohort(liver_only: Path, tmp_path: Path) -> None:
    """A liver-only cohort trains NeoSeg (the tumour channel is learnt as absent); tumour metrics are n/a."""
    runs = tmp_path / "runs"
    overrides = ["--", f"--data.cases={liver_only}", f"--data.runs_dir={runs}", "--data.tumor=[]"]
    assert main(["cv", "--config", str(CONF / "seg.yaml"), "--folds", "0", *overrides]) == 0
    ws = Workspace(runs, "test")
    report = pd.read_csv(ws.reports_dir / "seg_oof_dice.csv")
    assert report["dice_liver"].between(0, 1).all() and report["dice_tumor"].isna().all()
    summary = read_json(ws.reports_dir / "seg_summary.json")
    assert summary["dice_tumor"] is None and summary["dice_liver"]["mean"] > 0
    assert "Tumour: n/a" in (ws.reports_dir / "seg_summary.md").read_text(encoding="utf-8")
    metrics = pd.read_csv(ws.stage_dir("seg", 0) / "metrics.csv")
    assert np.isfinite(metrics["val/dice_mean"].dropna()).all()
    # no validation case has a tumour: the tumour Dice is not scored (not logged as 0), the monitor is the liver's
    assert "val/dice_tumor" not in metrics or metrics["val/dice_tumor"].isna().all()
    scored = metrics.dropna(subset=["val/dice_mean"])
    assert np.allclose(scored["val/dice_mean"], scored["val/dice_liver"])


def test_seg_metrics_on_a_known_shift() -> None:
    gt = np.zeros((40, 40, 20), np.uint8)
    gt[5:35, 5:35, 3:17] = 1
    gt[15:22, 15:22, 8:12] = 2
    pred = np.roll(gt, 2, axis=0)  # 2 voxels of 1.5 mm: every surface point moves 3 mm
    m = seg_metrics(pred, gt, (1.5, 1.5, 3.0))
    assert m["hd95_liver"] == pytest.approx(3.0) and m["hd95_tumor"] == pytest.approx(3.0)
    assert m["dice_liver"] == pytest.approx(1 - 2 * 2 * 30 * 14 / (2 * 30 * 30 * 14), abs=1e-6)
    assert 0 < m["nsd_liver"] < 1  # the shifted faces are beyond 2 mm, the parallel ones within
    assert seg_metrics(gt, gt, (1.5, 1.5, 3.0))["nsd_tumor"] == pytest.approx(1.0)
    missed = seg_metrics(np.where(gt == 2, 1, gt), gt, (1.5, 1.5, 3.0))
    assert missed["dice_tumor"] == 0 and missed["nsd_tumor"] == 0 and np.isnan(missed["hd95_tumor"])
    frame = pd.DataFrame(
        [{"case_id": "a", "fold": 0, "status": "ok", **m}, {"case_id": "b", "fold": 0, "status": "ok", **missed}]
    )
    summary = summarise(frame)
    assert summary["missed_tumor"] == 1 and summary["hd95_tumor"]["mean"] == pytest.approx(3.0)
    assert "HD95 excludes cases whose prediction misses the region: 1 for tumour" in markdown_table(summary)


@pytest.mark.skipif(not (CHAOS / "cases.csv").is_file(), reason="../shared/real_cohorts/chaos_mr_t2spir is not here")
def test_chaos_liver_masks_serve_neoseg_only(tmp_path: Path) -> None:
    """Two real CHAOS T2-SPIR subjects (liver 1, kidneys 2-3, spleen 4; no tumours): seg OK, crop refused."""
    frame = pd.read_csv(CHAOS / "cases.csv").head(2)
    for col in ("image", "label"):
        frame[col] = [str(CHAOS / p) for p in frame[col]]
    frame.to_csv(tmp_path / "cases.csv", index=False)
    base = ["check-data", "--cases", str(tmp_path / "cases.csv"), "--require_pni", "false", "--tumor", "[]", "--other", "[2,3,4]"]
    assert main([*base, "--stage", "seg"]) == 0
    assert main([*base, "--stage", "crop", "--report", str(tmp_path / "r.json")]) == 1
    cases = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))["cases"]
    assert [c["case_id"] for c in cases if not c["crop"]] == list(frame["case_id"])
