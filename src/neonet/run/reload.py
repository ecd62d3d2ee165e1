"""Rebuilding a trained fold: the one way neonet reloads what ``neonet fit`` wrote.

A fold folder ``<runs_dir>/<experiment>/<stage>/fold<k>/`` holds ``config.yaml`` (LightningCLI's full
config of the fit: module, injected networks, DataModule) and ``checkpoints/{best,last}.ckpt``. Runs
folders are shared, so neither file is trusted:

- ``config.yaml`` is read with ``yaml.safe_load`` and every ``class_path`` in it is built by
  :func:`build`, which imports and calls only *classes* defined under ``neonet.``, ``monai.`` or
  ``torch.`` (the path is checked before anything is imported, the class's ``__module__`` after).
  Optimizer and scheduler entries are training-only: dropped, never imported.
- checkpoints are read with ``torch.load(weights_only=True)`` (tensors and plain Python values only:
  a pickled object that would run code is refused) and loaded with ``load_state_dict(strict=True)``;
  a finished fold's best checkpoint must still have the SHA-256 its ``artifact.json`` recorded
  (:meth:`~neonet.workspace.Workspace.verify_checkpoint`), or it is not used.

Every failure is a :class:`~neonet.errors.NeonetError` naming the file and what to do.
"""

from __future__ import annotations

import importlib
import logging
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeGuard

import torch
import yaml
from lightning.pytorch import LightningDataModule, LightningModule
from torch import nn

from neonet.errors import MissingUpstreamError, NeonetError
from neonet.workspace import Workspace

log = logging.getLogger(__name__)

__all__ = [
    "ALLOWED_PACKAGES",
    "TrainedFold",
    "allowed_class",
    "build",
    "build_network",
    "check_checkpoint_path",
    "check_resume_checkpoint",
    "checkpoint_problem",
    "load_checkpoint_fold",
    "load_trained_fold",
    "read_checkpoint",
    "read_state_dict",
    "retrain_command",
    "safe_torch_load",
]

#: Top-level packages whose classes a stored config may name.
ALLOWED_PACKAGES = ("neonet", "monai", "torch")
#: Module init arguments that only training uses (dropped unread): these names and ``*_<name>``.
TRAINING_ONLY = ("optimizer", "scheduler")
_SPEC_KEYS = {"class_path", "init_args", "dict_kwargs"}
_DOTTED = re.compile(r"[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)+")
_ALLOWED_TEXT = (
    "neonet rebuilds trained folds only from neonet, monai and torch classes (class paths starting with "
    "neonet., monai. or torch.); a config.yaml written by `neonet fit` names no other. Nothing was imported or "
    "run: check where this file came from"
)


@dataclass
class TrainedFold:
    """One trained fold, rebuilt from its ``config.yaml`` with a checkpoint loaded strictly.

    Attributes:
        fold: the fold k.
        module: the LightningModule (eval mode, on the CPU).
        data: its DataModule, built from the same config and never set up.
        checkpoint: the checkpoint whose weights were loaded.
        config: the fold's ``config.yaml``.
        cfg: the parsed ``config.yaml``.
    """

    fold: int
    module: LightningModule
    data: LightningDataModule
    checkpoint: Path
    config: Path
    cfg: dict[str, Any]


# ----------------------------------------------------------------------------- the allowlisted builder
def _where(source: str | Path | None, key: str) -> str:
    return ": ".join(str(p) for p in (source, key) if p not in (None, ""))


