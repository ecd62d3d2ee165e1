"""``neonet report``: the cross-validated comparison of every classification stage of an experiment.

Reads ``<runs>/<experiment>/<stage>/fold<k>/test_predictions.csv`` (written by ``neonet cv`` after
each fold's fit) and writes to ``<runs>/<experiment>/reports/``:

- ``cls_per_fold.csv``: per stage and fold: AUC, average precision, and accuracy, sensitivity,
  specificity, F1 at the fold's inner-validation Youden threshold (``_youden``) and at 0.5 (``_05``),
  and the median log-odds of the fold's PNI− and PNI+ test cases (``logit_median_neg``, ``_pos``);
- ``cls_summary.csv``: per stage: fold AUC mean ± sd, the maximum fold AUC (the paper's headline figure, labelled
  optimistic in the markdown), pooled out-of-fold AUC with a stratified
  bootstrap 95 % CI (a cluster bootstrap over patients and ``group``s when a patient or group has
  several cases, e.g. matched sets) and a DeLong CI, pooled thresholded metrics, Brier score, calibration error;
- ``cls_delong.csv``: DeLong tests of the reference model (PattenNet) against each baseline and against
  each of its configured named variants (``named_variants``, by default ``pattennet_hist``: "paper vs variant",
  real against real and synthetic against synthetic; other models ``<reference>_<name>``, e.g. the confound
  stages ``pattennet_hist_syn_both``, are neither baselines nor variants of the reference), of each model
  ``<base>_<name>`` outside ``named_variants`` against its base model ``<base>`` (the longest such model in the report,
  same variant of the data: "derived vs base model", e.g. ``pattennet_hist_syn`` vs ``pattennet_hist_syn_both``),
  of each deep model against each feature baseline
  (``neonet radiomics``), and of each model with vs without synthetic balancing, on the pooled predictions
  of the same patients
  (with Obuchowski's clustered variance, here and in the DeLong CI, when the cluster bootstrap is used);
- ``cls_ablation.csv``: {model} x {real only, real + synthetic} pooled AUC [CI];
- ``cls_controls.csv``: per control stage (:mod:`neonet.report.controls`: manual masks, image-free): its pooled
  AUC [CI] against its main stage's, where it lies (within / above / below the main CI), a paired DeLong test and
  the sentence that says what it means; control stages stay out of the ablation and DeLong tables;
- ``cls_seeds.csv``, ``cls_seeds_summary.csv``: for a stage trained under several seeds (``neonet cv --seeds``),
  each seed's pooled AUC, their mean ± sd and a patients x seeds bootstrap interval (:mod:`neonet.report.seeds`);
- ``cls_calibration.csv``: per stage and quantile bin of the pooled probabilities: count, PNI+ count,
  mean probability, observed PNI+ fraction with its Wilson CI (the points of ``calibration.png``);
- every finished stage's pictures (:func:`neonet.report.figures.write_all`: training curves, NeoSeg
  overlays, TLCR patches, NeoGen panels, per-fold plots), redrawn from the files on disk;
- ``cls_oof_predictions.csv``, ``cls_report.json``, ``cls_report.md`` (with a note for stages whose pooled
  AUC is well below their fold mean, or whose whole CI is below 0.5), and PNGs: ``roc_<stage>.png``
  (per fold + pooled), ``roc_pooled.png``, ``calibration.png``, ``scores_<stage>.png`` (each fold's
  test scores by class, on the log-odds scale: whether the fold models score on one scale);
- a W&B summary run ``cls-cv`` (group = experiment) with the tables, numbers and figures;
- ``index.html``, the experiment page (:mod:`neonet.report.page`): every stage's results, figures and
  provenance on one page. It is written also when no classification stage has run yet.

What each stage is — its model's name and whether it trained on real or real + synthetic patches — is
read from its folds' ``artifact.json`` (written by :meth:`neonet.cls.module.ClassifierModule.describe`),
never from the folder name; folds trained before that record existed are read by the old naming rule
(``<model>_syn`` = real + synthetic), with a note in the log.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from neonet.cls.module import REAL, SYNTHETIC
from neonet.data.splits import folds_phrase, read_splits
from neonet.errors import NeonetError
from neonet.report.controls import controls_markdown, controls_table, find_controls
from neonet.report.stats import binary_metrics, bootstrap_auc_ci, delong_ci, delong_test, format_p, log_odds
from neonet.run.atomic import write_csv, write_json, write_text
from neonet.workspace import Workspace

log = logging.getLogger(__name__)


def identity_of(ws: Workspace, stage: str) -> tuple[str, str]:
    """(model name, variant) of a classifier stage, from its folds' ``artifact.json``.

    Raises:
        NeonetError: when the folds of one stage disagree (they were trained with other settings).
    """
    found: set[tuple[str, str]] = set()
    for fold in ws.stage_folds(stage):
        record = (ws.read_artifact(stage, fold) or {}).get("classifier")
        if isinstance(record, dict) and record.get("model") and record.get("variant"):
            found.add((str(record["model"]), str(record["variant"])))
    if len(found) > 1:
        raise NeonetError(
            f"stage {stage}: its folds record different models or variants {sorted(found)}; "
            f"re-train the stage with `neonet cv ... --force`"
        )
    if found:
        return found.pop()
    legacy = (stage.split("_syn")[0], SYNTHETIC if "_syn" in stage else REAL)
    log.info(
        "stage %s: no classifier record in its artifact.json (trained before neonet recorded it); "
        "read by its name as model %s, %s",
        stage,
        *legacy,
    )
    return legacy


def is_deep(ws: Workspace, stage: str) -> bool:
    """Whether a classifier stage is a deep network (False when its folds' ``artifact.json`` say ``deep: false``,
    e.g. the radiomics baseline)."""
    records = [(ws.read_artifact(stage, k) or {}).get("classifier") for k in ws.stage_folds(stage)]
    return not any(isinstance(r, dict) and r.get("deep") is False for r in records)


def discover_stages(ws: Workspace) -> list[str]:
    """Stages of the experiment with at least one fold's test predictions."""
    return sorted({p.parent.parent.name for p in ws.all_test_predictions()})


