"""Training variance in the classification report: a stage trained under several seeds (``neonet cv --seeds``).

The stage's folds under its config's seed are ``<stage>/fold<k>/``; under another seed ``s``,
``<stage>_seed<s>/fold<k>/`` (:meth:`neonet.workspace.Workspace.seed_stage`), on the same splits and
upstream models. For every stage of the report with at least two seeds this writes to ``reports/``:

- ``cls_seeds.csv``: per stage and seed: its folder, folds, cases, pooled out-of-fold AUC with the
  report's patients-only bootstrap CI, fold AUC mean and maximum;
- ``cls_seeds_summary.csv``: per stage: the seeds, pooled AUC mean ± sd (and min, max) over seeds, and a
  95 % **patients × seeds bootstrap interval**; the fold mean and the maximum fold AUC over every seed's folds.

The patients × seeds interval: each bootstrap resample draws the patients (stratified by PNI as the
report's CI, or whole patients / matched groups when the report uses its cluster bootstrap) and one
of the seeds at random, and takes that seed's pooled AUC on those patients. Its percentiles are the
spread of the pooled AUC that one training run reports on a new sample of patients, so it holds the
seed-to-seed spread as well as the patient sampling that the per-seed CI alone covers. With few
seeds (e.g. 3) the seed part is the spread of those seeds only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import yaml
from scipy import stats as sps

from neonet.report.stats import auc, bootstrap_auc_ci
from neonet.workspace import Workspace

#: What the interval is, as the report states it.
INTERVAL = "patients x seeds percentile bootstrap (each resample: the patients, and one seed at random)"


def stage_seed(ws: Workspace, stage: str) -> int | None:
    """The training seed (``seed_everything``) in the ``config.yaml`` of the stage's first fold that has one."""
    for fold in ws.stage_folds(stage):
        path = ws.config_path(stage, fold)
        try:
            seed = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("seed_everything") if path.is_file() else None
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(seed, int) and not isinstance(seed, bool):
            return seed
    return None


def seed_groups(ws: Workspace, stages: list[str]) -> dict[str, dict[int | None, str]]:
    """``{stage: {seed: stage folder}}`` for each of ``stages`` that has ``<stage>_seed<s>`` folders with test
    predictions; the stage itself is listed under its own seed (None when its config states none)."""
    groups: dict[str, dict[int | None, str]] = {}
    for stage in stages:
        others = {s: name for s, name in ws.seed_stages(stage).items() if _predicted(ws, name)}
        if others:
            own = stage_seed(ws, stage)
            groups[stage] = {own: stage, **{s: n for s, n in others.items() if s != own}}
    return groups


def split_stages(ws: Workspace, stages: list[str]) -> list[str]:
    """``stages`` without the ``<stage>_seed<s>`` folders of another listed stage (those are reported as its seeds)."""
    seeded = {name for stage in stages for name in ws.seed_stages(stage).values()}
    return [s for s in stages if s not in seeded]


def _predicted(ws: Workspace, stage: str) -> bool:
    return any(ws.test_predictions(stage, k).is_file() for k in ws.stage_folds(stage))


