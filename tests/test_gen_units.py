"""NeoGen building blocks: ControlNet initialisation, samplers, MS-SSIM settings, KID, mask augmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.networks.nets import ControlNet, DiffusionModelUNet

from neonet.errors import NeonetError

REPO = Path(__file__).resolve().parents[1]
UNET_ARGS = dict(
    spatial_dims=3,
    in_channels=3,
    channels=[8, 16],
    attention_levels=[False, True],
    num_res_blocks=1,
    norm_num_groups=4,
    num_head_channels=8,
    num_class_embeds=3,
)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _unet() -> DiffusionModelUNet:
    torch.manual_seed(0)
    unet = DiffusionModelUNet(out_channels=3, **UNET_ARGS)
    with torch.no_grad():  # MONAI zero-inits the UNet's output conv too: make its output non-trivial
        for p in unet.out.parameters():
            p.normal_(0, 0.1)
    return unet.eval()


def _controlnet(**over) -> ControlNet:
    args = dict(UNET_ARGS, conditioning_embedding_in_channels=3, conditioning_embedding_num_channels=[4, 8, 16])
    args.update(over)
    return ControlNet(**args).eval()


def test_controlnet_at_initialisation_leaves_unet_output_unchanged():
    from neonet.gen.controlnet import init_controlnet_from_unet

    unet, controlnet = _unet(), _controlnet()
    n = init_controlnet_from_unet(controlnet, unet)
    assert n > 0
    for key, value in controlnet.state_dict().items():
        if key in unet.state_dict():
            assert torch.equal(value, unet.state_dict()[key]), key
    z = torch.randn(2, 3, 4, 4, 4)
    t = torch.tensor([10, 500])
    labels = torch.tensor([1, 2])
    mask = (torch.rand(2, 3, 16, 16, 16) > 0.5).float()  # full resolution: 3 embedding levels = /4
    with torch.no_grad():
        plain = unet(z, t, class_labels=labels)
        down, mid = controlnet(z, t, mask, conditioning_scale=1.0, class_labels=labels)
        guided = unet(z, t, class_labels=labels, down_block_additional_residuals=down, mid_block_additional_residual=mid)
    assert plain.abs().sum() > 0
    assert torch.equal(plain, guided)
    assert all(torch.count_nonzero(r) == 0 for r in down) and torch.count_nonzero(mid) == 0


def test_controlnet_that_does_not_match_the_unet_is_refused():
    from neonet.gen.controlnet import init_controlnet_from_unet

    with pytest.raises(NeonetError, match="does not match the diffusion UNet"):
        init_controlnet_from_unet(_controlnet(channels=[8, 24], norm_num_groups=4), _unet())


def test_ddim_and_ddpm_sampling_loops_with_guidance_and_control():
    from neonet.gen.controlnet import init_controlnet_from_unet
    from neonet.gen.sampling import Denoiser, NoiseSchedule, effective_steps, sample_latents

    unet, controlnet = _unet(), _controlnet()
    init_controlnet_from_unet(controlnet, unet)
    schedule = NoiseSchedule(num_train_timesteps=20)
    assert schedule.ddim().clip_sample is False and schedule.ddpm().clip_sample is False
    mask = torch.zeros(1, 3, 16, 16, 16)
    den = Denoiser(
        unet, controlnet, mask, conditioning_scale=0.5, class_label=torch.tensor([1]), null_class=2, guidance_scale=3.0
    )
    noise = torch.randn(1, 3, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    a = sample_latents(den, schedule, noise, "ddim", steps=5)
    b = sample_latents(den, schedule, noise, "ddim", steps=5)
    assert torch.equal(a, b) and torch.isfinite(a).all()  # DDIM with eta=0 is deterministic
    c = sample_latents(den, schedule, noise, "ddpm", generator=torch.Generator().manual_seed(1))
    assert c.shape == noise.shape and torch.isfinite(c).all()
    assert effective_steps(schedule, "ddpm", 5) == 20 and effective_steps(schedule, "ddim", 5) == 5
    with pytest.raises(ValueError, match="guidance"):
        Denoiser(unet, guidance_scale=2.0)


@pytest.mark.parametrize("shape", [(16, 16, 8), (32, 32, 16), (96, 96, 48)])
def test_ms_ssim_settings_fit_the_patch_size(shape):
    from monai.metrics import MultiScaleSSIMMetric

    from neonet.gen.common import ms_ssim_settings

    kernel, weights = ms_ssim_settings(shape)
    assert abs(sum(weights) - 1) < 1e-6 and len(weights) >= 2
    x = torch.rand(2, 1, *shape)
    metric = MultiScaleSSIMMetric(spatial_dims=3, data_range=1.0, kernel_size=kernel, weights=weights)
    assert float(metric(x, x).mean()) == pytest.approx(1.0, abs=1e-4)
    assert float(metric(x, torch.rand_like(x)).mean()) < 0.5
    if shape == (96, 96, 48):
        with pytest.raises(ValueError):  # MONAI's default settings do not fit (NEONET.md)
            MultiScaleSSIMMetric(spatial_dims=3, data_range=1.0)(x, x)


def test_kid_is_near_zero_for_same_distribution_and_positive_for_shift():
    from neonet.gen.quality import kid_with_baseline

    rng = np.random.default_rng(0)
    real = rng.normal(size=(60, 8))
    same = kid_with_baseline(rng.normal(size=(20, 8)), real)
    shifted = kid_with_baseline(rng.normal(loc=1.5, size=(20, 8)), real)
    assert abs(same["kid"]) < shifted["kid"] and shifted["kid"] > 5 * abs(same["kid_real"])
    assert same["kid_n"] == 20


def test_scale_factor_is_one_over_std():
    from neonet.gen.diffusion import DiffusionModule

    module = DiffusionModule(DiffusionModelUNet(out_channels=3, **UNET_ARGS), num_classes=2, ema_decay=0.0)
    z = torch.randn(4, 3, 4, 4, 4) * 3.0 + 1.0
    assert module.compute_scale_factor(z) == pytest.approx(1.0 / float(z.std(unbiased=False)), rel=1e-4)
    assert "scale_factor" in module.state_dict()


def test_class_embedding_must_include_the_null_class():
    from neonet.gen.diffusion import DiffusionModule

    with pytest.raises(NeonetError, match="null class"):
        DiffusionModule(DiffusionModelUNet(out_channels=3, **UNET_ARGS), num_classes=3)


def test_mask_augmentation_is_reproducible_unique_and_keeps_the_tumour():
    from neonet.gen.mask_aug import MaskAugmentation, apply_params, augment_mask, mask_digest
    from neonet.gen.toy import toy_patch

    _, label = toy_patch(np.random.default_rng(0), (16, 16, 8), 1)
    affine = np.diag([7.0, 7.0, 12.0, 1.0])
    seen = {mask_digest(label)}
    rng = np.random.default_rng(1)
    for _ in range(6):
        out, params = augment_mask(label, affine, rng, MaskAugmentation(), avoid=seen)
        assert (out == 3).sum() >= 0.5 * (label == 3).sum()
        assert np.array_equal(apply_params(label, affine, params), out)  # the manifest's params recreate it
    assert len(seen) == 7


def test_synthetic_count():
    from neonet.data.patches import PatchRecord
    from neonet.gen.synthesize import synthetic_count

    recs = [PatchRecord(str(i), str(i), p, Path("i"), Path("l")) for i, p in enumerate([1, 1, 0, 0, 0, 0, 0])]
    assert synthetic_count(recs, 1.0) == 3
    assert synthetic_count(recs, 0.8) == 2  # 0.8 x 5 PNI- = 4 PNI+ wanted, 2 real
    assert synthetic_count(recs[:4], 1.0) == 0


def test_perceptual_loss_never_downloads():
    from neonet.gen.autoencoder import build_perceptual_loss

    with pytest.raises(NeonetError, match="never downloads"):
        build_perceptual_loss("/nonexistent/resnet50.pth")


@pytest.mark.parametrize("stage", ["autoencoder", "diffusion", "controlnet"])
@pytest.mark.parametrize("folder", ["tests/conf", "experiments/demo"])
def test_configs_parse(stage, folder, capsys):
    from neonet.run.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(REPO / folder / f"{stage}.yaml"), "--print_config"])
    assert exc.value.code in (0, None)
    assert "neonet.gen." in capsys.readouterr().out


def test_quality_uses_the_folds_seg_network_when_present(tmp_path):
    import yaml

    from neonet.gen.quality import BottleneckFeatures, SegTumour
    from neonet.gen.upstream import load_seg_network
    from neonet.workspace import Workspace

    ws = Workspace(tmp_path, "exp")
    assert load_seg_network(ws, 0) is None
    spec = {
        "class_path": "monai.networks.nets.DynUNet",
        "init_args": {
            "spatial_dims": 3,
            "in_channels": 1,
            "out_channels": 3,
            "kernel_size": [3, 3, 3],
            "strides": [1, 2, 2],
            "upsample_kernel_size": [2, 2],
            "filters": [4, 8, 16],
            "norm_name": "instance",
        },
    }
    from neonet.run.reload import build_network
    from neonet.seg import SegModule

    net = build_network(spec)
    ws.checkpoint_dir("seg", 0).mkdir(parents=True)
    state = SegModule(net, channels_last=False).state_dict()
    torch.save({"state_dict": state}, ws.best_checkpoint("seg", 0))
    config = {
        "model": {"class_path": "neonet.seg.SegModule", "init_args": {"net": spec, "channels_last": False}},
        "data": {"class_path": "neonet.seg.SegDataModule", "init_args": {"cases": str(tmp_path / "cases.csv")}},
    }
    (ws.stage_dir("seg", 0) / "config.yaml").write_text(yaml.safe_dump(config))
    loaded = load_seg_network(ws, 0)
    assert loaded is not None and not loaded.training
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in net.state_dict().items())
    image = np.random.default_rng(0).random((16, 16, 8)).astype(np.float32)
    assert SegTumour(loaded)(image, image > 2).shape == (16, 16, 8)
    feats = BottleneckFeatures(loaded)(torch.as_tensor(image)[None, None])
    assert feats.shape == (1, 32)  # mean and sd of the 16 bottleneck channels


def test_synthesize_signature_gives_help(capsys):
    from jsonargparse import auto_cli

    from neonet.gen.synthesize import synthesize

    with pytest.raises(SystemExit):
        auto_cli(synthesize, args=["--help"], as_positional=False)
    text = capsys.readouterr().out
    for option in ("--ratio", "--sampler", "--steps", "--guidance_scale", "--conditioning_scale", "--folds", "--force"):
        assert option in text
