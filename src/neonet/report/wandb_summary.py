"""A W&B summary run per cross-validation: the fold table, summary numbers and figures.

What it sends follows :mod:`neonet.run.wandb_privacy`: tables without case ids, paths or per-case
tumour volumes, no host name, and figures of patients' images only when the user opted in
(``NEONET_WANDB_IDENTIFIERS=1``). The local reports keep everything.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd

from neonet.run.lightning_cli import wandb_mode
from neonet.run.wandb_privacy import identifiers_allowed, redact_table, wandb_settings
from neonet.workspace import Workspace

log = logging.getLogger(__name__)


def log_cv_summary(
    ws: Workspace,
    stage: str,
    tables: dict[str, pd.DataFrame],
    summary: dict[str, float],
    images: dict[str, Path] | None = None,
    patient_images: dict[str, Path] | None = None,
) -> str | None:
    """Write one W&B run ``<stage>-cv`` (group = experiment) with tables, numbers and images.

    Args:
        ws: the experiment.
        stage: the stage (the run is ``<stage>-cv``).
        tables: tables by name, sent through :func:`neonet.run.wandb_privacy.redact_table`.
        summary: numbers by name.
        images: figures without patient data (ROC curves, score plots).
        patient_images: figures that show patients' images, sent only when the user opted in.

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
        project=os.environ.get("WANDB_PROJECT", "neonet"),
        group=ws.experiment,
        job_type=f"{stage}-cv",
        name=f"{stage}-cv",
        dir=str(save_dir),
        mode="online" if mode == "online" else "offline",
        reinit="finish_previous",
        settings=wandb_settings(),
    )
    figures = {**(images or {}), **((patient_images or {}) if identifiers_allowed() else {})}
    try:
        for name, frame in tables.items():
            run.log({name: wandb.Table(dataframe=redact_table(frame).reset_index(drop=True))})
        for name, path in figures.items():
            run.log({name: wandb.Image(str(path))})
        for key, value in summary.items():
            run.summary[key] = value
        return run.dir
    finally:
        run.finish()