def load_predictions(ws: Workspace, stages: list[str]) -> pd.DataFrame:
    """All test predictions of ``stages`` (column ``stage`` added), checked to be out-of-fold.

    Raises:
        NeonetError: when a stage has no predictions, a case appears twice in one stage, or a case is
            not in the test set that ``splits.json`` assigns to its fold (a mix-up or leakage).
    """
    test_of: dict[str, int] | None = None
    if ws.splits_path.exists():
        test_of = {cid: int(s["fold"]) for s in read_splits(ws.splits_path)["splits"] for cid in s["test"]}
    frames = []
    seen: dict[tuple[str, str], str] = {}
    for stage in stages:
        model, variant = identity_of(ws, stage)
        if (model, variant) in seen:
            raise NeonetError(
                f"stages {seen[(model, variant)]} and {stage} are both model {model!r}, {variant}: give one "
                "of them its own --model.model_name (or compare them in separate reports with --stages)"
            )
        seen[(model, variant)] = stage
        files = [ws.test_predictions(stage, k) for k in ws.stage_folds(stage) if ws.test_predictions(stage, k).is_file()]
        if not files:
            raise NeonetError(f"no test predictions under {ws.root / stage}/fold<k>/: run `neonet cv` for stage {stage} first")
        part = pd.concat([pd.read_csv(f, dtype={"case_id": str, "patient_id": str}) for f in files], ignore_index=True)
        dupes = sorted(part["case_id"][part["case_id"].duplicated()])
        if dupes:
            raise NeonetError(f"stage {stage}: case(s) predicted in more than one fold: {dupes[:10]}")
        if test_of is not None:
            wrong = [(c, f) for c, f in zip(part["case_id"], part["fold"]) if test_of.get(c) != int(f)]
            if wrong:
                raise NeonetError(
                    f"stage {stage}: {len(wrong)} prediction(s) are not out-of-fold per {ws.splits_path} "
                    f"(case, fold): {wrong[:5]}"
                )
        part.insert(0, "stage", stage)
        part.insert(1, "model", model)
        part.insert(2, "variant", variant)
        frames.append(part)
    return pd.concat(frames, ignore_index=True)


