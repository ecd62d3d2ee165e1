"""How strong must PNI be? The phantom chain at several PNI strengths, pooled AUC against strength.

For each strength ``S`` the script makes a phantom cohort of its own experiment ``sweep-s<S>`` under
``--runs_dir``::

    neonet synth --out <runs_dir>/sweep-s<S>/data --cases 72 --seed 0 --tumor_radius_mm [20,30] --strength S --matched 3

and runs the demo chain on it through the real command line, each stage config of ``--configs``
pointed at that experiment (as ``make null`` does with ``experiments/demo/null/null.yaml``):
``neonet cv`` for ``seg``, then ``neonet crop``, then ``neonet cv`` for ``autoencoder``,
``pattennet`` (the paper head), ``pattennet_hist`` (the histogram variant) and
``baseline_resnet18``, then ``neonet radiomics`` and ``neonet report``. No NeoGen diffusion or
synthesis: none of the four compared models needs it.

One seed for every strength: the phantom draws every random number in the same order whatever the
strength and the PNI status, so the cohorts share their anatomy, labels, noise and splits, and only
the perineural infiltration differs (its length scales with ``S``, its thickness up to ``S = 1``;
above 1 the nerve's arc along the tumour is longer too). Matched sets (``--matched 3``: one anatomy,
own noise, one PNI+ per set, kept in one fold) keep every anatomical parameter independent of PNI,
so strength is the only thing that moves the AUC and strength 0 is the exact null.

Resumable: a finished cohort is kept, ``neonet cv`` skips complete folds, ``neonet crop`` keeps current
patches and ``neonet radiomics`` finished folds, so a rerun continues where the last one stopped.

Writes to ``--out`` (default ``benchmarks/results/strength_sweep``):

- ``strength_sweep.csv``: per strength and model: pooled out-of-fold AUC, its 95 % CI, folds, cases;
- ``strength_sweep.md``: the same as a table (models x strengths) with the wall time per strength;
- ``strength_sweep.json``: the rows, the cohort, the commands, the git commit, the wall times;
- ``strength_sweep.png``: AUC against strength, one line per model, CI error bars, the chance line;
- ``strength_sweep_runs.json``: each invocation's per-step wall time and load average (read back by
  ``--collect_only``).

The AUCs are read from what ``neonet report`` writes (``reports/cls_summary.csv``: one row per stage,
``auc_pooled``, ``auc_ci_lo``, ``auc_ci_hi``; the radiomics baseline's row comes from its
``test_predictions.csv``, its ``radiomics_summary.csv`` holds only per-fold figures). Usage::

    OMP_NUM_THREADS=1 python benchmarks/strength_sweep.py --strengths 2 0 1 0.5   # resumable: a rerun goes on
    python benchmarks/strength_sweep.py --collect_only                             # table + plot of what finished
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from neonet.run.atomic import read_json, write_csv, write_json, write_text  # noqa: E402
from neonet.workspace import Workspace, git_sha  # noqa: E402

log = logging.getLogger("strength_sweep")

#: (stage, label) of the compared models, in table order: the paper first, variants and baselines beside it.
MODELS: tuple[tuple[str, str], ...] = (
    ("pattennet", "PattenNet (paper head)"),
    ("pattennet_hist", "PattenNet, histogram head"),
    ("resnet18", "ResNet-18"),
    ("radiomics", "radiomics (L2 logistic)"),
)
#: ``neonet cv`` configs of the chain, in order; NeoSeg's out-of-fold masks are cropped after the first.
CV_CONFIGS = ("seg.yaml", "autoencoder.yaml", "pattennet.yaml", "pattennet_hist.yaml", "baseline_resnet18.yaml")
NAME = "strength_sweep"
DEFAULT_STRENGTHS = (2.0, 0.0, 1.0, 0.5)  # the informative ends first


def experiment_name(strength: float) -> str:
    """The experiment of one strength: ``sweep-s<strength>`` (``sweep-s0``, ``sweep-s0.5``, ``sweep-s2``)."""
    return f"sweep-s{strength:g}"


def synth_args(strength: float, cases: int, seed: int, matched: int) -> list[str]:
    """The ``neonet synth`` cohort options of one strength (everything but ``--out``)."""
    return [
        "--cases", str(cases), "--seed", str(seed), "--tumor_radius_mm", "[20,30]",
        "--strength", f"{strength:g}", "--matched", str(matched),
    ]  # fmt: skip


def chain(ws: Workspace, args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """The (step name, ``neonet`` arguments) of one strength's chain, in order."""
    configs = Path(args.configs)
    where = [f"--data.runs_dir={ws.runs_dir}", f"--data.cases={ws.phantom_cases}", f"--data.experiment={ws.experiment}"]
    plain = ["--cases", str(ws.phantom_cases), "--experiment", ws.experiment, "--runs_dir", str(ws.runs_dir)]

    def cv(config: str) -> tuple[str, list[str]]:
        command = ["cv", "--jobs", str(args.jobs), "--config", str(configs / config), "--", *where, *args.cv_overrides]
        return config.removesuffix(".yaml"), command

    steps = [cv(CV_CONFIGS[0]), ("crop", ["crop", "--config", str(configs / "crop.yaml"), *plain])]
    steps += [cv(config) for config in CV_CONFIGS[1:]]
    steps.append(("radiomics", ["radiomics", "--config", str(configs / "radiomics.yaml"), *plain, "--report", "false"]))
    steps.append(("report", ["report", "--experiment", ws.experiment, "--runs_dir", str(ws.runs_dir)]))
    return steps


