"""``SegMaskWriter``: writes NeoSeg predictions as NIfTI masks in each input's original space.

The network's class probabilities, not its labels, are taken back to the input's grid: MONAI's
``Invertd`` undoes the padding, resampling and reorientation of the preprocessing with the image's
own (linear) interpolation on each softmax channel; the argmax and NeoSeg's post-processing then run
on the input's grid. A coarse training grid (e.g. 4.1 mm on 1.25 mm scans) so gives boundaries that
follow the interpolated probabilities instead of the coarse voxels' blocks. ``neonet predict`` (a
fold's out-of-fold masks), ``neonet predict-case`` and ``neonet evaluate`` (the folds' mean softmax)
all write their masks through :meth:`SegMaskWriter.write_masks`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, cast

import nibabel as nib
import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from monai.data import MetaTensor, decollate_batch
from monai.transforms import Invertd

from neonet.data.cases import case_file
from neonet.data.nifti import save_nifti
from neonet.seg.postprocess import postprocess_labels

log = logging.getLogger(__name__)


def native_min_voxels(min_voxels: int, canonical_zooms: Any, native_zooms: Any) -> int:
    """``min_voxels`` voxels of the canonical grid as a voxel count of the native grid (the same volume in mm³).

    Args:
        min_voxels: a component size counted on the grid the network saw.
        canonical_zooms: that grid's voxel spacing (mm).
        native_zooms: the input's voxel spacing (mm).
    """
    if min_voxels <= 0:
        return 0
    ratio = float(np.prod(np.asarray(canonical_zooms, dtype=np.float64))) / float(
        np.prod(np.asarray(native_zooms, dtype=np.float64))
    )
    return max(1, int(round(min_voxels * ratio)))


class SegMaskWriter(BasePredictionWriter):
    """Invert the preprocessing of each predicted softmax, take its argmax and save the mask with the input's affine.

    The mask has exactly the input image's shape and affine (project convention: 0 background,
    1 liver, 2 tumour, uint8). Files are written atomically.

    Args:
        output_dir: folder for ``<case>.nii.gz``; default: the experiment's
            ``seg/predictions/`` (from the DataModule).
    """

    def __init__(self, output_dir: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir) if output_dir else None
        self.written: list[Path] = []

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: dict[str, Any],
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        dm = trainer.datamodule  # type: ignore[attr-defined]  # set by Lightning at runtime, not declared on Trainer
        out_dir = self.output_dir or dm.output_dir()
        self.write_masks(prediction["prob"], batch, dm.predict_transform, out_dir, int(pl_module.hparams["min_tumor_voxels"]))

    def write_masks(self, probs: Any, batch: Any, transform: Any, out_dir: Path, min_tumor_voxels: int = 10) -> list[Path]:
        """Invert ``transform`` on each softmax map, take the argmax there, post-process and save ``<case>.nii.gz``.

        Args:
            probs: (B, C, X, Y, Z) class probabilities on the preprocessed grid (background, liver, tumour).
            batch: the collated batch (``image`` MetaTensors with their transform history, ``case_id``, ``source``).
            transform: the preprocessing that produced ``batch["image"]``.
            out_dir: the folder of the masks.
            min_tumor_voxels: tumour components smaller than this many voxels of the preprocessed grid are
                removed (converted to the input's grid by volume, :func:`native_min_voxels`).

        Returns:
            The masks written, in the batch's order.
        """
        # nearest_interp=False: each step is undone with the image's own interpolation (linear resampling)
        inverter = Invertd(keys="pred", transform=transform, orig_keys="image", nearest_interp=False)
        items = decollate_batch(batch)
        written = []
        for item, prob in zip(items, probs):
            image = item["image"]
            item["pred"] = MetaTensor(prob.detach().cpu().float().clone(), affine=image.affine, meta=dict(image.meta))
            restored = inverter(item)["pred"]
            src = cast(nib.Nifti1Image, nib.load(item["source"]))
            labels = torch.as_tensor(np.asarray(restored.detach().cpu())).argmax(0, keepdim=True).to(torch.uint8)
            if tuple(labels.shape[1:]) != tuple(src.shape[:3]):
                raise RuntimeError(
                    f"case {item['case_id']}: inverted mask shape {tuple(labels.shape[1:])} differs from image {src.shape}"
                )
            min_voxels = native_min_voxels(min_tumor_voxels, image.pixdim[:3], src.header.get_zooms()[:3])
            mask = postprocess_labels(labels, min_voxels)[0].numpy().astype(np.uint8)
            path = save_nifti(case_file(Path(out_dir), item["case_id"]), mask, src.affine)
            self.written.append(path)
            written.append(path)
            log.info("wrote %s", path)
        return written
