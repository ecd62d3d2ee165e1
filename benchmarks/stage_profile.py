"""Where one fold of each demo stage spends its time: start-up, data, forward, backward, optimizer, validation, ...

For each stage the script runs ``neonet cv --folds <fold>`` (the fit, then the stage's ``after_fold`` work: NeoSeg's
out-of-fold masks in a ``neonet predict`` process, the autoencoder's latent cache) with Lightning's
``SimpleProfiler`` on a scratch copy of an existing experiment (hard links where the filesystem allows; the stage's
own folder and what it writes downstream are left out, so nothing of the source experiment is touched), and splits
the fold's wall time into:

- ``startup``: the fit process outside its trainer (interpreter, imports, config parsing, model build before it;
  ``wandb.finish`` and exit after it), i.e. the fit's wall time minus the profiler's total;
- ``data_setup``: the DataModule's ``setup`` (for NeoSeg: preprocessing and caching the fold's volumes);
- ``data``: waiting for training batches (``train_dataloader_next``, batch transfer);
- ``forward``: the strategy's ``training_step`` (forward, loss, ``self.log``; for a manually optimised module such as
  the autoencoder also its backward and optimizer steps, which Lightning does not profile separately);
- ``backward``, ``optimizer`` (``optimizer_step`` less the closure's forward and backward, plus ``zero_grad``);
- ``validation`` (every action of the validation loop), ``checkpoint`` (``ModelCheckpoint``), ``callbacks``
  (the other callbacks: progress, learning-rate monitor, neonet's CSV and progress files), ``hooks`` (the module's
  own epoch hooks), ``other`` (setup, teardown, the logger's first use and ``wandb.finish``: the profiler's total
  less everything above);
- ``driver``: the ``neonet cv`` process itself before it starts the fit (interpreter, imports, config resolution);
- ``after_fold``: the rest of the ``neonet cv`` call after the fit (NeoSeg's predict process, the latent cache).

Two process-level figures are measured apart: importing what ``neonet fit`` imports in a fresh interpreter, and
``wandb.init`` + ``finish`` in offline mode (what each fold's W&B run costs before any metric is logged).

Run (one fold per stage, on a hard-link copy of a finished demo)::

    OMP_NUM_THREADS=1 python benchmarks/stage_profile.py --runs_dir runs --experiment demo \
        --stages seg autoencoder diffusion controlnet --out benchmarks/results/stage_profile

Extra ``neonet fit`` options for every stage go after ``--`` (e.g. ``-- --trainer.log_every_n_steps=1``); ``--epochs seg=3``
shortens one stage's fit. It prints a
markdown table and writes ``<out>.json`` and ``<out>.md``. It measures, it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

#: stage -> (config file, folders of the experiment that the stage writes: left out of the scratch copy)
STAGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "seg": ("seg.yaml", ("seg",)),
    "autoencoder": ("autoencoder.yaml", ("autoencoder", "latents")),
    "diffusion": ("diffusion.yaml", ("diffusion",)),
    "controlnet": ("controlnet.yaml", ("controlnet",)),
    "pattennet": ("pattennet.yaml", ("pattennet",)),
    "resnet18": ("baseline_resnet18.yaml", ("resnet18",)),
}
CATEGORIES = (
    "startup",
    "data_setup",
    "data",
    "forward",
    "backward",
    "optimizer",
    "validation",
    "checkpoint",
    "callbacks",
    "hooks",
    "other",
    "driver",
    "after_fold",
)
IMPORTS = "import lightning.pytorch, monai.networks.nets, torchio, wandb, neonet.run.cli, neonet.run.lightning_cli"


def parse_simple_profile(text: str) -> dict[str, dict[str, float]]:
    """Rows of a ``SimpleProfiler`` report (extended): action -> {mean_s, calls, total_s}; ``Total`` included."""
    rows: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("|")]
        cells = [c for c in cells if c]
        if len(cells) != 5 or cells[0] == "Action":
            continue
        try:
            rows[cells[0]] = {
                "mean_s": float(cells[1]) if cells[1] != "-" else float("nan"),
                "calls": float(cells[2]),
                "total_s": float(cells[3]),
            }
        except ValueError:
            continue
    return rows


def categorise(rows: dict[str, dict[str, float]]) -> dict[str, float]:
    """Seconds per category (see the module docstring) from a fit's profiler rows; ``total`` is the profiler's."""

    def total(pred: Any) -> float:
        return sum(r["total_s"] for a, r in rows.items() if a != "Total" and pred(a))

    out = dict.fromkeys(CATEGORIES[1:-2], 0.0)
    out["data_setup"] = total(lambda a: a.startswith("[LightningDataModule]") and a.endswith(".setup"))
    out["data"] = total(lambda a: "train_dataloader_next" in a or ("batch_to_device" in a and "val" not in a))
    out["forward"] = total(lambda a: a.startswith("[Strategy]") and a.endswith(".training_step"))
    out["backward"] = total(lambda a: a.startswith("[Strategy]") and a.endswith(".backward"))
    step = total(lambda a: a.startswith("[LightningModule]") and a.endswith(".optimizer_step"))
    zero = total(lambda a: a.endswith(".optimizer_zero_grad"))
    # the closure (training_step + backward) runs inside optimizer_step when Lightning optimises
    out["optimizer"] = (max(0.0, step - out["forward"] - out["backward"]) if step else 0.0) + zero
    out["validation"] = total(
        lambda a: ("validation" in a or "val_next" in a) and "ModelCheckpoint" not in a and not a.startswith("[Callback]")
    )
    out["checkpoint"] = total(lambda a: "ModelCheckpoint" in a or a.endswith("save_checkpoint"))
    out["callbacks"] = total(lambda a: a.startswith("[Callback]") and "ModelCheckpoint" not in a)
    out["hooks"] = total(
        lambda a: (
            a.startswith("[LightningModule]")
            and not a.endswith((".optimizer_step", ".optimizer_zero_grad"))
            and "validation" not in a
        )
    )
    prof_total = rows.get("Total", {}).get("total_s", 0.0)
    epochs = rows.get("run_training_epoch", {})
    # run_training_epoch wraps the epoch's training batches and, at its end, validation and checkpointing
    out["other"] = max(0.0, prof_total - sum(out.values()))
    out["profiler_total"] = prof_total
    out["epochs"] = epochs.get("calls", 0.0)
    out["epoch_mean_s"] = epochs.get("mean_s", float("nan"))
    out["train_steps"] = rows.get("run_training_batch", {}).get("calls", 0.0)
    out["step_mean_s"] = rows.get("run_training_batch", {}).get("mean_s", float("nan"))
    return out


def scratch_copy(src: Path, dst: Path, leave_out: tuple[str, ...]) -> None:
    """``src`` (an experiment folder) at ``dst`` by hard links (copies across filesystems), without ``leave_out``."""

    def link(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=link, ignore=lambda d, names: [n for n in names if Path(d) == src and n in leave_out])


def timed(cmd: list[str], env: dict[str, str], log: Path) -> tuple[float, float, int, str]:
    """Run ``cmd``; its start (epoch seconds), wall time, exit code and output (also written to ``log``)."""
    start, t0 = time.time(), time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    wall = time.perf_counter() - t0
    log.write_text(proc.stdout)
    return start, wall, proc.returncode, proc.stdout


def log_time(out: str, pattern: str, start: float) -> float | None:
    """Seconds from ``start`` to the first log line matching ``pattern`` (neonet's ``HH:MM:SS`` local time stamps)."""
    m = re.search(r"^(\d\d):(\d\d):(\d\d) .*" + pattern, out, re.M)
    if not m:
        return None
    day = time.localtime(start)
    stamp = time.mktime((day.tm_year, day.tm_mon, day.tm_mday, int(m[1]), int(m[2]), int(m[3]), 0, 0, -1))
    return (stamp - start) % 86400


def process_costs(env: dict[str, str], repeats: int) -> dict[str, float]:
    """Median seconds of a fresh interpreter importing what a fit imports, and of an offline ``wandb.init`` + ``finish``."""
    import statistics

    imports, wandb = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeats):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", IMPORTS], env=env, check=True, capture_output=True)
            imports.append(time.perf_counter() - t)
            code = (
                "import time, wandb; t = time.perf_counter(); "
                f"r = wandb.init(mode='offline', dir={tmp!r}, project='profile'); r.log({{'x': 1}}); r.finish(); "
                "print(time.perf_counter() - t)"
            )
            out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True).stdout
            wandb.append(float(out.strip().splitlines()[-1]))
    return {"imports_s": statistics.median(imports), "wandb_init_finish_s": statistics.median(wandb)}


