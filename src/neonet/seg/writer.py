"""``SegMaskWriter``: writes NeoSeg predictions as NIfTI masks in each input's original space."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, cast

import nibabel as nib
import numpy as np
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from monai.data import MetaTensor, decollate_batch
from monai.transforms import Invertd

from neonet.data.cases import case_file
from neonet.data.nifti import save_nifti

log = logging.getLogger(__name__)


class SegMaskWriter(BasePredictionWriter):
    """Invert the preprocessing of each predicted mask and save it with the input's affine.

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
        self.write_masks(prediction["pred"], batch, dm.predict_transform, self.output_dir or dm.output_dir())

    def write_masks(self, preds: Any, batch: Any, transform: Any, out_dir: Path) -> list[Path]:
        """Invert ``transform`` (the preprocessing that made ``batch``) on each mask and save it as ``<case>.nii.gz``.

        Args:
            preds: (B, 1, X, Y, Z) label maps on the preprocessed grid.
            batch: the collated batch (``image`` MetaTensors with their transform history, ``case_id``, ``source``).
            transform: the preprocessing that produced ``batch["image"]``.
            out_dir: the folder of the masks.

        Returns:
            The masks written, in the batch's order.
        """
        inverter = Invertd(keys="pred", transform=transform, orig_keys="image", nearest_interp=True)
        items = decollate_batch(batch)
        written = []
        for item, pred in zip(items, preds):
            image = item["image"]
            item["pred"] = MetaTensor(pred.cpu().float(), affine=image.affine, meta=dict(image.meta))
            restored = inverter(item)["pred"]
            src = cast(nib.Nifti1Image, nib.load(item["source"]))
            mask = np.rint(np.asarray(restored.detach().cpu())[0]).astype(np.uint8)
            if mask.shape != src.shape[:3]:
                raise RuntimeError(f"case {item['case_id']}: inverted mask shape {mask.shape} differs from image {src.shape}")
            path = save_nifti(case_file(Path(out_dir), item["case_id"]), mask, src.affine)
            self.written.append(path)
            written.append(path)
            log.info("wrote %s", path)
        return written
