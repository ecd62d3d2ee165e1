"""NeoSeg's training flips: ``SegDataModule(flip_axes=...)`` reaches the torchio augmentation."""

from __future__ import annotations

from pathlib import Path

import torch

from neonet.seg import SegDataModule


def _augmented(cohort: Path, tmp_path: Path, seeds: int, **kwargs: object) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The first case preprocessed, and its training transform's output under ``seeds`` seeds (no other augmentation)."""
    dm = SegDataModule(
        cases=str(cohort),
        experiment="flips",
        runs_dir=str(tmp_path),
        aug_prob=0.0,
        divisible=8,
        spacing=[7.0, 7.0, 12.0],
        **kwargs,
    )  # type: ignore[arg-type]
    item = dm._items(dm.all_cases[:1])[0]
    base = torch.as_tensor(dm.base_transform(True)(dict(item))["image"])
    outs = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        outs.append(torch.as_tensor(dm.train_transform()(dict(item))["image"]))
    return base, outs


def test_default_flips_left_right_and_an_empty_list_never_flips(phantom_cohort: Path, tmp_path: Path) -> None:
    """Default (today's behaviour): about half the draws are the left-right mirror; ``flip_axes=[]``: none is."""
    base, outs = _augmented(phantom_cohort, tmp_path, 8)
    mirrored = torch.flip(base, dims=(1,))
    assert not torch.equal(base, mirrored)  # the phantom is not left-right symmetric
    flipped = sum(torch.equal(o, mirrored) for o in outs)
    kept = sum(torch.equal(o, base) for o in outs)
    assert flipped >= 1 and kept >= 1 and flipped + kept == len(outs)
    base, outs = _augmented(phantom_cohort, tmp_path, 8, flip_axes=[])
    assert all(torch.equal(o, base) for o in outs)
