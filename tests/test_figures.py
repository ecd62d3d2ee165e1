"""The report's pictures (``neonet.report.figures``) and the numbers behind them, on tiny synthetic inputs.

Each figure is drawn from real files of a small workspace; the tests check that the PNG has the
size its layout implies (figure inches x DPI, so a wrong number of rows or panels changes it), that
the cases it picks are the right ones, and that ``neonet report`` redraws them from disk.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg
import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from neonet.cls.plots import calibration_curve, calibration_table, plot_calibration
from neonet.data.cases import LabelMap
from neonet.gen.toy import write_toy_cohort
from neonet.report.figures import GEN_QUALITY, PATCHES, write_all, write_stage
from neonet.report.figures.common import DPI
from neonet.report.figures.curves import epoch_table, plot_training_curves
from neonet.report.figures.fold_compare import plot_gen_folds, plot_seg_folds
from neonet.report.figures.overlays import pick_cases, plot_seg_overlays
from neonet.report.figures.patch_grid import plot_patch_grid
from neonet.report.stats import format_p
from neonet.run.atomic import write_csv, write_json
from neonet.seg.evaluate import seg_metrics
from neonet.workspace import Workspace


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) in pixels of a PNG that holds more than a blank canvas."""
    pixels = mpimg.imread(path)
    assert pixels[..., :3].std() > 0.01, f"{path} is blank"
    return pixels.shape[1], pixels.shape[0]


def inches(width: float, height: float) -> tuple[int, int]:
    return round(width * DPI), round(height * DPI)


# ----------------------------------------------------------------------------- training curves
def write_metrics_log(ws: Workspace, stage: str, fold: int, epochs: int, best: int, monitor: str) -> None:
    """A Lightning-style CSV log (train and validation values of one epoch in separate rows, lr rows without
    an epoch) whose monitored metric peaks at epoch ``best``, and the fold's artifact naming the monitor."""
    rows = []
    for e in range(epochs):
        step = 10 * (e + 1) - 1
        rows.append({"epoch": None, "step": step - 9, "lr-AdamW": 0.001})
        rows.append({"epoch": e, "step": step, "val/loss": 1.0 / (e + 1), monitor: 1.0 - abs(e - best) / epochs})
        rows.append({"epoch": e, "step": step, "train/loss": 2.0 / (e + 1)})
    path = ws.metrics_log(stage, fold)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)
    write_json(ws.artifact_path(stage, fold), {"status": "complete", "monitor": monitor})


def test_epoch_table_merges_the_rows_of_an_epoch(tmp_path: Path) -> None:
    ws = Workspace(tmp_path, "e")
    write_metrics_log(ws, "seg", 0, epochs=4, best=2, monitor="val/dice_mean")
    table = epoch_table(ws.metrics_log("seg", 0))
    assert list(table.index) == [0, 1, 2, 3]
    assert table["train/loss"].tolist() == pytest.approx([2.0, 1.0, 2 / 3, 0.5])
    assert table["val/loss"].tolist() == pytest.approx([1.0, 0.5, 1 / 3, 0.25])
    assert table["val/dice_mean"].idxmax() == 2


def test_training_curves_one_line_per_fold(tmp_path: Path) -> None:
    ws = Workspace(tmp_path, "e")
    for k, best in ((0, 1), (1, 3)):
        write_metrics_log(ws, "seg", k, epochs=5, best=best, monitor="val/dice_mean")
    path = plot_training_curves(ws, "seg")
    assert path == ws.figure("curves_seg")
    assert png_size(path) == inches(11, 4.2)
    assert plot_training_curves(ws, "diffusion") is None  # no fold, no figure


# ----------------------------------------------------------------------------- NeoSeg overlays
def test_pick_cases_best_median_worst() -> None:
    frame = pd.DataFrame(
        {
            "case_id": ["a", "b", "c", "d", "e", "f", "g"],
            "fold": [0, 0, 1, 1, 2, 2, 2],
            "dice_tumor": [0.5, 0.9, 0.1, np.nan, 0.7, 0.3, 0.99],
            "status": ["ok", "ok", "ok", "ok", "ok", "ok", "missing prediction"],
        }
    )
    picks = pick_cases(frame)
    assert {k: v["case_id"] for k, v in picks.items()} == {"best": "b", "median": "a", "worst": "c"}
    ties = pd.DataFrame({"case_id": ["z", "y", "x"], "fold": [0, 0, 0], "dice_tumor": [0.4, 0.4, 0.4], "status": "ok"})
    assert [v["case_id"] for v in pick_cases(ties).values()] == ["z", "y", "x"]
    assert pick_cases(frame.iloc[[3, 6]]) == {}


