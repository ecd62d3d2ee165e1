"""NeoSeg's mask writer: softmax taken back to the scan's grid by linear interpolation, argmax there."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor, decollate_batch, list_data_collate
from monai.transforms import Invertd

from neonet.data.cases import LIVER
from neonet.data.nifti import save_nifti
from neonet.seg.datamodule import seg_preprocessing
from neonet.seg.writer import SegMaskWriter, native_min_voxels

NATIVE = (1.0, 1.0, 2.0)  # the scan's voxel size (mm)
COARSE = (4.0, 4.0, 2.0)  # the network's grid: 4 x 4 native voxels in-plane
RADIUS = 13.3  # mm: a disc whose edge falls inside the coarse voxels, not on their borders


def _native_scan(tmp_path: Path) -> Path:
    """A 64 x 64 x 6 scan at 1 x 1 x 2 mm (RAS affine), its intensity irrelevant to the writer."""
    affine = np.diag([*NATIVE, 1.0])
    image = np.random.default_rng(0).random((64, 64, 6)).astype(np.float32)
    return save_nifti(tmp_path / "scan.nii.gz", image, affine)


def _disc(centres: np.ndarray) -> np.ndarray:
    """Distance (mm) inside the disc's edge of points given in mm, positive inside."""
    return RADIUS - np.hypot(centres[..., 0] - 32.0, centres[..., 1] - 32.0)


def test_softmax_inversion_gives_a_smooth_boundary_where_labels_give_blocks(tmp_path: Path) -> None:
    """A liver disc predicted on a 4 mm grid, written on the 1 mm scan: the mask follows the interpolated
    softmax (round, near the true disc) where nearest-neighbour label upsampling gives 4 x 4 voxel blocks."""
    scan = _native_scan(tmp_path)
    transform = seg_preprocessing(COARSE, divisible=1, with_label=False)
    batch = list_data_collate([transform({"image": str(scan), "case_id": "disc", "source": str(scan)})])
    coarse_shape = tuple(batch["image"].shape[2:])
    assert coarse_shape == (17, 17, 6)  # (64 - 1) * 1 mm / 4 mm + 1 voxels in-plane, from the same origin

    # liver probability from the distance to the disc's edge, sampled at the coarse voxel centres
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in coarse_shape], indexing="ij"), -1).astype(np.float64)
    centres_mm = np.asarray(batch["image"].affine[0])[:3, :3] @ grid[..., None]
    centres_mm = centres_mm[..., 0] + np.asarray(batch["image"].affine[0])[:3, 3]
    liver = 1.0 / (1.0 + np.exp(-_disc(centres_mm) / 2.0))
    prob = torch.as_tensor(np.stack([1.0 - liver, liver, np.zeros_like(liver)]), dtype=torch.float32)[None]

    path = SegMaskWriter().write_masks(prob, batch, transform, tmp_path / "out", min_tumor_voxels=0)[0]
    written = nib.load(path)
    mask = np.asarray(written.dataobj)
    assert mask.shape == (64, 64, 6) and np.allclose(written.affine, nib.load(scan).affine)

    # the old way: argmax on the coarse grid, the label map inverted with nearest-neighbour interpolation
    item = decollate_batch(batch)[0]
    item["pred"] = MetaTensor(prob[0].argmax(0, keepdim=True).float(), affine=item["image"].affine, meta=dict(item["image"].meta))
    nearest = Invertd(keys="pred", transform=transform, orig_keys="image", nearest_interp=True)(item)["pred"]
    blocky = np.rint(np.asarray(nearest[0])).astype(np.uint8)
    assert blocky.shape == mask.shape

    native = np.stack(np.meshgrid(*[np.arange(n) for n in (64, 64, 6)], indexing="ij"), -1) * np.asarray(NATIVE)
    truth = _disc(native) > 0

    def dice(a: np.ndarray) -> float:
        return float(2 * (a & truth).sum() / (a.sum() + truth.sum()))

    assert not np.array_equal(mask == LIVER, blocky == LIVER)
    # nearest neighbour: every in-plane run of liver starts and ends on a coarse voxel's border (4 mm steps);
    # the interpolated softmax puts the edge at any native voxel
    edges_old = {int(np.flatnonzero(row)[0]) % 4 for row in (blocky == LIVER)[:, :, 0] if row.any()}
    edges_new = {int(np.flatnonzero(row)[0]) % 4 for row in (mask == LIVER)[:, :, 0] if row.any()}
    assert len(edges_old) == 1 and len(edges_new) == 4
    assert dice(mask == LIVER) > dice(blocky == LIVER) + 0.02
    assert dice(mask == LIVER) > 0.97


def test_minimum_tumour_size_kept_in_mm3_on_the_scan_grid() -> None:
    """8 voxels of 4.1 x 4.1 x 7.7 mm are about 86 voxels of 1.25 x 1.25 x 7.7 mm; 0 keeps every component."""
    assert native_min_voxels(8, (4.1, 4.1, 7.7), (1.25, 1.25, 7.7)) == 86
    assert native_min_voxels(10, (1.5, 1.5, 4.0), (1.5, 1.5, 4.0)) == 10
    assert native_min_voxels(0, (4.0, 4.0, 4.0), (1.0, 1.0, 1.0)) == 0


def test_scan_already_on_the_network_grid_keeps_the_argmax(tmp_path: Path) -> None:
    """A scan on the training grid (as the demo's phantoms are): the written mask is the argmax on that grid."""
    scan = _native_scan(tmp_path)
    transform = seg_preprocessing(NATIVE, divisible=16, with_label=False)
    batch = list_data_collate([transform({"image": str(scan), "case_id": "same", "source": str(scan)})])
    assert tuple(batch["image"].shape[2:]) == (64, 64, 16)  # 6 slices padded to 16
    logits = 0.5 * torch.randn((1, 3, 64, 64, 16), generator=torch.Generator().manual_seed(0))
    logits[:, 0] += 3.0  # background, but for a liver block holding a small tumour
    logits[:, 1, 16:48, 16:48, 5:11] += 6.0
    logits[:, 2, 30:34, 30:34, 7:9] += 12.0
    prob = torch.softmax(logits, dim=1)
    mask = np.asarray(nib.load(SegMaskWriter().write_masks(prob, batch, transform, tmp_path / "out", 0)[0]).dataobj)
    expected = prob[0].argmax(0)[:, :, 5:11].numpy()  # DivisiblePad put 5 slices before the scan's 6
    assert set(np.unique(expected)) == {0, 1, 2}
    np.testing.assert_array_equal(mask, expected)
