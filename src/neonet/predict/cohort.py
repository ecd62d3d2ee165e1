"""Fold ensembles on many scans: the steps of ``neonet predict-case`` for a whole cohort (``neonet evaluate``).

The models are loaded once; each scan then goes NeoSeg (mean softmax of the folds,
:func:`neonet.predict.case.segment`) → TLCR with the experiment's crop settings on that mask
(:func:`crop_from_mask`, as ``neonet crop --source predicted`` does) → every fold of each classifier on
the patch (:func:`fold_probabilities`). No saliency, overlay or per-scan JSON: what a cohort
evaluation needs is the masks, the patches and each fold's probability.
"""

from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neonet.data.cases import Case, LabelMap
from neonet.data.nifti import save_nifti
from neonet.predict.source import ClsModel, CropSettings, SegModel
from neonet.seg.tlcr import TLCRResult
from neonet.workspace import ExternalPaths

log = logging.getLogger(__name__)


def crop_from_mask(image: Path, mask: Path, crop: CropSettings) -> tuple[TLCRResult, np.ndarray]:
    """TLCR of a scan on its NeoSeg mask with the experiment's crop settings (``neonet crop --source predicted``).

    Returns:
        The crop result (no patch without a tumour: ``no_tumor="skip"``) and the canonical grid's affine.
    """
    from neonet.seg.crop import load_case
    from neonet.seg.tlcr import tlcr

    image_c, mask_c, affine_c = load_case(image, mask, crop.grid_spacing, LabelMap())
    result = tlcr(
        image_c,
        mask_c,
        crop.spacing,
        patch_size=crop.patch_size,
        shell_mm=crop.shell_mm,
        no_tumor="skip",
        liver_level=crop.liver_level,
        liver_region=crop.liver_region,
        shell_region=crop.shell_region,
    )
    return result, affine_c


def fold_probabilities(patch: Path, label: Path, models: list[ClsModel], device: torch.device) -> dict[int, float]:
    """Each classifier fold's PNI probability for one TLCR patch, fed by the fold's evaluation transform."""
    probs: dict[int, float] = {}
    for m in models:
        x = m.settings.transform()({"image": str(patch), "region": str(label)})["image"][None].to(device)
        net = m.net.to(device)
        with torch.no_grad():
            logit = float(m.logit(x).float()[0])
        net.cpu()
        probs[m.fold] = 1.0 / (1.0 + math.exp(-logit))
    return probs


@dataclass
class ScanPrediction:
    """What the fold ensembles said about one scan.

    Attributes:
        case: the scan's manifest row.
        mask: its NeoSeg ensemble mask (0/1/2, the scan's grid).
        crop_status: TLCR's status (``ok``, ``no_tumor_skipped``, ...).
        n_tumors: tumour components in the mask.
        probs: per classifier stage, each fold's PNI probability (empty without a patch).
        ood: the scan's measures and its flags against the experiment's cohort fingerprint
            (:mod:`neonet.predict.ood`; None when there is no fingerprint).
    """

    case: Case
    mask: Path
    crop_status: str
    n_tumors: int
    probs: dict[str, dict[int, float]] = field(default_factory=dict)
    ood: dict[str, Any] | None = None


def predict_scans(
    cases: list[Case],
    seg_models: list[SegModel],
    classifiers: dict[str, list[ClsModel]],
    crop: CropSettings | None,
    out: ExternalPaths,
    device: torch.device,
    fingerprint: dict[str, Any] | None = None,
) -> list[ScanPrediction]:
    """Every scan through NeoSeg → TLCR → each classifier's folds; masks and patches written under ``out``.

    Args:
        cases: the scans.
        seg_models: the NeoSeg folds (their mean softmax is the mask).
        classifiers: per classifier stage, its folds.
        crop: the experiment's TLCR settings (None, or no classifiers: NeoSeg alone).
        out: where masks (``masks/``) and patches (``patches/``) go.
        device: where the networks run.
        fingerprint: the experiment's cohort fingerprint; each scan is measured inside its mask and
            flagged where it lies outside (None: no comparison).
    """
    from neonet.predict import ood
    from neonet.predict.case import segment

    done = []
    for i, case in enumerate(cases, 1):
        log.info("case %d/%d: %s", i, len(cases), case.case_id)
        with tempfile.TemporaryDirectory(dir=out.root) as scratch:
            written, confidence = segment(case.image, seg_models, Path(scratch), device)
            mask = out.mask(case.case_id)
            mask.parent.mkdir(parents=True, exist_ok=True)
            written.replace(mask)
        found: dict[str, Any] | None = None
        if fingerprint is not None:
            measured = ood.measure(case.case_id, case.image, mask, confidence)
            scan_flags = ood.flags(fingerprint, measured)
            found = {"measured": measured, "flags": scan_flags}
            for flag in scan_flags:
                log.warning("%s: outside the experiment's cohort: %s", case.case_id, flag["message"])
        if crop is None or not classifiers:  # NeoSeg alone: no TLCR
            done.append(ScanPrediction(case, mask, "not cropped", 0, ood=found))
            continue
        result, affine_c = crop_from_mask(case.image, mask, crop)
        pred = ScanPrediction(case, mask, result.status, int(result.n_tumors), ood=found)
        if result.has_patch:
            assert result.box is not None and result.image_patch is not None and result.label_patch is not None
            from neonet.seg.tlcr import patch_affine

            p_affine = patch_affine(affine_c, result.box["start"])
            image = save_nifti(out.patch(case.case_id, "image"), result.image_patch.astype(np.float32), p_affine)
            label = save_nifti(out.patch(case.case_id, "label"), result.label_patch.astype(np.uint8), p_affine)
            pred.probs = {stage: fold_probabilities(image, label, models, device) for stage, models in classifiers.items()}
        done.append(pred)
    return done
