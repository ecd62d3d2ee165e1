"""``neonet radiomics``: the radiomics baseline under the experiment's folds, as one more classifier in the report.

Why a project verb and not a stage under ``neonet cv``: a ``neonet cv`` stage is a Lightning fit (epochs,
optimiser steps, ``best.ckpt`` chosen on the validation metric, a second process to test it), and
``neonet fit`` rightly refuses a fit that made no optimiser step. This model has none of that: its fit is
closed-form per fold (scikit-learn), so it would need a fake step and a checkpoint chosen among one epoch.
Like ``neonet crop`` and ``neonet synthesize`` it is a verb with a provenance record per output; it takes
each fold's cases from the experiment's ``splits.json`` (the functions every DataModule uses) and writes in
``<runs>/<experiment>/radiomics/fold<k>/`` the files ``neonet cv`` leaves for a classifier stage:
``test_predictions.csv`` (with the inner-validation Youden threshold) and ``artifact.json`` (status
``complete``, the fold's cases, a ``classifier`` record), so ``neonet report``, the experiment page and
``neonet summary`` read it as one more classifier; plus ``features.csv``, ``model.json`` (coefficients,
training statistics, the strength chosen) and ``radiomics_config.json`` (settings and inputs by SHA-256).

A finished fold whose record matches the command is skipped; one made with other settings or from other
patches or splits is an error naming the differences (``--force`` re-computes it).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from neonet.cls.module import PREDICTION_COLUMNS, REAL
from neonet.data.cases import read_cases
from neonet.data.patches import PatchRecord, patch_records, read_patch_manifest
from neonet.data.splits import Fold, ensure_splits, get_fold
from neonet.errors import NeonetError
from neonet.radiomics.features import REGIONS, feature_names, patch_features
from neonet.radiomics.model import C_GRID, fit_fold, predict
from neonet.radiomics.saved import MODULE
from neonet.report.figures import write_stage
from neonet.report.stats import binary_metrics
from neonet.run.atomic import read_json, write_csv, write_json
from neonet.run.provenance import FileRecord, Provenance, check_current
from neonet.seg.crop import patch_set_control
from neonet.workspace import Workspace

log = logging.getLogger(__name__)

NETWORK = "sklearn.linear_model.LogisticRegression"


def _check_stage_folder(ws: Workspace, stage: str, fold: int) -> None:
    """Refuse a fold folder that holds another kind of model (e.g. ``--stage pattennet``), even with ``--force``."""
    art = ws.read_artifact(stage, fold) or {}
    module = (art.get("classifier") or {}).get("module") if isinstance(art.get("classifier"), dict) else None
    foreign = ws.checkpoint_dir(stage, fold).exists() or (art and module != MODULE)
    if foreign:
        raise NeonetError(
            f"{ws.stage_dir(stage, fold)} holds a fold of another model ({module or 'a trained stage'}), not a radiomics "
            "fold; it is left as it is. Give the radiomics baseline its own stage folder: --stage radiomics"
        )


def _fold_rows(
    ws: Workspace, split: Fold, features: dict[str, dict[str, float]], cols: list[str], regions: list[str], bins: int
) -> pd.DataFrame:
    """The fold's patches with their split, label and features (features computed once per case, kept in ``features``)."""
    rows = []
    for part, ids in (("train", split.train), ("val", split.val), ("test", split.test)):
        records: list[PatchRecord] = patch_records(ws, list(ids), require_pni=True)
        skipped = sorted(set(ids) - {r.case_id for r in records})
        if skipped:
            log.warning(
                "fold %d %s: %d case(s) have no TLCR patch and are left out: %s", split.fold, part, len(skipped), skipped[:10]
            )
        for r in records:
            if r.case_id not in features:
                need = "the radiomics features (tumour and peritumoral shell)"
                features[r.case_id] = patch_features(r.case_id, r.image, r.label_path(need), regions, bins)
            rows.append({"case_id": r.case_id, "patient_id": r.patient_id, "split": part, "y_true": int(r.pni or 0)})
            rows[-1].update({c: features[r.case_id][c] for c in cols})
    return pd.DataFrame(rows, columns=["case_id", "patient_id", "split", "y_true", *cols])


