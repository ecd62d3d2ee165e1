"""GPU check that fits a short loan: every paper-scale stage measured and run once, within a time budget.

For each stage config of ``experiments/paper`` (NeoSeg with DynUNet and with SwinUNETR, autoencoder,
diffusion, ControlNet, PattenNet, the three baselines):

1. **Step measurement.** The stage's LightningModule and DataModule are built by neonet's own config
   parser (:func:`neonet.run.lightning_cli.instantiate_stage_config`, as ``neonet fit`` builds them) and
   trained on synthetic tensors of the stage's shapes in a plain loop: the module's ``training_step``
   (the autoencoder's generator + discriminator step written out, as its manual optimisation does),
   ``backward`` and the optimizer step, in fp32 and under ``torch.autocast(bfloat16)`` (what Lightning's
   ``bf16-mixed`` does). Warm-up steps are excluded; each timed step is bracketed by
   ``torch.cuda.synchronize()``; the median is reported, with samples/s. Peak GPU memory is
   ``torch.cuda.max_memory_allocated()``, reset before each precision. Model FLOPs of one training step
   (forward + backward) are counted once with ``torch.utils.flop_counter.FlopCounterMode``; MFU = FLOPs /
   step time / the device's dense bf16 peak (``PEAK_BF16_TFLOPS``, matched on the device name; null when
   unknown, or give ``--peak_tflops``). Benchmark-only settings: the adversarial loss is on from the first
   step, the diffusion EMA updates from the first step, PattenNet's encoder keeps its initial weights
   (``encoder_checkpoint: null``), the classifiers use ``pos_weight`` 1 and the ControlNet sits on a
   freshly built diffusion UNet.
2. **One short ``neonet fit`` per stage** through the real CLI (``python -m neonet fit --config
   experiments/paper/<stage>.yaml`` + overrides) on a small phantom of paper-shaped volumes written by
   ``neonet synth`` into a temporary experiment: fold 0, one epoch of ``--fit_batches`` batches, one
   validation batch, ``bf16-mixed`` on GPU. TLCR patches come from ``neonet crop --source manual``; the
   autoencoder runs through ``neonet cv --folds 0`` so that its latent cache (for the diffusion model and
   the ControlNet) is written as in the protocol. A stage whose upstream failed is skipped.
3. **Projection** of the full paper protocol (``--folds`` from the configs, their ``max_epochs``, batch
   sizes, inner validation fraction and latent-cache settings, a cohort of ``--cohort_cases`` patients of
   which ``--cohort_pni`` PNI+): training steps x the measured bf16 step time. Validation, sliding-window
   inference, the latent cache, synthesis and data loading are not in it.

The step measurement runs in worker processes (``benchmarks/gpu_check_step.py``). A global ``--budget_s``
covers everything: work that no longer fits is skipped with a note, and a stage
that fails is recorded with its message without stopping the others. ``gpu_check.json`` and
``gpu_check.md`` are written to ``--out``.

Usage::

    python benchmarks/gpu_check.py                          # one GPU, paper configs, 450 s budget
    python benchmarks/gpu_check.py --stages seg diffusion --fits   # two stages, no CLI fits
    python benchmarks/gpu_check.py --device cpu --tiny      # shrunk networks and inputs, CPU (the tests)
    make gpu-check ARGS="--device cpu --tiny"
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from gpu_check_step import STAGES, TINY_CROP, stage_overrides

REPO = Path(__file__).resolve().parents[1]
STEP_SCRIPT = Path(__file__).resolve().with_name("gpu_check_step.py")
log = logging.getLogger("gpu_check")

#: Stages whose fit needs another stage's fold-0 results first (all need TLCR patches except NeoSeg).
NEEDS: dict[str, tuple[str, ...]] = {"diffusion": ("autoencoder",), "controlnet": ("diffusion",), "pattennet": ("autoencoder",)}
#: The paper protocol: (row, measured stage, trained on real + synthetic patches). SwinUNETR is a variant, not in it.
PROTOCOL: list[tuple[str, str, bool]] = [
    ("seg", "seg", False),
    ("autoencoder", "autoencoder", False),
    ("diffusion", "diffusion", False),
    ("controlnet", "controlnet", False),
    ("pattennet", "pattennet", False),
    ("pattennet_syn", "pattennet", True),
    *[(f"{n}{s}", n, s == "_syn") for n in ("resnet18", "densenet121", "seresnet50") for s in ("", "_syn")],
]
PRECISIONS = ("fp32", "bf16-mixed")
#: Dense (no sparsity) bf16 tensor-core peak in TFLOP/s from the vendors' data sheets, by device name
#: (``torch.cuda.get_device_name``); the first pattern that matches wins.
PEAK_BF16_TFLOPS: list[tuple[str, float]] = [
    (r"GH200", 989.4),
    (r"H200", 989.4),
    (r"H100.*PCIe", 756.0),
    (r"H100.*NVL", 835.0),
    (r"H100", 989.4),  # SXM (HBM3)
    (r"B200", 2250.0),
    (r"A100", 312.0),
    (r"L40S", 362.05),
    (r"L40\b", 181.05),
    (r"\bL4\b", 121.0),
    (r"\bA10\b", 125.0),
    (r"RTX A6000", 154.8),
    (r"RTX 4090", 165.2),
]

#: The phantom of the CLI fits: the full-size one fits the paper's NeoSeg patches (160x160x48 and 160x160x64 at
#: 1.5625 x 1.5625 x 4 mm), the ``--tiny`` one the shrunk configs.
PHANTOM = {
    "tiny": {"shape": [48, 48, 32], "spacing": [3.5, 3.5, 6.0]},
    "full": {"shape": [176, 176, 64], "spacing": [1.5625, 1.5625, 4.0]},
}


def peak_bf16_tflops(device_name: str | None) -> float | None:
    """The dense bf16 peak of a device by its name (``PEAK_BF16_TFLOPS``), None when unknown."""
    for pattern, tflops in PEAK_BF16_TFLOPS:
        if device_name and re.search(pattern, device_name):
            return tflops
    return None


# ---------------------------------------------------------------------- orchestration (parent process)
class Budget:
    """The global time budget: seconds left overall and before a phase's own deadline."""

    def __init__(self, seconds: float) -> None:
        self.start = time.monotonic()
        self.end = self.start + seconds

    def left(self, until: float | None = None) -> float:
        return min(self.end, until or self.end) - time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start


