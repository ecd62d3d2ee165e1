"""``neonet summary``: where an experiment's results are, with the numbers that matter."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from neonet.data.splits import folds_phrase, read_splits
from neonet.report.cls_report import fold_spread
from neonet.run.atomic import read_json, write_json
from neonet.workspace import STAGES, Workspace


def collect(ws: Workspace) -> dict[str, Any]:
    """Status of every stage and fold, report files and W&B run folders of an experiment."""
    info: dict[str, Any] = {"experiment": ws.experiment, "root": str(ws.root), "stages": {}}
    if ws.splits_path.exists():
        info["splits"] = str(ws.splits_path)
        doc = read_splits(ws.splits_path)
        info["folds"] = int(doc["folds"])
        info["folds_text"] = folds_phrase(doc)
    stage_names = sorted({p.parent.parent.name for p in ws.root.glob("*/fold*/artifact.json")})
    for stage in [s for s in STAGES if s in stage_names] + [s for s in stage_names if s not in STAGES]:
        folds = {}
        for k in ws.stage_folds(stage):
            art = ws.read_artifact(stage, k)
            if art is None:
                continue
            folds[int(art["fold"])] = {
                "status": art.get("status"),
                "best_score": art.get("best_score"),
                "monitor": art.get("monitor"),
                "checkpoint": (art.get("best_checkpoint") or {}).get("path"),
            }
        info["stages"][stage] = folds
    if ws.patches_manifest.exists():
        frame = pd.read_csv(ws.patches_manifest)
        info["patches"] = {"manifest": str(ws.patches_manifest), "status": frame["status"].value_counts().to_dict()}
    if ws.reports_dir.exists():
        info["reports"] = sorted(str(p) for p in ws.reports_dir.iterdir() if p.is_file())
    seg_summary = ws.reports_dir / "seg_summary.json"
    if seg_summary.exists():
        info["seg_oof_dice"] = read_json(seg_summary)
    gen = ws.reports_dir / "gen_quality.csv"
    if gen.exists():
        info["gen_quality"] = pd.read_csv(gen).to_dict(orient="records")
    cls = ws.reports_dir / "cls_summary.csv"
    if cls.exists():
        info["cls_summary"] = pd.read_csv(cls).to_dict(orient="records")
    info["wandb_runs"] = [str(p) for p in ws.wandb_runs()]
    return info


def summary(experiment: str = "demo", runs_dir: Path = Path("runs")) -> int:
    """Print where an experiment's outputs are and its headline metrics; save them as JSON.

    Writes ``<runs_dir>/<experiment>/reports/summary.json``.

    Args:
        experiment: experiment name.
        runs_dir: folder holding all experiments.
    """
    ws = Workspace(runs_dir, experiment)
    if not ws.root.exists():
        print(f"no experiment at {ws.root}")
        return 1
    info = collect(ws)
    lines = [f"Experiment {experiment}: {ws.root}"]
    if "splits" in info:
        lines.append(f"  splits        {info['splits']} ({info['folds_text']})")
    for stage, folds in info["stages"].items():
        done = sum(1 for f in folds.values() if f["status"] == "complete")
        scores = ", ".join(f"fold{k} {v['best_score']:.3f}" for k, v in sorted(folds.items()) if v["best_score"] is not None)
        monitor = next((v["monitor"] for v in folds.values() if v["monitor"]), "")
        lines.append(f"  {stage:<13} {done}/{len(folds)} folds complete; best {monitor}: {scores}")
    if "seg_oof_dice" in info:
        d = info["seg_oof_dice"]
        parts = [
            f"{name} {d[key]['mean']:.{digits}f} ± {d[key]['sd']:.{digits}f}"
            for key, name, digits in (
                ("dice_liver", "Dice liver", 3),
                ("dice_tumor", "tumour", 3),
                ("hd95_liver", "HD95 liver", 1),
                ("nsd_liver", "NSD liver", 3),
            )
            if d.get(key)
        ]
        if parts:
            lines.append(f"  NeoSeg OOF    {', '.join(parts)} (n={d['n_cases']})")
    if "patches" in info:
        lines.append(f"  patches       {info['patches']['manifest']}  {json.dumps(info['patches']['status'])}")
    for row in info.get("gen_quality", []):
        lines.append(
            f"  NeoGen fold{row['fold']}  {row['n_synthetic']} synthetic; PSNR {row['ae_val_psnr']:.1f}; KID {row['kid']:.2f} "
            f"(real-real {row['kid_real']:.2f}); MS-SSIM {row['ms_ssim_synthetic']:.2f} (real {row['ms_ssim_real']:.2f}); "
            f"near copies {row['near_copies']}; mask Dice {row['dice_synthetic']:.2f}"
        )
    if info.get("cls_summary"):
        lines.append("  results       stage            variant           pooled AUC [95% CI]    fold AUC mean ± sd")
        for row in info["cls_summary"]:
            lines.append(
                f"                {row['stage']:<16} {row['variant']:<17} {row['auc_pooled']:.3f} [{row['auc_ci_lo']:.3f}, "
                f"{row['auc_ci_hi']:.3f}]   {fold_spread(row['auc_mean'], row['auc_sd'], info.get('folds_text', ''))}"
            )
    for path in info.get("reports", []):
        lines.append(f"  report        {path}")
    if info["wandb_runs"]:
        lines.append(f"  W&B runs      {len(info['wandb_runs'])} local run folders under {ws.root}/<stage>/fold<k>/wandb/")
        lines.append(f"                upload with: wandb sync {ws.root}/*/*/wandb/offline-run-*")
    print("\n".join(lines))
    write_json(ws.reports_dir / "summary.json", info)
    return 0