def _volume_case(folder: Path, cid: str, shift: int) -> tuple[np.ndarray, np.ndarray]:
    """A 24x24x10 image with a liver and a tumour, its manual label (1 liver, 2 tumour), and a predicted mask
    whose tumour is shifted by ``shift`` voxels (so the Dice falls with ``shift``)."""
    rng = np.random.default_rng(shift)
    label = np.zeros((24, 24, 10), np.uint8)
    label[3:21, 3:21, 1:9] = 1
    label[8:14, 9:15, 3:7] = 2
    pred = np.where(label == 2, 1, label).astype(np.uint8)
    pred[8 + shift : 14 + shift, 9:15, 3:7] = 2
    image = (label * 40 + rng.normal(0, 5, label.shape)).astype(np.float32)
    affine = np.diag([2.0, 2.0, 5.0, 1.0])
    for name, data in (("img", image), ("seg", label)):
        nib.save(nib.Nifti1Image(data, affine), str(folder / f"{cid}_{name}.nii.gz"))
    return label, pred


def test_seg_overlays_and_fold_plot_from_out_of_fold_masks(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "runs", "e")
    ws.seg_predictions_dir.mkdir(parents=True)
    rows, cases = [], []
    for i, shift in enumerate((0, 1, 2, 3, 5)):
        cid = f"c{i}"
        label, pred = _volume_case(tmp_path, cid, shift)
        nib.save(nib.Nifti1Image(pred, np.diag([2.0, 2.0, 5.0, 1.0])), str(ws.seg_prediction(cid)))
        rows.append({"case_id": cid, "fold": i % 2, **seg_metrics(pred, label, (2.0, 2.0, 5.0)), "status": "ok"})
        cases.append({"case_id": cid, "image": f"{cid}_img.nii.gz", "label": f"{cid}_seg.nii.gz", "pni": i % 2})
    write_csv(tmp_path / "cases.csv", pd.DataFrame(cases))
    write_csv(ws.seg_oof_dice, pd.DataFrame(rows))
    dice = {r["case_id"]: r["dice_tumor"] for r in rows}
    assert dice["c0"] == 1.0 and dice["c4"] < dice["c2"] < dice["c0"]  # the shift orders the cases
    assert {k: v["case_id"] for k, v in pick_cases(pd.DataFrame(rows)).items()} == {"best": "c0", "median": "c2", "worst": "c4"}
    path = plot_seg_overlays(ws, tmp_path / "cases.csv", LabelMap())
    assert path == ws.figure("seg_overlays") and png_size(path) == inches(11, 3 * 3.8)
    folds = plot_seg_folds(ws)
    assert folds == ws.figure("seg_folds") and png_size(folds) == inches(4 + 1.6 * 2, 4.2)