def profile_stage(stage: str, args: argparse.Namespace, extra: list[str], work: Path, env: dict[str, str]) -> dict[str, Any]:
    """One fold of ``stage`` through ``neonet cv`` with the profiler: categories, epochs, wall times."""
    config, leave_out = STAGES[stage]
    runs = work / stage / "runs"
    scratch_copy(Path(args.runs_dir) / args.experiment, runs / args.experiment, leave_out)
    prof = work / stage / "profile"
    overrides = [
        f"--data.runs_dir={runs}",
        f"--data.experiment={args.experiment}",
        "--trainer.profiler=SimpleProfiler",
        f"--trainer.profiler.dirpath={prof}",
        "--trainer.profiler.filename=profile",
        *([f"--trainer.max_epochs={args.epochs[stage]}"] if stage in args.epochs else []),
        *extra,
    ]
    cmd = [sys.executable, "-m", "neonet", "cv", "--config", str(Path(args.configs) / config), "--folds", str(args.fold)]
    cmd += ["--summary", "false", "--", *overrides]
    start, wall, rc, out = timed(cmd, env, work / f"{stage}.log")
    row: dict[str, Any] = {"stage": stage, "config": str(Path(args.configs) / config), "rc": rc, "cv_wall_s": wall}
    if rc != 0:
        row["error"] = out[-2000:]
        return row
    fit_s = re.search(r"fit done in (\d+) s", out)
    fit_wall = float(fit_s.group(1)) if fit_s else float("nan")
    rows = parse_simple_profile((prof / "fit-profile.txt").read_text())
    cats = categorise(rows)
    cats["startup"] = max(0.0, fit_wall - cats["profiler_total"])
    fit_start = log_time(out, rf"fold {args.fold}: neonet fit", start)
    cats["driver"] = fit_start if fit_start is not None else float("nan")
    cats["after_fold"] = max(0.0, wall - fit_wall - cats["driver"])
    predict = prof / "predict-profile.txt"
    if predict.exists():
        p = parse_simple_profile(predict.read_text())
        row["predict_profile"] = {
            "total_s": p.get("Total", {}).get("total_s"),
            "predict_step_s": sum(r["total_s"] for a, r in p.items() if a.endswith(".predict_step")),
            "writer_s": sum(r["total_s"] for a, r in p.items() if "Writer" in a),
            "data_s": sum(r["total_s"] for a, r in p.items() if "predict_next" in a or "dataloader_next" in a),
        }
    row.update(fit_wall_s=fit_wall, **cats, actions=rows)
    if not args.keep:
        shutil.rmtree(runs, ignore_errors=True)
    return row


