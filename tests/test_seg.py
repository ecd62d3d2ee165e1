"""NeoSeg through the real CLI on CPU: fit, out-of-fold predict in original space, cv, crop."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from neonet.run.atomic import read_json
from neonet.run.cli import main
from neonet.workspace import Workspace

CONF = Path(__file__).resolve().parent / "conf"


def seg_args(cases: Path, runs: Path, *extra: str) -> list[str]:
    return ["--config", str(CONF / "seg.yaml"), f"--data.cases={cases}", f"--data.runs_dir={runs}", *extra]


@pytest.fixture(scope="module")
def trained(phantom_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One NeoSeg fit of fold 0 (1 epoch) on the phantom cohort; returns (cases.csv, runs_dir)."""
    runs = tmp_path_factory.mktemp("runs")
    assert main(["fit", *seg_args(phantom_cohort, runs)]) == 0
    return phantom_cohort, runs


def test_fit_writes_fold_folder(trained: tuple[Path, Path]) -> None:
    cases, runs = trained
    ws = Workspace(runs, "test")
    assert ws.best_checkpoint("seg", 0).is_file() and ws.last_checkpoint("seg", 0).is_file()
    art = read_json(ws.artifact_path("seg", 0))
    assert art["status"] == "fit-complete" and art["monitor"] == "val/dice_mean"
    assert art["best_checkpoint"]["sha256"] and len(art["best_checkpoint"]["sha256"]) == 64
    splits = read_json(ws.splits_path)["splits"][0]
    assert art["train_cases"] == splits["train"] and art["test_cases"] == splits["test"]
    metrics = pd.read_csv(ws.stage_dir("seg", 0) / "metrics.csv")
    assert {"val/dice_liver", "val/dice_tumor", "train/loss"} <= set(metrics.columns)
    assert (ws.stage_dir("seg", 0) / "config.yaml").is_file()


def test_predict_writes_masks_in_original_space(trained: tuple[Path, Path]) -> None:
    cases, runs = trained
    ws = Workspace(runs, "test")
    assert main(["predict", *seg_args(cases, runs), "--ckpt_path", str(ws.best_checkpoint("seg", 0))]) == 0
    test_ids = read_json(ws.splits_path)["splits"][0]["test"]
    frame = pd.read_csv(cases)
    for cid in test_ids:
        pred = nib.load(ws.seg_prediction(cid))
        src = nib.load(cases.parent / frame.set_index("case_id").loc[cid, "image"])
        assert pred.shape == src.shape
        np.testing.assert_allclose(pred.affine, src.affine, atol=1e-6)
        assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2}
    assert sorted(p.name for p in ws.seg_predictions_dir.iterdir()) == sorted(f"{c}.nii.gz" for c in test_ids)


def test_real_samples_prediction_path(trained: tuple[Path, Path], real_samples: Path, tmp_path: Path) -> None:
    """Non-RAS orientation, float64/int16 volumes: masks come back with the input's shape and affine."""
    cases, runs = trained
    ws = Workspace(runs, "test")
    rows = [
        ("chaos1", real_samples / "chaos_t2spir" / "image_1.nii.gz"),
        ("tseg", real_samples / "totalsegmentator_mr" / "example_mr_sm.nii.gz"),
    ]
    csv = tmp_path / "real.csv"
    pd.DataFrame({"case_id": [r[0] for r in rows], "image": [str(r[1]) for r in rows], "label": "", "pni": ""}).to_csv(
        csv, index=False
    )
    out = tmp_path / "masks"
    args = seg_args(cases, runs, f"--data.predict_cases={csv}", f"--trainer.callbacks.init_args.output_dir={out}")
    assert main(["predict", *args, "--ckpt_path", str(ws.best_checkpoint("seg", 0))]) == 0
    for cid, image in rows:
        src, pred = nib.load(image), nib.load(out / f"{cid}.nii.gz")
        assert pred.shape == src.shape[:3]
        np.testing.assert_allclose(pred.affine, src.affine, atol=1e-6)
        assert nib.aff2axcodes(pred.affine) == nib.aff2axcodes(src.affine) != ("R", "A", "S")