def allowed_class(class_path: Any, source: str | Path | None = None, key: str = "", expect: type | None = None) -> type:
    """The class named by ``class_path``, if a stored config may name it.

    Args:
        class_path: dotted path such as ``monai.networks.nets.DynUNet``.
        source: the file the path comes from (named in errors).
        key: where in that file (e.g. ``model.init_args.net``), named in errors.
        expect: a base class the class must derive from.

    Raises:
        NeonetError: the path is outside ``neonet``/``monai``/``torch`` or has a private part (checked
            before importing), cannot be imported, is not a class, is a class defined elsewhere and
            re-exported under an allowed package, or does not derive from ``expect``.
    """
    where = _where(source, key)
    text = str(class_path)
    if not isinstance(class_path, str) or not _DOTTED.fullmatch(text) or text.split(".")[0] not in ALLOWED_PACKAGES:
        raise NeonetError(f"{where}: class {text!r} is not allowed; {_ALLOWED_TEXT}")
    module_name, _, name = text.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise NeonetError(
            f"{where}: cannot import class {text!r} ({type(exc).__name__}: {exc}); the fold was trained with "
            "another version of neonet or MONAI"
        ) from exc
    if not isinstance(obj, type):
        raise NeonetError(f"{where}: {text!r} is not a class (it is a {type(obj).__name__}) and is not allowed; {_ALLOWED_TEXT}")
    defined_in = str(getattr(obj, "__module__", ""))
    if defined_in.split(".")[0] not in ALLOWED_PACKAGES:
        raise NeonetError(
            f"{where}: class {text!r} is defined in {defined_in!r}, outside neonet, monai and torch, and is not "
            f"allowed; {_ALLOWED_TEXT}"
        )
    if expect is not None and not issubclass(obj, expect):
        raise NeonetError(f"{where}: class {text!r} is not a {expect.__name__}")
    return obj


def _is_spec(node: Any) -> TypeGuard[Mapping[str, Any]]:
    return isinstance(node, Mapping) and "class_path" in node


def _check(node: Any, source: str | Path | None, key: str, expect: type | None = None) -> None:
    """Resolve every class of ``node`` (recursively) without building anything."""
    if _is_spec(node):
        extra = sorted(set(node) - _SPEC_KEYS)
        if extra:
            raise NeonetError(f"{_where(source, key)}: unexpected entries {extra} beside class_path")
        allowed_class(node["class_path"], source, key, expect)
        for name in ("init_args", "dict_kwargs"):
            args = node.get(name) or {}
            if not isinstance(args, Mapping):
                raise NeonetError(f"{_where(source, key)}.{name}: expected a mapping, got {type(args).__name__}")
            for arg, value in args.items():
                _check(value, source, f"{key}.{name}.{arg}")
    elif isinstance(node, Mapping):
        for arg, value in node.items():
            _check(value, source, f"{key}.{arg}" if key else str(arg))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _check(value, source, f"{key}[{i}]")


def _construct(node: Any, source: str | Path | None, key: str) -> Any:
    if _is_spec(node):
        cls = allowed_class(node["class_path"], source, key)
        kwargs = {**dict(node.get("init_args") or {}), **dict(node.get("dict_kwargs") or {})}
        kwargs = {arg: _construct(value, source, f"{key}.init_args.{arg}") for arg, value in kwargs.items()}
        try:
            return cls(**kwargs)
        except (TypeError, ValueError, AssertionError, OSError, RuntimeError) as exc:
            raise NeonetError(f"{_where(source, key)}: cannot build {node['class_path']} ({type(exc).__name__}: {exc})") from exc
    if isinstance(node, Mapping):
        return {arg: _construct(value, source, f"{key}.{arg}" if key else str(arg)) for arg, value in node.items()}
    if isinstance(node, list):
        return [_construct(value, source, f"{key}[{i}]") for i, value in enumerate(node)]
    return node


def build(spec: Any, source: str | Path | None = None, key: str = "", expect: type | None = None) -> Any:
    """Build ``{"class_path": ..., "init_args": {...}}`` specs (recursively) from allowlisted classes only.

    Every class in ``spec`` is checked by :func:`allowed_class` before any is built, so a refused class
    deep inside leaves nothing constructed. Mappings and lists are built element-wise; plain values
    are returned unchanged.

    Args:
        spec: a spec, or plain data holding specs (as jsonargparse stores injected objects).
        source: the file ``spec`` comes from (named in errors).
        key: where in that file ``spec`` sits, e.g. ``model.init_args.net``.
        expect: a base class the outermost spec's class must derive from.

    Raises:
        NeonetError: naming ``source``, the key and the class, for a refused class or a failed build.
    """
    _check(spec, source, key, expect)
    return _construct(spec, source, key)


