"""NeoCls in ``neonet cv``: test each fold's best checkpoint on its held-out patients.

After a fold's fit, ``neonet test`` with ``best.ckpt`` writes
``<stage>/fold<k>/test_predictions.csv`` (case_id, patient_id, fold, y_true, prob, logit,
threshold_youden_val); after all folds, :func:`neonet.report.cls_report.report` compares every
classification stage of the experiment (:meth:`neonet.cls.module.ClassifierModule.after_folds`).
"""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from neonet.errors import NeonetError
from neonet.report.stats import binary_metrics
from neonet.stage import FoldContext

log = logging.getLogger(__name__)


def cls_stage_of(cfg: dict[str, Any]) -> str:
    """The stage folder of a resolved classification config: ``model.init_args.stage``."""
    stage = ((cfg.get("model") or {}).get("init_args") or {}).get("stage")
    if not isinstance(stage, str) or not stage:
        raise NeonetError("the classifier config has no model.init_args.stage")
    return stage


def test_fold(ctx: FoldContext) -> dict[str, Any]:
    """Test the fold's best checkpoint on its held-out patients; return the test metrics for ``artifact.json``."""
    ws, fold = ctx.ws, ctx.fold
    stage = cls_stage_of(ctx.config)
    best = ws.best_checkpoint(stage, fold)
    if not best.is_file():
        raise NeonetError(f"{stage} fold {fold}: {best} not found; the fit did not save a best checkpoint")
    out = ws.test_predictions(stage, fold)
    out.unlink(missing_ok=True)
    ctx.run("test", ["--ckpt_path", str(best), "--trainer.devices=1"])  # logs to <stage>/fold<k>/test/
    if not out.is_file():
        raise NeonetError(f"{stage} fold {fold}: `neonet test` wrote no {out}")
    frame = pd.read_csv(out, dtype={"case_id": str, "patient_id": str})
    metrics = binary_metrics(frame["y_true"], frame["prob"], float(frame["threshold_youden_val"].iloc[0]))
    log.info("%s fold %d: test AUC %.3f on %d patients", stage, fold, metrics["auroc"], len(frame))
    return {"test_predictions": ws.checkpoint_record(out), "test_metrics": metrics}
