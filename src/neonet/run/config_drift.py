"""Has a fold already been trained with other settings than the ones asked for now?

``neonet cv`` skips finished folds and resumes interrupted ones from ``last.ckpt``. Both are right
only when the fold's saved ``config.yaml`` (LightningCLI's full config of its fit) agrees with the
config of the new command; otherwise a changed learning rate, seed or pooling would be silently
ignored (skip) or mixed into a half-trained model (resume). :func:`config_drift` lists every
setting of the new config that the saved one does not have, and :func:`check_fold_configs` turns
that into the error every out-of-date output gives (:class:`neonet.run.provenance.OutOfDateError`),
naming the fold, the settings and what to do.

Every setting of the new command's resolved config is compared (an option the saved config lacks
because neonet added it later counts only when it is set to something other than None), and settings
that do not change what is learned (devices, loggers, progress bars,
data-loader workers) are left out. So is where the runs folder is (``data.runs_dir``): the folds
compared are the ones found under the new command's runs folder, so a runs folder that was moved or
renamed holds the same folds, and a path of the saved config that lay under the folder the runs folder
moved with (``/old/project/runs`` → ``/new/project/runs``: any path under ``/old``, e.g. the cohort
``/old/project/data/cases.csv``) counts as the same path under the new place. The callbacks the new
command names must each have been among the fit's (a fit may have had more, e.g. a probe added on the
command line).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from neonet.run.provenance import Outdated, OutOfDateError, UnreadableRecordError, setting_difference
from neonet.workspace import Workspace

#: Settings that may differ between a fold's fit and a later command (hardware and bookkeeping).
RUNTIME_KEYS = (
    "ckpt_path",
    "checkpoint_every_n_steps",
    "trainer.accelerator",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.strategy",
    "trainer.logger",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "trainer.default_root_dir",
    "trainer.profiler",
    "data.fold",
    "data.num_workers",
    "data.runs_dir",
)

#: How ``neonet cv`` names another experiment (in the remedy of an out-of-date fold).
EXPERIMENT_OPTION = "`-- --data.experiment`"

#: Lists of which the new command's items must each be in the fold's (more may have been added to a fit).
SUBSET_KEYS = ("trainer.callbacks",)

_MISSING = object()


def _leaves(node: Any, prefix: tuple[str, ...] = ()) -> Iterable[tuple[tuple[str, ...], Any]]:
    """(path, value) of every value of a nested dict that is not itself a non-empty dict."""
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from _leaves(value, (*prefix, str(key)))
    else:
        yield prefix, node


def _lookup(node: Any, path: tuple[str, ...]) -> Any:
    """The value at ``path``, descending into ``init_args`` where the path leaves it out (as LightningCLI allows)."""
    for key in path:
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, dict) and isinstance(node.get("init_args"), dict) and key in node["init_args"]:
            node = node["init_args"][key]
        else:
            return _MISSING
    return node


def _display(path: tuple[str, ...]) -> str:
    return ".".join(k for k in path if k != "init_args")


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def same_value(stored: Any, requested: Any, moved: tuple[str, str] | None = None) -> bool:
    """Whether two config values mean the same (``1e-3`` and ``0.001``; ``Class`` and ``pkg.mod.Class``;
    ``runs/demo/data/cases.csv`` and ``./runs/demo/../demo/data/cases.csv`` or a symlink to it).

    Args:
        stored: the value of the fold's saved config.
        requested: the value of the new command.
        moved: ``(old, new)`` folders: a stored path under ``old`` stands for the same path under ``new``
            (:func:`moved_root`: the runs folder moved with ``old``).
    """
    if stored == requested:
        return True
    if isinstance(stored, (list, tuple)) and isinstance(requested, (list, tuple)):
        return len(stored) == len(requested) and all(same_value(s, r, moved) for s, r in zip(stored, requested))
    if isinstance(stored, dict) and isinstance(requested, dict):
        return all(same_value(_lookup(stored, p), v, moved) for p, v in _leaves(requested))
    a, b = _as_float(stored), _as_float(requested)
    if a is not None and b is not None:
        return a == b
    if isinstance(stored, str) and isinstance(requested, str):
        if stored.endswith("." + requested) or requested.endswith("." + stored):
            return True
        return _same_path(stored, requested, moved)
    return False


def _norm(p: str) -> str:
    return os.path.normpath(os.path.abspath(os.path.expanduser(p)))


def moved_root(stored_runs_dir: Any, requested_runs_dir: Any) -> tuple[str, str] | None:
    """The folders ``(old, new)`` the runs folder moved with, from the saved and the new ``data.runs_dir``.

    The runs folder's path minus the trailing folders both paths share: ``/old/project/runs`` and
    ``/new/project/runs`` give ``("/old", "/new")``; a renamed runs folder gives the two runs folders.
    None when the runs folder did not move, or when only the file system root would be left.
    """
    if not isinstance(stored_runs_dir, str) or not isinstance(requested_runs_dir, str):
        return None
    a, b = Path(_norm(stored_runs_dir)).parts, Path(_norm(requested_runs_dir)).parts
    if a == b:
        return None
    shared = 0
    while shared < min(len(a), len(b)) - 1 and a[-1 - shared] == b[-1 - shared]:
        shared += 1
    old, new = a[: len(a) - shared], b[: len(b) - shared]
    if len(old) < 2 or len(new) < 2:
        return None
    return str(Path(*old)), str(Path(*new))


def _same_path(a: str, b: str, moved: tuple[str, str] | None = None) -> bool:
    """Whether two strings are paths of one file or folder from the current folder (``runs/x``, ``./runs/x``),
    ``a`` read under the new place of a moved folder (``moved``)."""

    def looks_like_path(p: str) -> bool:
        return "/" in p or p.startswith((".", "~"))

    pathlike = looks_like_path(a) or looks_like_path(b)
    if pathlike and _norm(a) == _norm(b):
        return True
    if pathlike and moved is not None:
        old, new = moved
        rest = os.path.relpath(_norm(a), old)
        if rest != ".." and not rest.startswith(".." + os.sep) and _norm(os.path.join(new, rest)) == _norm(b):
            return True
    try:
        return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)
    except OSError:
        return False


def config_drift(
    requested: dict[str, Any], stored: dict[str, Any], ignore: Iterable[str] = RUNTIME_KEYS
) -> list[tuple[str, Any, Any]]:
    """Settings of ``requested`` that ``stored`` does not have: ``(key, stored value, requested value)``.

    Args:
        requested: the resolved config of the new command (``neonet.run.lightning_cli.resolve_stage_config``).
        stored: the fold's saved ``config.yaml`` (every setting, defaults included).
        ignore: dotted keys (``init_args`` left out) that may differ, e.g. ``trainer.devices``.

    Returns:
        One entry per differing setting, with ``<missing>`` for a setting the fold's config lacks.
    """
    skip = set(ignore)
    moved = moved_root(_lookup(stored, ("data", "runs_dir")), _lookup(requested, ("data", "runs_dir")))
    out: list[tuple[str, Any, Any]] = []
    for path, value in _leaves(requested):
        key = _display(path)
        if not path or key in skip or any(key.startswith(s + ".") for s in skip):
            continue
        have = _lookup(stored, path)
        if have is _MISSING:
            if value is not None:  # an option added to neonet after the fold was trained, left at None: no change
                out.append((key, "<missing>", value))
        elif key in SUBSET_KEYS and isinstance(have, list) and isinstance(value, list):
            if not all(any(same_value(h, v, moved) for h in have) for v in value):
                out.append((key, have, value))
        elif not same_value(have, value, moved):
            out.append((key, have, value))
    return out


def check_fold_configs(
    ws: Workspace, stage: str, folds: Iterable[int], requested: dict[str, Any], stage_option: bool = False
) -> None:
    """Refuse to skip or resume folds whose saved ``config.yaml`` differs from ``requested``.

    Args:
        ws: the workspace.
        stage: the stage folder.
        folds: the folds about to be skipped (finished) or resumed (interrupted).
        requested: the resolved config of the new command.
        stage_option: whether the stage folder comes from ``--model.stage`` (the classifiers), so a
            new setting can be trained beside the old one under another name.

    Raises:
        OutOfDateError: naming each fold's ``config.yaml`` and its differing settings, and the ways on:
            re-train the folds (``--force``), another experiment, or (classifiers) another stage name.
        UnreadableRecordError: a fold's ``config.yaml`` is not YAML.
    """
    outdated = []
    for k in folds:
        saved = ws.config_path(stage, k)
        if not saved.is_file():
            continue
        try:
            stored = yaml.safe_load(saved.read_text()) or {}
        except yaml.YAMLError as exc:
            raise UnreadableRecordError(
                saved, f"{stage} fold {k}", f"not YAML: {' '.join(str(exc).split())}", experiment_option=EXPERIMENT_OPTION
            ) from exc
        drift = config_drift(requested, stored)
        if drift:
            shown = [setting_difference(key, old, new) for key, old, new in drift[:6]]
            if len(drift) > 6:
                shown.append(f"and {len(drift) - 6} more")
            outdated.append(Outdated(f"{stage} fold {k}", saved, shown))
    if not outdated:
        return
    way_on = (
        "neonet cv neither skips nor resumes a fold under changed settings: with --force it re-trains the "
        "fold(s) (their results are moved to <stage>/fold<k>/replaced/ until the new fit succeeds)."
    )
    if stage_option:
        way_on += f" Or train the new settings beside them under their own stage name: `-- --model.stage={stage}_v2`."
    else:
        way_on += " Another runs folder is `-- --data.runs_dir`."
    raise OutOfDateError(*outdated, way_on=way_on, experiment_option=EXPERIMENT_OPTION)