def build_network(spec: Any, source: str | Path | None = None, key: str = "") -> nn.Module:
    """A ``torch.nn.Module`` built from a spec by :func:`build` (e.g. a UNet recorded in a checkpoint)."""
    if not _is_spec(spec):
        raise NeonetError(f"{_where(source, key)}: expected a network spec with a class_path, got {type(spec).__name__}")
    return build(spec, source, key, expect=nn.Module)


# ----------------------------------------------------------------------------- reading files safely
def _first_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]


def safe_torch_load(path: str | Path, what: str, fix: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with errors that name the file and ``fix``.

    Args:
        path: the file.
        what: what the file is, for messages (``"checkpoint"``, ``"latent cache"``).
        fix: what to do when it cannot be read (a sentence, usually ending in a command).

    Raises:
        NeonetError: the file does not exist, holds pickled objects other than tensors and plain values
            (refused: unpickling them could run code), or is truncated or corrupt.
    """
    path = Path(path)
    if not path.is_file():
        raise NeonetError(f"{what} {path} not found. {fix}")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for unsafe, truncated or corrupt files
        if isinstance(exc, pickle.UnpicklingError) and ("weights only" in str(exc).lower() or "GLOBAL" in str(exc)):
            found = re.search(r"(Unsupported[^\n]*|Trying to load unsupported[^\n]*)", str(exc))
            detail = f" ({found.group(1).strip().rstrip('.')})" if found else ""
            raise NeonetError(
                f"{path}: refused to load this {what}: it holds pickled Python objects other than tensors and plain "
                f"values{detail}, and unpickling them could run code. neonet never writes such objects; do not "
                f"load this file or use its folder. {fix}"
            ) from exc
        raise NeonetError(
            f"{path}: cannot read this {what}, it is truncated or corrupt ({type(exc).__name__}: {_first_line(exc)}). {fix}"
        ) from exc


def checkpoint_problem(path: str | Path) -> str | None:
    """What is wrong with a checkpoint file's container, or None when it reads whole.

    ``torch.save`` writes a zip archive; a truncated or damaged one fails its directory or CRC check
    here (every byte is read, nothing is unpickled), before Lightning or torch stop on it with a bare
    zip error.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as exc:
        return f"it is truncated or corrupt ({type(exc).__name__}: {_first_line(exc)})"
    return f"it is corrupt (entry {bad} fails its CRC check)" if bad else None


def check_resume_checkpoint(
    ws: Workspace, stage: str, fold: int, path: str | Path, rerun: str = "the same command", retrain: str | None = None
) -> None:
    """Refuse to resume a fold from a checkpoint that cannot be read, saying what to do instead.

    Args:
        ws: the experiment's workspace.
        stage: the stage folder.
        fold: the fold k.
        path: the checkpoint to resume from (usually the fold's ``last.ckpt``).
        rerun: the command to run once the file is out of the way.
        retrain: the command that re-trains the fold from scratch (default: :meth:`Workspace.retrain_command`).

    Raises:
        NeonetError: naming the file, what is wrong with it and the ways on (nothing is moved or deleted).
    """
    path = Path(path)
    problem = checkpoint_problem(path)
    if problem is None:
        return
    aside = path.with_name(path.name + ".unreadable")
    raise NeonetError(
        f"{path}: cannot resume {stage} fold {int(fold)} from this checkpoint: {problem}. Running the same command "
        f"again would fail the same way, and nothing was changed. Move the file aside and run {rerun} again; "
        f"without it the fold trains from the start:\n    mv {path} {aside}\n"
        f"or re-train the fold from scratch (its current results are moved aside to {ws.replaced_dir(stage, fold)} "
        f"until the new fit succeeds):\n    {retrain or ws.retrain_command(stage, fold)}"
    )


def check_checkpoint_path(path: str | Path, resume: bool) -> None:
    """Check a checkpoint named on the command line (``--ckpt_path``) before Lightning reads it.

    Args:
        path: the checkpoint.
        resume: whether a fit resumes from it (then :func:`check_resume_checkpoint`'s message when it is a
            fold's checkpoint); otherwise a verb evaluates or predicts with it.

    Raises:
        NeonetError: the file is truncated or corrupt; the message names it and the way on.
    """
    path = Path(path)
    found = _fold_of(path)
    if resume and found is not None:
        check_resume_checkpoint(*found, path, rerun="the fit without --ckpt_path")
        return
    problem = checkpoint_problem(path)
    if problem is not None:
        raise NeonetError(f"{path}: cannot read this checkpoint: {problem}. {_retrain_fix(path)}")


def retrain_command(ws: Workspace, stage: str, fold: int) -> str:
    """The ``neonet cv`` command that re-trains ``stage`` for ``fold``."""
    from neonet.predict.ensemble import train_command

    return train_command(ws, stage, [int(fold)])


def _fold_of(path: Path) -> tuple[Workspace, str, int] | None:
    """``(workspace, stage, fold)`` of a file in ``<runs>/<experiment>/<stage>/fold<k>/[checkpoints/]``."""
    fold_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    match = re.fullmatch(r"fold(\d+)", fold_dir.name)
    stage_dir = fold_dir.parent
    if not match or not stage_dir.name or not stage_dir.parent.name:
        return None
    try:
        return Workspace(stage_dir.parent.parent, stage_dir.parent.name), stage_dir.name, int(match.group(1))
    except ValueError:
        return None


def _retrain_fix(path: Path) -> str:
    found = _fold_of(path)
    if found is None:
        return "Re-train the fold that wrote it (`neonet cv --config <its stage config> --folds <k>`)."
    return f"Re-train the fold:\n    {retrain_command(*found)}"


def read_checkpoint(path: str | Path, fix: str | None = None) -> dict[str, Any]:
    """A checkpoint's content (tensors and plain values only), read with ``weights_only=True``.

    Args:
        path: the checkpoint.
        fix: what to do when it cannot be read (default: the command that re-trains its fold).

    Raises:
        NeonetError: missing, unsafe, truncated or corrupt file, or not a dict.
    """
    path = Path(path)
    fix = fix or _retrain_fix(path)
    content = safe_torch_load(path, "checkpoint", fix)
    if not isinstance(content, dict):
        raise NeonetError(f"{path}: not a checkpoint (it holds a {type(content).__name__}, not a dict). {fix}")
    found = _fold_of(path)
    if found is not None:  # a finished fold's checkpoint must still be the file its artifact.json recorded
        ws, stage, fold = found
        ws.verify_checkpoint(stage, fold, path)
    return content


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint (a Lightning ``{"state_dict": ...}`` or a plain state dict), read safely."""
    state = read_checkpoint(path)
    if isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    return {k: v for k, v in state.items() if torch.is_tensor(v)}


def read_config(path: str | Path) -> dict[str, Any]:
    """A fold's ``config.yaml`` parsed with ``yaml.safe_load``."""
    path = Path(path)
    try:
        cfg = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        reason = f"{type(exc).__name__}: {_first_line(exc)}"
        raise NeonetError(f"{path}: cannot read the fold's config ({reason}). {_retrain_fix(path)}") from exc
    if not isinstance(cfg, dict):
        raise NeonetError(f"{path}: not a `neonet fit` config (no mapping at the top). {_retrain_fix(path)}")
    return cfg


# ----------------------------------------------------------------------------- trained folds
def _training_only(name: str) -> bool:
    return any(name == t or name.endswith(f"_{t}") for t in TRAINING_ONLY)


def _fold_specs(cfg: dict[str, Any], config: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The module and DataModule specs of a fit config (training-only module arguments dropped)."""
    model, data = cfg.get("model"), cfg.get("data")
    if not _is_spec(model) or not _is_spec(data):
        raise NeonetError(f"{config}: expected model.class_path and data.class_path (the config.yaml of a `neonet fit`)")
    init = {k: v for k, v in dict(model.get("init_args") or {}).items() if not _training_only(str(k))}
    return {**model, "init_args": init}, dict(data)


def _load_weights(module: LightningModule, checkpoint: dict[str, Any], ckpt: Path, config: Path, fix: str) -> None:
    """Lightning's reload order: ``on_load_checkpoint`` (e.g. rebuilding recorded sub-networks), then the weights."""
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict):
        raise NeonetError(f"{ckpt}: no state_dict in this checkpoint (not written by `neonet fit`). {fix}")
    try:
        module.on_load_checkpoint(checkpoint)
    except NeonetError as exc:
        raise NeonetError(f"{ckpt}: {exc}. {fix}") from exc
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise NeonetError(
            f"{ckpt}: cannot restore {type(module).__name__} ({type(exc).__name__}: {_first_line(exc)}). {fix}"
        ) from exc
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:600]
        raise NeonetError(
            f"{ckpt}: its weights do not fit the network built from {config} ({detail}). The checkpoint and the "
            f"config.yaml must come from the same fit. {fix}"
        ) from exc