def radiomics(
    cases: Path,
    experiment: str = "default",
    runs_dir: Path = Path("runs"),
    folds: list[int] | None = None,
    n_folds: int = 5,
    split_seed: int = 0,
    val_fraction: float = 0.2,
    stage: str = "radiomics",
    model_name: str = "radiomics",
    regions: list[str] = list(REGIONS),  # noqa: B006,B008 - never mutated; a list reads best in --help
    bins: int = 32,
    c_grid: list[float] = list(C_GRID),  # noqa: B006,B008
    class_weight: Literal["balanced", "none"] = "balanced",
    max_iter: int = 5000,
    patches: str | None = None,
    force: bool = False,
    report: bool = True,
) -> int:
    """Radiomics baseline: IBSI first-order and shape features of each TLCR patch's tumour and peritumoral
    shell, standardised, L2 logistic regression per fold with its strength chosen on the inner validation
    split; writes each fold's test predictions, features, coefficients and artifact.json, then the report.

    For fold k the imputation medians, the standardisation and the logistic regression are fitted on fold k's
    training patients only, the strength C is chosen on its inner-validation patients (highest AUC, then lowest
    log-loss, then smallest C), and the chosen model (fitted on the training patients, not refitted with the
    validation ones) scores the held-out patients with the validation Youden threshold. The folds are those of
    the experiment's ``splits.json`` (written from ``cases`` if the experiment has none yet).

    Args:
        cases: the experiment's ``cases.csv`` (checked against ``splits.json``).
        experiment: experiment name; reads ``<runs_dir>/<experiment>/patches/``.
        runs_dir: folder holding all experiments.
        folds: folds to run (default: all folds of the experiment).
        n_folds: number of folds, used only when the split file is first written.
        split_seed: seed of the split, used only when the split file is first written.
        val_fraction: inner validation fraction, used only when the split file is first written.
        stage: the stage folder (``<runs_dir>/<experiment>/<stage>/fold<k>/``).
        model_name: the model's name in the report.
        regions: label-patch regions to describe: ``tumour`` (label 3) and/or ``shell`` (label 2, the peritumoral shell).
        bins: intensity bins of the histogram entropy and uniformity (IBSI fixed bin number, per region).
        c_grid: inverse L2 strengths (scikit-learn's C) tried on each fold.
        class_weight: ``balanced`` weighs PNI+ by negatives / positives of the fold's training patients; ``none`` does not.
        max_iter: L-BFGS iterations of the logistic regression.
        patches: None reads ``patches/``; a name reads the patch set ``patches_<name>/`` that ``neonet crop
            --patches <name>`` wrote (give the stage its own ``--stage``): the stage is then a control of the
            baseline, recorded as such in its folds' ``artifact.json`` (as ``--data.patches`` does for a
            network; ``predict-case``, ``export`` and ``evaluate`` refuse it).
        force: re-compute folds that are finished or were made with other settings.
        report: write the experiment's classification report (``neonet report``) afterwards.
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", stage):
        raise NeonetError(f"--stage must be a plain folder name, got {stage!r}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", model_name):
        raise NeonetError(f"--model_name must be a plain name (letters, digits, _ . + -), got {model_name!r}")
    unknown = [r for r in regions if r not in REGIONS]
    if unknown or not regions:
        raise NeonetError(f"--regions {regions}: choose one or more of {sorted(REGIONS)}")
    if bins < 2:
        raise NeonetError(f"--bins must be at least 2, got {bins}")
    if not c_grid or min(c_grid) <= 0:
        raise NeonetError(f"--c_grid must hold positive values, got {c_grid}")
    try:
        ws = Workspace(runs_dir, experiment, patches)
    except ValueError as exc:
        raise NeonetError(f"--patches: {exc}") from exc
    read_patch_manifest(ws)  # names `neonet crop` when the patches are missing
    doc = ensure_splits(ws.splits_path, read_cases(cases), n_folds, split_seed, val_fraction, workspace=ws)
    n = int(doc["folds"])
    todo = list(range(n)) if folds is None else [int(k) for k in folds]
    bad = [k for k in todo if not 0 <= k < n]
    if bad:
        raise NeonetError(f"fold(s) {bad} do not exist: experiment {experiment} has folds 0..{n - 1}")
    cols = feature_names(regions)
    settings = {
        "stage": stage,
        "model_name": model_name,
        "regions": list(regions),
        "bins": int(bins),
        "c_grid": sorted(float(c) for c in c_grid),
        "class_weight": class_weight,
        "max_iter": int(max_iter),
        "features": cols,
    }
    if patches is not None:  # only then: the records of runs on `patches/` stay current
        settings["patches"] = patches
    inputs = {"patches manifest": FileRecord.of(ws.patches_manifest), "splits": FileRecord.of(ws.splits_path)}
    for k in todo:
        _check_stage_folder(ws, stage, k)
    pending = []
    for k in todo:  # every fold checked before any is written
        now = Provenance(settings, inputs, extra={"experiment": experiment, "fold": k})
        stored = (
            None if force else check_current(ws.radiomics_record(stage, k), now, f"the {stage} fold {k}", ws.stage_dir(stage, k))
        )
        if stored is not None and ws.is_complete(stage, k) and ws.test_predictions(stage, k).is_file():
            log.info("%s fold %d: already complete (%s) — skipped", stage, k, ws.artifact_path(stage, k))
            continue
        pending.append((k, now))
    features: dict[str, dict[str, float]] = {}
    for k, now in pending:
        _run_fold(ws, get_fold(doc, k), stage, model_name, settings, now, features, cols, regions, bins)
    _write_summary(ws, stage, [k for k in range(n) if ws.is_complete(stage, k)])
    write_stage(ws, stage)  # reports/<stage>_coefficients.png
    if report:
        from neonet.report.cls_report import report as cls_report

        cls_report(experiment=experiment, runs_dir=runs_dir)
    return 0


def _run_fold(
    ws: Workspace,
    split: Fold,
    stage: str,
    model_name: str,
    settings: dict[str, Any],
    record: Provenance,
    features: dict[str, dict[str, float]],
    cols: list[str],
    regions: list[str],
    bins: int,
) -> None:
    """Features, fit, test predictions and records of one fold; ``artifact.json`` (status complete) last."""
    k = split.fold
    frame = _fold_rows(ws, split, features, cols, regions, bins)
    part = {name: frame[frame["split"] == name] for name in ("train", "val", "test")}
    if part["test"].empty:
        raise NeonetError(f"{stage} fold {k}: none of its test cases has a TLCR patch; re-run `neonet crop`")
    model = fit_fold(
        part["train"][cols].to_numpy(float),
        part["train"]["y_true"].to_numpy(int),
        part["val"][cols].to_numpy(float),
        part["val"]["y_true"].to_numpy(int),
        cols,
        settings["c_grid"],
        None if settings["class_weight"] == "none" else "balanced",
        settings["max_iter"],
        fold=k,
    )
    test = part["test"]
    prob, logit = predict(model, test[cols].to_numpy(float))
    preds = pd.DataFrame(
        {
            "case_id": test["case_id"],
            "patient_id": test["patient_id"],
            "fold": k,
            "y_true": test["y_true"],
            "prob": prob,
            "logit": logit,
            "threshold_youden_val": model.threshold,
        }
    )[PREDICTION_COLUMNS].sort_values("case_id")
    ws.stage_dir(stage, k).mkdir(parents=True, exist_ok=True)
    write_csv(ws.radiomics_features(stage, k), frame)
    write_json(
        ws.radiomics_model(stage, k), {"fold": k, "n_train": len(part["train"]), "n_val": len(part["val"]), **model.record()}
    )
    write_csv(ws.test_predictions(stage, k), preds)
    record.write(ws.radiomics_record(stage, k))
    metrics = binary_metrics(preds["y_true"], preds["prob"], model.threshold)
    chosen = next(r for r in model.selection if r["C"] == model.c)
    ws.write_artifact(
        stage,
        k,
        status="complete",
        classifier={
            "model": model_name,
            "variant": REAL,
            "use_synthetic": False,
            "network": NETWORK,
            "module": MODULE,
            "deep": False,
            **({"control": {"patches": patch_set_control(ws)}} if ws.patches is not None else {}),
        },
        monitor="val/auc",
        best_score=chosen["val_auc"],
        C=model.c,
        train_cases=list(split.train),
        val_cases=list(split.val),
        test_cases=list(split.test),
        settings=settings,
        upstream={name: rec.to_json() for name, rec in record.inputs.items()},
        features=ws.checkpoint_record(ws.radiomics_features(stage, k)),
        model=ws.checkpoint_record(ws.radiomics_model(stage, k)),
        test_predictions=ws.checkpoint_record(ws.test_predictions(stage, k)),
        test_metrics=metrics,
    )
    log.info(
        "%s fold %d: C = %g (val AUC %.3f on %d patients), test AUC %.3f on %d patients -> %s",
        stage,
        k,
        model.c,
        chosen["val_auc"],
        len(part["val"]),
        metrics["auroc"],
        len(preds),
        ws.stage_dir(stage, k),
    )


def _write_summary(ws: Workspace, stage: str, folds: list[int]) -> None:
    """``reports/<stage>_summary.{csv,json}``: per fold the strength chosen, validation and test AUC, sizes."""
    rows = []
    for k in folds:
        art = ws.read_artifact(stage, k) or {}
        path = ws.radiomics_model(stage, k)
        model = read_json(path) if path.is_file() else {}
        metrics = art.get("test_metrics") or {}
        rows.append(
            {
                "fold": k,
                "C": art.get("C"),
                "val_auc": art.get("best_score"),
                "test_auc": metrics.get("auroc", np.nan),
                "threshold_youden_val": model.get("threshold_youden_val", np.nan),
                "n_train": model.get("n_train"),
                "n_val": model.get("n_val"),
                "n_test": metrics.get("n"),
            }
        )
    table = pd.DataFrame(rows)
    write_csv(ws.stage_summary(stage, "csv"), table)
    write_json(ws.stage_summary(stage, "json"), {"stage": stage, "folds": table.to_dict("records")})
