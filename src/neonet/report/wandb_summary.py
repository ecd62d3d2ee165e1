"""A W&B summary run per cross-validation: the fold table, summary numbers and figures.

What it sends follows :mod:`neonet.run.wandb_privacy`: tables without case ids, paths or per-case
tumour volumes, no host name, and figures of patients' images only when the user opted in
(``NEONET_WANDB_IDENTIFIERS=1``). The local reports keep everything.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from neonet.run.wandb_privacy import identifiers_allowed, redact_table, wandb_settings
from neonet.run.wandb_run import declare_use, model_artifact, run_config, run_tags, wandb_mode, wandb_project
from neonet.workspace import Workspace

log = logging.getLogger(__name__)


def log_cv_summary(
    ws: Workspace,
    stage: str,
    tables: dict[str, pd.DataFrame],
    summary: dict[str, float],
    images: dict[str, Path] | None = None,
    patient_images: dict[str, Path] | None = None,
    config: Mapping[str, Any] | None = None,
    models: list[tuple[str, int]] | None = None,
) -> str | None:
    """Write one W&B run ``<stage>-cv`` (group = experiment) with tables, numbers and images.

    The run's config is ``config`` with seed, git sha and neonet version
    (:func:`neonet.run.wandb_run.run_config`), its tags the experiment, the stage and ``cv``, and it declares
    the fold models it summarises as its inputs (W&B's lineage graph: fold runs → models → this run).

    Args:
        ws: the experiment.
        stage: the stage (the run is ``<stage>-cv``).
        tables: tables by name, sent through :func:`neonet.run.wandb_privacy.redact_table`.
        summary: numbers by name.
        images: figures without patient data (ROC curves, score plots).
        patient_images: figures that show patients' images, sent only when the user opted in.
        config: the settings the summary was made with (e.g. the stage config of ``neonet cv``).
        models: the ``(stage, fold)`` models the summary covers (default: every fold folder of ``stage``).

    Returns:
        The run's local folder, or None when W&B is disabled (``WANDB_MODE=disabled``).
    """
    mode = wandb_mode()
    if mode == "disabled":
        return None
    import wandb

    save_dir = ws.root / stage / "cv"
    save_dir.mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=wandb_project(),
        group=ws.experiment,
        job_type=f"{stage}-cv",
        name=f"{stage}-cv",
        dir=str(save_dir),
        mode="online" if mode == "online" else "offline",
        reinit="finish_previous",
        settings=wandb_settings(),
        config=run_config(config or {}),
        tags=run_tags(ws.experiment, stage, "cv"),
    )
    figures = {**(images or {}), **((patient_images or {}) if identifiers_allowed() else {})}
    try:
        for model_stage, fold in models if models is not None else [(stage, k) for k in ws.stage_folds(stage)]:
            art = model_artifact(ws, model_stage, fold)
            if art is not None:
                declare_use(run, art)
        for name, frame in tables.items():
            run.log({name: wandb.Table(dataframe=redact_table(frame).reset_index(drop=True))})
        for name, path in figures.items():
            run.log({name: wandb.Image(str(path))})
        for key, value in summary.items():
            run.summary[key] = value
        return run.dir
    finally:
        run.finish()