def _env(threads: int | None = None) -> dict[str, str]:
    """Environment of the child processes: no W&B; ``threads`` CPU threads when given."""
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore", "PYTHONUNBUFFERED": "1"}
    return env | ({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else {})


def _kill(proc: subprocess.Popen[Any]) -> None:
    """End a child started in its own session and everything it started (its process group)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _spawn(
    cmd: list[str], threads: int | None
) -> tuple[subprocess.Popen[str], queue.Queue[str | None], list[str], threading.Thread]:
    """Start a worker in its own session: its stdout lines arrive in the queue (None at the end), its stderr in the
    list (complete once the returned reader thread has ended)."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(threads), start_new_session=True
    )
    lines: queue.Queue[str | None] = queue.Queue()
    stderr: list[str] = []

    def read_stdout() -> None:
        for line in proc.stdout or []:
            lines.put(line)
        lines.put(None)

    def read_stderr() -> None:
        stderr.extend(proc.stderr or [])

    threading.Thread(target=read_stdout, daemon=True).start()
    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    return proc, lines, stderr, reader


def measure(
    args: argparse.Namespace, budget: Budget, deadline: float, worker_cmd: list[str] | None = None
) -> dict[str, dict[str, Any]]:
    """Every stage's step measurement in worker processes (one per stage on GPU, one for all on CPU).

    ``worker_cmd`` is the worker's command line without its JSON spec (default: ``gpu_check_step.py``).
    A worker that dies or overruns the budget costs only the stage it was on; the rest go to a new worker.
    """
    results: dict[str, dict[str, Any]] = {}
    pending = list(args.stages)
    spec = {k: getattr(args, k) for k in ("device", "tiny", "precisions", "warmup", "steps", "threads")}
    while pending:
        if budget.left(deadline) < args.min_stage_s:
            for stage in pending:
                results[stage] = {
                    "stage": stage,
                    "skipped": f"time budget: {budget.left(deadline):.0f} s left for the measurements",
                }
                log.info("  %-13s skipped (time budget)", stage)
            break
        chunk = pending[:1] if args.device == "cuda" else list(pending)
        cmd = [
            *(worker_cmd or [sys.executable, str(STEP_SCRIPT)]),
            json.dumps({**spec, "stages": chunk}),
        ]
        proc, lines, stderr, stderr_reader = _spawn(cmd, args.threads)
        current, started = None, time.monotonic()
        while True:
            try:
                line = lines.get(timeout=max(budget.left(deadline), 0.1))
            except queue.Empty:
                _kill(proc)
                stage = current or pending[0]
                results[stage] = {"stage": stage, "error": f"stopped at the time budget after {time.monotonic() - started:.0f} s"}
                log.info("  %-13s stopped at the time budget", stage)
                pending.remove(stage)
                break
            if line is None:  # the worker ended: a crash leaves the stage it was on (or the next) without a result
                proc.wait()
                stderr_reader.join(timeout=10)
                stage = current or next((s for s in chunk if s in pending), None)
                if stage is not None:
                    tail = "".join(stderr)[-2000:].strip()
                    results[stage] = {"stage": stage, "error": f"worker exited with {proc.returncode}: {tail}"}
                    log.info("  %-13s FAILED (worker exited with %s)", stage, proc.returncode)
                    pending.remove(stage)
                break
            if line.startswith("START "):
                current, started = line.split()[1], time.monotonic()
            elif line.startswith("RESULT ") and current in pending:
                row = json.loads(line[len("RESULT ") :])
                results[current] = row
                pending.remove(current)
                log.info("  %s", _progress(row))
                current = None
    return results


