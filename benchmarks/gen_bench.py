"""NeoGen benchmark (prints and writes JSON; never asserts).

Measures, in one run and with the networks of the demo configs (or any configs given):

1. diffusion training throughput from the **latent cache** (latents encoded once) against
   **encoding on the fly** (frozen autoencoder encodes every batch, then the same UNet step) — ratio;
2. sampling time of one patch with **DDIM-50** against **DDPM-1000** (UNet + ControlNet, as
   ``neonet synthesize`` samples) — ratio.

Usage::

    python benchmarks/gen_bench.py                      # demo networks, 32x32x16 patches
    python benchmarks/gen_bench.py --threads 2 --train_steps 30 --out benchmarks/results/gen_bench.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path

import torch
import yaml

from neonet.gen.common import autoencoder_factor, label_onehot
from neonet.gen.controlnet import init_controlnet_from_unet
from neonet.gen.diffusion import DiffusionModule
from neonet.gen.sampling import Denoiser, sample_latents
from neonet.gen.toy import toy_patch

REPO = Path(__file__).resolve().parents[1]


def _rel(path: Path) -> str:
    """A path relative to the repository when inside it (results files name no machine paths)."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else path.name


log = logging.getLogger("gen_bench")


def _net(config: Path, key: str) -> torch.nn.Module:
    """The network ``model.init_args.<key>`` of a stage config, built by jsonargparse as ``neonet fit`` builds it."""
    from jsonargparse import ArgumentParser

    cfg = yaml.safe_load(config.read_text(encoding="utf-8"))
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--net", type=torch.nn.Module)
    return parser.instantiate_classes(parser.parse_object({"net": cfg["model"]["init_args"][key]})).net


def _model_args(config: Path) -> dict:
    args = dict(yaml.safe_load(config.read_text(encoding="utf-8"))["model"]["init_args"])
    return {k: v for k, v in args.items() if k not in ("unet", "optimizer", "scheduler")}


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def bench(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    ae = _net(args.autoencoder, "autoencoder").eval()
    for p in ae.parameters():
        p.requires_grad_(False)
    diffusion = DiffusionModule(_net(args.diffusion, "unet"), **_model_args(args.diffusion))
    optimizer = torch.optim.AdamW(diffusion.unet.parameters(), lr=1e-4)
    rng = __import__("numpy").random.default_rng(0)
    pairs = [toy_patch(rng, args.patch, i % 2) for i in range(args.batch)]
    images = torch.stack([torch.from_numpy(p[0])[None] for p in pairs])
    labels = torch.stack([torch.from_numpy(p[1])[None] for p in pairs])
    pni = torch.tensor([i % 2 for i in range(args.batch)])
    with torch.no_grad():
        mu, sigma = ae.encode(images)
    cached = (mu + sigma * torch.randn_like(sigma)).contiguous()
    diffusion.scale_factor.fill_(float(1.0 / cached.std()))

    def unet_step(z: torch.Tensor) -> None:
        pred, target, _ = diffusion.noisy_step(z * diffusion.scale_factor, pni, 0.1)
        loss = torch.nn.functional.mse_loss(pred, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def from_cache() -> None:
        unet_step(cached)

    def on_the_fly() -> None:
        with torch.no_grad():
            m, s = ae.encode(images.flip(2))
        unet_step(m + s * torch.randn_like(s))

    t_cache = _time(from_cache, args.train_steps)
    t_fly = _time(on_the_fly, args.train_steps)

    controlnet = _net(args.controlnet, "controlnet").eval()
    init_controlnet_from_unet(controlnet, diffusion.unet)
    unet = diffusion.unet.eval()
    cond = label_onehot(labels[:1])
    denoiser = Denoiser(unet, controlnet, cond, 1.0, torch.tensor([1]), diffusion.null_class, args.guidance)
    noise = torch.randn(1, *cached.shape[1:])
    timings = {}
    for name, sampler, steps in (("ddim50", "ddim", 50), ("ddpm1000", "ddpm", diffusion.noise_schedule.num_train_timesteps)):
        start = time.perf_counter()
        sample_latents(denoiser, diffusion.noise_schedule, noise, sampler, steps, generator=torch.Generator().manual_seed(0))
        timings[name] = time.perf_counter() - start
    factor = autoencoder_factor(ae)
    return {
        "patch": list(args.patch),
        "latent": list(cached.shape[1:]),
        "autoencoder_downsampling": factor,
        "batch": args.batch,
        "threads": args.threads,
        "train_steps_timed": args.train_steps,
        "diffusion_train_step_s": {"latent_cache": t_cache, "encode_on_the_fly": t_fly},
        "diffusion_train_samples_per_s": {"latent_cache": args.batch / t_cache, "encode_on_the_fly": args.batch / t_fly},
        "throughput_ratio_cache_vs_on_the_fly": t_fly / t_cache,
        "sampling_s_per_patch": timings,
        "guidance_scale": args.guidance,
        "sampling_ratio_ddpm1000_vs_ddim50": timings["ddpm1000"] / timings["ddim50"],
        "configs": {k: _rel(getattr(args, k)) for k in ("autoencoder", "diffusion", "controlnet")},
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "loadavg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    demo = REPO / "experiments" / "demo"
    parser.add_argument("--autoencoder", type=Path, default=demo / "autoencoder.yaml")
    parser.add_argument("--diffusion", type=Path, default=demo / "diffusion.yaml")
    parser.add_argument("--controlnet", type=Path, default=demo / "controlnet.yaml")
    parser.add_argument("--patch", type=int, nargs=3, default=[32, 32, 16])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--train_steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--guidance", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "gen_bench.json")
    args = parser.parse_args()
    logging.basicConfig(level="INFO", format="%(message)s")
    result = bench(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from neonet.run.atomic import write_json

    write_json(args.out, result)
    log.info(json.dumps(result, indent=2))
    log.info(
        "diffusion training: latent cache is %.1fx the throughput of encoding on the fly",
        result["throughput_ratio_cache_vs_on_the_fly"],
    )
    log.info(
        "sampling one patch: DDPM-1000 takes %.1fx as long as DDIM-50 (%.2f s vs %.2f s)",
        result["sampling_ratio_ddpm1000_vs_ddim50"],
        result["sampling_s_per_patch"]["ddpm1000"],
        result["sampling_s_per_patch"]["ddim50"],
    )
    log.info("written to %s", args.out)


if __name__ == "__main__":
    main()
