"""The experiment page ``reports/index.html`` written by ``neonet report``: its numbers are the files'
numbers, a stage not run says so, a damaged file does not break it, and a real browser (headless
Chromium) loads every figure without a console error."""

from __future__ import annotations

import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from neonet.cls.module import REAL
from neonet.data.cases import read_cases
from neonet.data.splits import ensure_splits
from neonet.errors import NeonetError
from neonet.gen.hooks import write_stage_summary
from neonet.report.browser import check_page, find_browser
from neonet.report.cls_report import report
from neonet.report.page import write_page
from neonet.run.atomic import read_json, write_text
from neonet.run.cli import main
from neonet.seg.evaluate import write_oof_report
from neonet.stage import CVContext
from neonet.workspace import Workspace

CONF = Path(__file__).resolve().parent / "conf"
FOLDS = 3
SECTIONS = ["cohort", "seg", "crop", "autoencoder", "diffusion", "controlnet", "synthesize", "classification"]
#: A figure file name that must be escaped in the page and URL-quoted in its link (and still load).
ODD_FIGURE = "seg_dice_<b>&#1.png"


class Tables(HTMLParser):
    """The text of every table cell, per section id: {section: [table: [row: [cell]]]}."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[list[str]]]] = {}
        self.section = ""
        self.cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "section":
            self.section = dict(attrs).get("id") or ""
        elif tag == "table":
            self.tables.setdefault(self.section, []).append([])
        elif tag == "tr":
            self.tables[self.section][-1].append([])
        elif tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self.cell is not None:
            self.tables[self.section][-1][-1].append("".join(self.cell))
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)


def tables_of(page: Path) -> dict[str, list[pd.DataFrame]]:
    parser = Tables()
    parser.feed(page.read_text(encoding="utf-8"))
    return {s: [pd.DataFrame(t[1:], columns=t[0]) for t in ts] for s, ts in parser.tables.items()}


def section_html(page: Path, section: str) -> str:
    match = re.search(rf'<section id="{section}">(.*?)</section>', page.read_text(encoding="utf-8"), re.S)
    assert match, f"no section {section}"
    return match.group(1)


def save_png(path: Path, seed: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot(np.random.default_rng(seed).normal(size=20))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def fake_fold(ws: Workspace, stage: str, fold: int, **fields: object) -> None:
    """A finished fold as ``neonet cv`` leaves it: a checkpoint file and the artifact.json recording it."""
    ckpt = ws.best_checkpoint(stage, fold)
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    ckpt.write_bytes(f"{stage} fold {fold}".encode())
    config = ws.config_path(stage, fold)
    config.write_text(f"# {stage} fold {fold}\n")
    run_id = f"{stage[:4]}{fold}xyz"
    (ws.stage_dir(stage, fold) / "wandb" / f"offline-run-20260101_000000-{run_id}").mkdir(parents=True)
    ws.write_artifact(
        stage,
        fold,
        status="complete",
        best_checkpoint=ws.checkpoint_record(ckpt),
        config=str(config),
        wandb={"name": f"{stage}-fold{fold}", "id": run_id, "project": "neonet"},
        **fields,
    )


@pytest.fixture(scope="module")
def experiment(phantom_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Experiment ``page``: splits, TLCR patches (real ``neonet crop``), NeoSeg out-of-fold masks (the manual
    masks, one case's tumour erased) with its real report, three NeoGen stages' real summaries, two
    classifiers' predictions and the real ``neonet report``. Synthesis is left out (not run)."""
    runs = tmp_path_factory.mktemp("page") / "runs"
    ws = Workspace(runs, "page")
    cases = read_cases(phantom_cohort)
    splits = ensure_splits(ws.splits_path, cases, folds=FOLDS, seed=0)
    crop = ["crop", "--config", str(CONF / "crop.yaml"), f"--cases={phantom_cohort}", f"--runs_dir={runs}"]
    assert main([*crop, "--experiment=page", "--source=manual"]) == 0
    test_of = {c: s["fold"] for s in splits["splits"] for c in s["test"]}
    for i, case in enumerate(cases):
        target = ws.seg_prediction(case.case_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(case.label, target)
        if i == 0:  # one imperfect mask: its tumour Dice is 0
            import nibabel as nib

            img = nib.load(target)
            data = np.asarray(img.dataobj).copy()
            data[data == 2] = 1
            nib.save(nib.Nifti1Image(data, img.affine), target)
    for k in range(FOLDS):
        fake_fold(ws, "seg", k, monitor="val/dice_tumor", best_score=0.5 + 0.1 * k)
    write_oof_report(CVContext(ws, {"data": {"init_args": {"cases": str(phantom_cohort)}}}, list(range(FOLDS))))
    for stage in ("autoencoder", "diffusion", "controlnet"):
        for k in range(FOLDS):
            fake_fold(ws, stage, k, monitor="val/loss", best_score=1.0 / (k + 2), epochs=3, final_metrics={"val/loss": 0.3 + k})
        write_stage_summary(ws, stage, list(range(FOLDS)))
    for k in range(FOLDS):  # a stage of no section of its own (as a newly added stage would be)
        fake_fold(ws, "denoiser", k, monitor="val/loss", best_score=0.1 * (k + 1))
    write_stage_summary(ws, "denoiser", list(range(FOLDS)))
    save_png(ws.reports_dir / "denoiser_examples.png", 3)
    rng = np.random.default_rng(0)
    for stage, strength in (("pattennet", 2.0), ("resnet18", 0.5)):
        for k in range(FOLDS):
            test = [c for c in cases if test_of[c.case_id] == k]
            y = np.array([c.pni for c in test])
            p = 1 / (1 + np.exp(-(strength * y + rng.normal(0, 1, len(y)))))
            fake_fold(
                ws,
                stage,
                k,
                monitor="val/auc",
                best_score=0.7,
                classifier={"model": stage, "variant": REAL},
                upstream={"patches_manifest": ws.checkpoint_record(ws.patches_manifest)},
            )
            frame = pd.DataFrame(
                {
                    "case_id": [c.case_id for c in test],
                    "patient_id": [c.patient_id for c in test],
                    "fold": k,
                    "y_true": y,
                    "prob": p,
                    "logit": np.log(p / (1 - p)),
                    "threshold_youden_val": 0.5,
                }
            )
            frame.to_csv(ws.test_predictions(stage, k), index=False)
    (ws.root / "cls" / "cv" / "wandb" / "offline-run-20260101_000000-clscv01").mkdir(parents=True)  # a summary run
    save_png(ws.reports_dir / ODD_FIGURE, 1)
    save_png(ws.reports_dir / "extra" / "probe_panel.png", 2)  # no stage's name: "other figures"
    doc = report("page", runs, n_boot=200, log_wandb=False)
    return {"ws": ws, "cases": pd.read_csv(phantom_cohort, dtype={"case_id": str}), "splits": splits, "doc": doc}


def test_report_writes_the_page_with_each_stage_and_its_numbers(experiment) -> None:
    ws: Workspace = experiment["ws"]
    page = Path(experiment["doc"]["page"])
    assert page == ws.page and page.is_file()
    tables = tables_of(page)
    # cohort: per fold test cases and PNI+/- as counted here from cases.csv and splits.json
    cohort = tables["cohort"][0].set_index("fold")
    pni = experiment["cases"].set_index("case_id")["pni"]
    for s in experiment["splits"]["splits"]:
        row = cohort.loc[str(s["fold"])]
        assert int(row["test cases"]) == len(s["test"])
        assert int(row["test PNI+"]) == int(pni[list(s["test"])].sum())
        assert int(row["test PNI−"]) == int((pni[list(s["test"])] == 0).sum())
    assert int(cohort.loc["all", "test PNI+"]) == int(pni.sum())
    # NeoSeg: the pooled tumour Dice is the report's, and below 1 (one erased tumour)
    seg = read_json(ws.reports_dir / "seg_summary.json")
    pooled = tables["seg"][0].iloc[-1]
    assert pooled["Dice tumour"] == f"{seg['dice_tumor']['mean']:.3f} ± {seg['dice_tumor']['sd']:.3f}"
    assert seg["dice_tumor"]["mean"] < 1.0
    # crop: the status table counts every case of the manifest
    manifest = pd.read_csv(ws.patches_manifest)
    assert tables["crop"][0]["cases"].astype(int).sum() == len(manifest)
    # NeoGen: each stage's per-fold best scores, then mean and sd
    for stage in ("autoencoder", "diffusion", "controlnet"):
        shown = tables[stage][0]
        assert list(shown["fold"]) == ["0", "1", "2", "mean", "sd"]
        assert shown["best_score"].iloc[3] == f"{np.mean([1 / 2, 1 / 3, 1 / 4]):.3f}"
    # classification: pooled AUC as in cls_summary.csv
    summary = pd.read_csv(ws.reports_dir / "cls_summary.csv").set_index("stage")
    shown = tables["classification"][0].set_index("stage")
    for stage in ("pattennet", "resnet18"):
        assert shown.loc[stage, "auc_pooled"] == f"{summary.loc[stage, 'auc_pooled']:.3f}"
    # every table shown is in reports/index.json too, with the files' full precision
    record = read_json(ws.page_tables)
    assert record["experiment"] == "page"
    shown_json = {r["stage"]: r for r in record["sections"]["classification"][0]}
    for stage in ("pattennet", "resnet18"):
        assert shown_json[stage]["auc_pooled"] == pytest.approx(summary.loc[stage, "auc_pooled"], abs=1e-12)
    assert record["sections"]["cohort"][0][-1]["test PNI+"] == int(pni.sum())
    # synthesis never ran: a line that says so and names the make target, not an error
    assert "not run — run <code>make synthesize</code>" in section_html(page, "synthesize")
    assert 'class="problem"' not in page.read_text(encoding="utf-8")


def test_page_figures_provenance_and_wandb(experiment) -> None:
    ws: Workspace = experiment["ws"]
    page = ws.page
    text = page.read_text(encoding="utf-8")
    srcs = re.findall(r'<img src="([^"]+)"', text)
    assert len(srcs) == len(ws.report_figures()) >= 8  # every PNG, whatever its name
    assert "<b>" not in text and "seg_dice_&lt;b&gt;&amp;#1" in text  # the odd name escaped ...
    assert "seg_dice_%3Cb%3E%26%231.png" in section_html(page, "seg")  # ... URL-quoted, with NeoSeg
    assert "extra/probe_panel.png" in section_html(page, "figures")
    other = section_html(page, "other-stages")
    assert "denoiser_examples.png" in other and "denoiser_summary.csv" in other
    assert list(tables_of(page)["other-stages"][0]["best_score"]) == ["0.100", "0.200", "0.300"]
    assert "roc_pattennet.png" in section_html(page, "classification")
    prov = tables_of(page)["provenance"]
    seg = prov[0].set_index("fold")
    for k in range(FOLDS):
        assert seg.loc[str(k), "sha256"] == ws.read_artifact("seg", k)["best_checkpoint"]["sha256"]
        assert seg.loc[str(k), "config"] == f"seg/fold{k}/config.yaml"
    manifest_sha = ws.read_artifact("pattennet", 0)["upstream"]["patches_manifest"]["sha256"]
    assert f"patches_manifest: manifest.csv {manifest_sha[:12]}…" in list(prov[-2]["upstream"])  # stages: seg .. resnet18
    crop_record = [t for t in prov if "record" in t.columns][0]
    assert "patches/crop_config.json" in list(crop_record["record"])
    runs = tables_of(page)["wandb"][0]
    assert {"seg-fold0", "pattennet-fold2", "controlnet-fold1"} <= set(runs["run name"])
    summary_run = runs[runs["run id"] == "clscv01"].iloc[0]
    assert (summary_run["stage"], summary_run["fold"], summary_run["run name"]) == ("cls", "cv", "cls-cv")


def test_page_without_classifiers_and_with_a_damaged_report(tmp_path: Path, phantom_cohort: Path) -> None:
    ws = Workspace(tmp_path / "runs", "early")
    ensure_splits(ws.splits_path, read_cases(phantom_cohort), folds=FOLDS, seed=0)
    write_text(ws.reports_dir / "seg_summary.json", '{"n_cases": 3, "dice_')  # truncated
    doc = report("early", ws.runs_dir, log_wandb=False)
    assert doc["stages"] == [] and Path(doc["page"]) == ws.page
    assert "seg_summary.json" in section_html(ws.page, "seg") and 'class="problem"' in section_html(ws.page, "seg")
    assert "not run — run <code>make pattennet</code>" in section_html(ws.page, "classification")
    assert "not run — run <code>make crop</code>" in section_html(ws.page, "crop")
    assert len(tables_of(ws.page)["cohort"][0]) == FOLDS + 1
    with pytest.raises(NeonetError, match="no test predictions"):  # asked for a stage that has none
        report("early", ws.runs_dir, stages=["pattennet"], log_wandb=False)
    with pytest.raises(NeonetError, match="no test predictions"):  # no experiment at all: nothing written
        report("absent", ws.runs_dir, log_wandb=False)
    assert not (ws.runs_dir / "absent").exists()
    write_text(ws.splits_path, ws.splits_path.read_text(encoding="utf-8")[:40])  # damaged: named in the cohort section
    cohort = section_html(write_page(ws), "cohort")
    assert 'class="problem"' in cohort and "splits.json" in cohort
    assert "not run — run <code>make crop</code>" in section_html(ws.page, "crop")


def browser_or_skip() -> None:
    if find_browser() is None:
        message = "no headless Chromium + chromedriver + selenium (apt-get install chromium chromium-driver)"
        if os.environ.get("NEONET_REQUIRE_BROWSER") == "1":
            pytest.fail(f"NEONET_REQUIRE_BROWSER=1 but {message}")
        pytest.skip(message)


def test_page_in_a_real_browser(experiment) -> None:
    browser_or_skip()
    ws: Workspace = experiment["ws"]
    check = check_page(ws.page, screenshot=ws.page_screenshot)
    assert check.title == "neonet experiment page"
    assert len(check.images) == len(ws.report_figures())
    assert check.broken_images == []
    assert check.errors == []
    assert set(SECTIONS + ["other-stages", "figures", "provenance", "wandb"]) <= set(check.section_ids)
    from PIL import Image

    with Image.open(ws.page_screenshot) as shot:  # the whole page, for the reader
        assert shot.format == "PNG" and shot.width >= 1000 and shot.height > 3000


def test_browser_sees_a_missing_figure(tmp_path: Path) -> None:
    """The check can fail: a page whose image is missing is reported broken, with a SEVERE log entry."""
    browser_or_skip()
    save_png(tmp_path / "ok.png", 0)
    page = tmp_path / "index.html"
    page.write_text(
        '<!DOCTYPE html><html><head><link rel="icon" href="data:,"><title>t</title></head><body>'
        '<section id="a"><img src="ok.png"><img src="gone.png"></section></body></html>'
    )
    check = check_page(page)
    assert check.broken_images == ["gone.png"]
    assert any("gone.png" in e for e in check.errors)
    assert check.section_ids == ["a"]
