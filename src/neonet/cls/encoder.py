"""PattenNet's frozen encoder from the *same fold's* autoencoder checkpoint (no cross-fold leakage).

NeoGen trains one ``AutoencoderKL`` per fold on that fold's training patients and saves it as a
Lightning checkpoint at ``<runs>/<experiment>/autoencoder/fold<k>/checkpoints/best.ckpt`` whose
``state_dict`` keys carry the LightningModule attribute as prefix (``autoencoder.encoder.blocks...``).
This module resolves that checkpoint for a fold, checks that the autoencoder never saw the fold's
held-out patients, and loads the encoder weights strictly (every encoder tensor must be present
with the right shape; the decoder and the rest of the checkpoint are ignored).

Nothing here imports NeoGen: the checkpoint is read as a plain state dict, safely
(:func:`neonet.run.reload.read_state_dict`: tensors and plain values only).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from neonet.errors import MissingUpstreamError, NeonetError
from neonet.nets import AutoencoderKLEncoder
from neonet.run.reload import read_state_dict
from neonet.workspace import Workspace

log = logging.getLogger(__name__)

__all__ = [
    "check_encoder_fold",
    "encoder_key_map",
    "find_encoder",
    "load_encoder_checkpoint",
    "read_state_dict",
    "resolve_encoder_checkpoint",
]


def find_encoder(net: nn.Module) -> nn.Module | None:
    """The encoder that PattenNet-style networks expose as ``net.encoder`` (None for baselines)."""
    encoder = getattr(net, "encoder", None)
    return encoder if isinstance(encoder, nn.Module) else None


def resolve_encoder_checkpoint(
    spec: str | None, ws: Workspace, fold: int, encoder_stage: str = "autoencoder", encoder_config: str | None = None
) -> Path | None:
    """The autoencoder checkpoint that PattenNet's encoder is loaded from.

    Args:
        spec: ``"auto"`` (the fold's own ``<encoder_stage>/fold<k>/checkpoints/best.ckpt``), an explicit
            path, or None (no loading: the encoder keeps its initial weights).
        ws: the experiment's workspace.
        fold: the fold being trained.
        encoder_stage: stage folder of the autoencoder.
        encoder_config: the autoencoder's config, named in the error when the checkpoint is missing.

    Raises:
        MissingUpstreamError: when the checkpoint does not exist.
    """
    if spec is None:
        return None
    path = ws.best_checkpoint(encoder_stage, fold) if spec == "auto" else Path(spec)
    if not path.is_file():
        config = encoder_config or "experiments/demo/autoencoder.yaml"
        raise MissingUpstreamError(
            f"the fold-{fold} autoencoder checkpoint of experiment {ws.experiment!r} (PattenNet's frozen encoder)",
            path,
            f"neonet cv --config {config} --folds {fold}",
        )
    return path


def encoder_key_map(encoder: nn.Module, prefix: str) -> dict[str, str]:
    """Map each tensor name of ``encoder`` to its name in the autoencoder checkpoint.

    For :class:`~neonet.nets.AutoencoderKLEncoder`, ``blocks.i.*`` comes from
    ``<prefix>encoder.blocks.i.*`` and ``quant_conv_mu.*`` from ``<prefix>quant_conv_mu.*``; any other
    encoder is assumed to be stored under ``<prefix>`` with its own names.
    """
    mapping: dict[str, str] = {}
    for name in encoder.state_dict():
        if isinstance(encoder, AutoencoderKLEncoder) and name.startswith("blocks."):
            mapping[name] = f"{prefix}encoder.{name}"
        else:
            mapping[name] = f"{prefix}{name}"
    return mapping


def _candidate_prefixes(state: dict[str, torch.Tensor]) -> list[str]:
    marker = "encoder.blocks.0."
    return sorted({k[: k.index(marker)] for k in state if marker in k})


def _architecture_hint(checkpoint: Path) -> str:
    """The AutoencoderKL arguments in the autoencoder fold's saved ``config.yaml``, if found."""
    config = checkpoint.parent.parent / "config.yaml"
    if not config.is_file():
        return ""
    try:
        cfg = yaml.safe_load(config.read_text())
    except (OSError, yaml.YAMLError):
        return ""

    def walk(node: Any) -> dict[str, Any] | None:
        if isinstance(node, dict):
            if str(node.get("class_path", "")).endswith("AutoencoderKL"):
                return node.get("init_args") or {}
            for value in node.values():
                found = walk(value)
                if found is not None:
                    return found
        elif isinstance(node, list):
            for value in node:
                found = walk(value)
                if found is not None:
                    return found
        return None

    found = walk(cfg)
    return f" The autoencoder was trained with AutoencoderKL init_args {found} ({config})." if found else ""


def load_encoder_checkpoint(encoder: nn.Module, path: str | Path, prefix: str = "autoencoder.") -> dict[str, str]:
    """Load the encoder weights of an autoencoder checkpoint into ``encoder``, strictly.

    Args:
        encoder: the encoder (normally :class:`~neonet.nets.AutoencoderKLEncoder`).
        path: the autoencoder checkpoint.
        prefix: prefix of the autoencoder's tensors in the checkpoint (the LightningModule attribute
            holding the ``AutoencoderKL`` plus a dot; ``""`` for a plain AutoencoderKL state dict).

    Returns:
        The mapping used: encoder tensor name -> checkpoint key.

    Raises:
        NeonetError: when tensors are missing or differ in shape (the message names the file, the
            prefixes found in it and, if available, the autoencoder's architecture).
    """
    path = Path(path)
    state = read_state_dict(path)
    mapping = encoder_key_map(encoder, prefix)
    own = encoder.state_dict()
    missing = [src for src in mapping.values() if src not in state]
    wrong = [
        f"{src} {tuple(state[src].shape)} vs {tuple(own[dst].shape)}"
        for dst, src in mapping.items()
        if src in state and state[src].shape != own[dst].shape
    ]
    if missing or wrong:
        found = _candidate_prefixes(state)
        hint = f" Prefixes found in the checkpoint: {found} (set model.init_args.encoder_prefix)." if found else ""
        raise NeonetError(
            f"{path}: cannot load PattenNet's encoder with prefix {prefix!r}: "
            f"{len(missing)} tensor(s) missing (e.g. {missing[:3]}), {len(wrong)} of the wrong shape (e.g. {wrong[:3]}). "
            "The AutoencoderKL in the PattenNet config must match the autoencoder stage's." + hint + _architecture_hint(path)
        )
    encoder.load_state_dict({dst: state[src] for dst, src in mapping.items()}, strict=True)
    log.info("loaded %d encoder tensors from %s", len(mapping), path)
    return mapping


def check_encoder_fold(
    ws: Workspace,
    encoder_stage: str,
    fold: int,
    test_cases: list[str] | tuple[str, ...],
    val_cases: list[str] | tuple[str, ...] = (),
) -> None:
    """Refuse an autoencoder whose ``artifact.json`` says it saw any of this fold's test cases.

    Args:
        ws: the workspace.
        encoder_stage: the autoencoder's stage folder.
        fold: the fold being trained.
        test_cases: the fold's held-out test cases (an error if the autoencoder trained or validated on them).
        val_cases: the fold's inner-validation cases (a warning if the autoencoder trained on them:
            model selection would be slightly optimistic, test metrics stay clean).

    Raises:
        NeonetError: on leakage of test cases, or when the artifact belongs to another fold.
    """
    art = ws.read_artifact(encoder_stage, fold)
    where = ws.artifact_path(encoder_stage, fold)
    if not art:
        log.warning("no %s: cannot verify which cases the fold-%d autoencoder saw", where, fold)
        return
    if "fold" in art and int(art["fold"]) != int(fold):
        raise NeonetError(f"{where} belongs to fold {art['fold']}, not fold {fold}")
    if art.get("test_cases") is not None and sorted(art["test_cases"]) != sorted(test_cases):
        raise NeonetError(
            f"{where}: the autoencoder's fold {fold} held out other test cases than this fold does; "
            "both stages must use the experiment's splits.json"
        )
    seen = set(art.get("train_cases") or []) | set(art.get("val_cases") or []) | set(art.get("trained_on_cases") or [])
    leaked = sorted(seen & set(test_cases))
    if leaked:
        raise NeonetError(
            f"leakage: the fold-{fold} autoencoder ({where}) was trained or validated on {len(leaked)} case(s) "
            f"of fold {fold}'s test set: {leaked[:10]}"
        )
    overlap = sorted(set(art.get("train_cases") or []) & set(val_cases))
    if overlap:
        log.warning(
            "the fold-%d autoencoder trained on %d of the classifier's inner-validation cases: model selection "
            "is slightly optimistic (test metrics are unaffected)",
            fold,
            len(overlap),
        )
