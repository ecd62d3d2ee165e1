"""NeoGen stages in ``neonet cv``: after each autoencoder fold, its evaluation and latent cache; every stage
writes a cross-fold table to ``reports/<stage>_summary.{csv,json,md}`` and a W&B summary run."""

from __future__ import annotations

import logging
from typing import Any, ClassVar, cast

import pandas as pd
import torch

from neonet.data.patches import patch_records
from neonet.gen.latents import build_latent_cache, read_fold
from neonet.gen.upstream import load_autoencoder, require_checkpoint
from neonet.run.atomic import write_csv, write_json, write_text
from neonet.stage import CVContext, FoldContext
from neonet.workspace import Workspace

log = logging.getLogger(__name__)


@torch.no_grad()
def evaluate_autoencoder(ws: Workspace, fold: int, batch_size: int = 8) -> dict[str, float]:
    """PSNR, SSIM and MS-SSIM of the fold's best autoencoder on its inner validation patches."""
    from monai.metrics import MultiScaleSSIMMetric, PSNRMetric, SSIMMetric

    from neonet.gen.common import ms_ssim_settings, ssim_window
    from neonet.gen.patch_data import load_patch

    ae = load_autoencoder(require_checkpoint(ws, "autoencoder", fold))
    images = [load_patch(r, with_label=False)["image"] for r in patch_records(ws, read_fold(ws, fold).val)]
    if not images:
        return {}
    shape = tuple(images[0].shape[1:])
    kernel, weights = ms_ssim_settings(shape)
    metrics = {
        "psnr": PSNRMetric(max_val=1.0),
        "ssim": SSIMMetric(spatial_dims=3, data_range=1.0, win_size=ssim_window(shape)),
        "ms_ssim": MultiScaleSSIMMetric(spatial_dims=3, data_range=1.0, kernel_size=kernel, weights=weights),
    }
    for start in range(0, len(images), batch_size):
        x = torch.stack(images[start : start + batch_size])
        recon = ae.reconstruct(x).clamp(0.0, 1.0)
        for metric in metrics.values():
            metric(recon, x)
    values = {f"val_{k}": float(cast(torch.Tensor, m.aggregate()).item()) for k, m in metrics.items()}  # no get_not_nans
    return values | {"n_val_patches": len(images)}


def stage_summary_rows(ws: Workspace, stage: str, folds: list[int]) -> pd.DataFrame:
    """One row per fold of a NeoGen stage: best score and the fold's final metrics (from ``artifact.json``)."""
    rows = []
    for k in folds:
        art = ws.read_artifact(stage, k) or {}
        row: dict[str, Any] = {
            "fold": k,
            "monitor": art.get("monitor"),
            "best_score": art.get("best_score"),
            "epochs": art.get("epochs"),
            "global_step": art.get("global_step"),
        }
        row.update({k2: v for k2, v in (art.get("evaluation") or {}).items()})
        row.update({f"final/{k2}": v for k2, v in (art.get("final_metrics") or {}).items() if k2.startswith("val/")})
        rows.append(row)
    return pd.DataFrame(rows)


def write_stage_summary(ws: Workspace, stage: str, folds: list[int], config: dict[str, Any] | None = None) -> None:
    """Write ``reports/<stage>_summary.{csv,json,md}``, a W&B summary run and the stage's pictures
    (``curves_<stage>.png``, ``gen_folds.png``; :mod:`neonet.report.figures`) for a NeoGen stage.

    Args:
        ws: the experiment.
        stage: the NeoGen stage.
        folds: the folds the summary lists.
        config: the stage config of the ``neonet cv`` command (the W&B summary run's config).
    """
    frame = stage_summary_rows(ws, stage, folds)
    if frame.empty:
        return
    write_csv(ws.stage_summary(stage), frame)
    numeric = frame.drop(columns=["fold"]).select_dtypes("number")
    summary = {
        c: {"mean": float(numeric[c].mean()), "sd": float(numeric[c].std(ddof=1)) if len(numeric) > 1 else 0.0}
        for c in numeric.columns
    }
    write_json(ws.stage_summary(stage, "json"), {"per_fold": frame.to_dict(orient="records"), "summary": summary})
    md = frame.to_markdown(index=False) if _has_tabulate() else frame.to_string(index=False)
    write_text(ws.stage_summary(stage, "md"), f"# NeoGen {stage}: per fold\n\n{md}\n")
    log.info("%s summary (%s):\n%s", stage, ws.stage_summary(stage), frame.to_string(index=False))
    from neonet.report.wandb_summary import log_cv_summary

    numbers = {f"{k}_mean": v["mean"] for k, v in summary.items()}
    log_cv_summary(ws, stage, {f"{stage}_folds": frame}, numbers, config=config, models=[(stage, k) for k in folds])
    from neonet.report.figures import write_stage

    write_stage(ws, stage)  # training curves and reports/gen_folds.png


class SummaryHooks:
    """Cross-fold hooks of a NeoGen stage whose folds need nothing after the fit (diffusion, ControlNet).

    Mixed in before :class:`~neonet.stage.StageModule`: ``after_fold`` adds nothing (the fold's
    ``artifact.json`` already holds its metrics); ``after_folds`` writes the stage's per-fold table
    (``reports/<stage>_summary.*``) and its W&B summary run.
    """

    stage: ClassVar[str]

    @classmethod
    def after_fold(cls, ctx: FoldContext) -> dict[str, Any]:
        """Nothing after the fit."""
        return {}

    @classmethod
    def after_folds(cls, ctx: CVContext) -> None:
        """Per-fold table of the stage in ``reports/<stage>_summary.*`` and a W&B summary run."""
        write_stage_summary(ctx.ws, cls.stage, ctx.folds, ctx.config)


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


def autoencoder_after_fold(ctx: FoldContext) -> dict[str, Any]:
    """Reconstruction metrics of the fold's ``best.ckpt`` + its latent cache (settings from the model config)."""
    margs = dict((ctx.config.get("model") or {}).get("init_args") or {})
    evaluation = evaluate_autoencoder(ctx.ws, ctx.fold)
    log.info("fold %d: autoencoder best.ckpt on inner validation: %s", ctx.fold, evaluation)
    flips = margs.get("latent_flip_axes")
    out = build_latent_cache(
        ctx.ws,
        ctx.fold,
        samples=int(margs.get("latent_samples") or 4),
        flip_axes=[0, 1] if flips is None else list(flips),
        force=False,
    )
    return {"evaluation": evaluation, "latent_cache": str(out)}
