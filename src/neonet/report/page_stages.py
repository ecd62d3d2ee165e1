"""The stage sections of the experiment page (see :mod:`neonet.report.page`): cohort and splits, NeoSeg,
TLCR, the NeoGen stages, synthetic-patch quality, classification with its controls, other stages.

Each builder takes the page's :class:`~neonet.report.page.PageSources` and returns the section's HTML;
a stage that has not run returns the "not run — run ``make <stage>``" line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pandas as pd

from neonet.report import page_html as h
from neonet.run.atomic import read_json
from neonet.workspace import Workspace

if TYPE_CHECKING:
    from neonet.report.page import PageSources

#: Stage folders whose folds the page shows in the NeoGen sections.
GEN_STAGES = ("autoencoder", "diffusion", "controlnet")


def cohort(page: PageSources) -> str:
    doc = page.splits
    if page.splits_problem:
        return h.problem(page.splits_problem)
    if doc is None:
        return h.not_run("seg", "no splits.json yet (the first fold of any stage writes it)")
    records = doc.get("cases") or {}

    def counts(cases: list[str]) -> dict[str, int]:
        pni = [records.get(c, {}).get("pni") for c in cases]
        return {"pos": sum(p == 1 for p in pni), "neg": sum(p == 0 for p in pni), "unlabelled": sum(p not in (0, 1) for p in pni)}

    rows: list[dict[str, Any]] = []
    for s in doc["splits"]:
        test, fit = counts(list(s["test"])), counts(list(s["train"]) + list(s["val"]))
        rows.append(
            {
                "fold": int(s["fold"]),
                "test cases": len(s["test"]),
                "test PNI+": test["pos"],
                "test PNI−": test["neg"],
                "training cases": len(s["train"]),
                "inner validation cases": len(s["val"]),
                "training PNI+": fit["pos"],
                "training PNI−": fit["neg"],
            }
        )
    every = counts(list(records))
    rows.append({"fold": "all", "test cases": len(records), "test PNI+": every["pos"], "test PNI−": every["neg"]})
    patients = {r.get("patient_id", c) for c, r in records.items()}
    groups = {r["group"] for r in records.values() if r.get("group")}
    lines = [
        f"{len(records)} cases of {len(patients)} patients: {every['pos']} PNI+, {every['neg']} PNI−"
        + (f", {every['unlabelled']} unlabelled" if every["unlabelled"] else "")
        + (f", in {len(groups)} groups kept within one fold" if groups else "")
        + f". {doc['folds']} folds, patient-level and PNI-stratified, split seed {doc.get('seed')}, inner validation "
        f"fraction {doc.get('val_fraction')}; manifest fingerprint {doc.get('fingerprint')}. Training counts include "
        "the inner validation cases."
    ]
    return (
        "".join(h.paragraph(line) for line in lines) + page.table(rows, pooled=[len(rows) - 1]) + h.paragraph("from splits.json")
    )


def fold_status(page: PageSources, stage: str) -> list[dict[str, Any]]:
    return [
        {
            "fold": k,
            "status": a.get("status"),
            "monitor": a.get("monitor"),
            "best score": a.get("best_score"),
            "epochs": a.get("epochs"),
        }
        for k, a in page.artifacts(stage)
    ]


def seg(page: PageSources) -> str:
    path = page.ws.reports_dir / "seg_summary.json"
    if not path.is_file():
        status = fold_status(page, "seg")
        if not status:
            return h.not_run("seg")
        return page.table(status) + h.not_run("seg", "out-of-fold report not written yet (neonet cv writes it after the folds)")
    summary = read_json(path)
    rows: list[dict[str, Any]] = [
        {"fold": int(k), "cases": v.get("n"), "Dice liver": v.get("dice_liver"), "Dice tumour": v.get("dice_tumor")}
        for k, v in sorted((summary.get("per_fold") or {}).items(), key=lambda kv: int(kv[0]))
    ]
    liver, tumour = summary.get("dice_liver") or {}, summary.get("dice_tumor") or {}
    rows.append(
        {
            "fold": "pooled (mean ± sd)",
            "cases": summary.get("n_cases"),
            "Dice liver": f"{h.fmt(liver.get('mean'))} ± {h.fmt(liver.get('sd'))}",
            "Dice tumour": f"{h.fmt(tumour.get('mean'))} ± {h.fmt(tumour.get('sd'))}",
        }
    )
    note = f"{summary.get('n_missing')} case(s) without an out-of-fold prediction. " if summary.get("n_missing") else ""
    return (
        h.paragraph(f"Out-of-fold Dice of each test case's mask in its original space. {note}")
        + page.table(rows, pooled=[len(rows) - 1])
        + page.source("seg_summary.json", "seg_oof_dice.csv")
    )


def crop(page: PageSources) -> str:
    ws = page.ws
    if not ws.patches_manifest.is_file():
        return h.not_run("crop")
    frame = pd.read_csv(ws.patches_manifest, dtype={"case_id": str, "patient_id": str})
    status = frame["status"].astype(str).str.split(":").str[0]
    pni = pd.to_numeric(frame["pni"], errors="coerce").map({1.0: "PNI+", 0.0: "PNI−"}).fillna("unlabelled")
    by = pd.crosstab(status, pni)
    rows = [{"status": s, **{c: int(by.loc[s, c]) for c in by.columns}, "cases": int(by.loc[s].sum())} for s in by.index]
    parts = [h.paragraph(f"{len(frame)} cases in patches/manifest.csv, by crop status and label:"), page.table(rows)]
    if "n_tumors" in frame:
        tumours = frame["n_tumors"].dropna().astype(int).value_counts().sort_index()
        parts.append(page.table([{"tumours in the mask": int(n), "cases": int(c)} for n, c in tumours.items()]))
    if "tumor_volume_ml" in frame and frame["tumor_volume_ml"].notna().any():
        vol = frame.groupby(pni)["tumor_volume_ml"].median()
        parts.append(h.paragraph("median largest-tumour volume (ml): " + ", ".join(f"{k} {h.fmt(v)}" for k, v in vol.items())))
    if ws.crop_config.is_file():
        settings = read_json(ws.crop_config).get("settings") or {}
        parts.append("<h3>Settings (patches/crop_config.json)</h3>\n" + page.key_values(settings))
    return "".join(parts)


def gen_stage(stage: str) -> Callable[[PageSources], str]:
    def build(page: PageSources) -> str:
        frame = page.report_csv(f"{stage}_summary")
        if frame is None:
            status = fold_status(page, stage)
            if not status:
                return h.not_run(stage)
            return page.table(status) + h.not_run(
                stage, "cross-fold summary not written yet (neonet cv writes it after the folds)"
            )
        rows = frame.to_dict("records")
        record = page.ws.reports_dir / f"{stage}_summary.json"
        summary = (read_json(record).get("summary") or {}) if record.is_file() else {}
        if summary:  # mean and sd over the folds, as the stage's summary recorded them
            rows.append({"fold": "mean", **{c: v.get("mean") for c, v in summary.items()}})
            rows.append({"fold": "sd", **{c: v.get("sd") for c, v in summary.items()}})
        pooled = [len(rows) - 2, len(rows) - 1] if summary else []
        return page.table(rows, pooled=pooled) + page.source(f"{stage}_summary.csv", f"{stage}_summary.json")

    return build


def synthesize(page: PageSources) -> str:
    ws = page.ws
    frame = page.report_csv("gen_quality")
    folds = [k for k in range(int((page.splits or {}).get("folds") or 0)) if ws.synthetic_manifest(k).is_file()]
    if frame is None and not folds:
        return h.not_run("synthesize")
    parts = []
    if folds:
        counts = []
        for k in folds:
            manifest = pd.read_csv(ws.synthetic_manifest(k))
            counts.append({"fold": k, "synthetic patches": len(manifest)})
        parts.append(page.table(counts) + h.paragraph("from synthetic/fold<k>/manifest.csv"))
    if frame is None:
        parts.append(h.not_run("synthesize", "quality report not written yet"))
    else:
        parts.append(
            "<h3>Quality (real vs synthetic, per fold)</h3>\n"
            + page.table(frame)
            + page.source("gen_quality.csv", "gen_quality.json")
        )
    return "".join(parts)


SUMMARY_COLUMNS = [
    "stage", "model", "variant", "folds", "n", "n_pos", "auc_mean", "auc_sd", "auc_fold_max (optimistic)", "auc_pooled",
    "auc_ci_lo", "auc_ci_hi",
    "auc_delong_lo", "auc_delong_hi", "sensitivity_youden", "specificity_youden", "brier", "ece",
]  # fmt: skip
FOLD_COLUMNS = [
    "stage", "fold", "n", "n_pos", "auc", "ap", "threshold_youden_val", "sensitivity_youden", "specificity_youden",
    "accuracy_05", "f1_05", "logit_median_neg", "logit_median_pos",
]  # fmt: skip


def classification(page: PageSources) -> str:
    from neonet.report.cls_report import FOLD_MAX, FOLD_MAX_NOTE, _below_chance_note, _scale_note

    summary = page.report_csv("cls_summary")
    if summary is None:
        if page.classifiers:
            return h.not_run("report", f"trained ({', '.join(page.classifiers)}) but not reported yet")
        return h.not_run("pattennet") + controls(page)
    doc = read_json(page.ws.reports_dir / "cls_report.json") if (page.ws.reports_dir / "cls_report.json").is_file() else {}
    control_rows = page.report_csv("cls_controls")
    if control_rows is not None:  # control stages are shown under Controls, against their main rows
        summary = summary[~summary["stage"].isin(control_rows["stage"])]
    settings = doc.get("settings") or {}
    level = round(100 * (1 - float(settings.get("alpha", 0.05))))
    parts = [
        h.paragraph(
            f"Out-of-fold predictions on real held-out patients. Pooled AUC with a {level} % "
            f"{settings.get('bootstrap', 'bootstrap')} bootstrap CI ({settings.get('n_boot', '?')} resamples) and a "
            f"DeLong CI; thresholded metrics at {settings.get('threshold', 'each fold’s validation Youden threshold')}."
        ),
        "<h3>Summary</h3>\n" + page.table(summary.rename(columns={"auc_fold_max": FOLD_MAX}), SUMMARY_COLUMNS),
        h.paragraph(f"{FOLD_MAX} {FOLD_MAX_NOTE}") if "auc_fold_max" in summary.columns else "",
    ]
    notes = (_scale_note(summary) + _below_chance_note(summary, level)).strip()
    parts += [h.paragraph(n.strip()) for n in notes.split("\n\n") if n.strip()]
    ablation = page.report_csv("cls_ablation")
    if ablation is not None:
        cols = [c for c in ablation.columns if not c.startswith("auc_pooled")]
        parts.append("<h3>Ablation: real only vs real + synthetic</h3>\n" + page.table(ablation, cols))
    delong = page.report_csv("cls_delong")
    if delong is not None:
        parts.append(f"<h3>DeLong tests ({settings.get('delong_variance', 'DeLong')} variance)</h3>\n")
        parts.append(page.table(delong) if len(delong) else h.paragraph("(one stage only)"))
    folds = page.report_csv("cls_per_fold")
    if folds is not None:
        parts.append("<h3>Per fold</h3>\n" + page.table(folds, FOLD_COLUMNS))
    parts.append(page.source("cls_summary.csv", "cls_ablation.csv", "cls_delong.csv", "cls_per_fold.csv", "cls_report.json"))
    return "".join(parts) + seeds(page, doc) + controls(page)


def seeds(page: PageSources, doc: dict[str, Any]) -> str:
    """The training-seed table of ``cls_report.json`` (stages trained under several seeds, ``neonet cv --seeds``):
    each seed's pooled AUC, mean ± sd, the patients x seeds interval and the maximum fold AUC (optimistic); nothing
    when the report has no seeds."""
    from neonet.report.seeds import seeds_note, seeds_rows

    record = doc.get("seeds") or {}
    if not record.get("summary"):
        return ""
    settings = doc.get("settings") or {}
    rows = seeds_rows(pd.DataFrame(record["per_seed"]), pd.DataFrame(record["summary"]), float(settings.get("alpha", 0.05)))
    return (
        "<h3>Training seeds</h3>\n"
        + h.paragraph(seeds_note(settings.get("n_boot", "?")).replace("`", ""))
        + page.table(rows)
        + page.source("cls_seeds.csv", "cls_seeds_summary.csv", "cls_report.json")
    )


def flat(data: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Scalar leaves of nested dicts as (dotted name, value); lists are left out."""
    if isinstance(data, dict):
        for k, v in data.items():
            yield from flat(v, f"{prefix}{k}.")
    elif isinstance(data, (int, float, str, bool)) or data is None:
        yield prefix[:-1], data


