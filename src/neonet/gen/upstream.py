"""Loading a fold's upstream checkpoints (strictly, with the path in every error) and naming fixes.

Every NeoGen stage finds its inputs from (experiment, stage, fold) alone. When something is
missing, the error names the command that makes it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from neonet.errors import MissingUpstreamError, NeonetError
from neonet.gen.common import freeze
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


def load_stage_module(cls: type, ckpt: str | Path) -> Any:
    """``cls.load_from_checkpoint(ckpt)`` on CPU, strict, with errors that name the file."""
    ckpt = Path(ckpt)
    try:
        module = cls.load_from_checkpoint(str(ckpt), map_location="cpu", strict=True, weights_only=False)
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        raise NeonetError(
            f"{ckpt}: cannot load as {cls.__name__} ({type(exc).__name__}: {str(exc).splitlines()[0][:400]}). "
            "The checkpoint must come from `neonet fit` with the matching stage config; re-train that stage "
            "if its network config changed"
        ) from exc
    return module.eval()


def load_autoencoder(ckpt: str | Path) -> nn.Module:
    """The frozen ``AutoencoderKL`` of an autoencoder-stage checkpoint."""
    from neonet.gen.autoencoder import AutoencoderModule

    return freeze(load_stage_module(AutoencoderModule, ckpt).autoencoder)


def load_state_strict(module: nn.Module, state: dict[str, torch.Tensor], prefix: str, ckpt: str | Path) -> None:
    """Load the ``prefix``-ed entries of a checkpoint state dict into ``module`` strictly."""
    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not sub:
        raise NeonetError(f"{ckpt}: no weights with prefix {prefix!r} in its state_dict")
    try:
        module.load_state_dict(sub, strict=True)
    except RuntimeError as exc:
        raise NeonetError(f"{ckpt}: weights under {prefix!r} do not fit the network ({str(exc)[:400]})") from exc


def load_seg_network(ws: Workspace, fold: int) -> nn.Module | None:
    """The fold's NeoSeg network (frozen), or None when the fold has no seg ``best.ckpt``.

    The network is rebuilt from the stage folder's ``config.yaml`` (written by ``neonet fit``), then
    its weights are loaded strictly from ``best.ckpt``.
    """
    ckpt = ws.best_checkpoint("seg", fold)
    config = ws.stage_dir("seg", fold) / "config.yaml"
    if not ckpt.is_file() or not config.is_file():
        return None
    import yaml

    from neonet.gen.common import instantiate

    cfg = yaml.safe_load(config.read_text()) or {}
    spec = ((cfg.get("model") or {}).get("init_args") or {}).get("net")
    if not isinstance(spec, dict):
        log.warning("%s has no model.init_args.net; NeoSeg network not used", config)
        return None
    net = instantiate(spec)
    state = torch.load(str(ckpt), map_location="cpu", weights_only=False)["state_dict"]
    load_state_strict(net, state, "net.", ckpt)
    return freeze(net)
