"""``neonet evaluate``: an experiment's trained folds on an external cohort that took no part in its CV.

Every finished fold of each requested stage predicts every case of the external ``cases.csv``; the
fold ensemble is the prediction (mean softmax of the NeoSeg folds, mean probability of each
classifier's folds), through the steps of ``neonet predict-case`` (:mod:`neonet.predict.cohort`).
Refused before anything is written (:mod:`neonet.report.external_cohort`): cases whose case id or scan
content belongs to the experiment's cohort, and labels whose map differs from the NeoSeg folds'.

Written to ``<runs_dir>/<experiment>/reports/external/<name>/`` (:class:`~neonet.workspace.ExternalPaths`)
as one step: the report is built in a temporary folder and renamed onto the old one, so an
interrupted run leaves the earlier report as it was.

- NeoSeg (stage ``seg``, cases with a label): Dice, HD95 and NSD per case and pooled
  (:func:`neonet.seg.evaluate.case_metrics`, :func:`~neonet.seg.evaluate.summarise`);
- each classifier (cases with ``pni``): AUC with a bootstrap CI (a cluster bootstrap over patients
  when a patient has several scans), each fold's own AUC, sensitivity and specificity at the mean of
  the folds' inner-validation (Youden) thresholds, Brier score, calibration
  (:func:`neonet.cls.plots.calibration_table`), ``roc.png`` and ``calibration.png``;
- ``external.md`` / ``external.json``: which stages and folds were used, and every number above.

A scan in which NeoSeg finds no tumour gets no PNI probability (as ``predict-case``); such cases are
counted (``n_no_tumour``) and listed, not scored.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from neonet import __version__
from neonet.data.cases import Case, LabelMap, read_cases, safe_file_name
from neonet.data.splits import folds_phrase, read_splits
from neonet.errors import DataError, NeonetError
from neonet.predict.cohort import ScanPrediction
from neonet.predict.pipeline import Predictor
from neonet.report.cls_report import markdown
from neonet.run.atomic import atomic_dir, write_csv, write_json, write_text
from neonet.workspace import ExternalPaths, Workspace, git_sha

log = logging.getLogger(__name__)


def default_name(cases: Path) -> str:
    """The report's name from the manifest's path: ``<folder>_<stem>`` made one safe folder name."""
    return safe_file_name(f"{cases.resolve().parent.name}_{cases.stem}", default="external")


def classifier_stages(ws: Workspace) -> list[str]:
    """Stages of the experiment whose folds record a classifier (``artifact.json`` ``classifier``), diagnostic
    controls (``classifier.control``: manual-mask patches, constant image; docs/controls.md) left out."""
    records = {s: [(ws.read_artifact(s, k) or {}).get("classifier") for k in ws.stage_folds(s)] for s in ws.artifact_stages()}
    return [
        s
        for s, found in records.items()
        if any(isinstance(r, dict) for r in found) and not any(isinstance(r, dict) and r.get("control") for r in found)
    ]


def _label_map(liver: list[int] | None, tumor: list[int] | None, other: list[int] | None) -> LabelMap | None:
    if liver is None and tumor is None and other is None:
        return None
    return LabelMap(tuple(liver if liver is not None else [1]), tuple(tumor if tumor is not None else [2]), tuple(other or []))


# ----------------------------------------------------------------------------- tables
def seg_table(preds: list[ScanPrediction], label_map: LabelMap) -> pd.DataFrame:
    """NeoSeg metrics of every scan with a manual label (:func:`neonet.seg.evaluate.case_metrics`)."""
    from neonet.seg.evaluate import case_metrics

    rows = [
        {
            "case_id": p.case.case_id,
            "mask": str(Path("masks") / p.mask.name),
            **case_metrics(p.mask, p.case.label, p.case.case_id, label_map),
        }
        for p in preds
        if p.case.label is not None
    ]
    return pd.DataFrame(rows)


def prediction_table(preds: list[ScanPrediction], thresholds: dict[str, dict[int, float]]) -> pd.DataFrame:
    """One row per scan and classifier: each fold's probability, their mean (the prediction), the mean threshold."""
    rows = []
    for stage, by_fold in thresholds.items():
        threshold = float(np.mean(list(by_fold.values())))
        for p in preds:
            probs = p.probs.get(stage, {})
            prob = float(np.mean(list(probs.values()))) if probs else math.nan
            rows.append(
                {
                    "stage": stage,
                    "case_id": p.case.case_id,
                    "patient_id": p.case.patient_id,
                    "y_true": math.nan if p.case.pni is None else int(p.case.pni),
                    "crop_status": p.crop_status,
                    "n_tumors": p.n_tumors,
                    "out_of_distribution": None if p.ood is None else bool(p.ood["flags"]),
                    "prob": prob,
                    **{f"prob_fold{k}": probs.get(k, math.nan) for k in by_fold},
                    "threshold": threshold,
                    "predicted_pni": math.nan if math.isnan(prob) else int(prob >= threshold),
                }
            )
    return pd.DataFrame(rows)