def controls(page: PageSources) -> str:
    from neonet.report.controls import COLUMNS as CONTROL_COLUMNS

    ws = page.ws
    parts = []
    rows = page.report_csv("cls_controls")
    if rows is not None and len(rows):
        parts.append(
            h.paragraph(
                "Classifier controls, trained and tested on the same folds as their main stage with one input swapped "
                "(manual masks) or taken away (image-free: a constant image); see docs/controls.md."
            )
            + page.table(rows, [c for c in CONTROL_COLUMNS if c != "sentence"])
            + "".join(h.paragraph(str(text)) for text in rows["sentence"])
            + page.source("cls_controls.csv")
        )
    null = Workspace(ws.runs_dir, f"{ws.experiment}-null")
    null_summary = null.reports_dir / "cls_summary.csv"
    if null_summary.is_file():
        frame = pd.read_csv(null_summary)
        parts.append(
            h.paragraph(f"Null control (experiment {null.experiment}, a strength-0 phantom): its pooled AUC must stay near 0.5.")
            + page.table(frame, ["stage", "folds", "n", "auc_pooled", "auc_ci_lo", "auc_ci_hi", "auc_mean", "auc_sd"])
        )
        if null.page.is_file():
            parts.append("<p>" + h.link(f"../../{null.experiment}/reports/index.html", f"{null.experiment}'s page") + "</p>\n")
    probe = ws.reports_dir / "pni_signal_probe.json"
    if probe.is_file():
        values = dict(flat(read_json(probe)))
        parts.append(h.paragraph("PNI signal probe (benchmarks/pni_signal_probe.py):") + page.key_values(values))
    if not parts:
        what = "no classifier control (make controls), null control (make null) or signal probe for this experiment"
        return "<h3>Controls</h3>\n" + h.not_run("controls", what)
    return "<h3>Controls</h3>\n" + "".join(parts)


def other_stages(page: PageSources) -> str:
    """Stages without a section of their own: their ``reports/<stage>_summary.csv``, else their folds' status."""
    parts = []
    for stage in page.other_stages:
        frame = page.report_csv(f"{stage}_summary")
        body = (
            page.table(frame) + page.source(f"{stage}_summary.csv") if frame is not None else page.table(fold_status(page, stage))
        )
        parts.append(f"<h3>{h.esc(stage)}</h3>\n{body}")
    return "".join(parts)