def _progress(row: dict[str, Any]) -> str:
    if "error" in row:
        return f"{row['stage']:<13} FAILED: {row['error'].splitlines()[-1] if row['error'] else ''}"
    flops = f"{row['flops_per_step'] / 1e9:10.3g}" if row["flops_per_step"] else "  no count"
    parts = [f"{row['stage']:<13} batch {row['batch']:>3}  {flops} GFLOP/step"]
    for p, m in row["precisions"].items():
        if "error" in m:
            parts.append(f"{p}: FAILED")
        else:
            mem = f", {m['peak_memory_mb']:.0f} MB" if m.get("peak_memory_mb") is not None else ""
            parts.append(f"{p}: {m['step_s']:.4f} s/step, {m['samples_per_s']:.1f} samples/s{mem}")
    return "  ".join(parts)


# ---------------------------------------------------------------------- the short CLI fits
def _run(cmd: list[str], log_path: Path, timeout: float, threads: int | None) -> dict[str, Any]:
    """Run a neonet command (its own session), its output to ``log_path``; status, seconds, message."""
    start = time.monotonic()
    with open(log_path, "w") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, text=True, env=_env(threads), cwd=REPO, start_new_session=True
        )
        try:
            proc.wait(timeout=max(timeout, 1.0))
        except subprocess.TimeoutExpired:
            _kill(proc)
            return {
                "status": "failed",
                "seconds": time.monotonic() - start,
                "message": f"stopped at the time budget ({timeout:.0f} s)",
            }
    seconds = time.monotonic() - start
    if proc.returncode == 0:
        return {"status": "ok", "seconds": seconds}
    tail = log_path.read_text(errors="replace").strip().splitlines()[-15:]
    return {"status": "failed", "seconds": seconds, "message": f"exit code {proc.returncode}: " + "\n".join(tail)}


def _display(cmd: list[str], tmp: Path) -> str:
    """The command as a user would type it (``python -m neonet``, temporary paths as ``$TMP``)."""
    text = " ".join(cmd[1:] if cmd[0] == sys.executable else cmd).replace(str(tmp), "$TMP")
    return "python " + text


