"""Tests of the plain networks: attention blocks, PattenNet, the AutoencoderKL encoder adapter, baselines."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import AutoencoderKL
from torch import nn

from neonet.nets import (
    BASELINES,
    AutoencoderKLEncoder,
    ChannelAttention3d,
    DualAttentionBlock3d,
    PattenNet,
    SpatialAttention3d,
    SqueezeLogit,
    build_baseline,
    load_backbone_weights,
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def small_autoencoder() -> AutoencoderKL:
    return AutoencoderKL(
        spatial_dims=3,
        in_channels=1,
        out_channels=1,
        channels=(8, 16, 16),
        latent_channels=3,
        num_res_blocks=1,
        norm_num_groups=8,
        attention_levels=(False, False, False),
    )


class TinyEncoder(nn.Module):
    """Conv + BatchNorm + Dropout: has both running statistics and train/eval-dependent behaviour."""

    out_channels = 8

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv3d(1, 8, 3, padding=1), nn.BatchNorm3d(8), nn.ReLU(), nn.Dropout3d(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# ---------------------------------------------------------------- attention blocks


@pytest.mark.parametrize("channels,reduction,expected", [(64, 16, 4), (8, 16, 4), (2, 16, 2), (256, 16, 16), (1, 16, 1)])
def test_channel_attention_hidden_width_never_zero(channels: int, reduction: int, expected: int) -> None:
    assert ChannelAttention3d(channels, reduction).hidden == expected


def test_attention_blocks_keep_shape_and_weights_in_unit_interval() -> None:
    x = torch.randn(2, 8, 8, 8, 4)
    ca, sa = ChannelAttention3d(8), SpatialAttention3d(7)
    assert ca(x).shape == x.shape and sa(x).shape == x.shape
    w_c, w_s = ca.attention(x), sa.attention(x)
    assert w_c.shape == (2, 8, 1, 1, 1) and w_s.shape == (2, 1, 8, 8, 4)
    assert bool(((w_c > 0) & (w_c < 1)).all()) and bool(((w_s > 0) & (w_s < 1)).all())
    assert sa.conv.kernel_size == (7, 7, 7) and sa.conv.in_channels == 2 and sa.conv.out_channels == 1
    with pytest.raises(ValueError):
        SpatialAttention3d(6)


def test_dual_attention_block_shape_gradients_and_residual() -> None:
    x = torch.randn(2, 8, 8, 8, 4, requires_grad=True)
    dab = DualAttentionBlock3d(8)
    y = dab(x)
    assert y.shape == x.shape
    y.square().mean().backward()
    assert x.grad is not None
    for name, p in dab.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name

    plain = DualAttentionBlock3d(8, residual=False)
    plain.load_state_dict(dab.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(dab(x), x + plain(x))


# ---------------------------------------------------------------- PattenNet


def test_pattennet_shape_gradients_and_frozen_encoder() -> None:
    net = PattenNet(TinyEncoder(), encoder_channels=8, hidden=16)
    x = torch.randn(2, 1, 8, 8, 4)
    net.train()
    logits = net(x)
    assert logits.shape == (2,)
    nn.functional.binary_cross_entropy_with_logits(logits, torch.tensor([0.0, 1.0])).backward()
    assert all(not p.requires_grad and p.grad is None for p in net.encoder.parameters())
    for name, p in net.attention.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is not None for p in net.head.parameters())


def test_pattennet_encoder_stays_eval_after_train() -> None:
    net = PattenNet(TinyEncoder(), hidden=16)  # channels inferred from encoder.out_channels
    assert net.encoder_channels == 8
    net.train()
    assert net.training and net.attention.training and net.head.training
    assert not any(m.training for m in net.encoder.modules())
    net.eval()
    net.train(True)
    assert not net.encoder.training
    x = torch.randn(2, 1, 8, 8, 4)
    torch.testing.assert_close(net.encode(x), net.encode(x))  # dropout off, batch norm uses running stats


def test_pattennet_optimizer_step_leaves_encoder_bit_identical() -> None:
    net = PattenNet(AutoencoderKLEncoder(small_autoencoder()), hidden=16)
    before = {k: v.clone() for k, v in net.encoder.state_dict().items()}
    head_before = net.head[1].weight.detach().clone()
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    net.train()
    x = torch.randn(2, 1, 32, 32, 16)
    for _ in range(2):
        opt.zero_grad()
        nn.functional.binary_cross_entropy_with_logits(net(x), torch.tensor([0.0, 1.0])).backward()
        opt.step()
    after = net.encoder.state_dict()
    assert before.keys() == after.keys()
    for k, v in before.items():
        assert torch.equal(v, after[k]), k
    assert not torch.equal(head_before, net.head[1].weight)


def test_pattennet_unfrozen_encoder_gets_gradients() -> None:
    net = PattenNet(TinyEncoder(), hidden=16, freeze_encoder=False)
    net.train()
    assert net.encoder.training
    net(torch.randn(2, 1, 8, 8, 4)).sum().backward()
    assert all(p.grad is not None for p in net.encoder.parameters())


# ---------------------------------------------------------------- AutoencoderKL encoder


@pytest.mark.parametrize("tap,channels", [("features", 16), ("latent", 3)])
def test_autoencoder_encoder_taps(tap: str, channels: int) -> None:
    ae = small_autoencoder().eval()
    enc = AutoencoderKLEncoder(ae, tap=tap).eval()
    assert enc.out_channels == channels and enc.downsample_factor == 4
    x = torch.randn(2, 1, 32, 32, 16)
    with torch.no_grad():
        out = enc(x)
        assert out.shape == (2, channels, 8, 8, 4)
        if tap == "latent":
            z_mu, _ = ae.encode(x)
            torch.testing.assert_close(out, z_mu)
        else:  # the map that the encoder's final GroupNorm + conv turn into the latent
            h = ae.encoder.blocks[-1](ae.encoder.blocks[-2](out))
            torch.testing.assert_close(ae.quant_conv_mu(h), ae.encode(x)[0])
    assert not any(k.startswith("decoder") for k in enc.state_dict())


@pytest.mark.parametrize("attention", [False, True])
def test_autoencoder_encoder_level_taps_are_the_maps_before_each_downsampling(attention: bool) -> None:
    ae = AutoencoderKL(
        spatial_dims=3,
        in_channels=1,
        out_channels=1,
        channels=(8, 16, 16),
        latent_channels=3,
        num_res_blocks=1,
        norm_num_groups=8,
        attention_levels=(False, False, attention),
        with_encoder_nonlocal_attn=attention,
    ).eval()
    blocks = list(ae.encoder.blocks)
    downs = [b for b in blocks if type(b).__name__.endswith("Downsample")]
    # the input of each downsampling block, and of the block after the last level's own blocks
    after_last_level = blocks[blocks.index(downs[-1]) + 1 + (2 if attention else 1)]
    seen: dict[int, torch.Tensor] = {}
    hooks = [
        m.register_forward_pre_hook(lambda _m, a, k=k: seen.__setitem__(k, a[0].clone()))
        for k, m in enumerate([*downs, after_last_level])
    ]
    x = torch.randn(2, 1, 32, 32, 16)
    with torch.no_grad():
        ae.encode(x)
        for h in hooks:
            h.remove()
        for level, (channels, factor) in enumerate([(8, 1), (16, 2), (16, 4)]):
            enc = AutoencoderKLEncoder(ae, tap=f"level{level}").eval()
            assert enc.out_channels == channels and enc.downsample_factor == factor
            out = enc(x)
            assert out.shape == (2, channels, 32 // factor, 32 // factor, 16 // factor)
            torch.testing.assert_close(out, seen[level])
    if not attention:  # without non-local blocks the last level is the "features" tap
        torch.testing.assert_close(AutoencoderKLEncoder(ae, tap="level2")(x), AutoencoderKLEncoder(ae, tap="features")(x))
    with pytest.raises(ValueError, match="level0, level1, level2"):
        AutoencoderKLEncoder(ae, tap="level3")


def test_autoencoder_encoder_shares_weights_and_rejects_bad_tap() -> None:
    ae = small_autoencoder()
    enc = AutoencoderKLEncoder(ae, tap="latent")
    assert enc.blocks[0] is ae.encoder.blocks[0] and enc.quant_conv_mu is ae.quant_conv_mu
    with pytest.raises(ValueError):
        AutoencoderKLEncoder(ae, tap="bottleneck")  # type: ignore[arg-type]


# ---------------------------------------------------------------- baselines


VIT_SMALL = {
    "img_size": (32, 32, 16),
    "patch_size": (16, 16, 8),
    "hidden_size": 48,
    "mlp_dim": 96,
    "num_layers": 1,
    "num_heads": 4,
}


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_baselines_give_one_logit_per_sample(name: str) -> None:
    kwargs = VIT_SMALL if name == "vit" else {}
    # DenseNet-121 downsamples by 32: every axis must be >= 32 voxels.
    shape = (2, 1, 32, 32, 32) if name == "densenet121" else (2, 1, 32, 32, 16)
    net = build_baseline(name, **kwargs)
    assert isinstance(net, SqueezeLogit)
    net.eval()
    with torch.no_grad():
        out = net(torch.randn(*shape))
    assert out.shape == (2,)
    assert torch.isfinite(out).all()


def test_resnet18_widen_factor_scales_channels() -> None:
    full, half = build_baseline("resnet18"), build_baseline("resnet18", widen_factor=0.5)
    count = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    assert 3.5 < count(full) / count(half) < 4.5  # conv weights scale with the square of the width
    half.eval()
    with torch.no_grad():
        assert half(torch.randn(2, 1, 32, 32, 16)).shape == (2,)
    with pytest.raises(ValueError, match="widen_factor"):
        build_baseline("resnet18", widen_factor=0.0)


def test_build_baseline_unknown_name() -> None:
    with pytest.raises(ValueError, match="unknown baseline"):
        build_baseline("alexnet")


def test_vit_logit_is_not_tanh_bounded() -> None:
    net = build_baseline("vit", **VIT_SMALL)
    assert not any(isinstance(m, nn.Tanh) for m in net.modules())


def test_load_backbone_weights_strict_outside_head(tmp_path) -> None:
    src = build_baseline("resnet18")
    state = {f"module.{k}": v for k, v in src.net.state_dict().items() if not k.startswith("fc.")}
    path = tmp_path / "medicalnet.pth"
    torch.save({"state_dict": state}, path)
    dst = build_baseline("resnet18", pretrained_path=str(path))
    torch.testing.assert_close(dst.net.conv1.weight, src.net.conv1.weight)

    del state["module.conv1.weight"]
    torch.save(state, path)
    with pytest.raises(RuntimeError, match="medicalnet.pth"):
        load_backbone_weights(dst.net, path, head_prefixes=("fc.",))
    with pytest.raises(FileNotFoundError):
        load_backbone_weights(src.net, tmp_path / "absent.pth")


# ---------------------------------------------------------------- region pooling


class PoolEncoder(nn.Module):
    """Halves each spatial size by average pooling and copies the image into 2 channels."""

    out_channels = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.avg_pool3d(x, 2)
        return torch.cat([y, -y], dim=1)


def test_region_pooling_covers_only_the_labelled_cells() -> None:
    net = PattenNet(PoolEncoder(), num_blocks=0, pool="avgmax", region_labels=[2], hidden=4)
    feats = torch.arange(2 * 2 * 4 * 4 * 2, dtype=torch.float32).reshape(2, 2, 4, 4, 2)
    label = torch.zeros(2, 1, 8, 8, 4)
    label[0, 0, :2, :2, :2] = 2  # sample 0: exactly feature cell (0, 0, 0)
    label[0, 0, 4:6, 4:5, 2:4] = 2  # and half of cell (2, 2, 1)
    label[1, 0] = 3  # sample 1: no shell at all -> global pooling
    pooled = net.pool(feats, label)
    f0 = feats[0]
    avg0 = (f0[:, 0, 0, 0] * 1.0 + f0[:, 2, 2, 1] * 0.5) / 1.5
    max0 = torch.maximum(f0[:, 0, 0, 0], f0[:, 2, 2, 1])
    torch.testing.assert_close(pooled[0], torch.cat([avg0, max0]))
    torch.testing.assert_close(pooled[1], torch.cat([feats[1].mean((1, 2, 3)), feats[1].amax((1, 2, 3))]))


def test_region_pattennet_reads_the_label_channel_and_ignores_image_outside_region() -> None:
    net = PattenNet(PoolEncoder(), num_blocks=0, pool="avg", region_labels=[2], hidden=4, head_norm=True).eval()
    image = torch.rand(2, 1, 8, 8, 4)
    label = torch.zeros(2, 1, 8, 8, 4)
    label[:, :, :4, :4, :] = 2
    out = net(torch.cat([image, label], dim=1))
    assert out.shape == (2,)
    changed = image.clone()
    changed[:, :, 4:, 4:, :] += 5.0  # far from the shell: not in any pooled cell
    torch.testing.assert_close(net(torch.cat([changed, label], dim=1)), out)
    changed[:, :, :2, :2, :2] += 5.0  # inside the shell
    assert not torch.allclose(net(torch.cat([changed, label], dim=1)), out)
    with pytest.raises(ValueError, match="label_channel"):
        net(image)
    assert isinstance(net.head[0], nn.BatchNorm1d)
