"""Out-of-fold NeoSeg evaluation: Dice, HD95 and surface Dice of every case's mask against its manual label.

Regions: the liver region (liver including tumour) and the tumour. Metrics are MONAI's, computed in
the scan's own voxel grid with its spacing: Dice; the 95th-percentile symmetric Hausdorff distance
(HD95, mm); the normalised surface Dice (NSD) at :data:`NSD_TOLERANCE_MM` (the share of both
surfaces within that distance of the other, as in the Medical Segmentation Decathlon). A region
absent from the manual label (a liver-only label set has no tumour) gets no value (NaN, "n/a" in the
tables), not a score; a region absent from the prediction but present in the label scores Dice 0,
NSD 0 and HD95 NaN (no surface to measure from), counted in ``missed_<region>``.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice
from tqdm.auto import tqdm

from neonet.data.cases import LIVER, TUMOR, LabelMap, read_cases
from neonet.data.nifti import load_nifti, read_array
from neonet.data.splits import folds_phrase, read_splits
from neonet.run.atomic import write_csv, write_json, write_text
from neonet.stage import CVContext
from neonet.workspace import Workspace

log = logging.getLogger(__name__)


#: Tolerance of the normalised surface Dice, in mm.
NSD_TOLERANCE_MM = 2.0
#: Regions evaluated, in column order.
REGIONS = ("liver", "tumor")
#: Per-case metric columns, in report order.
METRICS = ("dice", "hd95", "nsd")


def seg_metrics(pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, ...]) -> dict[str, float]:
    """Dice, HD95 (mm) and NSD at :data:`NSD_TOLERANCE_MM` of the liver region and the tumour, with MONAI.

    Args:
        pred: predicted mask (0 background, 1 liver, 2 tumour).
        gt: manual mask in the same convention and grid.
        spacing: voxel size in mm.

    Returns:
        ``dice_liver``, ``dice_tumor``, ``hd95_liver``, ..., ``nsd_tumor``; NaN for a region the
        manual mask does not hold (and HD95 NaN when the prediction misses a region the mask holds).
    """

    def onehot(lab: np.ndarray) -> torch.Tensor:
        t = torch.as_tensor(lab)
        return torch.stack([t >= LIVER, t == TUMOR]).unsqueeze(0).float()

    p, g = onehot(pred), onehot(gt)
    dice = compute_dice(p, g, include_background=True, ignore_empty=True)[0]
    out = {f"dice_{r}": float(dice[i]) for i, r in enumerate(REGIONS)}
    present_gt = g.flatten(2).any(-1)[0]
    present_pred = p.flatten(2).any(-1)[0]
    both = present_gt & present_pred
    hd = torch.full((2,), float("nan"))
    nsd = torch.where(present_gt, torch.zeros(2), torch.full((2,), float("nan")))
    if both.any():
        idx = torch.nonzero(both).flatten()
        warnings.filterwarnings("ignore", message=r".*get_mask_edges:always_return_as_numpy", category=FutureWarning)
        hd[idx] = compute_hausdorff_distance(p[:, idx], g[:, idx], include_background=True, percentile=95, spacing=list(spacing))[
            0
        ]
        nsd[idx] = compute_surface_dice(
            p[:, idx], g[:, idx], class_thresholds=[NSD_TOLERANCE_MM] * len(idx), include_background=True, spacing=list(spacing)
        )[0]
    out.update({f"hd95_{r}": float(hd[i]) for i, r in enumerate(REGIONS)})
    out.update({f"nsd_{r}": float(nsd[i]) for i, r in enumerate(REGIONS)})
    return out


def evaluate_oof(ws: Workspace, cases_csv: str | Path, label_map: LabelMap, folds: list[int] | None = None) -> pd.DataFrame:
    """Dice, HD95 and NSD per case of the out-of-fold masks in ``seg/predictions`` (original image space).

    Only test cases of ``folds`` (default: all folds) are evaluated.
    """
    splits = read_splits(ws.splits_path)
    fold_of = {cid: s["fold"] for s in splits["splits"] if folds is None or s["fold"] in folds for cid in s["test"]}
    rows: list[dict[str, Any]] = []
    for case in tqdm(read_cases(cases_csv), desc="OOF Dice", unit="case"):
        if case.label is None or case.case_id not in fold_of:
            continue
        pred_path = ws.seg_prediction(case.case_id)
        row: dict[str, Any] = {"case_id": case.case_id, "fold": fold_of[case.case_id], "prediction": str(pred_path)}
        if not pred_path.exists():
            row["status"] = "missing prediction"
            rows.append(row)
            continue
        row.update(case_metrics(pred_path, case.label, case.case_id, label_map))
        rows.append(row)
    return pd.DataFrame(rows)


def case_metrics(pred_path: Path, label_path: Path, case_id: str, label_map: LabelMap) -> dict[str, Any]:
    """:func:`seg_metrics` of one case's mask (0/1/2, in the label's grid) against its manual label, with the true
    and predicted tumour volumes (ml) and ``status`` ``ok``.

    Args:
        pred_path: the predicted mask (project convention), on the label's grid.
        label_path: the manual label (raw values, mapped with ``label_map``).
        case_id: the case, for error messages.
        label_map: what the label's values mean.
    """
    gt_img = load_nifti(label_path, case_id)
    gt = label_map.apply(read_array(gt_img, label_path, case_id))
    pred = np.asarray(load_nifti(pred_path, case_id).dataobj).astype(np.uint8)
    spacing = tuple(float(z) for z in gt_img.header.get_zooms()[:3])
    voxel_ml = float(np.prod(spacing)) / 1000.0
    return {
        **seg_metrics(pred, gt, spacing),
        "tumor_ml_true": float((gt == TUMOR).sum() * voxel_ml),
        "tumor_ml_pred": float((pred == TUMOR).sum() * voxel_ml),
        "status": "ok",
    }


def _columns(frame: pd.DataFrame) -> list[str]:
    """The metric columns the frame holds, in report order."""
    return [f"{m}_{r}" for m in METRICS for r in REGIONS if f"{m}_{r}" in frame]


def _mean(values: pd.Series) -> float | None:
    values = values.dropna()
    return float(values.mean()) if len(values) else None


def summarise(frame: pd.DataFrame) -> dict[str, Any]:
    """Per-fold and pooled mean ± sd of the metric columns (a region no manual mask holds: None; the numbers of
    ``reports/seg_folds.png``). A frame without a ``fold`` column (one ensemble, e.g. ``neonet evaluate``) has no
    per-fold rows."""
    ok = frame[frame["status"] == "ok"]
    out: dict[str, Any] = {
        "n_cases": int(len(ok)),
        "n_missing": int((frame["status"] != "ok").sum()),
        "nsd_tolerance_mm": NSD_TOLERANCE_MM,
    }
    for region in REGIONS:
        if f"hd95_{region}" in ok:
            out[f"missed_{region}"] = int((ok[f"dice_{region}"].notna() & ok[f"hd95_{region}"].isna()).sum())
    for col in _columns(ok):
        vals = ok[col].dropna()
        out[col] = (
            {
                "mean": float(vals.mean()),
                "sd": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0,
                "median": float(vals.median()),
                "min": float(vals.min()),
            }
            if len(vals)
            else None
        )
    out["per_fold"] = {
        int(k): {
            "n": int(len(g)),
            **{c: _mean(g[c]) for c in _columns(g)},
            **{f"{c}_sd": float(g[c].std(ddof=1)) if g[c].count() > 1 else 0.0 for c in _columns(g)},
        }
        for k, g in (ok.groupby("fold") if "fold" in ok else [])
    }
    return out


_HEADINGS = {"dice": "Dice", "hd95": "HD95 mm", "nsd": "NSD"}


def markdown_table(summary: dict[str, Any]) -> str:
    """The summary as a small markdown table (``n/a``: no manual mask holds the region)."""
    cols = [c for c in (f"{m}_{r}" for m in METRICS for r in REGIONS) if c in summary]
    names = [f"{_HEADINGS[c.split('_')[0]]} {'tumour' if c.endswith('tumor') else 'liver'}" for c in cols]
    lines = ["| fold | n | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(cols)]

    def cell(value: float | None, digits: int) -> str:
        return "n/a" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"

    for k, v in summary["per_fold"].items():
        lines.append(f"| {k} | {v['n']} | " + " | ".join(cell(v.get(c), 1 if c.startswith("hd95") else 3) for c in cols) + " |")
    pooled = []
    for c in cols:
        d, digits = summary[c], 1 if c.startswith("hd95") else 3
        pooled.append("n/a" if not d else f"{d['mean']:.{digits}f} ± {d['sd']:.{digits}f}")
    lines.append(f"| pooled | {summary['n_cases']} | " + " | ".join(pooled) + " |")
    note = f"\nNSD: normalised surface Dice at {summary.get('nsd_tolerance_mm', NSD_TOLERANCE_MM):g} mm. "
    missed = {r: summary.get(f"missed_{r}", 0) for r in REGIONS}
    if any(missed.values()):
        note += (
            "HD95 excludes cases whose prediction misses the region: "
            + ", ".join(f"{n} for {'tumour' if r == 'tumor' else 'liver'}" for r, n in missed.items() if n)
            + ". "
        )
    if not summary.get("dice_tumor"):
        note += "Tumour: n/a, no manual mask holds a tumour (a liver-only label set)."
    return "\n".join(lines) + "\n" + note.rstrip() + "\n"


def write_oof_report(ctx: CVContext) -> None:
    """Write ``reports/seg_oof_dice.csv``, ``seg_summary.json`` and ``seg_summary.md`` (NeoSeg's cross-fold summary)."""
    ws, dargs = ctx.ws, ctx.data_args()
    label_map = LabelMap.from_args(dargs)
    splits = read_splits(ws.splits_path)
    n_folds = int(splits["folds"])
    done = [k for k in range(n_folds) if ws.is_complete("seg", k)]  # folds may run in separate calls
    frame = evaluate_oof(ws, dargs["cases"], label_map, done)
    if frame.empty:
        log.warning("no cases with manual labels to evaluate")
        return
    reports = ws.reports_dir
    write_csv(ws.seg_oof_dice, frame)
    summary = summarise(frame)
    table = markdown_table(summary)
    summary["folds_text"] = folds_phrase(splits)
    write_json(reports / "seg_summary.json", summary)
    heading = f"# NeoSeg out-of-fold Dice, HD95 and surface Dice ({summary['folds_text']})\n\n"
    write_text(reports / "seg_summary.md", heading + table)
    log.info("NeoSeg out-of-fold metrics (%s):\n%s", reports / "seg_summary.json", table)
    from neonet.report.wandb_summary import log_cv_summary

    flat = {f"oof/{k}_mean": v["mean"] for k, v in summary.items() if isinstance(v, dict) and "mean" in v}
    log_cv_summary(ws, "seg", {"oof_dice": frame}, flat, config=ctx.config, models=[("seg", k) for k in done])
