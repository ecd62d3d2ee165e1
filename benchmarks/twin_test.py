"""The twin test: how much of a classifier's score survives when the PNI is taken out of the images.

On a phantom experiment whose chain has run (NeoSeg's out-of-fold masks, TLCR patches, the fold
autoencoders, the classifiers and the radiomics baseline: ``make demo``, ``make null`` or a
``strength_sweep.py`` experiment), every PNI+ image is replaced by its cuff-free *twin*: the PNI- case
the phantom draws from the same seed (same anatomy, same noise, no perineural infiltration). NeoSeg's
out-of-fold masks are **kept** (those it drew on the images with PNI), the twins are cropped with them
and each classifier is retrained on the same folds, with the same frozen fold autoencoders, under its
own config. Whatever a classifier scores on the twins it scores without PNI in the image: from the
masks (NeoSeg draws PNI+ tumours larger, taking part of the cuff as tumour) and from the crop they
place.

It then measures the same with a remedy for the mask's leak, ``neonet crop --tumor_shrink_mm D``
(the tumour eroded by D mm before the label patch is made; the rim becomes peritumoral shell, the
shell is measured from the shrunk tumour): the classifiers retrained on shrunk-mask patches of the
real images and of the twins.

Everything runs inside the experiment through the real command line, as patch sets and control
stages beside its own (``neonet crop --patches``, ``--data.patches``, ``neonet radiomics --patches``):

- ``twin/cases.csv`` and ``twin/images/<case>.nii.gz`` (the PNI+ cases' twins; PNI- rows keep their
  image), checked first: the phantom regenerated with the given synth options must reproduce a PNI-
  case voxel for voxel, so the twins are those of this cohort;
- ``patches_twin/``, ``patches_shrunk/``, ``patches_twin_shrunk/`` and the stages
  ``<stage>_twin``, ``<stage>_shrunk``, ``<stage>_twin_shrunk`` for ``pattennet`` (the paper head),
  ``pattennet_hist``, ``resnet18`` and ``radiomics``; then ``neonet report`` (they appear as control
  rows, with a sentence each).

The surviving fraction of a model's signal is ``(AUC_twin - 0.5) / (AUC - 0.5)``: 0 when the twins
score at chance (the score came from the image), 1 when they score as the real images (it came from
the masks). It is given only where the model's own AUC is at least 0.05 above chance.

Writes to ``--out`` (default ``benchmarks/results/twin_test``) ``twin_test.{csv,md,json,png}`` and
``twin_test_runs.json`` (per step: seconds, exit code, load average). Resumable like the stages it
runs (finished folds are skipped, current patches kept). Usage::

    OMP_NUM_THREADS=1 python benchmarks/twin_test.py --experiment sweep-s2 --strength 2 --matched 3
    python benchmarks/twin_test.py --experiment sweep-s2 --collect_only
"""

from __future__ import annotations

import argparse
import dataclasses
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
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from neonet.data.cases import read_cases, write_cases  # noqa: E402
from neonet.data.nifti import load_nifti  # noqa: E402
from neonet.data.phantom import cohort_plan, make_case  # noqa: E402
from neonet.run.atomic import read_json, write_csv, write_json, write_text  # noqa: E402
from neonet.workspace import Workspace, git_sha  # noqa: E402

log = logging.getLogger("twin_test")

NAME = "twin_test"
#: (stage, ``neonet cv`` config or None for the radiomics baseline, label), the paper first.
MODELS: tuple[tuple[str, str | None, str], ...] = (
    ("pattennet", "pattennet.yaml", "PattenNet (paper head)"),
    ("pattennet_hist", "pattennet_hist.yaml", "PattenNet, histogram head"),
    ("resnet18", "baseline_resnet18.yaml", "ResNet-18"),
    ("radiomics", None, "radiomics (L2 logistic)"),
)
#: (patch set or None for the experiment's own patches, images, shrunk masks), in the order they are run.
CONDITIONS: tuple[tuple[str | None, str, bool], ...] = (
    (None, "real", False),
    ("twin", "twin", False),
    ("shrunk", "real", True),
    ("twin_shrunk", "twin", True),
)
#: A surviving fraction is given only when the model's own AUC is this far above chance.
MIN_EFFECT = 0.05


def stage_name(stage: str, patch_set: str | None) -> str:
    """The stage of a model on a patch set: ``pattennet`` on ``patches/``, ``pattennet_twin`` on ``patches_twin/``."""
    return stage if patch_set is None else f"{stage}_{patch_set}"