def run_strength(strength: float, args: argparse.Namespace) -> dict[str, Any]:
    """Synthesise one strength's cohort (unless it exists) and run its chain; the per-step wall times.

    The invocation's record (per step: seconds, exit code, load average) is added to ``strength_sweep_runs.json``
    and rewritten after every step, so an interrupted run still says how far it got. A failing step stops this
    strength (its record names the step and the exit code); the caller goes on with the next.
    """
    ws = Workspace(args.runs_dir, experiment_name(strength))
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    env.setdefault("WANDB_MODE", "offline")
    steps: list[tuple[str, list[str]]] = []
    if not ws.phantom_cases.is_file():
        steps.append(
            ("synth", ["synth", "--out", str(ws.phantom_dir), *synth_args(strength, args.cases, args.seed, args.matched)])
        )
    steps += chain(ws, args)
    earlier = read_runs(args.out)
    record: dict[str, Any] = {
        "strength": strength,
        "experiment": ws.experiment,
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_sha(),
        "steps": [],
        "seconds": 0.0,
        "status": "running",
    }
    for name, neonet_args in steps:
        command = [sys.executable, "-m", "neonet", *neonet_args]
        log.info("%s: %s", ws.experiment, " ".join(command))
        start = time.monotonic()
        code = subprocess.run(command, env=env, check=False).returncode
        seconds = round(time.monotonic() - start, 1)
        record["steps"].append({"step": name, "seconds": seconds, "exit_code": code, "load_1min": round(os.getloadavg()[0], 2)})
        record["seconds"] = round(sum(s["seconds"] for s in record["steps"]), 1)
        if code != 0:
            record["status"] = f"failed at {name} (exit code {code})"
            log.error("%s: %s failed with exit code %d; going on with the next strength", ws.experiment, name, code)
        elif len(record["steps"]) == len(steps):
            record["status"] = "complete"
        args.out.mkdir(parents=True, exist_ok=True)
        write_json(runs_file(args.out), [*earlier, record])
        if code != 0:
            break
    return record


def runs_file(out: Path) -> Path:
    """The invocation log of the sweep: ``<out>/strength_sweep_runs.json``."""
    return out / f"{NAME}_runs.json"


def read_runs(out: Path) -> list[dict[str, Any]]:
    """Every recorded invocation of :func:`run_strength` (empty before the first)."""
    path = runs_file(out)
    return list(read_json(path)) if path.is_file() else []