def _rebuild(config: Path, ckpt: Path, fold: int, fix: str, expect: type | None) -> TrainedFold:
    cfg = read_config(config)
    model_spec, data_spec = _fold_specs(cfg, config)
    try:
        _check(data_spec, config, "data", LightningDataModule)
        module = build(model_spec, config, "model", expect=expect or LightningModule)
        data = build(data_spec, config, "data")
    except NeonetError as exc:
        raise NeonetError(f"{exc}. {fix}") from exc
    _load_weights(module, read_checkpoint(ckpt, fix), ckpt, config, fix)
    log.info("reloaded %s fold %d from %s", type(module).__name__, fold, ckpt)
    return TrainedFold(int(fold), module.cpu().eval(), data, ckpt, config, cfg)


def load_trained_fold(
    ws: Workspace, stage: str, fold: int, checkpoint: Literal["best", "last"] | str | Path = "best"
) -> TrainedFold:
    """Rebuild a trained fold from its ``config.yaml`` and load a checkpoint strictly.

    Args:
        ws: the experiment's workspace.
        stage: the stage folder (``seg``, ``autoencoder``, ``pattennet``, ``resnet18``, ...).
        fold: the fold k.
        checkpoint: ``"best"``, ``"last"`` or the path of another checkpoint of this fold.

    Returns:
        The fold: module (eval mode, CPU) with the checkpoint's weights, DataModule (not set up), paths
        and the parsed config.

    Raises:
        MissingUpstreamError: ``config.yaml`` or the checkpoint does not exist (names the command that
            trains the fold).
        NeonetError: a class outside neonet/monai/torch in the config, an unsafe, truncated or corrupt
            checkpoint, or weights that do not fit the network (each names the file and the command
            that re-trains the fold).
    """
    command = retrain_command(ws, stage, fold)
    config = ws.config_path(stage, fold)
    if checkpoint in ("best", "last"):
        ckpt = ws.best_checkpoint(stage, fold) if checkpoint == "best" else ws.last_checkpoint(stage, fold)
    else:
        ckpt = Path(checkpoint)
    for what, path in (("config.yaml", config), ("checkpoint", ckpt)):
        if not path.is_file():
            raise MissingUpstreamError(f"the {what} of trained {stage} fold {fold}", path, command)
    return _rebuild(config, ckpt, fold, f"Re-train the fold:\n    {command}", None)


