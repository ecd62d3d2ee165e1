"""One stage's training step, measured: the worker process of ``benchmarks/gpu_check.py``.

The stage's LightningModule and DataModule are built from its ``experiments/paper`` config by neonet's own parser
(:func:`neonet.run.lightning_cli.instantiate_stage_config`; ``--tiny`` adds the overrides in ``TINY``), given what
its upstream stages would give it, and trained on a synthetic batch of its shapes in a plain loop (see
``gpu_check.py`` for what is measured and the benchmark-only settings). Run by ``gpu_check.py`` as
``python benchmarks/gpu_check_step.py SPEC_JSON``: one ``START <stage>`` and one ``RESULT <json>`` line per stage.
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]

#: Stage -> its config in experiments/paper.
STAGES: dict[str, str] = {
    "seg": "seg.yaml",
    "autoencoder": "autoencoder.yaml",
    "diffusion": "diffusion.yaml",
    "controlnet": "controlnet.yaml",
    "pattennet": "pattennet.yaml",
    "resnet18": "baseline_resnet18.yaml",
    "densenet121": "baseline_densenet121.yaml",
    "seresnet50": "baseline_seresnet50.yaml",
    "seg_swinunetr": "seg_swinunetr.yaml",  # a variant of NeoSeg, not in the protocol: measured and fitted last
}
CLS_STAGES = ("pattennet", "resnet18", "densenet121", "seresnet50")


# ---------------------------------------------------------------------- --tiny: shrunk networks and inputs
_AE = "encoder.init_args.autoencoder.init_args"
#: Per-stage config overrides of ``--tiny`` (the same for the step measurement and the CLI fit).
TINY: dict[str, list[str]] = {
    "seg": [
        "--model.init_args.net.init_args.filters=[4,4,4,4,4]",
        "--model.init_args.roi_size=[16,16,8]",
        "--data.init_args.patch_size=[16,16,8]",
        "--data.init_args.samples_per_volume=1",
        "--data.init_args.spacing=[7.0,7.0,12.0]",
    ],
    "seg_swinunetr": [  # 32 voxels per axis at least; batch norm: instance norm needs more than the 1x1x1 bottleneck
        "--model.init_args.net.init_args.feature_size=12",
        "--model.init_args.net.init_args.depths=[1,1,1,1]",
        "--model.init_args.net.init_args.window_size=4",
        "--model.init_args.net.init_args.norm_name=batch",
        "--model.init_args.roi_size=[32,32,32]",
        "--data.init_args.patch_size=[32,32,32]",
        "--data.init_args.samples_per_volume=1",
        "--data.init_args.spacing=[7.0,7.0,12.0]",
    ],
    "autoencoder": [
        "--model.init_args.autoencoder.init_args.channels=[8,8,8]",
        "--model.init_args.autoencoder.init_args.norm_num_groups=4",
        "--model.init_args.discriminator.init_args.channels=4",
        "--model.init_args.discriminator.init_args.num_layers_d=2",
        "--data.init_args.batch_size=2",
    ],
    "diffusion": [
        "--model.init_args.unet.init_args.channels=[8,16,16]",
        "--model.init_args.unet.init_args.norm_num_groups=4",
        "--model.init_args.unet.init_args.num_head_channels=8",
        "--data.init_args.batch_size=2",
    ],
    "controlnet": [
        "--model.init_args.controlnet.init_args.channels=[8,16,16]",
        "--model.init_args.controlnet.init_args.norm_num_groups=4",
        "--model.init_args.controlnet.init_args.num_head_channels=8",
        "--model.init_args.controlnet.init_args.conditioning_embedding_num_channels=[4,4,8]",
        "--data.init_args.batch_size=2",
    ],
    "pattennet": [
        f"--model.init_args.net.init_args.{_AE}.channels=[8,8,8]",
        f"--model.init_args.net.init_args.{_AE}.norm_num_groups=4",
        "--model.init_args.net.init_args.hidden=16",
        "--data.init_args.batch_size=2",
    ],
    "resnet18": ["--model.init_args.net.init_args.widen_factor=0.125", "--data.init_args.batch_size=2"],
    # MONAI's DenseNet-121 has no width option and needs 32 voxels per axis: the patches are padded to that
    "densenet121": ["--data.init_args.batch_size=2", "--data.init_args.pad_to=[32,32,32]"],
    "seresnet50": ["--data.init_args.batch_size=2"],
}
#: ``--tiny`` TLCR patches.
TINY_CROP = {"patch_size": [16, 16, 16], "spacing": [3.5, 3.5, 6.0]}


def stage_overrides(stage: str, tiny: bool) -> list[str]:
    """Config overrides of a stage (``--tiny`` shrinking only; the paper configs as they are otherwise)."""
    return list(TINY[stage]) if tiny else []


# ---------------------------------------------------------------------- step measurement (worker process)
def _build(stage: str, tiny: bool, extra: list[str] | None = None) -> tuple[Any, Any, dict[str, Any]]:
    from neonet.run.lightning_cli import instantiate_stage_config

    return instantiate_stage_config(
        [REPO / "experiments" / "paper" / STAGES[stage]], stage_overrides(stage, tiny) + (extra or [])
    )


def _crop_patch(tiny: bool) -> tuple[int, ...]:
    if tiny:
        return tuple(TINY_CROP["patch_size"])
    return tuple(int(s) for s in yaml.safe_load((REPO / "experiments" / "paper" / "crop.yaml").read_text())["patch_size"])


def _label(batch: int, shape: tuple[int, ...], values: tuple[int, ...]) -> Any:
    """Nested boxes: ``values[0]`` in the central half of the patch, each next value in a box half as large."""
    import torch

    out = torch.zeros(batch, 1, *shape, dtype=torch.uint8)
    for i, v in enumerate(values):
        lo = [s // 2 - max(1, s // 2 ** (i + 2)) for s in shape]
        hi = [s // 2 + max(1, s // 2 ** (i + 2)) for s in shape]
        out[:, :, lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = v
    return out


def _latent_shape(tiny: bool) -> tuple[int, ...]:
    """(C, x, y, z) of the configured autoencoder's latents of a crop patch."""
    from neonet.gen.common import autoencoder_factor

    ae = _build("autoencoder", tiny)[0].autoencoder
    factor = autoencoder_factor(ae)
    return (int(ae.latent_channels), *(s // factor for s in _crop_patch(tiny)))


def stage_batch(stage: str, dm: Any, tiny: bool) -> dict[str, Any]:
    """A synthetic training batch of the stage's shapes (the DataModule's batch size and patch settings)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    b = int(dm.batch_size)
    if stage.startswith("seg"):
        b *= int(dm.samples_per_volume or 1)
        shape = tuple(int(s) for s in dm.patch_size)
        return {"image": torch.rand(b, 1, *shape, generator=gen), "label": _label(b, shape, (1, 2)).float()}
    patch = _crop_patch(tiny)
    pni = torch.arange(b) % 2
    if stage == "autoencoder":
        return {"image": torch.rand(b, 1, *patch, generator=gen)}
    if stage in ("diffusion", "controlnet"):
        out = {"z": torch.randn(b, *_latent_shape(tiny), generator=gen), "pni": pni}
        if stage == "controlnet":
            out["label"] = _label(b, patch, (1, 2, 3))
        return out
    shape = tuple(max(p, q) for p, q in zip(patch, dm.pad_to or patch))
    image = torch.rand(b, 1, *shape, generator=gen)
    if dm.label_channel:  # the TLCR label patch rides along as the last input channel
        image = torch.cat([image, _label(b, shape, (1, 2, 3)).float()], dim=1)
    return {"image": image, "label": pni.float()}


def prepare(stage: str, module: Any, tiny: bool) -> None:
    """Give the module what its fold's upstream stages and ``setup`` would (see the module docstring)."""
    from neonet.gen.common import freeze
    from neonet.gen.controlnet import init_controlnet_from_unet

    if stage in ("diffusion", "controlnet"):
        module.scale_factor.fill_(1.0)
    if stage == "diffusion":
        module.hparams.ema_start_step = -1
    if stage == "controlnet":
        diffusion = _build("diffusion", tiny)[0]
        module._adopt(
            freeze(diffusion.unet), diffusion.noise_schedule, diffusion.num_classes, float(diffusion.hparams.class_dropout)
        )
        init_controlnet_from_unet(module.controlnet, module.unet)
    if stage in CLS_STAGES:
        module.pos_weight_value = 1.0


def _gan_step(module: Any, opt_g: Any, opt_d: Any, image: Any, autocast: Callable[[], Any]) -> None:
    """``AutoencoderModule.training_step`` with the adversarial loss on, written out for a loop without a Trainer."""
    import torch

    ae, disc, hp = module.autoencoder, module.discriminator, module.hparams
    disc.requires_grad_(False)
    with autocast():
        recon, mu, sigma = ae(image)
        adv = module.adv_loss(disc(recon.contiguous().float())[-1], target_is_real=True, for_discriminator=False)
        loss_g = module.generator_loss(image, recon, mu, sigma)["loss"] + hp.adv_weight * adv
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    if hp.grad_clip:
        torch.nn.utils.clip_grad_norm_(ae.parameters(), hp.grad_clip)
    opt_g.step()
    disc.requires_grad_(True)
    with autocast():
        fake = module.adv_loss(disc(recon.detach().contiguous().float())[-1], target_is_real=False, for_discriminator=True)
        real = module.adv_loss(disc(image.contiguous().float())[-1], target_is_real=True, for_discriminator=True)
        loss_d = hp.adv_weight * 0.5 * (fake + real)
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    if hp.grad_clip:
        torch.nn.utils.clip_grad_norm_(disc.parameters(), hp.grad_clip)
    opt_d.step()


def step_fn(stage: str, module: Any) -> Callable[[dict[str, Any], Callable[[], Any]], None]:
    """``step(batch, autocast)``: one training step of the stage (forward, backward, optimizer step, hooks)."""
    if stage == "autoencoder":
        opt_g = module.optimizer_factory(module.autoencoder.parameters())
        opt_d = module.disc_optimizer_factory(module.discriminator.parameters())
        return lambda batch, autocast: _gan_step(module, opt_g, opt_d, batch["image"], autocast)
    opt = module.optimizer_factory([p for p in module.parameters() if p.requires_grad])

    def step(batch: dict[str, Any], autocast: Callable[[], Any]) -> None:
        module.on_train_batch_start(batch, 0)
        with autocast():
            loss = module.training_step(batch, 0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        module.on_train_batch_end(loss, batch, 0)

    return step


def _count(module: Any) -> dict[str, int]:
    params = list(module.parameters())
    return {"total": sum(p.numel() for p in params), "trainable": sum(p.numel() for p in params if p.requires_grad)}


def _projection_facts(stage: str, dm: Any, config: dict[str, Any]) -> dict[str, Any]:
    """What the projection needs from the resolved config: epochs, folds, batch, inner validation, latent cache."""
    facts: dict[str, Any] = {
        "max_epochs": config["trainer"].get("max_epochs"),
        "folds": int(dm.folds),
        "val_fraction": float(dm.val_fraction),
        "batch_size": int(dm.batch_size),
        "precision": config["trainer"].get("precision"),
    }
    if stage.startswith("seg"):
        facts["samples_per_volume"] = int(dm.samples_per_volume or 1)
    if stage in ("diffusion", "controlnet"):  # the latent cache: posterior samples x flip combinations per patch
        ae = yaml.safe_load((REPO / "experiments" / "paper" / STAGES["autoencoder"]).read_text())["model"]["init_args"]
        facts["latent_items_per_case"] = int(ae.get("latent_samples", 1)) * 2 ** len(ae.get("latent_flip_axes") or [])
    return facts


def measure_stage(stage: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Build one stage from its config and measure its training step in each precision."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    device, tiny = spec["device"], bool(spec["tiny"])
    cuda = device == "cuda"
    extra = ["--model.init_args.encoder_checkpoint=null"] if stage == "pattennet" else []
    module, dm, config = _build(stage, tiny, extra)
    prepare(stage, module, tiny)
    module.to(device)  # train mode as built; frozen parts (PattenNet's encoder, the ControlNet's UNet) stay in eval
    batch = {k: v.to(device) for k, v in stage_batch(stage, dm, tiny).items()}
    step = step_fn(stage, module)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    out: dict[str, Any] = {
        "stage": stage,
        "config": f"experiments/paper/{STAGES[stage]}",
        "overrides": stage_overrides(stage, tiny) + extra,
        "module": type(module).__name__,
        "network": {k: type(v).__name__ for k, v in module.named_children() if k in ("net", "autoencoder", "unet", "controlnet")},
        "params": _count(module),
        "batch": int(next(iter(batch.values())).shape[0]),
        "shapes": {k: list(v.shape) for k, v in batch.items()},
        "projection": _projection_facts(stage, dm, config),
        "device_name": torch.cuda.get_device_name(0) if cuda else None,
        # fp32 convolutions run in TF32 where cuDNN allows it (torch's default), matmuls only when this says so
        "tf32": {"cudnn": torch.backends.cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32} if cuda else None,
        "precisions": {},
    }
    try:  # counted once, in fp32 (the same operations run under bf16 autocast)
        with FlopCounterMode(display=False) as counter:
            step(batch, nullcontext)
        out["flops_per_step"] = int(counter.get_total_flops())
    except Exception as exc:  # e.g. fp32 out of memory: the bf16 timing may still work
        out["flops_per_step"], out["flops_error"] = None, f"{type(exc).__name__}: {exc}"[:2000]
        if cuda:
            torch.cuda.empty_cache()
    for precision in spec["precisions"]:

        def autocast(p: str = precision) -> AbstractContextManager[Any]:
            return torch.autocast(device_type=device, dtype=torch.bfloat16) if p == "bf16-mixed" else nullcontext()

        try:
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            for _ in range(int(spec["warmup"])):
                step(batch, autocast)
            times = []
            for _ in range(int(spec["steps"])):
                sync()
                start = time.perf_counter()
                step(batch, autocast)
                sync()
                times.append(time.perf_counter() - start)
            step_s = statistics.median(times)
            out["precisions"][precision] = {
                "step_s": step_s,
                "step_s_all": times,
                "samples_per_s": out["batch"] / step_s,
                "peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
                "tflops_per_s": out["flops_per_step"] / step_s / 1e12 if out["flops_per_step"] else None,
            }
        except Exception as exc:  # one precision failing (e.g. out of memory) leaves the other
            out["precisions"][precision] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
            if cuda:
                torch.cuda.empty_cache()
    return out


def worker(spec: dict[str, Any]) -> None:
    """Measure ``spec['stages']`` one after another, printing one ``RESULT`` line per stage as it finishes."""
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    for stage in spec["stages"]:
        print(f"START {stage}", flush=True)
        try:
            result = measure_stage(stage, spec)
        except Exception as exc:
            result = {"stage": stage, "error": f"{type(exc).__name__}: {exc}"[:2000]}
        print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    worker(json.loads(sys.argv[1]))
