"""What the trained models saw, and whether a new scan lies outside it.

The **cohort fingerprint** (``runs/<experiment>/cohort_fingerprint.json``) measures every cohort case
held out by a trained NeoSeg fold the way ``neonet predict-case`` measures a new scan: fold k
segments its own test case (as :func:`neonet.predict.pipeline.segment` segments a new scan) and
:func:`neonet.data.fingerprint.fingerprint_case` reads, inside that out-of-fold mask, the voxel
spacing, the image's intensity percentiles 0.5/50/99.5 over the liver, the liver volume and the
largest tumour's volume; NeoSeg's confidence is the fold's mean maximum softmax inside its mask.
Cases of untrained seg folds are measured inside their manual label (no confidence). It is built on
first use and again when a seg fold's checkpoint changed.

A new scan is **flagged** when (each flag says what it measured and the cohort's range):

* ``spacing``: an axis' spacing is outside [min / :data:`SPACING_FACTOR`, max x :data:`SPACING_FACTOR`];
* ``liver_intensity``: a liver percentile is outside the cohort's range widened by
  :data:`INTENSITY_MARGIN` of its width plus 10 % of the cohort's median level (another sequence
  or modality: MRI intensities are not calibrated, so this compares the scan with its training scans);
* ``no_liver``: NeoSeg finds no liver (nothing to measure inside);
* ``tumour_size``: the largest tumour is more than :data:`TUMOUR_FACTOR` x the largest in the cohort;
* ``low_confidence``: NeoSeg's confidence is below the cohort's lowest by more than
  :data:`CONFIDENCE_MARGIN`.
"""

from __future__ import annotations

import datetime as _dt
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from neonet.data.cases import Case, LabelMap, read_cases
from neonet.data.fingerprint import fingerprint_case
from neonet.data.splits import read_splits
from neonet.errors import NeonetError
from neonet.predict.membership import cohort_manifest
from neonet.run.atomic import read_json, write_json
from neonet.workspace import Workspace

if TYPE_CHECKING:
    import torch

    from neonet.predict.pipeline import CachedModels

log = logging.getLogger(__name__)

#: A spacing is "far outside" beyond this factor of the cohort's smallest / largest.
SPACING_FACTOR = 1.5
#: Liver percentiles may lie this share of the cohort's range outside it (plus 10 % of the median level).
INTENSITY_MARGIN = 0.5
#: A tumour is "far larger" than this many times the cohort's largest.
TUMOUR_FACTOR = 2.0
#: A mask is "low confidence" this far below the cohort's lowest mean softmax.
CONFIDENCE_MARGIN = 0.05
#: Measures of one case, in ``cohort_fingerprint.json``'s ``ranges``.
MEASURES = (
    "spacing_x",
    "spacing_y",
    "spacing_z",
    "liver_p0.5",
    "liver_p50",
    "liver_p99.5",
    "liver_ml",
    "tumour_ml",
    "confidence",
)


def measure(case_id: str, image: Path, mask: Path, confidence: float | None) -> dict[str, Any]:
    """One scan's measures inside a mask (0 background, 1 liver, 2 tumour) on its grid."""
    fp = fingerprint_case(Case(case_id, image, mask, None, case_id), LabelMap())
    out: dict[str, Any] = {"case_id": case_id}
    out |= {f"spacing_{a}": round(v, 4) for a, v in zip("xyz", fp.spacing)}
    pct = fp.liver_percentiles or (None, None, None)
    out |= {"liver_p0.5": pct[0], "liver_p50": pct[1], "liver_p99.5": pct[2]}
    out["liver_ml"] = fp.liver_ml
    out["tumour_ml"] = fp.tumours[0].volume_ml if fp.tumours else 0.0
    out["confidence"] = confidence
    return out


def _seg_checkpoints(ws: Workspace, folds: list[int]) -> dict[str, str | None]:
    return {str(k): ((ws.read_artifact("seg", k) or {}).get("best_checkpoint") or {}).get("sha256") for k in folds}


def _trained_seg_folds(ws: Workspace) -> list[int]:
    from neonet.predict.ensemble import USABLE_STATUSES

    return [k for k in ws.stage_folds("seg") if (ws.read_artifact("seg", k) or {}).get("status") in USABLE_STATUSES]


