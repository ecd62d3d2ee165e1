"""NeoCls in ``neonet cv``: test each fold's best checkpoint on its held-out patients, then report.

After a fold's fit, ``neonet test`` with ``best.ckpt`` writes
``<stage>/fold<k>/test_predictions.csv`` (case_id, patient_id, fold, y_true, prob, logit,
threshold_youden_val); after all folds, :func:`neonet.report.report` compares every
classification stage of the experiment.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from neonet.config import load_config, stage_of
from neonet.errors import NeonetError
from neonet.stats import binary_metrics
from neonet.workspace import Workspace

log = logging.getLogger(__name__)

PREDICTIONS_NAME = "test_predictions.csv"


def cls_stage_of(cfg: dict[str, Any]) -> str:
    """The stage of a classification config: ``model.init_args.stage`` if set, else the class default."""
    init = (cfg.get("model") or {}).get("init_args") or {}
    return str(init.get("stage") or stage_of(cfg))


def predictions_path(ws: Workspace, stage: str, fold: int) -> Path:
    """``<stage>/fold<k>/test_predictions.csv``."""
    return ws.stage_dir(stage, fold) / PREDICTIONS_NAME


class ClsCVHooks:
    """What ``neonet cv`` does around each classification fold."""

    def after_fold(self, ws: Workspace, fold: int, run: Any) -> dict[str, Any]:
        """Test the fold's best checkpoint on its held-out patients; return the test metrics for ``artifact.json``."""
        cfg = load_config(run.configs, [o.lstrip("-") for o in run.overrides])
        stage = cls_stage_of(cfg)
        best = ws.best_checkpoint(stage, fold)
        if not best.is_file():
            raise NeonetError(f"{stage} fold {fold}: {best} not found; the fit did not save a best checkpoint")
        out = predictions_path(ws, stage, fold)
        out.unlink(missing_ok=True)
        run("test", ["--ckpt_path", str(best), "--trainer.devices=1"])  # logs to <stage>/fold<k>/test/
        if not out.is_file():
            raise NeonetError(f"{stage} fold {fold}: `neonet test` wrote no {out}")
        frame = pd.read_csv(out, dtype={"case_id": str, "patient_id": str})
        metrics = binary_metrics(frame["y_true"], frame["prob"], float(frame["threshold_youden_val"].iloc[0]))
        log.info("%s fold %d: test AUC %.3f on %d patients", stage, fold, metrics["auroc"], len(frame))
        return {"test_predictions": ws.checkpoint_record(out), "test_metrics": metrics}

    def after_all(self, ws: Workspace, cfg: dict[str, Any], folds: list[int]) -> None:
        """Write the experiment's classification report (every stage with test predictions)."""
        from neonet.report import report

        report(experiment=ws.experiment, runs_dir=ws.runs_dir)