def fits(args: argparse.Namespace, budget: Budget) -> dict[str, Any]:
    """Phantom, TLCR patches, then one short fit per stage through the real CLI (fold 0)."""
    needed = set(args.fits)
    for _ in STAGES:  # with every upstream stage, fitted first (it comes earlier in STAGES)
        needed.update(n for s in list(needed) for n in NEEDS.get(s, ()))
    order = [s for s in STAGES if s in needed]
    out: dict[str, Any] = {"stages": {}, "setup": {}}
    if not order:
        return out
    py = [sys.executable, "-m", "neonet"]
    size = "tiny" if args.tiny else "full"
    accel = ["--trainer.accelerator=gpu" if args.device == "cuda" else "--trainer.accelerator=cpu", "--trainer.devices=1"]
    precision = "bf16-mixed" if args.device == "cuda" else "32-true"
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp_name:
        tmp = Path(tmp_name)
        logs = args.out / "fit_logs"
        logs.mkdir(parents=True, exist_ok=True)
        runs, cases = tmp / "runs", tmp / "data" / "cases.csv"
        phantom = PHANTOM[size]
        synth = [*py, "synth", "--out", str(tmp / "data"), "--cases", str(args.fit_cases), "--seed", "0"]
        synth += ["--workers", str(args.threads or min(8, os.cpu_count() or 1))]
        synth += ["--shape", ",".join(map(str, phantom["shape"])), "--spacing", ",".join(map(str, phantom["spacing"]))]
        crop = [*py, "crop", "--config", "experiments/paper/crop.yaml", "--cases", str(cases), "--experiment", "gpucheck"]
        crop += ["--runs_dir", str(runs), "--source", "manual"]
        if args.tiny:
            crop += [
                "--patch_size",
                ",".join(map(str, TINY_CROP["patch_size"])),
                "--spacing",
                ",".join(map(str, TINY_CROP["spacing"])),
            ]
        for name, cmd in (("synth", synth), ("crop", crop)):
            if name == "crop" and all(s.startswith("seg") for s in order):
                continue  # NeoSeg alone needs no patches
            if budget.left() < args.min_fit_s:
                out["setup"][name] = {"status": "skipped", "message": "time budget"}
                break
            log.info("  %-13s %s", name, _display(cmd, tmp))
            out["setup"][name] = {**_run(cmd, logs / f"{name}.log", budget.left(), args.threads), "command": _display(cmd, tmp)}
        setup_ok = all(r["status"] == "ok" for r in out["setup"].values())
        for stage in order:
            common = [
                f"--data.init_args.cases={cases}",
                f"--data.init_args.runs_dir={runs}",
                f"--data.init_args.experiment={'gpucheck-swin' if stage == 'seg_swinunetr' else 'gpucheck'}",
                "--trainer.max_epochs=1",
                f"--trainer.limit_train_batches={args.fit_batches}",
                "--trainer.limit_val_batches=1",
                "--trainer.check_val_every_n_epoch=1",
                f"--trainer.precision={precision}",
                "--trainer.enable_progress_bar=false",
                *accel,
                *stage_overrides(stage, args.tiny),
                *(["--data.init_args.num_workers=0"] if args.tiny else []),
            ]
            config = ["--config", f"experiments/paper/{STAGES[stage]}"]
            if stage == "autoencoder":  # through cv: its after_fold hook writes the latent cache
                cmd = [*py, "cv", *config, "--folds", "0", "--summary", "false", "--", *common]
            else:
                cmd = [*py, "fit", *config, "--data.init_args.fold=0", *common]
            missing = [n for n in NEEDS.get(stage, ()) if out["stages"].get(n, {}).get("status") != "ok"]
            if not setup_ok:
                row = {"status": "skipped", "message": "the phantom or its TLCR patches were not made (see setup)"}
            elif missing:
                row = {"status": "skipped", "message": f"needs {', '.join(missing)} (not ok)"}
            elif budget.left() < args.min_fit_s:
                row = {"status": "skipped", "message": f"time budget: {budget.left():.0f} s left"}
            else:
                row = _run(cmd, logs / f"{stage}.log", budget.left(), args.threads)
            out["stages"][stage] = {**row, "command": _display(cmd, tmp), "log": str(Path("fit_logs") / f"{stage}.log")}
            detail = f"{row.get('seconds', 0):.1f} s" if row["status"] != "skipped" else row["message"]
            log.info("  %-13s fit %s (%s)", stage, row["status"], detail)
            if row["status"] == "failed":
                log.info("%s", row.get("message", ""))
    return out