# ----------------------------------------------------------------------------- the twins
def write_twins(ws: Workspace, cases_csv: Path, args: argparse.Namespace) -> Path:
    """The twin cohort of the experiment: ``<experiment>/twin/cases.csv`` and the PNI+ cases' twin images.

    The phantom is regenerated with the given synth options; one PNI- case must come out voxel for voxel as
    stored (else the options are not this cohort's and nothing is written), and every PNI+ twin must differ
    from its PNI+ image (else the cohort has no PNI to take out). Returns the twin ``cases.csv``.
    """
    cases = {c.case_id: c for c in read_cases(cases_csv)}
    plan = cohort_plan(args.cases, args.seed, args.pni_fraction, args.matched)
    planned = {p.case_id: p for p in plan}
    if set(planned) != set(cases):
        only = sorted(set(planned) ^ set(cases))[:5]
        raise SystemExit(
            f"{cases_csv}: its case ids differ from the phantom's with these options ({only}...): pass the synth options"
        )
    common = {"strength": args.strength, "tumor_radius_mm": tuple(args.tumor_radius_mm)}
    common |= {"shape": tuple(args.shape), "spacing": tuple(args.spacing)}
    negative = next(p for p in plan if not p.pni)
    again = make_case(negative.seed, 0, noise_rng=negative.noise_seed, **common)[0]
    stored = np.asarray(load_nifti(cases[negative.case_id].image).dataobj, dtype=np.float32)
    if again.shape != stored.shape or not np.allclose(again, stored, atol=1e-6):
        raise SystemExit(
            f"the phantom regenerated with {common} does not reproduce {negative.case_id} ({cases[negative.case_id].image}): "
            "pass the cohort's synth options (--cases, --seed, --pni_fraction, --matched, --tumor_radius_mm, --shape, --spacing)"
        )
    folder = ws.root / "twin"
    rows = []
    differ = []
    for case in cases.values():
        item = planned[case.case_id]
        image = case.image
        if item.pni:
            image = folder / "images" / f"{case.case_id}.nii.gz"
            source = load_nifti(case.image)
            twin = make_case(item.seed, 0, noise_rng=item.noise_seed, **common)[0]
            differ.append(float(np.mean(np.abs(twin - np.asarray(source.dataobj, dtype=np.float32)) > 1e-6)))
            if differ[-1] == 0.0:
                raise SystemExit(f"{case.case_id} is PNI+ but identical to its twin: this cohort has no PNI to take out")
            if not image.is_file():
                image.parent.mkdir(parents=True, exist_ok=True)
                tmp = image.with_name(f".{image.name}.tmp.nii.gz")
                nib.save(nib.Nifti1Image(twin.astype(np.float32), source.affine, source.header), tmp)
                os.replace(tmp, image)
        rows.append(dataclasses.replace(case, image=image))
    out = write_cases(folder / "cases.csv", rows)
    log.info(
        "twins of %d PNI+ cases in %s (%.1f %% of their voxels differ from the PNI+ image on average)",
        len(differ),
        folder,
        100 * float(np.mean(differ)),
    )
    return out


