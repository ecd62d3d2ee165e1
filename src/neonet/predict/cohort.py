"""Fold ensembles on many scans: ``neonet evaluate``'s predictions of a whole cohort.

Each scan goes through :meth:`neonet.predict.pipeline.Predictor.run`, the path of ``neonet predict-case``
(NeoSeg → TLCR with the experiment's crop settings → every fold of each classifier on the patch), with the
models loaded once. No saliency, overlay or per-scan JSON: what a cohort evaluation needs is the masks,
the patches, each fold's probability and the scan's place against the cohort fingerprint.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neonet.data.cases import Case
from neonet.predict.pipeline import Predictor
from neonet.workspace import ExternalPaths

log = logging.getLogger(__name__)


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
    cases: list[Case], predictor: Predictor, out: ExternalPaths, fingerprint: dict[str, Any] | None = None
) -> list[ScanPrediction]:
    """Every scan through NeoSeg → TLCR → each classifier's folds; masks and patches written under ``out``.

    Args:
        cases: the scans.
        predictor: the models (NeoSeg folds, classifiers and their folds; no crop settings: NeoSeg alone).
        out: where masks (``masks/``) and patches (``patches/``) go.
        fingerprint: the experiment's cohort fingerprint; each scan is measured inside its mask and
            flagged where it lies outside (None: no comparison).
    """
    from neonet.predict import ood

    done = []
    for i, case in enumerate(cases, 1):
        log.info("case %d/%d: %s", i, len(cases), case.case_id)
        patch = (out.patch(case.case_id, "image"), out.patch(case.case_id, "label"))
        scan = predictor.run(case.image, out.mask(case.case_id), patch)
        found: dict[str, Any] | None = None
        if fingerprint is not None:
            measured = ood.measure(case.case_id, case.image, scan.mask, scan.seg_confidence)
            scan_flags = ood.flags(fingerprint, measured)
            found = {"measured": measured, "flags": scan_flags}
            for flag in scan_flags:
                log.warning("%s: outside the experiment's cohort: %s", case.case_id, flag["message"])
        if scan.crop is None:  # NeoSeg alone: no TLCR
            done.append(ScanPrediction(case, scan.mask, "not cropped", 0, ood=found))
            continue
        result = scan.crop.result
        done.append(ScanPrediction(case, scan.mask, result.status, int(result.n_tumors), scan.probs, found))
    return done
