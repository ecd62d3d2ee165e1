"""Out-of-fold NeoSeg evaluation: Dice of every case's mask against its manual label."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from monai.metrics import compute_dice
from tqdm.auto import tqdm

from neonet.data.cases import LIVER, TUMOR, LabelMap, read_cases
from neonet.data.nifti import load_nifti, read_array
from neonet.data.splits import read_splits
from neonet.run.atomic import write_csv, write_json, write_text
from neonet.stage import CVContext
from neonet.workspace import Workspace

log = logging.getLogger(__name__)


def dice_pair(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Dice of the liver region (liver incl. tumour) and of the tumour, with MONAI."""

    def onehot(lab: np.ndarray) -> torch.Tensor:
        t = torch.as_tensor(lab)
        return torch.stack([t >= LIVER, t == TUMOR]).unsqueeze(0).float()

    dice = compute_dice(onehot(pred), onehot(gt), include_background=True, ignore_empty=True)[0]
    return {"dice_liver": float(dice[0]), "dice_tumor": float(dice[1])}


def evaluate_oof(ws: Workspace, cases_csv: str | Path, label_map: LabelMap, folds: list[int] | None = None) -> pd.DataFrame:
    """Dice per case of the out-of-fold masks in ``seg/predictions`` (original image space).

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
        gt_img = load_nifti(case.label, case.case_id)
        gt = label_map.apply(read_array(gt_img, case.label, case.case_id))
        pred = np.asarray(load_nifti(pred_path, case.case_id).dataobj).astype(np.uint8)
        voxel_ml = float(np.prod(gt_img.header.get_zooms()[:3])) / 1000.0
        row.update(dice_pair(pred, gt))
        row.update(
            {
                "tumor_ml_true": float((gt == TUMOR).sum() * voxel_ml),
                "tumor_ml_pred": float((pred == TUMOR).sum() * voxel_ml),
                "status": "ok",
            }
        )
        rows.append(row)
    return pd.DataFrame(rows)


def summarise(frame: pd.DataFrame) -> dict[str, Any]:
    """Per-fold and pooled mean ± sd of the Dice columns."""
    ok = frame[frame["status"] == "ok"]
    out: dict[str, Any] = {"n_cases": int(len(ok)), "n_missing": int((frame["status"] != "ok").sum())}
    for col in ("dice_liver", "dice_tumor"):
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
        int(k): {"n": int(len(g)), "dice_liver": float(g["dice_liver"].mean()), "dice_tumor": float(g["dice_tumor"].mean())}
        for k, g in ok.groupby("fold")
    }
    return out


def markdown_table(summary: dict[str, Any]) -> str:
    """The summary as a small markdown table."""
    lines = ["| fold | n | Dice liver | Dice tumour |", "|---|---|---|---|"]
    for k, v in summary["per_fold"].items():
        lines.append(f"| {k} | {v['n']} | {v['dice_liver']:.3f} | {v['dice_tumor']:.3f} |")
    liv, tum = summary["dice_liver"], summary["dice_tumor"]
    if liv and tum:
        lines.append(
            f"| pooled | {summary['n_cases']} | {liv['mean']:.3f} ± {liv['sd']:.3f} | {tum['mean']:.3f} ± {tum['sd']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def write_oof_report(ctx: CVContext) -> None:
    """Write ``reports/seg_oof_dice.csv``, ``seg_summary.json`` and ``seg_summary.md`` (NeoSeg's cross-fold summary)."""
    ws, dargs = ctx.ws, ctx.data_args()
    label_map = LabelMap(
        liver=tuple(dargs.get("liver") or [1]), tumor=tuple(dargs.get("tumor") or [2]), other=tuple(dargs.get("other") or [])
    )
    n_folds = int(read_splits(ws.splits_path)["folds"])
    done = [k for k in range(n_folds) if ws.is_complete("seg", k)]  # folds may run in separate calls
    frame = evaluate_oof(ws, dargs["cases"], label_map, done)
    if frame.empty:
        log.warning("no cases with manual labels to evaluate")
        return
    reports = ws.reports_dir
    write_csv(reports / "seg_oof_dice.csv", frame)
    summary = summarise(frame)
    write_json(reports / "seg_summary.json", summary)
    table = markdown_table(summary)
    write_text(reports / "seg_summary.md", "# NeoSeg out-of-fold Dice\n\n" + table)
    log.info("NeoSeg out-of-fold Dice (%s):\n%s", reports / "seg_summary.json", table)
    from neonet.report.wandb_summary import log_cv_summary

    flat = {f"oof/{k}_mean": v["mean"] for k, v in summary.items() if isinstance(v, dict) and "mean" in v}
    log_cv_summary(ws, "seg", {"oof_dice": frame}, flat, config=ctx.config, models=[("seg", k) for k in done])