def latent_cache_costs(configs: Path, batches: list[int], repeats: int) -> list[dict[str, Any]]:
    """Part of a diffusion training step that the latent cache saves: the frozen encoder's forward (``encode`` and a
    posterior sample, no gradient) against the UNet's training step (noise, forward, MSE, backward, AdamW, EMA) on
    the latents of ``configs``' autoencoder and diffusion configs, for each batch size (medians of ``repeats`` after
    one warm-up). Encoding on the fly costs encoder + step per step, the cache the step alone."""
    import statistics

    import torch

    from neonet.gen.common import autoencoder_factor
    from neonet.run.lightning_cli import instantiate_stage_config

    ae_module, _, _ = instantiate_stage_config([configs / "autoencoder.yaml"])
    crop = yaml_load(configs / "crop.yaml")
    patch = tuple(int(p) for p in crop["patch_size"])
    encoder = ae_module.autoencoder.eval().requires_grad_(False)
    diffusion, _, _ = instantiate_stage_config([configs / "diffusion.yaml"], ["--model.init_args.ema_start_step=-1"])
    diffusion.scale_factor.fill_(1.0)
    optimizer = torch.optim.AdamW(diffusion.unet.parameters(), lr=1e-4)
    factor = autoencoder_factor(encoder)

    def median_time(fn: Any) -> float:
        fn()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    rows = []
    for batch in batches:
        images = torch.rand(batch, 1, *patch)
        pni = torch.arange(batch) % 2

        def encode(images: torch.Tensor = images) -> torch.Tensor:
            with torch.no_grad():
                mu, sigma = encoder.encode(images)
                return mu + sigma * torch.randn_like(sigma)

        z = encode()

        def step(z: torch.Tensor = z, pni: torch.Tensor = pni) -> None:
            pred, target, _ = diffusion.noisy_step(z * diffusion.scale_factor, pni, 0.1)
            loss = torch.nn.functional.mse_loss(pred, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if diffusion.ema is not None:
                diffusion.ema.update_parameters(diffusion.unet)

        enc, unet = median_time(encode), median_time(step)
        rows.append(
            {
                "configs": str(configs),
                "patch": list(patch),
                "latent": list(z.shape[1:]),
                "autoencoder_downsampling": factor,
                "batch": batch,
                "encoder_forward_s": enc,
                "unet_step_s": unet,
                "encoder_share_on_the_fly": enc / (enc + unet),
                "cache_speedup": (enc + unet) / unet,
            }
        )
        print(
            f"latent cache, {configs.name} batch {batch}: encoder {enc:.3f} s, UNet step {unet:.3f} s -> "
            f"cache {(enc + unet) / unet:.2f}x",
            flush=True,
        )
    return rows


def yaml_load(path: Path) -> Any:
    """A YAML file's content."""
    import yaml

    return yaml.safe_load(path.read_text())


def table(result: dict[str, Any]) -> str:
    """The per-stage breakdown as markdown (seconds, share of the fold's cv wall time in brackets)."""
    head = ["stage", "cv wall s", *CATEGORIES, "epochs", "s/epoch", "train steps", "s/step"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["stages"]:
        if r.get("rc"):
            lines.append(f"| {r['stage']} | failed (rc {r['rc']}) |" + " |" * (len(head) - 2))
            continue
        wall = r["cv_wall_s"]
        cells = [r["stage"], f"{wall:.1f}"]
        cells += [f"{r[c]:.1f} ({100 * r[c] / wall:.0f} %)" for c in CATEGORIES]
        cells += [f"{r['epochs']:.0f}", f"{r['epoch_mean_s']:.2f}", f"{r['train_steps']:.0f}", f"{r['step_mean_s']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    if result.get("latent_cache"):
        lines += ["", "| configs | batch | patch -> latent | encoder forward s | UNet step s | encoder share | cache speed-up |"]
        lines.append("|---|---|---|---|---|---|---|")
        for r in result["latent_cache"]:
            shape = "x".join(map(str, r["patch"])) + " -> " + "x".join(map(str, r["latent"]))
            lines.append(
                f"| {Path(r['configs']).name} | {r['batch']} | {shape} | {r['encoder_forward_s']:.3f} | "
                f"{r['unet_step_s']:.3f} | {100 * r['encoder_share_on_the_fly']:.0f} % | {r['cache_speedup']:.2f}x |"
            )
    pc = result.get("process")
    if not pc:
        return "\n".join(lines)
    lines.append("")
    lines.append(
        f"Fresh interpreter importing a fit's libraries: {pc['imports_s']:.2f} s; offline `wandb.init` + `finish`: "
        f"{pc['wandb_init_finish_s']:.2f} s (medians). Load average before / after: {result['load_before']} / "
        f"{result['load_after']}."
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs_dir", default="runs", help="runs folder holding the finished experiment to copy")
    p.add_argument("--experiment", default="demo")
    p.add_argument("--configs", default="experiments/demo", help="folder of the stage configs")
    p.add_argument("--stages", nargs="*", default=["seg", "autoencoder", "diffusion", "controlnet"], choices=list(STAGES))
    p.add_argument("--fold", type=int, default=0)
    p.add_argument(
        "--epochs",
        nargs="*",
        default=[],
        metavar="STAGE=N",
        help="shorter fits for the profile, e.g. seg=3 autoencoder=5 (keep one validation: a multiple of the config's "
        "check_val_every_n_epoch)",
    )
    p.add_argument("--repeats", type=int, default=3, help="repeats of the import, W&B and latent-cache measurements")
    p.add_argument(
        "--latent_cache",
        nargs="*",
        default=[],
        metavar="CONFIGS=BATCH,...",
        help="encoder forward vs diffusion UNet step per configs folder and batch sizes, e.g. "
        "experiments/demo=1,4,16 experiments/paper=1 (no stage is profiled unless --stages is given too)",
    )
    p.add_argument("--work", default=None, help="scratch folder (default: a temporary one, removed)")
    p.add_argument("--keep", action="store_true", help="keep each stage's scratch runs folder")
    p.add_argument("--out", default="benchmarks/results/stage_profile", help="writes <out>.json and <out>.md")
    args = p.parse_args(argv)
    args.epochs = {k: int(v) for k, v in (e.split("=", 1) for e in args.epochs)}
    return args, extra


def main(argv: list[str] | None = None) -> None:
    args, extra = parse_args(argv)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    env.setdefault("WANDB_MODE", "offline")
    env.setdefault("PYTHONPATH", str(REPO / "src"))
    if args.stages and not (Path(args.runs_dir) / args.experiment).is_dir():
        sys.exit(f"stage_profile: {Path(args.runs_dir) / args.experiment} not found: run `make demo` first (or give --runs_dir)")
    result: dict[str, Any] = {
        "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "omp_num_threads": env["OMP_NUM_THREADS"],
        "wandb_mode": env["WANDB_MODE"],
        "fold": args.fold,
        "extra_overrides": extra,
        "epochs": args.epochs,
        "load_before": " / ".join(f"{x:.2f}" for x in os.getloadavg()),
        "stages": [],
    }
    work_ctx = tempfile.TemporaryDirectory() if args.work is None else None
    work = Path(work_ctx.name if work_ctx else args.work)
    work.mkdir(parents=True, exist_ok=True)
    try:
        if args.latent_cache:
            import torch

            torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
            result["latent_cache"] = [
                row
                for spec in args.latent_cache
                for row in latent_cache_costs(
                    Path(spec.split("=")[0]), [int(b) for b in spec.split("=")[1].split(",")], args.repeats
                )
            ]
        if args.stages:
            result["process"] = process_costs(env, args.repeats)
        for stage in args.stages:
            print(f"profiling {stage} ...", flush=True)
            result["stages"].append(profile_stage(stage, args, extra, work, env))
    finally:
        if work_ctx:
            work_ctx.cleanup()
    result["load_after"] = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    md = table(result)
    print(md)
    from neonet.run.atomic import write_json, write_text

    write_json(out.with_suffix(".json"), result)
    write_text(out.with_suffix(".md"), md + "\n")


if __name__ == "__main__":
    main()