def ood_table(preds: list[ScanPrediction]) -> pd.DataFrame:
    """One row per scan: what it measured inside its NeoSeg mask and the checks it fails against the
    experiment's cohort fingerprint (:mod:`neonet.predict.ood`); empty without a fingerprint."""
    rows = []
    for p in preds:
        if p.ood is None:
            continue
        measured = {k: v for k, v in p.ood["measured"].items() if k != "case_id"}
        flags = p.ood["flags"]
        rows.append(
            {
                "case_id": p.case.case_id,
                "out_of_distribution": bool(flags),
                "flags": ";".join(f["check"] for f in flags),
                **measured,
                "messages": " | ".join(f["message"] for f in flags),
            }
        )
    return pd.DataFrame(rows)


def cls_summary(
    frame: pd.DataFrame, thresholds: dict[str, dict[int, float]], n_boot: int, alpha: float, seed: int
) -> pd.DataFrame:
    """Per classifier: AUC [bootstrap CI], each fold's AUC, sensitivity / specificity at the mean threshold, Brier."""
    from neonet.report.stats import auc, binary_metrics, bootstrap_auc_ci

    rows = []
    for stage, part in frame.groupby("stage", sort=False):
        labelled = part[part["y_true"].notna()]
        scored = labelled[labelled["prob"].notna()]
        y, p = scored["y_true"].to_numpy(int), scored["prob"].to_numpy(float)
        threshold = float(np.mean(list(thresholds[str(stage)].values())))
        row: dict[str, Any] = {
            "stage": stage,
            "folds": " ".join(map(str, thresholds[str(stage)])),
            "n": len(scored),
            "n_pos": int(y.sum()),
            "n_no_tumour": int(labelled["prob"].isna().sum()),
            "threshold": threshold,
            "auc": math.nan,
            "auc_ci_lo": math.nan,
            "auc_ci_hi": math.nan,
        }
        if 0 < y.sum() < len(y):
            patients = scored["patient_id"].astype(str)
            clusters = patients.to_numpy() if patients.duplicated().any() else None
            row["auc"], row["auc_ci_lo"], row["auc_ci_hi"] = bootstrap_auc_ci(
                y, p, n_boot=n_boot, alpha=alpha, seed=seed, clusters=clusters
            )
            for k in thresholds[str(stage)]:
                row[f"auc_fold{k}"] = auc(y, scored[f"prob_fold{k}"].to_numpy(float))
        if len(y):
            m = binary_metrics(y, p, threshold)
            row.update({k: m[k] for k in ("sensitivity", "specificity", "accuracy", "f1")})
            row["brier"] = float(np.mean((p - y) ** 2))
        rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- the verb