# ----------------------------------------------------------------------------- the chain
def steps(ws: Workspace, cases_csv: Path, twin_csv: Path, args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """(step name, ``neonet`` arguments) of every patch set and control stage, in order."""
    configs = Path(args.configs)
    where = ["--experiment", ws.experiment, "--runs_dir", str(ws.runs_dir)]
    data = [f"--data.runs_dir={ws.runs_dir}", f"--data.cases={cases_csv}", f"--data.experiment={ws.experiment}"]
    out: list[tuple[str, list[str]]] = []
    for patch_set, images, shrunk in CONDITIONS:
        if patch_set is None:
            continue  # the experiment's own patches and stages: made by its chain
        crop = ["crop", "--config", str(configs / "crop.yaml"), "--cases", str(twin_csv if images == "twin" else cases_csv)]
        crop += [*where, "--source", "predicted", "--patches", patch_set]
        out.append((f"crop {patch_set}", crop + (["--tumor_shrink_mm", f"{args.shrink_mm:g}"] if shrunk else [])))
        for stage, config, _ in MODELS:
            name = stage_name(stage, patch_set)
            if config is None:
                command = ["radiomics", "--config", str(configs / "radiomics.yaml"), "--cases", str(cases_csv), *where]
                command += ["--patches", patch_set, "--stage", name, "--model_name", name, "--report", "false"]
            else:
                command = ["cv", "--jobs", str(args.jobs), "--config", str(configs / config), "--", *data]
                command += [f"--data.patches={patch_set}", f"--model.stage={name}", *args.cv_overrides]
            out.append((name, command))
    out.append(("report", ["report", *where]))
    return out


def run(ws: Workspace, chain: list[tuple[str, list[str]]], out: Path) -> dict[str, Any]:
    """Run the steps through ``python -m neonet``; stop at the first that fails. The record goes to ``twin_test_runs.json``."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    env.setdefault("WANDB_MODE", "offline")
    path = out / f"{NAME}_runs.json"
    earlier = list(read_json(path)) if path.is_file() else []
    record: dict[str, Any] = {
        "experiment": ws.experiment,
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_sha(),
        "steps": [],
        "status": "running",
    }
    for name, neonet_args in chain:
        command = [sys.executable, "-m", "neonet", *neonet_args]
        log.info("%s: %s", name, " ".join(command))
        start = time.monotonic()
        code = subprocess.run(command, env=env, check=False).returncode
        record["steps"].append(
            {
                "step": name,
                "seconds": round(time.monotonic() - start, 1),
                "exit_code": code,
                "load_1min": round(os.getloadavg()[0], 2),
            }
        )
        record["status"] = f"failed at {name} (exit code {code})" if code else "running"
        if not code and len(record["steps"]) == len(chain):
            record["status"] = "complete"
        out.mkdir(parents=True, exist_ok=True)
        write_json(path, [*earlier, record])
        if code:
            log.error("%s failed with exit code %d", name, code)
            break
    return record


# ----------------------------------------------------------------------------- the table
def surviving(auc: float, twin_auc: float) -> float:
    """``(twin - 0.5) / (auc - 0.5)``; NaN when ``auc`` is less than :data:`MIN_EFFECT` above chance."""
    if not np.isfinite(auc) or not np.isfinite(twin_auc) or auc - 0.5 < MIN_EFFECT:
        return float("nan")
    return (twin_auc - 0.5) / (auc - 0.5)


def collect(ws: Workspace) -> pd.DataFrame:
    """One row per model: pooled AUC [CI] on real and twin images, with the experiment's masks and shrunk ones,
    and the surviving fraction of each; a condition without a reported stage is NaN (``status`` says which)."""
    summary = pd.read_csv(ws.cls_summary).set_index("stage") if ws.cls_summary.is_file() else pd.DataFrame()
    rows = []
    for stage, _, label in MODELS:
        row: dict[str, Any] = {"model": stage, "label": label}
        missing = []
        for patch_set, images, shrunk in CONDITIONS:
            key = f"{images}{'_shrunk' if shrunk else ''}"
            name = stage_name(stage, patch_set)
            row[f"stage_{key}"] = name
            if name in summary.index:
                r = summary.loc[name]
                row |= {
                    f"auc_{key}": float(r["auc_pooled"]),
                    f"lo_{key}": float(r["auc_ci_lo"]),
                    f"hi_{key}": float(r["auc_ci_hi"]),
                }
                row[f"n_{key}"] = int(r["n"])
            else:
                row |= {f"auc_{key}": np.nan, f"lo_{key}": np.nan, f"hi_{key}": np.nan, f"n_{key}": np.nan}
                missing.append(name)
        row["surviving"] = surviving(row["auc_real"], row["auc_twin"])
        row["surviving_shrunk"] = surviving(row["auc_real_shrunk"], row["auc_twin_shrunk"])
        row["status"] = "complete" if not missing else "missing: " + ", ".join(missing)
        rows.append(row)
    return pd.DataFrame(rows)


def _cell(row: pd.Series, key: str) -> str:
    if pd.isna(row[f"auc_{key}"]):
        return "not run"
    return f"{row[f'auc_{key}']:.3f} [{row[f'lo_{key}']:.3f}, {row[f'hi_{key}']:.3f}]"


def _fraction(value: float) -> str:
    return f"{value:.2f}" if np.isfinite(value) else f"n/a (AUC < {0.5 + MIN_EFFECT:.2f})"


def markdown(table: pd.DataFrame, shrink_mm: float) -> str:
    """Models x conditions: pooled AUC [95 % CI] and the surviving fractions."""
    lines = [
        f"| model | real images | twins (no PNI), same masks | surviving | real, masks shrunk {shrink_mm:g} mm "
        "| twins, masks shrunk | surviving (shrunk) |",
        "|---|---|---|---|---|---|---|",
    ]
    for _, r in table.iterrows():
        cells = [_cell(r, "real"), _cell(r, "twin"), _fraction(r["surviving"])]
        cells += [_cell(r, "real_shrunk"), _cell(r, "twin_shrunk"), _fraction(r["surviving_shrunk"])]
        lines.append(f"| {r['label']} (`{r['model']}`) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(table: pd.DataFrame, path: Path, experiment: str, shrink_mm: float) -> Path:
    """Pooled AUC per model and condition with 95 % CI bars, and the chance line."""
    keys = [("real", "real images"), ("twin", "twins, same masks")]
    keys += [("real_shrunk", f"real, masks shrunk {shrink_mm:g} mm"), ("twin_shrunk", "twins, masks shrunk")]
    fig, ax = plt.subplots(figsize=(7.6, 4.4))
    x = np.arange(len(table))
    width = 0.8 / len(keys)
    for i, (key, label) in enumerate(keys):
        auc = table[f"auc_{key}"].to_numpy(float)
        err = np.vstack([auc - table[f"lo_{key}"].to_numpy(float), table[f"hi_{key}"].to_numpy(float) - auc])
        ax.bar(x + (i - (len(keys) - 1) / 2) * width, np.nan_to_num(auc), width, yerr=np.nan_to_num(err), capsize=2, label=label)
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.set_xticks(x, [str(m) for m in table["model"]])
    ax.set_ylim(0.0, 1.05)
    ax.set_ylabel("pooled out-of-fold AUC (95 % CI)")
    ax.set_title(f"Twin test on {experiment}: PNI taken out of the images, NeoSeg's masks kept", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return path


# ----------------------------------------------------------------------------- command line
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", default="sweep-s2", help="a phantom experiment whose chain has run")
    p.add_argument("--runs_dir", type=Path, default=Path("runs"), help="folder of the experiments")
    p.add_argument("--cases_csv", type=Path, default=None, help="its cases.csv (default <runs_dir>/<experiment>/data/cases.csv)")
    p.add_argument("--cases", type=int, default=72, help="neonet synth --cases of the cohort")
    p.add_argument("--seed", type=int, default=0, help="neonet synth --seed of the cohort")
    p.add_argument("--pni_fraction", type=float, default=0.35, help="neonet synth --pni_fraction of the cohort")
    p.add_argument("--matched", type=int, default=3, help="neonet synth --matched of the cohort (0: independent cases)")
    p.add_argument("--strength", type=float, default=2.0, help="neonet synth --strength of the cohort")
    p.add_argument("--tumor_radius_mm", type=float, nargs=2, default=[20.0, 30.0], help="neonet synth --tumor_radius_mm")
    p.add_argument("--shape", type=int, nargs=3, default=[96, 96, 32], help="neonet synth --shape")
    p.add_argument("--spacing", type=float, nargs=3, default=[3.5, 3.5, 6.0], help="neonet synth --spacing")
    p.add_argument("--shrink_mm", type=float, default=6.0, help="neonet crop --tumor_shrink_mm of the remedy")
    p.add_argument("--jobs", type=int, default=3, help="folds trained at once by neonet cv (one thread each)")
    p.add_argument("--configs", type=Path, default=Path("experiments/demo"), help="the experiment's stage configs")
    p.add_argument("cv_overrides", nargs="*", default=[], help="after --: extra options of every neonet cv stage")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results") / NAME, help="folder of the results")
    p.add_argument("--collect_only", action="store_true", help="only gather the report into the table and plot")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Make the twins, run the control stages and the report (unless ``--collect_only``), collect; 1 if a step failed."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = parse_args(argv)
    ws = Workspace(args.runs_dir, args.experiment)
    cases_csv = args.cases_csv or ws.phantom_cases
    twin_csv = ws.root / "twin" / "cases.csv"
    status = "collected"
    if not args.collect_only:
        if not ws.cls_summary.is_file():
            raise SystemExit(f"{ws.cls_summary} not found: run the experiment's chain first (e.g. strength_sweep.py)")
        twin_csv = write_twins(ws, cases_csv, args)
        status = run(ws, steps(ws, cases_csv, twin_csv, args), args.out)["status"]
    table = collect(ws)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "experiment": args.experiment,
        "git_commit": git_sha(),
        "collected": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cohort": {
            k: getattr(args, k)
            for k in ("cases", "seed", "pni_fraction", "matched", "strength", "tumor_radius_mm", "shape", "spacing")
        },
        "shrink_mm": args.shrink_mm,
        "surviving": "(AUC_twin - 0.5) / (AUC - 0.5), given where AUC - 0.5 >= " + str(MIN_EFFECT),
        "steps": [" ".join(c) for _, c in steps(ws, cases_csv, twin_csv, args)],
    }
    paths = [
        write_csv(args.out / f"{NAME}.csv", table),
        write_text(args.out / f"{NAME}.md", markdown(table, args.shrink_mm)),
        write_json(args.out / f"{NAME}.json", {**meta, "rows": json.loads(table.to_json(orient="records"))}),
        plot(table, args.out / f"{NAME}.png", args.experiment, args.shrink_mm),
    ]
    print(markdown(table, args.shrink_mm))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0 if status in ("complete", "collected") else 1


if __name__ == "__main__":
    raise SystemExit(main())