# ---------------------------------------------------------------------- projection and report
def project(stages: dict[str, dict[str, Any]], cases: int, pni: int) -> dict[str, Any]:
    """Training time of the full protocol from the measured step times (bf16-mixed, else fp32)."""
    rows, total, complete = [], 0.0, True
    for name, stage, synthetic in PROTOCOL + [("seg_swinunetr (variant)", "seg_swinunetr", False)]:
        res = stages.get(stage, {})
        step = {p: m.get("step_s") for p, m in res.get("precisions", {}).items()}
        precision = next((p for p in ("bf16-mixed", "fp32") if step.get(p)), None)
        if precision is None:
            rows.append({"run": name, "stage": stage, "seconds": None, "note": "no step time measured"})
            complete = complete and name.endswith("(variant)")
            continue
        f = res["projection"]
        train = round(cases * (f["folds"] - 1) / f["folds"] * (1 - f["val_fraction"]))
        items = train * f.get("latent_items_per_case", 1)
        if synthetic:  # the fold's training set filled with synthetic PNI+ patches to 1:1
            items = 2 * round(train * (cases - pni) / cases)
        steps = math.ceil(items / f["batch_size"]) * int(f["max_epochs"]) * f["folds"]
        seconds = steps * float(step[precision])
        row = {"run": name, "stage": stage, "precision": precision, "folds": f["folds"], "epochs": f["max_epochs"]}
        row |= {"train_items_per_fold": items, "batch_size": f["batch_size"], "steps": steps, "seconds": seconds}
        rows.append(row)
        if not name.endswith("(variant)"):
            total += seconds
    return {
        "cohort_cases": cases,
        "cohort_pni": pni,
        "rows": rows,
        "total_seconds": total,
        "total_hours": total / 3600,
        "complete": complete,
        "not_included": "validation, sliding-window inference and out-of-fold masks, TLCR, the latent cache, "
        "synthesis, data loading (the step times are of in-memory batches)",
    }


def _fmt(value: Any, spec: str, none: str = "-") -> str:
    return none if value is None else format(value, spec)