def evaluate(
    experiment: str,
    cases: Path,
    name: str | None = None,
    stages: list[str] | None = None,
    runs_dir: Path = Path("runs"),
    liver: list[int] | None = None,
    tumor: list[int] | None = None,
    other: list[int] | None = None,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
    calibration_bins: int = 5,
    device: str = "auto",
) -> dict[str, Any]:
    """Evaluate an experiment's trained folds on an external cohort (one that took no part in its CV).

    Every finished fold of each stage predicts every case of ``cases``; the fold ensemble (mean softmax
    of the NeoSeg folds, mean probability of a classifier's folds) is the prediction, made as
    ``neonet predict-case`` makes it (NeoSeg mask → TLCR → classifier). Refuses, before writing
    anything, cases whose case id or scan content belongs to the experiment's cohort, and labels whose
    map differs from the NeoSeg folds'. Writes ``reports/external/<name>/``: NeoSeg Dice / HD95 / NSD per
    case (cases with a label), per classifier AUC with a bootstrap CI, sensitivity and specificity at the
    mean of the folds' validation thresholds and calibration (cases with ``pni``), ``roc.png``,
    ``calibration.png`` and the summary ``external.md``. A re-run replaces the report as one step.

    Args:
        experiment: experiment whose trained folds are evaluated (folder below ``runs_dir``).
        cases: the external cohort's ``cases.csv`` (same format as the experiment's; ``label`` and
            ``pni`` may be empty).
        name: the report's folder below ``reports/external/`` (default: the manifest's folder and
            stem, e.g. ``cohort_b_cases``).
        stages: ``seg`` and classifier stages (``pattennet``, ``resnet18``, ``radiomics``, ...) to evaluate (default:
            ``seg`` and every classifier stage with a finished fold). Classifiers always read NeoSeg's
            masks; ``seg`` adds its metrics.
        runs_dir: folder holding all experiments.
        liver: label values meaning liver in the external labels (default: the NeoSeg folds'; a map
            other than theirs is refused).
        tumor: label values meaning tumour (as ``liver``).
        other: label values meaning other structures (as ``liver``).
        n_boot: bootstrap resamples of the AUC's CI.
        alpha: 1 - confidence level.
        seed: bootstrap seed.
        calibration_bins: quantile bins of the calibration table and plot.
        device: ``auto`` (a GPU if there is one), ``cpu``, ``cuda``, ...

    Returns:
        The content of ``external.json``.
    """
    from neonet.data.validate import assert_valid
    from neonet.predict.ensemble import finished_folds
    from neonet.predict.source import RunsSource
    from neonet.report.external_cohort import check_disjoint, check_label_map, describe, experiment_label_map
    from neonet.run.device import resolve_device

    ws = Workspace(runs_dir, experiment)
    source = RunsSource(ws)  # the experiment exists
    csv = Path(cases)
    external = read_cases(csv)
    if not external:
        raise DataError(f"{csv}: the external manifest has no cases")
    name = name or default_name(csv)
    if safe_file_name(name) != name:
        raise DataError(f"--name {name!r}: use one plain folder name, e.g. {safe_file_name(name)!r}")
    out = ws.external(name)
    classifiers = classifier_stages(ws)
    wanted = list(stages) if stages else ["seg", *classifiers]
    unknown = [s for s in wanted if s != "seg" and s not in classifiers]
    if unknown:
        raise NeonetError(
            f"--stages {' '.join(unknown)}: not a classifier stage of experiment {experiment!r} with a finished fold "
            f"(its classifier stages: {', '.join(classifiers) or 'none'}; `seg` is NeoSeg)"
        )
    folds = {"seg": finished_folds(ws, "seg"), **{s: finished_folds(ws, s) for s in wanted if s != "seg"}}
    label_map, map_source = experiment_label_map(ws, folds["seg"])
    check_label_map(_label_map(liver, tumor, other), label_map, map_source, external, csv)
    compared = check_disjoint(ws, external, csv, folds)
    assert_valid(csv, label_map, require_label=False, require_pni=False, stages=("seg",))  # files readable, grids agree
    cls_stages = [s for s in wanted if s != "seg"]
    crop = source.crop_settings() if cls_stages else None
    predictor = Predictor(source, {s: folds[s] for s in cls_stages}, folds["seg"], crop, None, resolve_device(device))
    seg_models = predictor.seg_models()
    models = {s: predictor.cls_models(s) for s in cls_stages}
    thresholds = {s: {m.fold: float(m.threshold) for m in ms} for s, ms in models.items()}
    doc: dict[str, Any] = {
        "experiment": experiment,
        "name": name,
        "cohort": str(csv.resolve()),
        "n_cases": len(external),
        "stages": wanted,
        "folds": folds,
        "folds_text": {s: f"fold{'s' if len(f) > 1 else ''} {', '.join(map(str, f))} (ensemble)" for s, f in folds.items()},
        "experiment_folds": folds_phrase(read_splits(ws.splits_path)) if ws.splits_path.is_file() else None,
        "checkpoints": {"seg": [m.record for m in seg_models], **{s: [m.record for m in ms] for s, ms in models.items()}},
        "thresholds": {s: {str(k): v for k, v in t.items()} for s, t in thresholds.items()},
        "label_map": describe(label_map),
        "disjoint_check": compared,
        "settings": {"n_boot": n_boot, "alpha": alpha, "seed": seed, "calibration_bins": calibration_bins},
        "neonet_version": __version__,
        "git_sha": git_sha(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    fingerprint = _cohort_fingerprint(ws, predictor)
    doc["cohort_fingerprint"] = None if fingerprint is None else str(ws.cohort_fingerprint)
    with atomic_dir(out.root, replace=True) as tmp:
        doc.update(_write_report(ExternalPaths(tmp), external, predictor, thresholds, label_map, doc, fingerprint))
        write_json(ExternalPaths(tmp).table("external", "json"), doc)
        write_text(ExternalPaths(tmp).table("external", "md"), _markdown(doc))
    print(f"wrote {out.table('external', 'md')}")
    return doc


def _write_report(
    paths: ExternalPaths,
    external: list[Case],
    predictor: Predictor,
    thresholds: dict[str, dict[int, float]],
    label_map: LabelMap,
    doc: dict[str, Any],
    fingerprint: dict[str, Any] | None,
) -> dict[str, Any]:
    """Predict every scan and write the tables and figures into ``paths``; returns the numbers for ``external.json``."""
    from neonet.cls.plots import calibration_table, plot_calibration, plot_roc_pooled
    from neonet.predict.cohort import predict_scans
    from neonet.report.figures.seg_cases import plot_seg_cases
    from neonet.seg.evaluate import markdown_table, summarise

    preds = predict_scans(external, predictor, paths, fingerprint)
    found: dict[str, Any] = {"crop_status": {p.case.case_id: p.crop_status for p in preds}, "files": {}}
    ood = ood_table(preds)
    if not ood.empty:
        write_csv(paths.table("ood"), ood)
    found["out_of_distribution"] = {r["case_id"]: r["messages"] for r in ood.to_dict("records") if r["out_of_distribution"]}
    if "seg" in doc["stages"]:
        seg = seg_table(preds, label_map)
        if seg.empty:
            found["seg"] = None
        else:
            summary = summarise(seg)
            write_csv(paths.table("seg_metrics"), seg)
            write_json(paths.table("seg_summary", "json"), summary)
            write_text(paths.table("seg_summary", "md"), markdown_table(summary))
            found["seg"] = summary
            title = f"NeoSeg fold ensemble of {doc['experiment']} on {doc['name']}"
            drawn = plot_seg_cases(seg, paths.table("seg_cases", "png"), title, found["out_of_distribution"])
            if drawn is not None:
                found["files"]["seg"] = drawn.name
    if predictor.classifiers:
        frame = prediction_table(preds, thresholds)
        write_csv(paths.table("predictions"), frame)
        alpha = float(doc["settings"]["alpha"])
        summary_frame = cls_summary(frame, thresholds, int(doc["settings"]["n_boot"]), alpha, int(doc["settings"]["seed"]))
        write_csv(paths.table("cls_summary"), summary_frame)
        found["cls"] = summary_frame.to_dict("records")
        scored = frame[frame["y_true"].notna() & frame["prob"].notna()].assign(y_true=lambda f: f["y_true"].astype(int))
        if len(scored):
            bins = int(doc["settings"]["calibration_bins"])
            write_csv(paths.table("cls_calibration"), calibration_table(scored, bins, alpha))
            ci = {r["stage"]: (r["auc_ci_lo"], r["auc_ci_hi"]) for r in found["cls"]}
            title = f"External cohort {doc['name']}: fold-ensemble ROC"
            found["files"]["roc"] = str(plot_roc_pooled(scored, paths.table("roc", "png"), ci, title=title).name)
            found["files"]["calibration"] = str(
                plot_calibration(
                    scored, paths.table("calibration", "png"), bins, alpha, title=f"Calibration (fold ensemble on {doc['name']})"
                ).name
            )
    return found


def _cohort_fingerprint(ws: Workspace, predictor: Predictor) -> dict[str, Any] | None:
    """The experiment's cohort fingerprint (read, or measured once); None, with a warning, when it cannot be made."""
    from neonet.predict import ood

    try:
        return ood.load(ws, predictor.models, predictor.device)
    except NeonetError as exc:
        log.warning("no comparison with the training cohort: %s", exc)
        return None


def _markdown(doc: dict[str, Any]) -> str:
    """``external.md``: what was evaluated with which folds, and the numbers."""
    from neonet.seg.evaluate import markdown_table

    lines = [
        f"# External evaluation: {doc['name']}\n",
        f"Experiment `{doc['experiment']}`, external cohort `{doc['cohort']}` ({doc['n_cases']} cases, none of them in the "
        f"experiment's cohort by case id or by scan content). The prediction is each stage's fold ensemble "
        "(NeoSeg: mean softmax; classifiers: mean probability), made as `neonet predict-case` makes it.\n",
        "| stage | folds used | checkpoints |",
        "|---|---|---|",
    ]
    lines += [f"| {s} | {doc['folds_text'][s]} | {len(doc['checkpoints'][s])} |" for s in doc["folds"]]
    if doc.get("experiment_folds"):
        lines.append(f"\nThe experiment's split: {doc['experiment_folds']}; only folds that finished training are used.")
    lines.append(f"\nLabel map (the NeoSeg folds'): {doc['label_map']}.\n")
    if doc.get("cohort_fingerprint") is None:
        lines.append("No comparison with the training cohort (no cohort fingerprint could be made).\n")
    elif doc.get("out_of_distribution"):
        lines.append("## Scans outside what the models saw (`ood.csv`)\n")
        lines += [f"- `{c}`: {m}" for c, m in sorted(doc["out_of_distribution"].items())]
        lines.append("")
    else:
        lines.append("Every scan lies inside the training cohort's fingerprint (`ood.csv`).\n")
    if "seg" in doc["stages"]:
        lines.append("## NeoSeg (cases with a manual label)\n")
        lines.append(markdown_table(doc["seg"]) if doc.get("seg") else "No case of the cohort has a manual label.\n")
    if doc.get("cls"):
        level = round(100 * (1 - float(doc["settings"]["alpha"])))
        lines += [
            "## PNI classifiers (cases with `pni`)\n",
            f"AUC of the fold ensemble with a {level} % percentile bootstrap CI ({doc['settings']['n_boot']} resamples), "
            "each fold's own AUC, and sensitivity / specificity at the mean of the folds' inner-validation (Youden) "
            "thresholds. Cases in which NeoSeg found no tumour have no probability (`n_no_tumour`).\n",
            markdown(pd.DataFrame(doc["cls"])),
        ]
        missed = sorted(c for c, s in doc["crop_status"].items() if s != "ok")
        if missed:
            lines.append(f"\nNo classifier input (TLCR status other than ok): {', '.join(missed)}.\n")
    if doc["files"]:
        lines.append("\nFigures: " + ", ".join(f"`{f}`" for f in doc["files"].values()) + "\n")
    return "\n".join(lines) + "\n"
