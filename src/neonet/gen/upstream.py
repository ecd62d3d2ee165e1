"""A NeoGen fold's upstream models (rebuilt by :mod:`neonet.run.reload`) and the commands that make them.

Every NeoGen stage finds its inputs from (experiment, stage, fold) alone. When something is
missing, the error names the command that makes it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import cast

from monai.networks.nets import AutoencoderKL
from torch import nn

from neonet.errors import MissingUpstreamError
from neonet.gen.common import freeze
from neonet.run.reload import load_checkpoint_fold, load_trained_fold
from neonet.workspace import Workspace

log = logging.getLogger(__name__)


def stage_command(ws: Workspace, stage: str, fold: int) -> str:
    """The command that trains ``stage`` for ``fold`` (configs live in ``experiments/<experiment>/``)."""
    return (
        f"neonet cv --config experiments/{ws.experiment}/{stage}.yaml --folds {int(fold)} "
        f"-- --data.runs_dir={ws.runs_dir} --data.experiment={ws.experiment}"
    )


def cache_command(ws: Workspace, fold: int) -> str:
    """The command that (re)builds the latent cache of ``fold``."""
    return f"python -m neonet.gen.latents --experiment {ws.experiment} --runs_dir {ws.runs_dir} --folds {int(fold)} --force true"


def require_checkpoint(ws: Workspace, stage: str, fold: int, path: str | Path | None = None) -> Path:
    """``path`` or the fold's ``best.ckpt`` of ``stage``; MissingUpstreamError naming the fix if absent."""
    ckpt = Path(path) if path else ws.best_checkpoint(stage, fold)
    if not ckpt.is_file():
        raise MissingUpstreamError(f"{stage} checkpoint of fold {fold}", ckpt, stage_command(ws, stage, fold))
    return ckpt


def load_autoencoder(ckpt: str | Path) -> AutoencoderKL:
    """The frozen ``AutoencoderKL`` of an autoencoder-stage checkpoint (rebuilt by :mod:`neonet.run.reload`)."""
    from neonet.gen.autoencoder import AutoencoderModule

    module = cast(AutoencoderModule, load_checkpoint_fold(ckpt, expect=AutoencoderModule).module)  # class checked there
    return cast(AutoencoderKL, freeze(module.autoencoder))


def load_seg_network(ws: Workspace, fold: int) -> nn.Module | None:
    """The fold's NeoSeg network (frozen), or None when the fold has no seg ``best.ckpt`` or ``config.yaml``.

    The fold is rebuilt from its ``config.yaml`` with ``best.ckpt`` loaded strictly
    (:func:`neonet.run.reload.load_trained_fold`); errors in either file are raised, not skipped.
    """
    if not ws.best_checkpoint("seg", fold).is_file() or not ws.config_path("seg", fold).is_file():
        return None
    trained = load_trained_fold(ws, "seg", fold)
    net = getattr(trained.module, "net", None)
    if not isinstance(net, nn.Module):
        log.warning("%s: the seg module has no network `net`; NeoSeg network not used", trained.config)
        return None
    return freeze(net)