def markdown(result: dict[str, Any]) -> str:
    """The markdown table of the result."""
    peak = result["peak_bf16_tflops"]
    lines = [
        f"# GPU check: {result['device_name'] or result['device']}",
        "",
        f"{'tiny (shrunk) networks' if result['tiny'] else 'experiments/paper configs'}; peak bf16 "
        f"{_fmt(peak, '.1f', 'unknown')} TFLOP/s; {result['elapsed_s']:.0f} s of a {result['budget_s']:.0f} s budget; "
        f"torch {result['versions']['torch']}",
        "",
        "| stage | batch | GFLOP/step | fp32 s/step | bf16 s/step | fp32 samples/s | bf16 samples/s | fp32 peak MB "
        "| bf16 peak MB | MFU fp32 | MFU bf16 | CLI fit |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for stage in STAGES:
        row = result["stages"].get(stage)
        fit = result["fits"]["stages"].get(stage, {})
        fit_text = f"{fit['status']}" + (f" ({fit['seconds']:.0f} s)" if fit.get("seconds") is not None else "") if fit else "-"
        if row is None:
            continue
        if "error" in row or "skipped" in row:
            lines.append(f"| {stage} | | | {'failed' if 'error' in row else 'skipped'} | | | | | | | | {fit_text} |")
            continue
        p = {k: row["precisions"].get(k, {}) for k in PRECISIONS}
        cells = [
            stage,
            str(row["batch"]),
            _fmt(row["flops_per_step"] and row["flops_per_step"] / 1e9, ".3g", "failed"),
            _fmt(p["fp32"].get("step_s"), ".4f", "failed" if "error" in p["fp32"] else "-"),
            _fmt(p["bf16-mixed"].get("step_s"), ".4f", "failed" if "error" in p["bf16-mixed"] else "-"),
            _fmt(p["fp32"].get("samples_per_s"), ".1f"),
            _fmt(p["bf16-mixed"].get("samples_per_s"), ".1f"),
            _fmt(p["fp32"].get("peak_memory_mb"), ".0f"),
            _fmt(p["bf16-mixed"].get("peak_memory_mb"), ".0f"),
            _fmt(p["fp32"].get("mfu"), ".3f"),
            _fmt(p["bf16-mixed"].get("mfu"), ".3f"),
            fit_text,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    proj = result["projection"]
    lines += ["", "Projected training time of the paper protocol (5 folds, the configs' epochs; training steps only):", ""]
    lines += ["| run | precision | steps | hours |", "|---|---|---:|---:|"]
    for r in proj["rows"]:
        lines.append(
            f"| {r['run']} | {r.get('precision', '-')} | {r.get('steps', '-')} "
            f"| {_fmt(r['seconds'] and r['seconds'] / 3600, '.2f')} |"
        )
    lines.append(
        f"| **total** (SwinUNETR variant not counted) | | | **{proj['total_hours']:.2f}**"
        f"{'' if proj['complete'] else ' (incomplete)'} |"
    )
    lines += ["", f"Not included: {proj['not_included']}."]
    if result["notes"]:
        lines += ["", "Notes:", *[f"- {n}" for n in result["notes"]]]
    failures = [(s, r.get("error") or r.get("flops_error")) for s, r in result["stages"].items()]
    failures += [
        (f"{s} {p}", m["error"]) for s, r in result["stages"].items() for p, m in r.get("precisions", {}).items() if "error" in m
    ]
    failures += [(f"fit {s}", r["message"]) for s, r in result["fits"]["stages"].items() if r["status"] == "failed"]
    failures += [(s, r["message"]) for s, r in result["fits"]["setup"].items() if r["status"] == "failed"]
    if any(message for _, message in failures):
        lines += ["", "Failures (whole messages in gpu_check.json and fit_logs/):"]
        lines += [f"- {what}: {message.strip().splitlines()[-1][:300]}" for what, message in failures if message]
    return "\n".join(lines) + "\n"


def versions() -> dict[str, str]:
    """Library versions, read without importing torch in this process (no CUDA context here)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "lightning", "monai"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "missing"
    return out


def _rel(path: Path) -> str:
    """A path as the results name it: relative to the repository when inside it, else its name only."""
    path = path.resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else path.name


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole check: measurements, CLI fits, projection; every failure recorded, never raised."""
    budget = Budget(args.budget_s)
    notes: list[str] = []
    log.info("step measurements (%s, %s):", args.device, "tiny" if args.tiny else "paper configs")
    measure_share = args.measure_share if args.fits else 1.0
    stages = measure(args, budget, budget.start + measure_share * args.budget_s)
    device_name = next((r["device_name"] for r in stages.values() if r.get("device_name")), None)
    peak = args.peak_tflops or peak_bf16_tflops(device_name)
    if args.device == "cuda" and peak is None:
        notes.append(f"no bf16 peak known for {device_name!r}: MFU is null (give --peak_tflops)")
    for row in stages.values():
        for m in row.get("precisions", {}).values():
            if "step_s" in m:
                m["mfu"] = m["tflops_per_s"] / peak if peak and m["tflops_per_s"] else None
    log.info("short neonet fits through the CLI (fold 0, %d batches):", args.fit_batches)
    fit_results = fits(args, budget)
    notes += [f"{stage}: {row['skipped']}" for stage, row in stages.items() if row.get("skipped")]
    notes += [f"fit {s}: {row['message']}" for s, row in fit_results["stages"].items() if row["status"] == "skipped"]
    result = {
        "device": args.device,
        "device_name": device_name,
        "tiny": args.tiny,
        "peak_bf16_tflops": peak,
        "peak_source": "--peak_tflops" if args.peak_tflops else "PEAK_BF16_TFLOPS (dense bf16, vendor data sheets)",
        "versions": versions(),
        "settings": {k: (_rel(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "stages": stages,
        "fits": fit_results,
        "projection": project(stages, args.cohort_cases, args.cohort_pni),
        "notes": notes,
    }
    result["elapsed_s"] = budget.elapsed()
    result["budget_s"] = args.budget_s
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--device", choices=["cuda", "cpu"], default="cuda", help="cuda (default; one GPU) or cpu")
    add("--tiny", action="store_true", help="shrunk networks, inputs and phantom (CPU smoke run: one timed step per precision)")
    add("--stages", nargs="*", choices=list(STAGES), default=list(STAGES), help="stages to measure (default: all)")
    add(
        "--fits",
        nargs="*",
        choices=list(STAGES),
        default=None,
        help="stages to fit through the CLI (default: --stages; none: `--fits`)",
    )
    add("--precisions", nargs="+", choices=list(PRECISIONS), default=list(PRECISIONS))
    add(
        "--warmup",
        type=int,
        default=None,
        help="untimed steps per precision (default 3; 0 with --tiny, where the FLOP count warms up)",
    )
    add("--steps", type=int, default=None, help="timed steps per precision (default 10; 1 with --tiny)")
    add("--budget_s", type=float, default=450.0, help="global time budget in seconds; work that no longer fits is skipped")
    add("--measure_share", type=float, default=0.55, help="share of the budget the measurements may use before the fits")
    add("--min_stage_s", type=float, default=None, help="skip a measurement with less time left (default 20 s; 2 with --tiny)")
    add("--min_fit_s", type=float, default=None, help="skip a fit with less time left (default 25 s; 2 with --tiny)")
    add("--fit_batches", type=int, default=2, help="training batches of each CLI fit")
    add("--fit_cases", type=int, default=20, help="cases of the fit phantom (5 folds need PNI+ cases in each)")
    add("--cohort_cases", type=int, default=128, help="cohort size of the projection (the paper's 128)")
    add("--cohort_pni", type=int, default=44, help="PNI+ cases of the projection's cohort (the paper's 44)")
    add("--peak_tflops", type=float, default=None, help="dense bf16 peak of the device in TFLOP/s (else from the table)")
    add("--threads", type=int, default=None, help="CPU threads of every child process (default: torch's; 1 with --tiny)")
    add("--out", type=Path, default=REPO / "benchmarks" / "results" / "gpu_check", help="folder of gpu_check.json/.md")
    args = parser.parse_args(argv)
    args.fits = list(args.stages) if args.fits is None else args.fits
    args.warmup = args.warmup if args.warmup is not None else (0 if args.tiny else 3)
    args.steps = args.steps or (1 if args.tiny else 10)
    args.threads = args.threads or (1 if args.tiny else None)
    args.min_stage_s = args.min_stage_s if args.min_stage_s is not None else (2.0 if args.tiny else 20.0)
    args.min_fit_s = args.min_fit_s if args.min_fit_s is not None else (2.0 if args.tiny else 25.0)
    if args.device == "cuda" and not _cuda_available():
        parser.error("--device cuda: no CUDA device is visible here (use --device cpu --tiny for the CPU smoke run)")
    return args


def _cuda_available() -> bool:
    """Whether a CUDA device is visible, asked in a child process (this one keeps no CUDA context)."""
    code = "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"
    return subprocess.run([sys.executable, "-c", code], env=_env()).returncode == 0


def write(result: dict[str, Any], out: Path) -> None:
    """``gpu_check.json`` and ``gpu_check.md`` in ``out`` (atomic writes)."""
    from neonet.run.atomic import write_json, write_text

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "gpu_check.json", result)
    write_text(out / "gpu_check.md", markdown(result))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level="INFO", format="%(message)s", stream=sys.stdout)
    result = run(args)
    write(result, args.out)
    log.info("\n%s", markdown(result))
    log.info("written to %s and %s", args.out / "gpu_check.json", args.out / "gpu_check.md")


if __name__ == "__main__":
    main()