def since_synth(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The invocations of one experiment that made its current results: from the latest that synthesised the cohort.

    A run resumed after an interruption adds its invocations up; a cohort deleted and swept again starts afresh,
    so the wall time of an earlier, replaced sweep is not counted.
    """
    starts = [i for i, r in enumerate(runs) if any(s.get("step") == "synth" for s in r.get("steps", []))]
    return list(runs[starts[-1] :] if starts else runs)


def collect(runs_dir: Path, strengths: Sequence[float], runs: Sequence[dict[str, Any]] = ()) -> pd.DataFrame:
    """One row per (strength, model) from each experiment's ``reports/cls_summary.csv``.

    A strength without a report, or a model without a row in it, gets a row with ``status`` saying so and no AUC;
    a model whose report covers fewer folds than its splits hold is ``partial``.
    """
    rows = []
    for strength in strengths:
        ws = Workspace(runs_dir, experiment_name(strength))
        summary = pd.read_csv(ws.cls_summary) if ws.cls_summary.is_file() else None
        mine = since_synth([r for r in runs if r.get("experiment") == ws.experiment])
        wall = round(sum(float(r["seconds"]) for r in mine), 1) if mine else None
        # the latest invocation: its status and the steps it finished (an interrupted one stays "running")
        run_status = f"{mine[-1]['status']} after {'/'.join(s['step'] for s in mine[-1]['steps']) or 'no step'}" if mine else None
        for stage, label in MODELS:
            row: dict[str, Any] = {"strength": strength, "experiment": ws.experiment, "model": stage, "label": label}
            found = None if summary is None else summary[summary["stage"] == stage]
            if found is None or found.empty:
                row["status"] = "missing: no reports/cls_summary.csv" if summary is None else "missing: stage not in the report"
            else:
                r = found.iloc[0]
                row.update(
                    auc_pooled=float(r["auc_pooled"]),
                    auc_ci_lo=float(r["auc_ci_lo"]),
                    auc_ci_hi=float(r["auc_ci_hi"]),
                    auc_mean=float(r["auc_mean"]),
                    auc_sd=float(r["auc_sd"]),
                    folds=int(r["folds"]),
                    folds_expected=int(r["folds_expected"]),
                    n=int(r["n"]),
                    n_pos=int(r["n_pos"]),
                    status="complete" if int(r["folds"]) >= int(r["folds_expected"]) else "partial",
                )
            row["wall_s"] = wall
            row["run_status"] = run_status
            rows.append(row)
    return pd.DataFrame(rows)


def plot(table: pd.DataFrame, path: Path) -> Path:
    """AUC against strength, one line per model with its 95 % CI as error bars, and the chance line."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    done = table.dropna(subset=["auc_pooled"]) if "auc_pooled" in table else table.iloc[0:0]
    step = 0.02 * max(1.0, float(table["strength"].max()) - float(table["strength"].min()))
    for i, (stage, label) in enumerate(MODELS):
        part = done[done["model"] == stage].sort_values("strength")
        if part.empty:
            continue
        x = part["strength"] + (i - (len(MODELS) - 1) / 2) * step  # small offsets so the bars do not overlap
        err = [part["auc_pooled"] - part["auc_ci_lo"], part["auc_ci_hi"] - part["auc_pooled"]]
        ax.errorbar(x, part["auc_pooled"], yerr=err, marker="o", capsize=3, label=label)
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1, label="chance (0.5)")
    ax.set_xlabel("phantom PNI strength")
    ax.set_ylabel("pooled out-of-fold AUC (95 % CI)")
    ax.set_ylim(0.0, 1.02)
    ticks = sorted(table["strength"].unique())
    span = max(1.0, ticks[-1] - ticks[0])
    ax.set_xticks(ticks)
    ax.set_xlim(ticks[0] - 0.1 * span, ticks[-1] + 0.1 * span)
    missing = sorted(set(table["strength"]) - set(done["strength"]))
    title = "Pooled AUC against PNI strength (matched phantom)"
    ax.set_title(
        title + (f"\nno report (not run or not finished): strength {', '.join(f'{s:g}' for s in missing)}" if missing else ""),
        fontsize=10,
    )
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def markdown(table: pd.DataFrame) -> str:
    """Models x strengths: pooled AUC [95 % CI], then the wall time of each strength."""
    strengths = sorted(table["strength"].unique())
    head = "| model | " + " | ".join(f"strength {s:g}" for s in strengths) + " |"
    lines = [head, "|---" * (len(strengths) + 1) + "|"]
    for stage, label in MODELS:
        cells = []
        for s in strengths:
            r = table[(table["strength"] == s) & (table["model"] == stage)].iloc[0]
            if pd.isna(r.get("auc_pooled")):
                cells.append("no report")
            else:
                partial = "" if r["status"] == "complete" else f" ({r['folds']} of {r['folds_expected']} folds)"
                cells.append(f"{r['auc_pooled']:.3f} [{r['auc_ci_lo']:.3f}, {r['auc_ci_hi']:.3f}]{partial}")
        lines.append(f"| {label} (`{stage}`) | " + " | ".join(cells) + " |")
    cells = []
    for s in strengths:
        first = table[table["strength"] == s].iloc[0]
        wall, status = first["wall_s"], first.get("run_status")
        done = isinstance(status, str) and status.startswith("complete")
        cells.append("" if pd.isna(wall) else f"{wall:.0f}" if done else f"{wall:.0f} so far ({status})")
    lines.append("| wall time (s) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(table: pd.DataFrame, out: Path, meta: dict[str, Any]) -> dict[str, Path]:
    """``strength_sweep.{csv,md,json,png}`` under ``out`` (each written atomically)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "csv": write_csv(out / f"{NAME}.csv", table),
        "md": write_text(out / f"{NAME}.md", markdown(table)),
        "png": plot(table, out / f"{NAME}.png"),
    }
    rows = json.loads(table.to_json(orient="records"))
    paths["json"] = write_json(out / f"{NAME}.json", {**meta, "rows": rows})
    return paths


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--strengths", type=float, nargs="+", default=list(DEFAULT_STRENGTHS), help="PNI strengths, run in this order")
    p.add_argument("--runs_dir", type=Path, default=Path("runs"), help="folder of the sweep-s<S> experiments")
    p.add_argument("--cases", type=int, default=72, help="cases per cohort (a multiple of --matched)")
    p.add_argument("--seed", type=int, default=0, help="phantom seed, the same for every strength")
    p.add_argument("--matched", type=int, default=3, help="matched set size (neonet synth --matched)")
    p.add_argument("--jobs", type=int, default=3, help="folds trained at once by neonet cv (one thread each)")
    p.add_argument("--configs", type=Path, default=Path("experiments/demo"), help="the stage configs")
    p.add_argument(
        "cv_overrides",
        nargs="*",
        default=[],
        help="after --: extra options of every neonet cv stage, e.g. -- --trainer.max_epochs=1",
    )
    p.add_argument("--out", type=Path, default=Path("benchmarks/results") / NAME, help="folder of the results")
    p.add_argument("--collect_only", action="store_true", help="only gather the finished reports into the table and plot")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run (unless ``--collect_only``) and collect; exit code 1 if a step failed."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = parse_args(argv)
    failed = False
    if not args.collect_only:
        for strength in args.strengths:
            record = run_strength(strength, args)
            failed |= record["status"] != "complete"
    runs = read_runs(args.out)
    table = collect(args.runs_dir, args.strengths, runs)
    meta = {
        "git_commit": git_sha(),
        "collected": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "runs_dir": str(args.runs_dir),
        "cohort": {
            "synth": "neonet synth --out <runs_dir>/sweep-s<S>/data "
            + " ".join(synth_args(0.0, args.cases, args.seed, args.matched)).replace("--strength 0", "--strength S"),
            "what_changes": "one seed for every strength: the cohorts share anatomy, labels, noise and splits; only the "
            "perineural infiltration differs (length x strength, thickness up to strength 1, above 1 a longer nerve arc); "
            "matched sets keep every anatomical parameter independent of PNI, so strength 0 is the exact null",
        },
        "chain": [" ".join(c) for _, c in chain(Workspace(args.runs_dir, experiment_name(0.0)), args)],
        "runs": runs,
    }
    paths = write_results(table, args.out, meta)
    print(markdown(table))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