def build(ws: Workspace, models: CachedModels, device: torch.device) -> dict[str, Any]:
    """Measure the cohort (see the module docstring) and write ``ws.cohort_fingerprint``.

    Raises:
        NeonetError: no ``splits.json``, or no trained fold names a ``cases.csv`` that exists.
    """
    from neonet.predict.pipeline import segment

    manifest = cohort_manifest(ws)
    if manifest is None or not ws.splits_path.is_file():
        raise NeonetError(
            f"{ws.root}: no splits.json or no cases.csv named by a trained fold's config.yaml: cannot fingerprint the cohort"
        )
    test_of = {c: int(s["fold"]) for s in read_splits(ws.splits_path)["splits"] for c in s["test"]}
    folds = _trained_seg_folds(ws)
    rows = []
    log.info("fingerprinting the cohort of %s (NeoSeg folds %s on their held-out cases)", ws.experiment, folds)
    with tempfile.TemporaryDirectory(dir=ws.root, prefix=".cohort_") as tmp:
        for case in read_cases(manifest):
            fold = test_of.get(case.case_id)
            if fold in folds:
                mask, conf = segment(case.image, models.seg_models([fold]), Path(tmp) / "mask.nii.gz", device)
                rows.append(measure(case.case_id, case.image, mask, conf) | {"mask": f"neoseg fold {fold}"})
            elif case.label is not None:
                rows.append(measure(case.case_id, case.image, case.label, None) | {"mask": "manual"})
    ranges = {}
    for key in MEASURES:
        values = [float(r[key]) for r in rows if r.get(key) is not None]
        ranges[key] = [min(values), max(values)] if values else None
    doc = {
        "experiment": ws.experiment,
        "cases_csv": str(manifest),
        "seg_checkpoints": _seg_checkpoints(ws, folds),
        "n_cases": len(rows),
        "ranges": ranges,
        "cases": rows,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(ws.cohort_fingerprint, doc)
    log.info("wrote %s (%d cases)", ws.cohort_fingerprint, len(rows))
    return doc


def load(ws: Workspace, models: CachedModels, device: torch.device) -> dict[str, Any]:
    """The experiment's cohort fingerprint: read, or built when missing or made with other seg checkpoints."""
    path = ws.cohort_fingerprint
    if path.is_file():
        doc = read_json(path)
        if isinstance(doc, dict) and doc.get("seg_checkpoints") == _seg_checkpoints(ws, _trained_seg_folds(ws)):
            return doc
        log.info("%s was made with other NeoSeg checkpoints: measuring the cohort again", path)
    return build(ws, models, device)


def _flag(check: str, measured: Any, cohort: list[float] | None, allowed: list[float] | None, text: str) -> dict[str, Any]:
    return {"check": check, "measured": measured, "cohort_range": cohort, "allowed": allowed, "message": text}


def flags(fingerprint: dict[str, Any], scan: dict[str, Any]) -> list[dict[str, Any]]:
    """The checks a scan's measures (:func:`measure`) fail against the cohort's ranges (see the module docstring)."""
    ranges, out = fingerprint["ranges"], []

    def fmt(values: list[float]) -> str:
        return f"[{values[0]:.4g}, {values[1]:.4g}]"

    for axis in "xyz":
        key, r = f"spacing_{axis}", ranges.get(f"spacing_{axis}")
        if r is not None:
            allowed = [r[0] / SPACING_FACTOR, r[1] * SPACING_FACTOR]
            if not allowed[0] <= scan[key] <= allowed[1]:
                text = f"spacing along {axis} {scan[key]:.3g} mm; the training scans have {fmt(r)} mm"
                out.append(_flag(key, scan[key], r, allowed, text))
    if scan.get("liver_p50") is None:
        out.append(_flag("no_liver", scan.get("liver_ml"), ranges.get("liver_ml"), None, "NeoSeg found no liver in this scan"))
    else:
        level = abs(float(np.mean(ranges["liver_p50"]))) if ranges.get("liver_p50") else 0.0
        for key in ("liver_p0.5", "liver_p50", "liver_p99.5"):
            r = ranges.get(key)
            if r is None:
                continue
            margin = INTENSITY_MARGIN * (r[1] - r[0]) + 0.1 * level
            allowed = [r[0] - margin, r[1] + margin]
            if not allowed[0] <= scan[key] <= allowed[1]:
                text = (
                    f"liver intensity {key.removeprefix('liver_')} percentile {scan[key]:.4g}; the training scans have "
                    f"{fmt(r)} (another sequence or modality?)"
                )
                out.append(_flag(key, scan[key], r, allowed, text))
    r = ranges.get("tumour_ml")
    if r is not None and scan["tumour_ml"] > TUMOUR_FACTOR * r[1]:
        text = f"largest tumour {scan['tumour_ml']:.1f} ml; the largest in training is {r[1]:.1f} ml"
        out.append(_flag("tumour_ml", scan["tumour_ml"], r, [0.0, TUMOUR_FACTOR * r[1]], text))
    r = ranges.get("confidence")
    if r is not None and scan.get("confidence") is not None and scan["confidence"] < r[0] - CONFIDENCE_MARGIN:
        text = f"NeoSeg confidence {scan['confidence']:.3f} inside its mask; {fmt(r)} on the training scans' out-of-fold masks"
        out.append(_flag("confidence", scan["confidence"], r, [r[0] - CONFIDENCE_MARGIN, 1.0], text))
    return out