# ----------------------------------------------------------------------------- TLCR grid, NeoGen panels
@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """A 10-case toy patch cohort (4 PNI+) with one fold of 'synthetic' patches (noisy copies of PNI+ patches),
    its per-patch quality table and NeoGen per-fold tables."""
    root = tmp_path_factory.mktemp("toy")
    write_toy_cohort(root, experiment="toy", cases=10, pni_fraction=0.4, seed=3)
    ws = Workspace(root / "runs", "toy")
    manifest = pd.read_csv(ws.patches_manifest, dtype={"case_id": str})
    rng = np.random.default_rng(0)
    syn_rows, per_rows = [], []
    for i, rec in enumerate(manifest[manifest["pni"] == 1].itertuples()):
        image = nib.load(str(ws.patches_dir / rec.image))
        label = nib.load(str(ws.patches_dir / rec.label))
        sid = f"syn_{i:02d}"
        noisy = np.clip(np.asarray(image.dataobj) + rng.normal(0, 0.05 * (i + 1), image.shape), 0, 1).astype(np.float32)
        (ws.synthetic_dir(0) / "images").mkdir(parents=True, exist_ok=True)
        (ws.synthetic_dir(0) / "labels").mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(noisy, image.affine), str(ws.synthetic_dir(0) / "images" / f"{sid}.nii.gz"))
        nib.save(label, str(ws.synthetic_dir(0) / "labels" / f"{sid}.nii.gz"))
        syn_rows.append({"case_id": sid, "image": f"images/{sid}.nii.gz", "label": f"labels/{sid}.nii.gz"})
        corr = float(np.corrcoef(noisy.ravel(), np.asarray(image.dataobj).ravel())[0, 1])
        per_rows.append({"case_id": sid, "source_case": rec.case_id, "nearest_real": rec.case_id, "nearest_corr": corr})
    write_csv(ws.synthetic_manifest(0), pd.DataFrame(syn_rows))
    write_csv(ws.gen_quality_report("csv", 0), pd.DataFrame(per_rows))
    for stage, column in (("autoencoder", "val_psnr"), ("diffusion", "final/val/loss")):
        write_csv(
            ws.stage_summary(stage),
            pd.DataFrame({"fold": [0, 1], "monitor": "val/loss", "best_score": [0.2, 0.3], column: [20.0, 21.0]}),
        )
    quality = {"fold": [0, 1], "kid": [-0.01, 0.02], "kid_sd": [0.01, 0.01], "kid_real": [0.0, 0.01], "kid_real_sd": [0.01, 0.02]}
    write_csv(ws.gen_quality_report("csv"), pd.DataFrame(quality))
    return ws


def test_patch_grid_pni_rows_above_negative_rows(toy: Workspace) -> None:
    path = plot_patch_grid(toy, per_class=8, columns=4)
    assert path == toy.figure("tlcr_patches")
    # 4 PNI+ patches -> 1 row, 6 PNI- patches -> 2 rows
    assert png_size(path) == inches(2.1 * 4, 2.3 * 3)
    assert png_size(plot_patch_grid(toy, per_class=2, columns=2)) == inches(2.1 * 2, 2.3 * 2)


def test_gen_pairs_three_planes_most_similar_first(toy: Workspace) -> None:
    from neonet.report.figures.gen_pairs import plot_gen_pairs

    path = plot_gen_pairs(toy, 0, n=3)
    assert path == toy.gen_quality_report("png", 0)
    assert png_size(path) == inches(12, 2.2 * 3 + 0.6)  # 3 rows of 2 x 3 planes
    assert plot_gen_pairs(toy, 1) is None  # fold 1 has no per-patch table


def test_gen_fold_plot_has_a_panel_per_metric(toy: Workspace) -> None:
    path = plot_gen_folds(toy)
    # autoencoder: best_score, val_psnr; diffusion: best_score, final/val/loss; quality: KID -> 5 panels, 4 columns
    assert path == toy.figure("gen_folds") and png_size(path) == inches(3.4 * 4, 2.9 * 2)


def test_write_all_draws_each_figure_once_from_disk(toy: Workspace) -> None:
    from neonet.report.figures import _figures

    assert [name for name, _ in _figures(toy, "seg")] == ["curves_seg", "seg_overlays", "seg_folds"]
    assert [name for name, _ in _figures(toy, GEN_QUALITY)] == ["gen_quality_fold0", "gen_folds"]
    write_metrics_log(toy, "autoencoder", 0, epochs=3, best=2, monitor="val/psnr")
    write_metrics_log(toy, "diffusion", 0, epochs=3, best=2, monitor="val/loss")
    write_json(toy.artifact_path("diffusion", 0), {"status": "running", "monitor": "val/loss"})  # not finished
    write_metrics_log(toy, "controlnet", 0, epochs=3, best=2, monitor="val/loss")
    toy.artifact_path("controlnet", 0).write_text('{"status": "compl')  # truncated: a warning, not a failure
    drawn = [p.name for p in write_all(toy)]
    assert sorted(drawn) == ["curves_autoencoder.png", "gen_folds.png", "gen_quality_fold0.png", "tlcr_patches.png"]


def test_a_figure_that_cannot_be_drawn_is_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ws = Workspace(tmp_path, "e")
    write_csv(ws.patches_manifest, pd.DataFrame({"case_id": ["a"], "pni": [1], "image": ["images/a.nii.gz"], "label": ["x"]}))
    assert write_stage(ws, PATCHES) == []
    assert "figure tlcr_patches not drawn" in caplog.text and "a.nii.gz" in caplog.text
    assert not ws.figure("tlcr_patches").exists()