def test_real_samples_load_with_label_map(real_samples: Path) -> None:
    """CHAOS labels (float64, kidneys/spleen as 2-4) map to liver only; resampled to the target grid."""
    from neonet.data.cases import LabelMap
    from neonet.data.transforms import load_canonical

    img, lab, aff = load_canonical(
        str(real_samples / "chaos_t2spir" / "image_2.nii.gz"),
        str(real_samples / "chaos_t2spir" / "label_2.nii.gz"),
        spacing=(3.0, 3.0, 6.0),
        label_map=LabelMap(liver=(1,), tumor=(), other=(2, 3, 4)),
    )
    assert set(np.unique(lab)) == {0, 1}
    assert nib.aff2axcodes(aff) == ("R", "A", "S")
    np.testing.assert_allclose(np.linalg.norm(aff[:3, :3], axis=0), (3.0, 3.0, 6.0), atol=1e-3)
    assert img.min() >= 0.0 and img.max() <= 1.0 and img.shape == lab.shape


def test_cv_fold_then_skip_then_crop(phantom_cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`neonet cv` trains + predicts a fold in subprocesses, skips it when complete; TLCR crops its masks."""
    runs = tmp_path / "runs"
    overrides = ["--", f"--data.cases={phantom_cohort}", f"--data.runs_dir={runs}"]
    assert main(["cv", "--config", str(CONF / "seg.yaml"), "--folds", "0", *overrides]) == 0
    ws = Workspace(runs, "test")
    assert read_json(ws.artifact_path("seg", 0))["status"] == "complete"
    report = pd.read_csv(ws.reports_dir / "seg_oof_dice.csv")
    test_ids = read_json(ws.splits_path)["splits"][0]["test"]
    assert sorted(report["case_id"]) == sorted(test_ids)
    assert report["dice_liver"].between(0, 1).all()
    assert report["nsd_liver"].between(0, 1).all() and (report["hd95_liver"] >= 0).all()
    summary = read_json(ws.reports_dir / "seg_summary.json")
    assert summary["nsd_tolerance_mm"] == 2.0 and {"dice_liver", "hd95_liver", "nsd_liver"} <= set(summary)
    assert "HD95 mm liver" in (ws.reports_dir / "seg_summary.md").read_text(encoding="utf-8")
    for name in ("curves_seg", "seg_overlays", "seg_folds"):  # the stage's pictures, drawn by its summary
        assert ws.figure(name).stat().st_size > 1000, name
    mtime = ws.best_checkpoint("seg", 0).stat().st_mtime_ns
    assert main(["cv", "--config", str(CONF / "seg.yaml"), "--folds", "0", *overrides]) == 0
    assert ws.best_checkpoint("seg", 0).stat().st_mtime_ns == mtime  # skipped, not retrained

    # crop from the predicted masks of the fold-0 test cases (the other cases have no prediction yet)
    sub = tmp_path / "fold0_cases.csv"
    frame = pd.read_csv(phantom_cohort)
    frame = frame[frame["case_id"].isin(test_ids)].copy()
    frame["image"] = [str(phantom_cohort.parent / p) for p in frame["image"]]
    frame["label"] = [str(phantom_cohort.parent / p) for p in frame["label"]]
    frame.to_csv(sub, index=False)
    assert main(["crop", "--config", str(CONF / "crop.yaml"), f"--cases={sub}", f"--runs_dir={runs}"]) == 0
    manifest = pd.read_csv(ws.patches_manifest)
    assert sorted(manifest["case_id"]) == sorted(test_ids)
    assert ws.figure("tlcr_patches").stat().st_size > 1000
    assert main(["summary", "--experiment", "test", "--runs_dir", str(runs)]) == 0
    out = capsys.readouterr().out
    assert "seg" in out and "patches" in out
    assert (ws.reports_dir / "summary.json").is_file()
    shutil.rmtree(runs)


def test_test_verb_keeps_fit_log(trained: tuple[Path, Path]) -> None:
    """`neonet test` logs to <stage>/fold<k>/test/, never over the fit's metrics.csv."""
    cases, runs = trained
    ws = Workspace(runs, "test")
    fit_log = ws.stage_dir("seg", 0) / "metrics.csv"
    before = fit_log.read_bytes()
    assert main(["test", *seg_args(cases, runs), "--ckpt_path", str(ws.best_checkpoint("seg", 0))]) == 0
    assert fit_log.read_bytes() == before
    test_log = pd.read_csv(ws.stage_dir("seg", 0) / "test" / "metrics.csv")
    assert {"test/dice_liver", "test/dice_tumor"} <= set(test_log.columns)