def _thresholded(y: np.ndarray, hard: np.ndarray) -> dict[str, float]:
    m = binary_metrics(y, hard.astype(float), 0.5)
    return {k: m[k] for k in ("accuracy", "sensitivity", "specificity", "f1")}


def _metrics(part: pd.DataFrame) -> dict[str, Any]:
    y, p = part["y_true"].to_numpy(int), part["prob"].to_numpy(float)
    both = 0 < y.sum() < len(y)
    out: dict[str, Any] = {"n": len(y), "n_pos": int(y.sum())}
    m = binary_metrics(y, p, 0.5)
    out["auc"], out["ap"] = m["auroc"], m["average_precision"]
    youden = _thresholded(y, p >= part["threshold_youden_val"].to_numpy(float))
    out.update({f"{k}_youden": v for k, v in youden.items()})
    out.update({f"{k}_05": m[k] for k in ("accuracy", "sensitivity", "specificity", "f1")})
    out["brier"] = float(np.mean((p - y) ** 2))
    if not both:
        out["auc"] = out["ap"] = math.nan
    return out


def per_fold_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Metrics of every (stage, fold), with the median log-odds of its PNI− and PNI+ test cases.

    The medians show whether the folds' models score on one scale: the pooled AUC ranks the cases
    of one fold against those of the others, so a fold whose PNI− cases all score high lowers it
    even when every fold ranks its own cases well.
    """
    rows = []
    for (stage, fold), part in frame.groupby(["stage", "fold"], sort=False):
        logits, y = log_odds(part["prob"]), part["y_true"].to_numpy(int)
        medians = {
            f"logit_median_{name}": float(np.median(logits[y == v])) if (y == v).any() else math.nan
            for name, v in (("neg", 0), ("pos", 1))
        }
        rows.append(
            {
                "stage": stage,
                "model": part["model"].iloc[0],
                "variant": part["variant"].iloc[0],
                "fold": int(fold),
                "threshold_youden_val": float(part["threshold_youden_val"].iloc[0]),
                **_metrics(part),
                **medians,
            }
        )
    return pd.DataFrame(rows)


def clusters_of(splits: dict[str, Any]) -> dict[str, str] | None:
    """case_id -> resampling cluster (its ``group``, else its patient), or None when every cluster is one case."""
    records = splits.get("cases", {})
    clusters = {
        cid: f"group:{r['group']}" if r.get("group") else f"patient:{r.get('patient_id', cid)}" for cid, r in records.items()
    }
    return clusters if len(set(clusters.values())) < len(clusters) else None


def cluster_array(case_ids: pd.Series, clusters: dict[str, str] | None) -> np.ndarray | None:
    """The cluster of each case (a case missing from ``clusters`` is its own), or None without clusters."""
    return None if clusters is None else case_ids.map(lambda c: clusters.get(c, f"case:{c}")).to_numpy()


def summary_table(
    frame: pd.DataFrame,
    folds: pd.DataFrame,
    n_boot: int,
    alpha: float,
    seed: int,
    n_folds: int | None,
    clusters: dict[str, str] | None = None,
) -> pd.DataFrame:
    """Per stage: fold mean ± sd, pooled out-of-fold AUC with bootstrap and DeLong CIs, pooled metrics.

    ``clusters`` (case_id -> cluster) switches the bootstrap to resampling whole clusters.
    """
    import torch
    from torchmetrics.functional.classification import binary_calibration_error

    rows = []
    for stage, part in frame.groupby("stage", sort=False):
        f = folds[folds["stage"] == stage]
        y, p = part["y_true"].to_numpy(int), part["prob"].to_numpy(float)
        pooled = _metrics(part)
        groups = cluster_array(part["case_id"], clusters)
        _, lo, hi = bootstrap_auc_ci(y, p, n_boot=n_boot, alpha=alpha, seed=seed, clusters=groups)
        try:
            _, dlo, dhi = delong_ci(y, p, alpha=alpha, clusters=groups)
        except ValueError:
            dlo = dhi = math.nan
        ece = float(binary_calibration_error(torch.tensor(p), torch.tensor(y), n_bins=10))
        rows.append(
            {
                "stage": stage,
                "model": part["model"].iloc[0],
                "variant": part["variant"].iloc[0],
                "folds": int(f["fold"].nunique()),
                "folds_expected": n_folds,
                "n": pooled["n"],
                "n_pos": pooled["n_pos"],
                "auc_mean": float(f["auc"].mean()),
                "auc_sd": float(f["auc"].std(ddof=1)) if len(f) > 1 else math.nan,
                "auc_fold_max": float(f["auc"].max()),  # the paper's headline figure: optimistic
                "auc_pooled": pooled["auc"],
                "auc_ci_lo": lo,
                "auc_ci_hi": hi,
                "auc_delong_lo": dlo,
                "auc_delong_hi": dhi,
                "ap_pooled": pooled["ap"],
                **{k: pooled[k] for k in pooled if k.endswith(("_youden", "_05"))},
                "brier": pooled["brier"],
                "ece": ece,
            }
        )
    return pd.DataFrame(rows)


def delong_table(
    frame: pd.DataFrame,
    reference: str,
    clusters: dict[str, str] | None = None,
    shallow: list[str] | None = None,
    named_variants: list[str] | None = None,
) -> pd.DataFrame:
    """Paired DeLong tests on the patients both stages predicted: reference vs baselines, reference vs each
    model of ``named_variants`` (same variant of the data: "paper vs variant"), every other model ``<base>_<name>``
    vs its base model (the longest model name of the report that it extends, same variant: "derived vs base
    model"), every deep model vs each feature baseline (the stages in ``shallow``), and syn vs real.

    A model named ``<reference>_<name>`` that is not in ``named_variants`` (a confound remedy such as
    ``pattennet_hist_syn_both``) is derived from the reference: it is tested neither as a baseline nor as a
    variant of the reference, only against its own base (``pattennet_hist``'s stage of the same variant).

    ``clusters`` (case_id -> cluster) switches to Obuchowski's clustered variance.
    """
    ident = frame.drop_duplicates("stage").set_index("stage")[["model", "variant"]]
    stages = list(ident.index)
    model, variant = ident["model"].to_dict(), ident["variant"].to_dict()
    refs = [s for s in stages if model[s] == reference]
    derived = [s for s in stages if model[s].startswith(f"{reference}_")]  # pattennet_hist, pattennet_hist_syn_both, ...
    named = [s for s in stages if model[s] in set(named_variants or [])]
    pairs = [
        (r, b, "reference vs baseline")
        for r in refs
        for b in stages
        if model[b] != reference and b not in derived and b not in named
    ]
    pairs += [(r, v, "paper vs variant") for r in refs for v in named if variant[v] == variant[r]]
    for d in stages:
        bases = [m for m in set(model.values()) if model[d].startswith(f"{m}_")]
        if d in named or not bases:
            continue
        base = max(bases, key=len)  # pattennet_hist_syn_both extends pattennet_hist, not pattennet
        pairs += [(b, d, "derived vs base model") for b in stages if model[b] == base and variant[b] == variant[d]]
    shallow = [s for s in shallow or [] if s in model and model[s] != reference]
    pairs += [
        (d, s, "deep model vs feature baseline") for s in shallow for d in stages if d not in shallow and model[d] != reference
    ]
    pairs += [
        (s, r, "synthetic vs real only")
        for s in stages
        for r in stages
        if variant[s] == SYNTHETIC and variant[r] == REAL and model[s] == model[r]
    ]
    rows = []
    for a, b, kind in pairs:
        pa = frame[frame["stage"] == a][["case_id", "y_true", "prob"]]
        pb = frame[frame["stage"] == b][["case_id", "y_true", "prob"]]
        both = pa.merge(pb, on="case_id", suffixes=("_a", "_b"))
        if (both["y_true_a"] != both["y_true_b"]).any():
            raise NeonetError(f"stages {a} and {b} disagree on the labels of some cases")
        row: dict[str, Any] = {"comparison": kind, "stage_a": a, "stage_b": b, "n": len(both)}
        try:
            groups = cluster_array(both["case_id"], clusters)
            row.update(delong_test(both["y_true_a"], both["prob_a"], both["prob_b"], clusters=groups))
        except ValueError as exc:
            row["note"] = str(exc)
        rows.append(row)
    cols = ["comparison", "stage_a", "stage_b", "n", "auc1", "auc2", "diff", "se", "z", "p_value"]
    return pd.DataFrame(rows, columns=cols + (["note"] if any("note" in r for r in rows) else []))


def fold_spread(mean: float, sd: float, folds_text: str = "") -> str:
    """``mean ± sd`` of the fold AUCs, or ``mean (1 fold, given split)`` where one fold has no spread."""
    if np.isfinite(sd):
        return f"{mean:.3f} ± {sd:.3f}"
    return f"{mean:.3f} ({folds_text or '1 fold'})"


def ablation_table(summary: pd.DataFrame, folds_text: str = "") -> pd.DataFrame:
    """{model} x {real only, real + synthetic}: pooled AUC [bootstrap CI] and fold mean ± sd (one fold: its AUC and
    ``folds_text``, e.g. "1 fold, given split")."""
    rows = []
    for model, part in summary.groupby("model", sort=False):
        row: dict[str, Any] = {"model": model}
        for variant in (REAL, SYNTHETIC):
            hit = part[part["variant"] == variant]
            if len(hit):
                r = hit.iloc[0]
                spread = fold_spread(r.auc_mean, r.auc_sd, folds_text)
                row[variant] = f"{r.auc_pooled:.3f} [{r.auc_ci_lo:.3f}, {r.auc_ci_hi:.3f}]; folds {spread}"
                row[f"auc_pooled ({variant})"] = r.auc_pooled
            else:
                row[variant] = "not run"
        rows.append(row)
    return pd.DataFrame(rows)


def markdown(frame: pd.DataFrame, floatfmt: str = ".3f") -> str:
    """A DataFrame as a GitHub markdown table."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "—" if math.isnan(v) else format(v, floatfmt)
        return str(v)

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def report(
    experiment: str,
    runs_dir: str | Path = "runs",
    stages: list[str] | None = None,
    reference: str = "pattennet",
    named_variants: list[str] = ["pattennet_hist"],  # noqa: B006 - never mutated; a list reads best in --help
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
    calibration_bins: int = 5,
    log_wandb: bool = True,
) -> dict[str, Any]:
    """Write the classification report of an experiment to ``<runs_dir>/<experiment>/reports/``, then the
    experiment page ``reports/index.html`` (all stages, figures and provenance; written also before any
    classifier has run).

    Args:
        experiment: experiment name.
        runs_dir: folder holding all experiments.
        stages: stages to compare (default: every stage with test predictions).
        reference: the model tested against each baseline and each of ``named_variants`` with DeLong (stages
            ``reference`` and ``reference_syn``).
        named_variants: the models tested against ``reference`` as its named variants ("paper vs variant", real
            against real and synthetic against synthetic). Other models named ``<reference>_<name>`` (confound
            remedies, controls) get no such row and are not taken as baselines either.
        n_boot: bootstrap resamples of the pooled AUC's CI.
        alpha: 1 - confidence level.
        seed: bootstrap seed.
        calibration_bins: quantile bins of the calibration plot and ``cls_calibration.csv``.
        log_wandb: also write a W&B summary run (unless ``WANDB_MODE=disabled``).

    Returns:
        The report as a dict (also written as ``cls_report.json``), with the page's path under ``page``.
    """
    from neonet.report.page import write_page

    ws = Workspace(runs_dir, experiment)
    from neonet.report.seeds import seed_report, split_stages

    asked = bool(stages)
    stages = list(stages) if stages else split_stages(ws, discover_stages(ws))  # <stage>_seed<s>: seeds of <stage>
    if not stages:
        problem = f"no test predictions under {ws.root}/<stage>/fold<k>/: run `neonet cv` for a classification stage first"
        if asked or not ws.root.is_dir():
            raise NeonetError(problem)
        page = write_page(ws)
        log.warning("%s; the experiment page shows the stages so far: %s", problem, page)
        return {"experiment": experiment, "stages": [], "page": str(page)}
    ident = {s: identity_of(ws, s) for s in stages}
    controls = find_controls(ws, stages)  # manual-mask / image-free controls: their own rows (neonet.report.controls)
    # the reference first, then its named variants (pattennet_hist), then the rest, controls last; real before synthetic
    rank = {s: (s in controls, ident[s][0] != reference, not ident[s][0].startswith(f"{reference}_")) for s in stages}
    stages = sorted(stages, key=lambda s: (*rank[s], ident[s][1] != REAL, s))
    splits = read_splits(ws.splits_path) if ws.splits_path.exists() else {}
    n_folds = int(splits["folds"]) if splits else None
    folds_text = folds_phrase(splits)
    clusters = clusters_of(splits)
    bootstrap = "stratified percentile" if clusters is None else "cluster percentile (whole patients / groups)"
    delong_variance = "DeLong" if clusters is None else "Obuchowski clustered (patients / groups)"
    frame = load_predictions(ws, stages)
    folds = per_fold_table(frame)
    summary = summary_table(frame, folds, n_boot, alpha, seed, n_folds, clusters)
    is_control = summary["stage"].isin(list(controls))
    shallow = [s for s in stages if s not in controls and not is_deep(ws, s)]
    delong = delong_table(
        frame[~frame["stage"].isin(list(controls))], reference, clusters, shallow=shallow, named_variants=named_variants
    )
    ablation = ablation_table(summary[~is_control], folds_text)
    control_rows = controls_table(summary, frame, controls, alpha, clusters)
    seeds = seed_report(ws, stages, n_boot, alpha, seed, clusters)  # stages trained under several seeds
    for row in summary.itertuples():
        if n_folds is not None and row.folds < n_folds:
            log.warning(
                "stage %s has predictions for %d of %d folds: its pooled AUC covers only those", row.stage, row.folds, n_folds
            )

    out = ws.reports_dir
    from neonet.cls.plots import calibration_table, plot_calibration, plot_fold_scores, plot_roc_pooled, plot_roc_stage
    from neonet.report.figures import write_all

    images = {f"roc_{s}": plot_roc_stage(frame[frame["stage"] == s], s, out / f"roc_{s}.png") for s in stages}
    images.update({f"scores_{s}": plot_fold_scores(frame[frame["stage"] == s], s, out / f"scores_{s}.png") for s in stages})
    ci = {r.stage: (r.auc_ci_lo, r.auc_ci_hi) for r in summary.itertuples()}
    images["roc_pooled"] = plot_roc_pooled(frame, out / "roc_pooled.png", ci)
    images["calibration"] = plot_calibration(frame, out / "calibration.png", calibration_bins, alpha)
    write_all(ws)  # every finished stage's pictures, redrawn from its files (neonet.report.figures)
    tables = {
        "cls_summary": summary,
        "cls_per_fold": folds,
        "cls_delong": delong,
        "cls_ablation": ablation,
        "cls_controls": control_rows,
        "cls_calibration": calibration_table(frame, calibration_bins, alpha),
        "cls_oof_predictions": frame,
        **seeds.get("tables", {}),
    }
    for name, table in tables.items():
        write_csv(out / f"{name}.csv", table)
    doc = {
        "experiment": experiment,
        "stages": stages,
        "reference": reference,
        "named_variants": named_variants,
        "folds": n_folds,
        "folds_text": folds_text,
        "settings": {
            "n_boot": n_boot,
            "alpha": alpha,
            "seed": seed,
            "bootstrap": bootstrap,
            "delong_variance": delong_variance,
            "threshold": "Youden on each fold's inner validation split",
        },
        "summary": summary.to_dict("records"),
        "per_fold": folds.to_dict("records"),
        "delong": delong.to_dict("records"),
        "ablation": ablation.to_dict("records"),
        "controls": control_rows.to_dict("records"),
        **({"seeds": seeds["json"]} if seeds else {}),
        "figures": {k: str(v) for k, v in images.items()},
    }
    write_json(out / "cls_report.json", doc)
    text = _markdown_report(
        doc,
        summary[~is_control],
        folds,
        delong,
        ablation,
        alpha,
        controls_markdown(control_rows, alpha),
        seeds.get("markdown", ""),
    )
    write_text(out / "cls_report.md", text)
    log.info(
        "classification report: %s\n%s",
        out / "cls_report.md",
        markdown(summary[["stage", "folds", "n", "auc_mean", "auc_sd", "auc_fold_max", "auc_pooled", "auc_ci_lo", "auc_ci_hi"]]),
    )
    for line in control_rows["sentence"]:
        log.info("control: %s", line)
    if log_wandb:
        from neonet.report.wandb_summary import log_cv_summary

        numbers = {
            f"{r.stage}/{k}": float(getattr(r, k))
            for r in summary.itertuples()
            for k in ("auc_pooled", "auc_ci_lo", "auc_ci_hi", "auc_mean", "auc_sd")
        }
        settings = {
            "stages": stages,
            "reference": reference,
            "named_variants": named_variants,
            "n_boot": n_boot,
            "alpha": alpha,
            "seed": seed,
        }
        models = [(s, k) for s in stages for k in ws.stage_folds(s)]
        tables = {k: v for k, v in tables.items() if k != "cls_oof_predictions"}
        log_cv_summary(
            ws, "cls", tables, numbers, images, config={**settings, "calibration_bins": calibration_bins}, models=models
        )
    doc["page"] = str(write_page(ws))
    return doc


def _markdown_report(
    doc: dict[str, Any],
    summary: pd.DataFrame,
    folds: pd.DataFrame,
    delong: pd.DataFrame,
    ablation: pd.DataFrame,
    alpha: float,
    controls: str = "",
    seeds: str = "",
) -> str:
    level = round(100 * (1 - alpha))
    main_cols = [
        "stage",
        "folds",
        "n",
        "n_pos",
        "auc_mean",
        "auc_sd",
        "auc_fold_max",
        "auc_pooled",
        "auc_ci_lo",
        "auc_ci_hi",
        "sensitivity_youden",
        "specificity_youden",
        "brier",
    ]
    fold_cols = [
        "stage",
        "fold",
        "n",
        "n_pos",
        "auc",
        "ap",
        "threshold_youden_val",
        "sensitivity_youden",
        "specificity_youden",
        "accuracy_05",
        "f1_05",
        "logit_median_neg",
        "logit_median_pos",
    ]
    delong_cols = [
        c for c in ["comparison", "stage_a", "stage_b", "n", "auc1", "auc2", "diff", "p_value", "note"] if c in delong.columns
    ]
    parts = [
        f"# Classification report: {doc['experiment']}\n",
        f"Out-of-fold predictions ({doc['folds_text']}); every metric is on real held-out patients. "
        f"Pooled AUC: all folds' test predictions together, with a {level} % {doc['settings']['bootstrap']} bootstrap CI "
        f"({doc['settings']['n_boot']} resamples). Thresholded metrics use each fold's Youden threshold from its "
        f"inner validation split (`_youden`). `{FOLD_MAX}` {FOLD_MAX_NOTE}\n",
        "## Summary\n",
        markdown(summary[main_cols].rename(columns={"auc_fold_max": FOLD_MAX})),
        controls,
        "\n## Ablation: real only vs real + synthetic (pooled AUC [CI]; fold mean ± sd)\n",
        markdown(ablation[[c for c in ablation.columns if not c.startswith("auc_pooled")]]),
        f"\n## DeLong tests (paired, pooled predictions; {doc['settings']['delong_variance']} variance)\n",
        markdown(delong[delong_cols].assign(p_value=delong["p_value"].map(format_p)), ".4f")
        if len(delong)
        else "(one stage only)\n",
        "\n## Per fold\n",
        markdown(folds[fold_cols]),
        _scale_note(summary),
        _below_chance_note(summary, level),
        seeds,
        "\n## Figures\n",
        "".join(f"- `{Path(p).name}`\n" for p in doc["figures"].values()),
    ]
    return "\n".join(parts)


#: The maximum fold AUC's column name where a reader sees it (report and page), and what it is.
FOLD_MAX = "auc_fold_max (optimistic)"
FOLD_MAX_NOTE = (
    "is the best single fold's AUC, the figure the NeoNet paper reports: the maximum of a few small test sets, "
    "not an estimate of performance; read the pooled AUC and the fold mean beside it."
)

#: Pooled AUC this far below the fold mean gets a note in ``cls_report.md``.
SCALE_GAP = 0.03


def _scale_note(summary: pd.DataFrame) -> str:
    """A paragraph naming the stages whose pooled AUC is well below their fold mean (scores not on one scale)."""
    gaps = [
        (r.stage, r.auc_mean, r.auc_pooled)
        for r in summary.itertuples()
        if np.isfinite(r.auc_mean) and np.isfinite(r.auc_pooled) and r.auc_mean - r.auc_pooled > SCALE_GAP
    ]
    if not gaps:
        return ""
    listed = "; ".join(f"{s}: fold mean {m:.3f}, pooled {p:.3f}" for s, m, p in gaps)
    return (
        f"\nPooled AUC more than {SCALE_GAP} below the fold mean ({listed}): the folds rank their own "
        "patients better than the pooled predictions rank all of them, i.e. the fold models do not score on one "
        "scale. Compare `logit_median_neg` / `logit_median_pos` across folds above and `scores_<stage>.png`.\n"
    )


def _below_chance_note(summary: pd.DataFrame, level: int) -> str:
    """A paragraph naming the stages whose pooled AUC CI lies wholly below 0.5 (ranking against the labels)."""
    low = [
        (r.stage, r.auc_pooled, r.auc_ci_lo, r.auc_ci_hi)
        for r in summary.itertuples()
        if np.isfinite(r.auc_ci_hi) and r.auc_ci_hi < 0.5
    ]
    if not low:
        return ""
    listed = "; ".join(f"{s}: {a:.3f} [{lo:.3f}, {hi:.3f}]" for s, a, lo, hi in low)
    return (
        f"\nPooled AUC below chance, the whole {level} % CI under 0.5 ({listed}): the model ranks held-out "
        "patients against their labels. Training and test labels both come from the `pni` column of `cases.csv`, "
        "so this is not a label flipped between them: the model learned associations of its training folds "
        "that reverse in its test folds (likely with few training patients). Other training seeds will not "
        "average them away, since the cohort, not the seed, holds them; see `scores_<stage>.png`.\n"
    )