def seed_bootstrap_ci(
    y: np.ndarray,
    scores: np.ndarray,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
    clusters: np.ndarray | None = None,
) -> tuple[float, float]:
    """The patients x seeds percentile-bootstrap interval of a pooled AUC (see the module docstring).

    Args:
        y: labels 0/1 of the cases, shape ``(n,)``.
        scores: each seed's pooled out-of-fold scores of the same cases, shape ``(n, seeds)``.
        n_boot: bootstrap resamples.
        alpha: 1 - confidence level.
        seed: seed of the resampling generator.
        clusters: one id per case: whole clusters (patients, matched groups) are resampled; otherwise the
            positives and negatives are resampled separately (class counts kept).

    Returns:
        ``(lo, hi)``: the ``alpha/2`` and ``1-alpha/2`` percentiles of the resampled AUCs.

    Raises:
        ValueError: the cases hold one class only, or ``scores`` does not have one row per case.
    """
    y = np.asarray(y, dtype=int)
    scores = np.asarray(scores, dtype=float).reshape(len(y), -1)
    if not 0 < y.sum() < len(y):
        raise ValueError("the cases hold one class only")
    rng = np.random.default_rng(seed)
    if clusters is None:  # stratified: vectorised over resamples, in chunks
        pos, neg = scores[y == 1], scores[y == 0]
        chunks, done = [], 0
        while done < n_boot:
            b = min(n_boot - done, max(1, 2_000_000 // len(y)))
            which = rng.integers(scores.shape[1], size=(b, 1))
            sp = pos[rng.integers(len(pos), size=(b, len(pos))), which]
            sn = neg[rng.integers(len(neg), size=(b, len(neg))), which]
            ranks = sps.rankdata(np.concatenate([sp, sn], axis=1), axis=1)
            chunks.append((ranks[:, : len(pos)].sum(axis=1) - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))
            done += b
        aucs = np.concatenate(chunks)
    else:  # whole clusters; resamples holding one class are skipped
        ids = pd.factorize(np.asarray(clusters))[0]
        members = [np.flatnonzero(ids == c) for c in range(ids.max() + 1)]
        found = []
        for _ in range(n_boot):
            pick = int(rng.integers(scores.shape[1]))
            idx = np.concatenate([members[c] for c in rng.integers(len(members), size=len(members))])
            if 0 < y[idx].sum() < idx.size:
                found.append(auc(y[idx], scores[idx, pick]))
        aucs = np.asarray(found)
    lo, hi = np.quantile(aucs, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def seed_tables(
    ws: Workspace,
    groups: dict[str, dict[int | None, str]],
    n_boot: int,
    alpha: float,
    seed: int,
    clusters: dict[str, str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(cls_seeds, cls_seeds_summary)`` of the stages in ``groups`` (:func:`seed_groups`).

    Each seed's predictions are read and checked as the report's own (:func:`neonet.report.cls_report.load_predictions`);
    the summary's interval uses the cases that every seed predicted.
    """
    from neonet.report.cls_report import cluster_array, load_predictions, per_fold_table

    per_seed, rows = [], []
    for stage, seeds in groups.items():
        frames = {}
        for s, name in seeds.items():
            frame = load_predictions(ws, [name])
            folds = per_fold_table(frame)
            y, p = frame["y_true"].to_numpy(int), frame["prob"].to_numpy(float)
            pooled, lo, hi = bootstrap_auc_ci(
                y, p, n_boot=n_boot, alpha=alpha, seed=seed, clusters=cluster_array(frame["case_id"], clusters)
            )
            per_seed.append(
                {
                    "stage": stage,
                    "model": frame["model"].iloc[0],
                    "variant": frame["variant"].iloc[0],
                    "seed": s,
                    "seed_stage": name,
                    "folds": int(folds["fold"].nunique()),
                    "n": len(frame),
                    "auc_pooled": pooled,
                    "auc_ci_lo": lo,
                    "auc_ci_hi": hi,
                    "auc_mean": float(folds["auc"].mean()),
                    "auc_fold_max": float(folds["auc"].max()),
                }
            )
            frames[s] = (frame, folds)
        table = pd.DataFrame([r for r in per_seed if r["stage"] == stage])
        common = pd.concat([f.set_index("case_id")["prob"].rename(str(s)) for s, (f, _) in frames.items()], axis=1, join="inner")
        labels = next(iter(frames.values()))[0].set_index("case_id")["y_true"].loc[common.index]
        lo, hi = seed_bootstrap_ci(
            labels.to_numpy(int),
            common.to_numpy(float),
            n_boot=n_boot,
            alpha=alpha,
            seed=seed,
            clusters=cluster_array(pd.Series(common.index), clusters),
        )
        all_folds = pd.concat([f for _, f in frames.values()])
        rows.append(
            {
                "stage": stage,
                "model": table["model"].iloc[0],
                "variant": table["variant"].iloc[0],
                "seeds": " ".join("config" if s is None else str(s) for s in seeds),
                "n_seeds": len(seeds),
                "n": len(common),
                "n_pos": int(labels.sum()),
                "auc_pooled_mean": float(table["auc_pooled"].mean()),
                "auc_pooled_sd": float(table["auc_pooled"].std(ddof=1)),
                "auc_pooled_min": float(table["auc_pooled"].min()),
                "auc_pooled_max": float(table["auc_pooled"].max()),
                "auc_seed_ci_lo": lo,
                "auc_seed_ci_hi": hi,
                "auc_mean": float(all_folds["auc"].mean()),
                "auc_fold_max": float(all_folds["auc"].max()),
            }
        )
    return pd.DataFrame(per_seed), pd.DataFrame(rows)


def seeds_rows(per_seed: pd.DataFrame, summary: pd.DataFrame, alpha: float) -> list[dict[str, Any]]:
    """One row per stage with several seeds, as the report and the experiment page show it: the seeds, each seed's
    pooled AUC, their mean ± sd, the patients x seeds interval, the fold mean and the maximum fold AUC (labelled
    optimistic)."""
    level = round(100 * (1 - alpha))
    rows = []
    for r in summary.itertuples():
        part = per_seed[per_seed["stage"] == r.stage]
        rows.append(
            {
                "stage": r.stage,
                "seeds": r.seeds,
                "pooled AUC per seed": ", ".join(f"{a:.3f}" for a in part["auc_pooled"]),
                "mean ± sd": f"{r.auc_pooled_mean:.3f} ± {r.auc_pooled_sd:.3f}",
                f"{level} % interval (patients x seeds)": f"[{r.auc_seed_ci_lo:.3f}, {r.auc_seed_ci_hi:.3f}]",
                "fold mean": r.auc_mean,
                "max fold AUC (optimistic)": r.auc_fold_max,
            }
        )
    return rows


def seeds_note(n_boot: int | str) -> str:
    """What the seed table's interval and maximum fold AUC are, in words (the report and the page)."""
    return (
        "The same folds and upstream models, the stage trained under each seed (`<stage>_seed<s>/`). The interval is "
        f"a {INTERVAL} ({n_boot} resamples) on the cases every seed predicted: the spread of the pooled AUC of one "
        "training run on a new sample of patients, so it includes the seed-to-seed spread that the per-seed CI "
        "(`cls_seeds.csv`) leaves out. The maximum fold AUC is the best single fold of any seed: an optimistic figure."
    )


def seeds_markdown(per_seed: pd.DataFrame, summary: pd.DataFrame, alpha: float, n_boot: int) -> str:
    """The report's section on training seeds (empty when no stage has several)."""
    if summary.empty:
        return ""
    from neonet.report.cls_report import markdown

    return (
        "\n## Training seeds (`neonet cv --seeds`)\n\n"
        + seeds_note(n_boot)
        + "\n\n"
        + markdown(pd.DataFrame(seeds_rows(per_seed, summary, alpha)))
    )


def seed_report(
    ws: Workspace, stages: list[str], n_boot: int, alpha: float, seed: int, clusters: dict[str, str] | None
) -> dict[str, Any]:
    """The seed tables, their JSON and markdown for the report's ``stages`` (``{}`` when none has several seeds)."""
    groups = seed_groups(ws, stages)
    if not groups:
        return {}
    per_seed, summary = seed_tables(ws, groups, n_boot, alpha, seed, clusters)
    return {
        "tables": {"cls_seeds": per_seed, "cls_seeds_summary": summary},
        "json": {"interval": INTERVAL, "per_seed": per_seed.to_dict("records"), "summary": summary.to_dict("records")},
        "markdown": seeds_markdown(per_seed, summary, alpha, n_boot),
    }
