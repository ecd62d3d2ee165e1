"""Learnable soft-histogram pooling: exact shares on known inputs, gradients, and a task only it can solve."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from neonet.nets import PattenNet, SoftHistogramPool3d


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_values_on_bin_centres_give_exact_shares_within_the_region() -> None:
    pool = SoftHistogramPool3d(channels=1, bins=5, low=-2.0, high=2.0).eval()  # running stats: mean 0, var 1
    x = torch.full((1, 1, 2, 2, 2), -1.0)
    x[0, 0, 0] = 1.0  # half the voxels at centre +1, half at centre -1
    shares = pool(x)
    torch.testing.assert_close(shares, torch.tensor([[0.0, 0.5, 0.0, 0.5, 0.0]]), atol=1e-4, rtol=0)
    weights = torch.zeros(1, 1, 2, 2, 2)
    weights[0, 0, 0] = 1.0  # the region is the +1 half only
    torch.testing.assert_close(pool(x, weights), torch.tensor([[0.0, 0.0, 0.0, 1.0, 0.0]]), atol=1e-4, rtol=0)
    x[0, 0, 1, 0, 0] = 0.5  # halfway between centres 0 and 1: split between both bins
    torch.testing.assert_close(pool(x)[0, 2:4], torch.tensor([0.0625, 0.5625]), atol=1e-4, rtol=0)


def test_shape_gradients_and_bad_arguments() -> None:
    pool = SoftHistogramPool3d(channels=3, bins=4)
    x = torch.randn(2, 3, 4, 4, 2, requires_grad=True)
    out = pool(x, torch.rand(2, 1, 4, 4, 2))
    assert out.shape == (2, 12) == (2, pool.out_features)
    out.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert pool.centres.grad.abs().sum() > 0 and pool.log_width.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="channels"):
        pool(torch.randn(1, 2, 4, 4, 2))
    with pytest.raises(ValueError, match="bins"):
        SoftHistogramPool3d(3, bins=1)


def test_region_norm_describes_each_patch_alone_and_ignores_the_batch_and_the_mode() -> None:
    pool = SoftHistogramPool3d(channels=2, bins=5, low=-2.0, high=2.0, norm="region")
    x = torch.randn(3, 2, 4, 4, 2)
    weights = (torch.rand(3, 1, 4, 4, 2) > 0.4).float()
    weights[2] = 0.0
    weights[2, 0, :2] = 1.0  # a patch whose region is half of it
    alone = torch.cat([pool(x[i : i + 1], weights[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(pool(x, weights), alone)  # no batch statistics
    torch.testing.assert_close(pool.eval()(x, weights), alone)  # and none that differ in eval mode
    # an affine change of a channel (positive scale) leaves its region histogram unchanged
    moved = x.clone()
    moved[:, 1] = 3.0 * x[:, 1] - 7.0
    torch.testing.assert_close(pool(moved, weights), alone, atol=1e-5, rtol=0)
    # bf16 features (bf16-mixed training): statistics in float32, shares close to the float32 ones
    torch.testing.assert_close(pool(x.bfloat16(), weights), alone, atol=0.02, rtol=0)
    # the values outside the region do not matter
    outside = torch.where(weights > 0, x, torch.full_like(x, 100.0))
    torch.testing.assert_close(pool(outside, weights), alone, atol=1e-5, rtol=0)
    # a region of values -1 and +1 in equal shares: standardised they sit on the centres -1 and +1
    two = torch.full((1, 1, 2, 2, 2), -1.0)
    two[0, 0, 0] = 1.0
    one_channel = SoftHistogramPool3d(channels=1, bins=5, norm="region")
    torch.testing.assert_close(one_channel(two + 5.0), torch.tensor([[0.0, 0.5, 0.0, 0.5, 0.0]]), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="norm"):
        SoftHistogramPool3d(2, norm="instance")  # type: ignore[arg-type]


class Identity1(nn.Module):
    out_channels = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def mixture_task(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 1: half the voxels at 0.5, half at 1.5. Class 0: all at 1.0 but one at 0.5 and one at 1.5.

    Both classes have mean 1.0, max 1.5 and min 0.5, so average and max pooling cannot tell them apart.
    """
    y = torch.arange(n) % 2
    x = torch.ones(n, 1, 4, 4, 4)
    for i in range(n):
        flat = torch.randperm(64)
        values = torch.ones(64)
        if y[i]:
            values[flat[:32]], values[flat[32:]] = 0.5, 1.5
        else:
            values[flat[0]], values[flat[1]] = 0.5, 1.5
        x[i, 0] = values.view(4, 4, 4)
    return x, y.float()


@pytest.mark.parametrize(
    ("pool", "norm", "learns"), [("avgmax", "batch", False), ("hist", "batch", True), ("hist", "region", True)]
)
def test_histogram_pooling_learns_what_average_and_max_cannot(pool: str, norm: str, learns: bool) -> None:
    x, y = mixture_task(32)
    net = PattenNet(
        Identity1(), num_blocks=0, pool=pool, hist_bins=6, hist_norm=norm, hidden=8, dropout=0.0, freeze_encoder=False
    )
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(150):
        loss = nn.functional.binary_cross_entropy_with_logits(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    x_new, y_new = mixture_task(32)
    accuracy = ((net(x_new) > 0).float() == y_new).float().mean().item()
    assert (accuracy > 0.9) if learns else (accuracy < 0.75), accuracy