# ----------------------------------------------------------------------------- calibration, p-values
def test_calibration_bins_count_every_case_with_a_wilson_interval(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    p = np.concatenate([rng.uniform(0, 1, 57), np.full(6, 0.5)])  # ties at 0.5 stay in one bin
    y = (rng.uniform(0, 1, len(p)) < p).astype(int)
    curve = calibration_curve(y, p, bins=5)
    assert curve["n"].sum() == len(p) and curve["n_pos"].sum() == y.sum()
    assert curve["n"].max() - curve["n"].min() <= 7  # quantile bins: about equal counts
    assert ((curve["ci_lo"] <= curve["observed"]) & (curve["observed"] <= curve["ci_hi"])).all()
    # Wilson interval of 3/10 at 95 %: 0.1078 .. 0.6032
    one = calibration_curve(np.array([1, 1, 1] + [0] * 7), np.linspace(0.1, 0.9, 10), bins=1)
    assert one[["ci_lo", "ci_hi"]].iloc[0].tolist() == pytest.approx([0.1078, 0.6032], abs=1e-4)
    frame = pd.DataFrame(
        {"stage": ["a"] * len(p) + ["b"] * 20, "y_true": [*y, *[0, 1] * 10], "prob": [*p, *np.linspace(0, 1, 20)]}
    )
    table = calibration_table(frame, bins=4)
    assert table.groupby("stage")["n"].sum().to_dict() == {"a": len(p), "b": 20}
    assert min(png_size(plot_calibration(frame, tmp_path / "c.png", bins=4))) > 500


def test_format_p() -> None:
    assert format_p(3e-9) == "< 0.0001"
    assert format_p(0.0) == "< 0.0001"
    assert format_p(1e-4) == "0.0001"
    assert format_p(0.04321) == "0.0432"
    assert format_p(float("nan")) == "—"


def test_report_redraws_finished_stages_and_formats_p_values(tmp_path: Path) -> None:
    from neonet.report.cls_report import report
    from test_report import make_experiment

    ws, frames = make_experiment(tmp_path, n=60, seed=1)
    strong = frames["pattennet"].assign(prob=frames["pattennet"]["y_true"] * 0.8 + 0.1)  # separates the classes
    for k in range(3):
        strong[strong["fold"] == k].to_csv(ws.test_predictions("pattennet", k), index=False)
        write_metrics_log(ws, "pattennet", k, epochs=3, best=1, monitor="val/selection")
    report("r", ws.runs_dir, n_boot=50, log_wandb=False)
    assert ws.figure("curves_pattennet").is_file() and not ws.figure("curves_resnet18").exists()  # only finished stages
    delong = pd.read_csv(ws.reports_dir / "cls_delong.csv")
    assert (delong["p_value"] < 1e-4).any()
    md = (ws.reports_dir / "cls_report.md").read_text(encoding="utf-8")
    assert "< 0.0001" in md and "| 0.0000 |" not in md
    for p in delong["p_value"]:
        assert format_p(p) in md
    calibration = pd.read_csv(ws.reports_dir / "cls_calibration.csv")
    assert calibration.groupby("stage")["n"].sum().to_dict() == {s: 60 for s in frames}


def test_gen_quality_markdown_keeps_the_spread_and_explains_negative_kid() -> None:
    from neonet.gen.quality import kid_with_baseline, quality_markdown

    rng = np.random.default_rng(0)
    real = rng.normal(size=(40, 6))
    rows = [{"fold": k, **kid_with_baseline(rng.normal(size=(20, 6)), real, repeats=10, seed=k)} for k in (0, 1)]
    table = pd.DataFrame(rows)
    text = quality_markdown(table, ["fold", "kid", "kid_real"])
    for row in rows:  # each fold's KID with its sd over subsets
        assert f"{row['kid']:.4g} ± {row['kid_sd']:.2g}" in text
    assert f"{table['kid'].mean():.4g} ± {table['kid'].std(ddof=1):.2g}" in text  # mean ± sd over folds
    assert "negative" in text and "indistinguishable" in text
