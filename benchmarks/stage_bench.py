"""Per-stage training benchmark (prints and writes JSON; never asserts).

For each stage, the stage's LightningModule is built from the configs of one experiments/ folder
(networks and hyperparameters as configured) and fed synthetic tensors of the stage's shapes:

1. **Lightning vs plain PyTorch**: ``Trainer.fit`` (no logger, checkpointing, progress bar, summary
   or validation; ``max_epochs=1`` over an in-memory loader of identical batches — ``max_steps``
   would stop the two-optimizer autoencoder after half the batches) against a plain loop over the
   same loader. The plain loop calls the module's own ``training_step`` (and its
   ``on_train_batch_start``/``on_train_batch_end`` hooks: the diffusion EMA) with a hand-written
   ``zero_grad``/``backward``/``step``; for the manually optimised autoencoder it replicates
   ``training_step``: generator step (L1 + KL + adversarial, the discriminator's weights frozen as
   ``toggle_optimizer`` does), gradient clipping, then the discriminator step. Step time is the
   interval between consecutive batch starts (fetch, transfer, step and hooks) after warm-up;
   ratio = Lightning / plain. Each arm runs in its own process (clean peak memory); arms alternate
   over repeats and the medians are reported.
2. **Loader ratio** (seg, cls): an epoch of the stage's real DataModule (phantom cohort, the
   config's transforms and augmentation) plus the plain training step, against the same step on
   batches materialised beforehand from that loader; ratio = with loader / compute only.
3. ``--paper``: the ``experiments/paper`` networks at full size, plain arm only: parameter counts,
   one step's time and peak memory (batch 1 on CPU; 2 for the classifiers, whose BatchNorm needs two).

Benchmark-only settings, the same in both arms: the autoencoder's adversarial loss is on from the
first step (``adv_warmup_epochs=0``); the diffusion EMA updates from the first step
(``ema_start_step=-1``); PattenNet/baselines run without the fold's encoder checkpoint, without
the cosine schedule and with ``pos_weight=1``; the ControlNet sits on a freshly built UNet.
Peak memory: CPU = peak resident set size sampled every 5 ms (psutil, else /proc/self/statm),
GPU = ``torch.cuda.max_memory_allocated``.

Usage::

    python benchmarks/stage_bench.py                                  # demo configs, CPU, 1 thread
    python benchmarks/stage_bench.py --loader_workers 0 1             # also the loaders with one worker process
    python benchmarks/stage_bench.py --stages seg pattennet --loaders --steps 10 --repeats 3
    python benchmarks/stage_bench.py --device cuda --precision bf16-mixed --threads 8 \
        --out benchmarks/results/stage_bench_cuda.json
    python benchmarks/stage_bench.py --paper --out benchmarks/results/stage_bench_paper_cpu.json
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("stage_bench")

#: Stage name -> config file name in the experiments folder.
CONFIGS = {
    "seg": "seg.yaml",
    "autoencoder": "autoencoder.yaml",
    "diffusion": "diffusion.yaml",
    "controlnet": "controlnet.yaml",
    "pattennet": "pattennet.yaml",
    "resnet18": "baseline_resnet18.yaml",
    "densenet121": "baseline_densenet121.yaml",
    "seresnet50": "baseline_seresnet50.yaml",
}
CLS_STAGES = ("pattennet", "resnet18", "densenet121", "seresnet50")
#: Benchmark-only module arguments (see the module docstring).
OVERRIDES: dict[str, dict[str, Any]] = {
    "autoencoder": {"adv_warmup_epochs": 0, "wandb_images": False},
    "diffusion": {"ema_start_step": -1},
    **{s: {"encoder_checkpoint": None, "cosine": False, "write_predictions": False} for s in CLS_STAGES},
}


# ---------------------------------------------------------------------- configs and synthetic batches
def _yaml(folder: Path, name: str) -> dict[str, Any]:
    return yaml.safe_load((folder / name).read_text())


@functools.cache
def _resolved_data(folder: Path, name: str) -> str:
    """The ``data`` block of a stage config as ``neonet fit`` resolves it (the folder's ``_shared.yaml`` included)."""
    import contextlib
    import io

    from neonet.run.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main(["fit", "--config", str(folder / name), "--print_config"])
    return yaml.safe_dump(yaml.safe_load(out.getvalue())["data"])


def _data(folder: Path, name: str) -> dict[str, Any]:
    """A fresh copy of the resolved ``data`` block (class_path and every init_arg)."""
    return yaml.safe_load(_resolved_data(folder, name))


def _override(key: str, value: Any) -> str:
    """``--key=value`` with the value in YAML/JSON form (``null``, ``false``, numbers, lists)."""
    return f"--{key}={json.dumps(value)}"


def build_module(folder: Path, stage: str, **overrides: Any) -> Any:
    """The stage's LightningModule from ``<folder>/<config>``, built as ``neonet fit`` builds it
    (:func:`neonet.run.lightning_cli.instantiate_stage_config`), with the benchmark-only settings and ``overrides``."""
    from neonet.run.lightning_cli import instantiate_stage_config

    kwargs = {**OVERRIDES.get(stage, {}), **overrides}
    model, _, _ = instantiate_stage_config(
        [folder / CONFIGS[stage]], [_override(f"model.init_args.{k}", v) for k, v in kwargs.items()]
    )
    return model


def prepare(stage: str, module: Any, folder: Path) -> None:
    """Give the module what its fold's upstream stages would (scale factor, frozen UNet, no data-module setup)."""
    from neonet.gen.common import freeze
    from neonet.gen.controlnet import init_controlnet_from_unet

    if stage in ("diffusion", "controlnet"):
        module.scale_factor.fill_(1.0)
    if stage == "controlnet":
        diffusion = build_module(folder, "diffusion", ema_decay=0.0)
        module._adopt(
            freeze(diffusion.unet), diffusion.noise_schedule, diffusion.num_classes, float(diffusion.hparams.class_dropout)
        )
        init_controlnet_from_unet(module.controlnet, module.unet)
    if stage in CLS_STAGES:
        module.setup = lambda stage: None  # its setup needs a fold DataModule (encoder checkpoint, class counts)
        module.pos_weight_value = 1.0


def _label(batch: int, shape: tuple[int, ...], values: tuple[int, ...]) -> Any:
    """Nested boxes: ``values[0]`` in the central half, each next value in a box half as large."""
    import torch

    out = torch.zeros(batch, 1, *shape, dtype=torch.uint8)
    for i, v in enumerate(values):
        lo = [s // 2 - max(1, s // 2 ** (i + 2)) for s in shape]
        hi = [s // 2 + max(1, s // 2 ** (i + 2)) for s in shape]
        out[:, :, lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = v
    return out


def stage_batch(stage: str, folder: Path, batch: int | None, seg_volume: tuple[int, ...]) -> dict[str, Any]:
    """A synthetic training batch of the stage's shapes (patch size from crop.yaml, latent grid from autoencoder.yaml)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    data = _data(folder, CONFIGS[stage])["init_args"]
    b = int(batch or data["batch_size"])
    patch = tuple(int(s) for s in _yaml(folder, "crop.yaml")["patch_size"])
    ae = _yaml(folder, "autoencoder.yaml")["model"]["init_args"]["autoencoder"]["init_args"]
    factor = 2 ** (len(ae["channels"]) - 1)
    latent = (int(ae["latent_channels"]), *(s // factor for s in patch))
    pni = torch.arange(b) % 2
    if stage == "seg":
        shape = tuple(int(s) for s in (data.get("patch_size") or seg_volume))
        return {"image": torch.rand(b, 1, *shape, generator=gen), "label": _label(b, shape, (1, 2)).float()}
    if stage == "autoencoder":
        return {"image": torch.rand(b, 1, *patch, generator=gen)}
    if stage in ("diffusion", "controlnet"):
        out = {"z": torch.randn(b, *latent, generator=gen), "pni": pni}
        if stage == "controlnet":
            out["label"] = _label(b, patch, (1, 2, 3))
        return out
    b = max(b, 2)  # training-mode BatchNorm (PattenNet's head_norm) needs two samples
    pni = torch.arange(b) % 2
    shape = tuple(max(p, q) for p, q in zip(patch, data.get("pad_to") or patch))
    image = torch.rand(b, 1, *shape, generator=gen)
    if data.get("label_channel"):  # the TLCR label patch rides along as the last input channel
        image = torch.cat([image, _label(b, shape, (1, 2, 3)).float()], dim=1)
    return {"image": image, "label": pni.float()}


def param_counts(module: Any) -> dict[str, dict[str, int]]:
    """Parameters (total, trainable) of each network child of the module (the EMA copy left out)."""
    out = {}
    for name, child in module.named_children():
        total = sum(p.numel() for p in child.parameters())
        if total and name != "ema":
            out[name] = {"total": total, "trainable": sum(p.numel() for p in child.parameters() if p.requires_grad)}
    return out


# ---------------------------------------------------------------------- memory
def _rss_bytes() -> int:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        pass
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakRSS:
    """Samples the resident set size in a thread; ``peak`` and ``base`` in bytes."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.base = self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


# ---------------------------------------------------------------------- the two arms
def _plain_optimizers(stage: str, module: Any) -> list[Any]:
    if stage == "autoencoder":
        return [
            module.optimizer_factory(module.autoencoder.parameters()),
            module.disc_optimizer_factory(module.discriminator.parameters()),
        ]
    return [module.optimizer_factory([p for p in module.parameters() if p.requires_grad])]


def _clipped_step(loss: Any, optimizer: Any, net: Any, grad_clip: float, name: str) -> None:
    """One optimiser step with gradient-norm clipping; a non-finite loss stops the benchmark."""
    import torch

    if not torch.isfinite(loss):
        raise FloatingPointError(f"{name} loss is not finite")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
    optimizer.step()


def _gan_step(module: Any, opt_g: Any, opt_d: Any, image: Any, autocast: Any) -> None:
    """The autoencoder's manual-optimisation ``training_step``, as a plain loop writes it."""
    ae, disc, hp = module.autoencoder, module.discriminator, module.hparams
    disc.requires_grad_(False)
    with autocast():
        recon, mu, sigma = ae(image)
        terms = module.generator_loss(image, recon, mu, sigma)
        adv_g = module.adv_loss(disc(recon.contiguous().float())[-1], target_is_real=True, for_discriminator=False)
        loss_g = terms["loss"] + hp.adv_weight * adv_g
    _clipped_step(loss_g, opt_g, ae, hp.grad_clip, "autoencoder")
    disc.requires_grad_(True)
    ae.requires_grad_(False)
    with autocast():
        fake = module.adv_loss(disc(recon.detach().contiguous().float())[-1], target_is_real=False, for_discriminator=True)
        real = module.adv_loss(disc(image.contiguous().float())[-1], target_is_real=True, for_discriminator=True)
        loss_d = hp.adv_weight * 0.5 * (fake + real)
    _clipped_step(loss_d, opt_d, disc, hp.grad_clip, "discriminator")
    ae.requires_grad_(True)


def plain_step_fn(stage: str, module: Any, device: str, precision: str) -> Any:
    """A ``step(batch, index)`` closure doing one plain-PyTorch training step of the stage."""
    import torch

    opts = _plain_optimizers(stage, module)

    def autocast() -> Any:
        return torch.autocast(device_type=device, dtype=torch.bfloat16) if precision.startswith("bf16") else nullcontext()

    def step(batch: dict[str, Any], i: int) -> None:
        if stage == "autoencoder":
            _gan_step(module, opts[0], opts[1], batch["image"], autocast)
            return
        module.on_train_batch_start(batch, i)
        with autocast():
            loss = module.training_step(batch, i)
        opts[0].zero_grad(set_to_none=True)
        loss.backward()
        opts[0].step()
        module.on_train_batch_end(loss, batch, i)

    return step


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _train_modes(module: Any) -> int:
    return sum(m.training for m in module.modules())


def run_lightning(module: Any, loader: Any, device: str, precision: str, root: str) -> tuple[list[float], list[float], int]:
    """``Trainer.fit`` for one epoch of ``loader``; (batch start times, batch end times, modules in train mode)."""
    from lightning.pytorch import Callback, Trainer

    class Clock(Callback):
        def __init__(self) -> None:
            self.starts: list[float] = []
            self.ends: list[float] = []
            self.modes = 0

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            _sync(device)
            self.starts.append(time.perf_counter())
            self.modes = self.modes or _train_modes(pl_module)

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            _sync(device)
            self.ends.append(time.perf_counter())

    clock = Clock()
    trainer = Trainer(
        accelerator="gpu" if device == "cuda" else "cpu",
        devices=1,
        precision=precision,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[clock],
        default_root_dir=root,
    )
    trainer.fit(module, train_dataloaders=loader)
    return clock.starts, clock.ends, clock.modes


def run_plain(stage: str, module: Any, loader: Any, device: str, precision: str) -> tuple[list[float], list[float], int]:
    """The plain loop over ``loader``; (batch start times, batch end times, modules in train mode)."""
    module.to(device)
    step = plain_step_fn(stage, module, device, precision)
    starts, ends, modes = [], [], _train_modes(module)
    for i, batch in enumerate(loader):
        batch = {k: v.to(device, non_blocking=True) if hasattr(v, "to") else v for k, v in batch.items()}
        _sync(device)
        starts.append(time.perf_counter())
        step(batch, i)
        _sync(device)
        ends.append(time.perf_counter())
    return starts, ends, modes


def step_times(starts: list[float], ends: list[float]) -> list[float]:
    """Start-to-start intervals; the last step (no next start) counts from its start to its end."""
    return [b - a for a, b in zip(starts, starts[1:])] + [ends[-1] - starts[-1]]


# ---------------------------------------------------------------------- workers (one process each)
def _setup_worker(spec: dict[str, Any]) -> Any:
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(int(spec["threads"]))
    torch.manual_seed(0)
    return torch


def step_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One arm of one stage: build, run warm-up + timed steps, measure memory."""
    torch = _setup_worker(spec)
    folder, stage, device = Path(spec["configs"]), spec["stage"], spec["device"]
    module = build_module(folder, stage)
    prepare(stage, module, folder)
    batch = stage_batch(stage, folder, spec.get("batch"), tuple(spec["seg_volume"]))
    n = int(spec["warmup"]) + int(spec["steps"])
    loader = torch.utils.data.DataLoader([batch] * n, batch_size=None)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    with PeakRSS() as mem, tempfile.TemporaryDirectory() as root:
        if spec["arm"] == "lightning":
            starts, ends, modes = run_lightning(module, loader, device, spec["precision"], root)
        else:
            starts, ends, modes = run_plain(stage, module, loader, device, spec["precision"])
    wall = time.perf_counter() - start
    times = step_times(starts, ends)[int(spec["warmup"]) :]
    samples = next(iter(batch.values())).shape[0]
    return {
        "stage": stage,
        "arm": spec["arm"],
        "batch": samples,
        "shapes": {k: list(v.shape) for k, v in batch.items()},
        "steps_timed": len(times),
        "step_s": statistics.median(times),
        "step_s_min": min(times),
        "step_s_all": times,
        "samples_per_s": samples / statistics.median(times),
        "run_wall_s": wall,
        "peak_rss_mb": mem.peak / 2**20,
        "rss_before_mb": mem.base / 2**20,
        "peak_rss_delta_mb": (mem.peak - mem.base) / 2**20,
        "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
        "modules_in_train_mode": modes,
        "params": param_counts(module),
        "threads": torch.get_num_threads(),
    }


def loader_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Epochs of the real DataModule + plain step against the same step on pre-materialised batches."""
    from neonet.run.lightning_cli import instantiate_stage_config

    _setup_worker(spec)
    folder, stage = Path(spec["configs"]), spec["stage"]
    data = _data(folder, CONFIGS[stage])
    given = {"cases": spec["cases"], "runs_dir": spec["runs_dir"], "experiment": spec["experiment"]}
    if spec.get("num_workers") is not None:
        given["num_workers"] = int(spec["num_workers"])
    _, dm, _ = instantiate_stage_config(
        [folder / CONFIGS[stage]], [_override(f"data.init_args.{k}", v) for k, v in given.items()]
    )
    dm.setup("fit")
    loader = dm.train_dataloader()
    module = build_module(folder, stage)
    prepare(stage, module, folder)
    step = plain_step_fn(stage, module, "cpu", "32-true")

    def epoch(batches: Any) -> tuple[float, int]:
        start, n = time.perf_counter(), 0
        for i, batch in enumerate(batches):
            step(batch, i)
            n += 1
        return time.perf_counter() - start, n

    epoch(loader)  # warm-up
    k = max(1, -(-int(spec["min_batches"]) // len(loader)))  # epochs per measurement
    runs: list[dict[str, float]] = []
    for r in range(int(spec["repeats"])):
        row: dict[str, float] = {}
        for arm in ("with_loader", "compute_only") if r % 2 == 0 else ("compute_only", "with_loader"):
            if arm == "with_loader":
                row["with_loader_s"], row["batches"] = epoch(b for _ in range(k) for b in loader)
            else:
                start = time.perf_counter()
                batches = [b for _ in range(k) for b in loader]
                row["loader_only_s"] = time.perf_counter() - start
                row["compute_only_s"], _ = epoch(batches)
        row["ratio"] = row["with_loader_s"] / row["compute_only_s"]
        runs.append(row)
    med = {k: statistics.median(r[k] for r in runs) for k in ("with_loader_s", "compute_only_s", "loader_only_s", "ratio")}
    return {
        "stage": stage,
        "datamodule": data["class_path"],
        "batch_size": dm.batch_size,
        "num_workers": dm.num_workers,
        "train_items": len(dm.train_ds),
        "batches_per_epoch": len(loader),
        "epochs_per_measurement": k,
        "repeats": runs,
        **med,
    }


# ---------------------------------------------------------------------- orchestration
def spawn(spec: dict[str, Any]) -> dict[str, Any]:
    """Run a worker in a fresh process and return its result."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(spec["threads"]),
        "MKL_NUM_THREADS": str(spec["threads"]),
        "WANDB_MODE": "disabled",
        "NEONET_LOG_LEVEL": "WARNING",
        "PYTHONWARNINGS": "ignore",
    }
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], env=env, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"worker {spec['kind']} {spec['stage']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def _proc_field(path: str, key: str) -> str | None:
    """The value after ``key:`` on the first matching line of a /proc file (None when absent)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return None
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith(key)), None)


def machine(device: str) -> dict[str, Any]:
    """CPU model, cores, memory, library versions (and the CUDA device name when used)."""
    import lightning
    import monai
    import torch

    mem_kb = _proc_field("/proc/meminfo", "MemTotal")
    return {
        "cpu_model": _proc_field("/proc/cpuinfo", "model name") or platform.processor(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)),
        "memory_gb": int(mem_kb.split()[0]) / 2**20 if mem_kb else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "monai": monai.__version__,
        "device": device,
        "cuda_device": torch.cuda.get_device_name(0) if device == "cuda" else None,
    }


def gen_bench_ratios() -> dict[str, Any] | None:
    """The NeoGen ratios of ``benchmarks/results/gen_bench.json`` (measured by gen_bench.py, quoted here)."""
    path = REPO / "benchmarks" / "results" / "gen_bench.json"
    if not path.is_file():
        return None
    gen = json.loads(path.read_text())
    keys = ("throughput_ratio_cache_vs_on_the_fly", "sampling_ratio_ddpm1000_vs_ddim50", "loadavg_1min")
    return {"source": _rel(path), **{k: gen.get(k) for k in keys}}


def prepare_cohort(args: argparse.Namespace, root: Path) -> tuple[str, str]:
    """A phantom cohort (or ``--cohort``) with TLCR patches from its manual masks; (cases.csv, runs_dir)."""
    from neonet.data.phantom import synth
    from neonet.seg.crop import crop

    cases = Path(args.cohort) if args.cohort else synth(root / "cohort", cases=args.cohort_cases, seed=0)
    crop_cfg = _yaml(args.configs, "crop.yaml")
    crop(
        cases,
        experiment="bench",
        runs_dir=root / "runs",
        source="manual",
        spacing=tuple(crop_cfg["spacing"]),
        patch_size=tuple(crop_cfg["patch_size"]),
        shell_mm=float(crop_cfg.get("shell_mm", 10.0)),
        no_tumor="liver",
    )
    return str(cases), str(root / "runs")


def summarise(rows: list[dict[str, Any]], arms: list[str]) -> dict[str, Any]:
    """Medians over repeats per arm, and the median of the per-repeat Lightning/plain ratios."""
    out: dict[str, Any] = {"params": rows[0]["params"], "batch": rows[0]["batch"], "shapes": rows[0]["shapes"]}
    by_arm = {arm: [r for r in rows if r["arm"] == arm] for arm in arms}
    for arm, mine in by_arm.items():
        keys = ("step_s", "step_s_min", "samples_per_s", "peak_rss_mb", "peak_rss_delta_mb")
        out[arm] = {k: statistics.median(r[k] for r in mine) for k in keys}
        out[arm]["cuda_peak_mb"] = max((r["cuda_peak_mb"] or 0) for r in mine) or None
        out[arm]["step_s_per_repeat"] = [r["step_s"] for r in mine]
        out[arm]["modules_in_train_mode"] = mine[0]["modules_in_train_mode"]
    if set(arms) == {"lightning", "plain"}:
        ratios = [a["step_s"] / b["step_s"] for a, b in zip(by_arm["lightning"], by_arm["plain"])]
        out["ratio_lightning_vs_plain"] = statistics.median(ratios)
        out["ratio_per_repeat"] = ratios
        fastest = {arm: min(r["step_s_min"] for r in mine) for arm, mine in by_arm.items()}
        out["ratio_of_fastest_steps"] = fastest["lightning"] / fastest["plain"]
    return out


def bench(args: argparse.Namespace) -> dict[str, Any]:
    base = {
        "configs": str(args.configs),
        "device": args.device,
        "precision": args.precision,
        "threads": args.threads,
        "warmup": args.warmup,
        "steps": args.steps,
        "batch": args.batch,
        "seg_volume": args.seg_volume,
    }
    settings = {
        **base,
        "configs": _rel(args.configs),
        "arms": args.arms,
        "repeats": args.repeats,
        "loader_repeats": args.loader_repeats,
        "loader_batches": args.loader_batches,
        "loader_workers": args.loader_workers,
        "command": " ".join(sys.argv[1:]),
    }
    result: dict[str, Any] = {
        "machine": machine(args.device),
        "loadavg_before": os.getloadavg(),
        "settings": settings,
        "stages": {},
        "loaders": {},
        "gen_bench": gen_bench_ratios(),
    }
    for stage in args.stages:
        rows = []
        for r in range(args.repeats):
            for arm in args.arms if r % 2 == 0 else args.arms[::-1]:
                rows.append(spawn({**base, "kind": "step", "stage": stage, "arm": arm}))
                log.info(
                    "  %-11s repeat %d %-9s %.4f s/step  peak RSS %.0f MB",
                    stage,
                    r,
                    arm,
                    rows[-1]["step_s"],
                    rows[-1]["peak_rss_mb"],
                )
        result["stages"][stage] = summarise(rows, args.arms)
    if args.loaders:
        with tempfile.TemporaryDirectory() as tmp:
            cases, runs = prepare_cohort(args, Path(tmp))
            for stage in args.loaders:
                for workers in args.loader_workers or [None]:
                    spec = {
                        **base,
                        "kind": "loader",
                        "stage": stage,
                        "cases": cases,
                        "runs_dir": runs,
                        "experiment": "bench",
                        "repeats": args.loader_repeats,
                        "min_batches": args.loader_batches,
                        "num_workers": workers,
                    }
                    result["loaders"][stage if workers is None else f"{stage}_workers{workers}"] = spawn(spec)
    result["loadavg_after"] = os.getloadavg()
    return result


def _rel(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else path.name


def table(result: dict[str, Any]) -> str:
    """Plain-text tables of the result."""
    lines = [f"{'stage':<12}{'batch':>6}{'arm':>11}{'s/step':>10}{'samples/s':>11}{'peak RSS MB':>13}{'ratio L/P':>11}"]
    for stage, s in result["stages"].items():
        for arm in result["settings"]["arms"]:
            a = s[arm]
            mem = f"{a['cuda_peak_mb']:.0f} (GPU)" if a.get("cuda_peak_mb") else f"{a['peak_rss_mb']:.0f}"
            ratio = f"{s['ratio_lightning_vs_plain']:.3f}" if arm == "lightning" and "ratio_lightning_vs_plain" in s else ""
            lines.append(
                f"{stage:<12}{s['batch']:>6}{arm:>11}{a['step_s']:>10.4f}{a['samples_per_s']:>11.2f}{mem:>13}{ratio:>11}"
            )
    for stage, ld in result["loaders"].items():
        lines.append(
            f"loader {stage} (num_workers {ld['num_workers']}, {ld['epochs_per_measurement']} x "
            f"{ld['batches_per_epoch']} batches): with loader {ld['with_loader_s']:.3f} s, compute only "
            f"{ld['compute_only_s']:.3f} s, loader alone {ld['loader_only_s']:.3f} s, ratio {ld['ratio']:.3f}"
        )
    gen = result.get("gen_bench")
    if gen:
        lines.append(
            f"NeoGen ({gen['source']}): latent cache {gen['throughput_ratio_cache_vs_on_the_fly']:.2f}x on-the-fly "
            f"throughput; DDPM-1000 / DDIM-50 sampling time {gen['sampling_ratio_ddpm1000_vs_ddim50']:.1f}x"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options, with the ``--paper`` defaults resolved."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--worker", help=argparse.SUPPRESS)
    add(
        "--stages",
        nargs="*",
        choices=list(CONFIGS),
        default=None,
        help="step-ratio stages (default: seg autoencoder diffusion controlnet pattennet; all with --paper; none: loaders only)",
    )
    add("--arms", nargs="+", choices=["lightning", "plain"], default=None, help="default both; plain with --paper")
    add("--configs", type=Path, default=REPO / "experiments" / "demo", help="experiments folder of the stage configs")
    add("--paper", action="store_true", help="experiments/paper networks, plain arm, one step, batch 1 on CPU")
    add("--steps", type=int, default=None, help="timed steps per arm (default 20; 1 with --paper)")
    add("--warmup", type=int, default=None, help="untimed first steps (default 3; 0 with --paper on CPU)")
    add("--repeats", type=int, default=None, help="processes per arm, alternating order (default 5; 1 with --paper)")
    add("--batch", type=int, default=None, help="batch size (default: the config's; 1 with --paper on CPU)")
    add("--seg_volume", type=int, nargs=3, default=[96, 96, 32], help="seg input when the config trains on whole volumes")
    add("--loaders", nargs="*", choices=["seg", "pattennet"], default=None, help="loader-ratio stages (default: both)")
    add("--loader_repeats", type=int, default=5, help="measurements per loader arm, alternating order")
    add("--loader_batches", type=int, default=12, help="at least this many batches (whole epochs) per measurement")
    add("--loader_workers", type=int, nargs="*", default=None, help="DataLoader workers to measure (default: the config's)")
    add("--cohort", type=Path, default=None, help="cases.csv for the loader ratio (default: a fresh phantom)")
    add("--cohort_cases", type=int, default=24)
    add("--device", default="cpu", choices=["cpu", "cuda"])
    add("--precision", default="32-true", help="Lightning precision; bf16-* autocasts the plain arm too")
    add("--threads", type=int, default=1, help="torch threads (and OMP_NUM_THREADS) in every worker")
    add("--out", type=Path, default=REPO / "benchmarks" / "results" / "stage_bench.json")
    args = parser.parse_args(argv)
    cpu_paper = args.paper and args.device == "cpu"
    if args.paper:
        args.configs = REPO / "experiments" / "paper"
    if args.stages is None:
        args.stages = list(CONFIGS) if args.paper else ["seg", "autoencoder", "diffusion", "controlnet", "pattennet"]
    args.arms = args.arms or (["plain"] if args.paper else ["lightning", "plain"])
    args.steps = args.steps or (1 if args.paper else 20)
    args.warmup = args.warmup if args.warmup is not None else (0 if cpu_paper else 3)
    args.repeats = args.repeats or (1 if args.paper else 5)
    args.batch = args.batch or (1 if cpu_paper else None)
    args.loaders = args.loaders if args.loaders is not None else ([] if args.paper else ["seg", "pattennet"])
    return args


def main() -> None:
    args = parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        out = step_worker(spec) if spec["kind"] == "step" else loader_worker(spec)
        print("RESULT " + json.dumps(out))
        return
    logging.basicConfig(level="INFO", format="%(message)s")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    result = bench(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from neonet.run.atomic import write_json

    write_json(args.out, result)
    log.info("%s", table(result))
    log.info("load average before %s, after %s; written to %s", result["loadavg_before"], result["loadavg_after"], _rel(args.out))


if __name__ == "__main__":
    main()