def load_checkpoint_fold(ckpt: str | Path, expect: type | None = None) -> TrainedFold:
    """Rebuild the fold a checkpoint belongs to (its ``config.yaml`` is two folders up) and load it strictly.

    For upstream checkpoints named by path (e.g. ``model.init_args.diffusion_checkpoint``).

    Args:
        ckpt: a checkpoint in ``<stage>/fold<k>/checkpoints/``.
        expect: the LightningModule class the fold's ``model.class_path`` must name (or derive from).

    Raises:
        NeonetError: as :func:`load_trained_fold`, or when the module is not an ``expect``.
    """
    ckpt = Path(ckpt)
    config = ckpt.parent.parent / "config.yaml"
    fix = _retrain_fix(ckpt)
    if not ckpt.is_file():
        raise NeonetError(f"checkpoint {ckpt} not found. {fix}")
    if not config.is_file():
        raise NeonetError(
            f"{ckpt}: its fold's config.yaml is missing ({config}); a checkpoint is reloaded only with the config.yaml "
            f"that `neonet fit` wrote beside its checkpoints/ folder. {fix}"
        )
    found = _fold_of(ckpt)
    fold = found[2] if found else int(((read_config(config).get("data") or {}).get("init_args") or {}).get("fold") or 0)
    return _rebuild(config, ckpt, fold, fix, expect)
