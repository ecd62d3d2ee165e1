"""Tests of the torchio augmentation wrapper used by the NeoSeg and NeoCls DataModules."""

from __future__ import annotations

import pytest
import torch
import torchio as tio
from monai.data import MetaTensor

from neonet.data.transforms import ContrastRemapd, TorchioAugmentd, mri_augmentation


def _sample() -> dict[str, MetaTensor]:
    generator = torch.Generator().manual_seed(0)
    image = MetaTensor(torch.rand(1, 24, 20, 12, generator=generator))
    label = MetaTensor(torch.randint(0, 4, (1, 24, 20, 12), generator=generator).float())
    return {"image": image, "label": label}


def test_augmentation_never_touches_its_input() -> None:
    """With ``copy=False`` in torchio, the wrapper's own copy must keep the caller's tensors intact."""
    data = _sample()
    before = {key: value.clone() for key, value in data.items()}
    augment = TorchioAugmentd(["image", "label"], mri_augmentation(p=1.0, flip_axes=(0, 1, 2)))
    changed = 0
    for seed in range(8):
        torch.manual_seed(seed)
        out = augment(data)
        changed += int(not torch.equal(out["image"], before["image"]))
        assert out["image"].shape == before["image"].shape
    assert changed >= 6  # with p=1 nearly every call changes the image
    for key in data:
        assert torch.equal(data[key], before[key]), f"{key} was modified in place"


def test_spatial_augmentation_moves_image_and_label_together() -> None:
    """A flip applies to both keys; intensity transforms leave label values in their set."""
    data = _sample()
    flip = TorchioAugmentd(["image", "label"], tio.Compose([tio.RandomFlip(axes=(0,), flip_probability=1.0, copy=False)]))
    out = flip(data)
    assert torch.equal(torch.as_tensor(out["image"]), torch.flip(torch.as_tensor(data["image"]), dims=(1,)))
    assert torch.equal(torch.as_tensor(out["label"]), torch.flip(torch.as_tensor(data["label"]), dims=(1,)))
    torch.manual_seed(1)
    full = TorchioAugmentd(["image", "label"], mri_augmentation(p=1.0))(data)
    assert set(torch.unique(torch.as_tensor(full["label"])).tolist()) <= {0.0, 1.0, 2.0, 3.0}


def test_every_torchio_transform_skips_the_deep_copy() -> None:
    def walk(transform: tio.Transform):
        yield transform
        for child in getattr(transform, "transforms", []) or []:
            yield from walk(child)
        if isinstance(getattr(transform, "transforms_dict", None), dict):
            for child in transform.transforms_dict:
                yield from walk(child)

    transforms = list(walk(mri_augmentation()))
    assert len(transforms) >= 8
    assert all(t.copy is False for t in transforms)


def test_intensity_false_drops_only_the_ratio_changing_augmentations() -> None:
    """Bias field and gamma change tissue-intensity ratios; ``intensity=False`` switches off exactly those."""
    data = {"image": MetaTensor(torch.full((1, 16, 16, 8), 0.75)), "label": MetaTensor(torch.zeros(1, 16, 16, 8))}
    data["image"][:, :8] = 0.3
    ratios = []
    for intensity in (True, False):
        augment = TorchioAugmentd(
            ["image", "label"],
            tio.Compose(
                [
                    t
                    for t in mri_augmentation(p=1.0, flip_axes=(), intensity=intensity).transforms
                    if isinstance(t, (tio.RandomBiasField, tio.RandomGamma))
                ],
                copy=False,
            ),
        )
        torch.manual_seed(0)
        out = torch.as_tensor(augment(data)["image"])
        ratios.append(float(out[:, 8:].mean() / out[:, :8].mean()))
    assert abs(ratios[0] - 2.5) > 0.05  # with them, the 0.75 : 0.3 ratio moves
    assert ratios[1] == pytest.approx(2.5, abs=1e-5)


def test_contrast_remap_can_reverse_the_order_of_two_tissues() -> None:
    """MONAI's random intensity remapping is not monotone: over a few draws a darker tissue becomes the brighter one
    at least once (what no gamma or normalisation does); labels are left alone, and torch's seed fixes the draw."""
    image = torch.zeros(1, 16, 16, 8)
    image[:, :8] = 0.3  # "liver"
    image[:, 8:] = 0.6  # "spleen"
    image += torch.linspace(0.0, 0.2, 16)[None, None, :, None]  # a spread of values within each tissue
    label = (image > 0.5).float()
    data = {"image": MetaTensor(image.clone()), "label": MetaTensor(label.clone())}
    remap = ContrastRemapd(["image"], prob=1.0)
    reversed_order, outputs = 0, []
    for seed in range(12):
        torch.manual_seed(seed)
        out = remap(data)
        outputs.append(out["image"])
        assert out["image"].shape == image.shape and torch.equal(out["label"], label)
        assert float(out["image"].min()) >= 0.0 and float(out["image"].max()) <= 1.0 + 1e-6
        reversed_order += int(out["image"][:, :8].mean() > out["image"][:, 8:].mean())
    assert reversed_order >= 1
    torch.manual_seed(3)
    assert torch.equal(remap(data)["image"], outputs[3])
    assert torch.equal(data["image"], image)  # the input is not changed in place
    assert torch.equal(ContrastRemapd(["image"], prob=0.0)(data)["image"], image)
