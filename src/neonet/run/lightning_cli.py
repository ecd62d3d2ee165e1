"""``NeonetCLI``: LightningCLI that files every run under the experiment's fixed folders.

Checkpoints (``<stage>/fold<k>/checkpoints/``):

- ``best.ckpt``: best value of the module's ``monitor`` on the inner validation split;
- ``last.ckpt``: the latest state, for resuming (``neonet cv`` passes it as ``--ckpt_path``). It is
  written at the end of every epoch (after validation) and, with ``--checkpoint_every_n_steps N`` (a top-level option of
  ``neonet fit``, also settable in the config file), every N optimizer steps, so a fit killed
  mid-epoch loses at most N steps. Lightning resumes such a checkpoint mid-epoch (the rest of that
  epoch runs with a freshly shuffled loader). Default 0: epoch-end checkpoints only.

Every checkpoint is written by :class:`AtomicCheckpointIO` (temp file beside the target, fsync,
rename), so a process killed while saving leaves the previous checkpoint intact. Only rank zero
writes checkpoints, ``config.yaml``, the CSV log, the W&B run and ``artifact.json``.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any, TypedDict, cast

import torch
from lightning.fabric.plugins import CheckpointIO, TorchCheckpointIO
from lightning.pytorch import Callback, LightningModule
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from neonet.data.base import FoldDataModule
from neonet.errors import NeonetError
from neonet.run.atomic import atomic_path
from neonet.run.callbacks import EpochProgress, FiniteLossGuard
from neonet.run.console import SuggestingParser, route_lightning_logging
from neonet.run.csv_log import ResumableCSVLogger
from neonet.run.fold_lock import worker_lock
from neonet.run.reload import check_checkpoint_path
from neonet.run.wandb_privacy import PrivateWandbLogger
from neonet.run.wandb_run import WandbConfigCallback, fold_run_id, log_fold_model, run_tags, wandb_mode, wandb_project
from neonet.stage import StageModule
from neonet.workspace import Workspace

log = logging.getLogger(__name__)


def make_loggers(ws: Workspace, stage: str, fold: int, job: str = "fit") -> list[Logger]:
    """CSV log in the fold folder, plus a W&B run unless ``WANDB_MODE=disabled``.

    The fit's W&B run keeps its id in ``wandb_id.txt`` (:func:`neonet.run.wandb_run.fold_run_id`), so a
    resumed fit continues it; its tags are the experiment, stage and fold. The run gets no case ids,
    paths or host name unless the user opts in (:mod:`neonet.run.wandb_privacy`); the CSV log keeps every value.
    """
    stage_dir = ws.stage_dir(stage, fold)
    # fit logs to <stage_dir>/metrics.csv; other verbs to <stage_dir>/<verb>/ so they never overwrite it
    loggers: list[Logger] = [ResumableCSVLogger(save_dir=str(stage_dir), name="", version="" if job == "fit" else job)]
    mode = wandb_mode()
    if mode != "disabled":
        (stage_dir / "wandb").mkdir(parents=True, exist_ok=True)
        fit = job == "fit"
        resume: dict[str, Any] = {"id": fold_run_id(ws, stage, fold), "resume": "allow"} if fit else {}
        loggers.append(
            PrivateWandbLogger(
                project=wandb_project(),
                group=ws.experiment,
                job_type=stage if fit else f"{stage}-{job}",
                name=f"{stage}-fold{fold}" if fit else f"{stage}-fold{fold}-{job}",
                save_dir=str(stage_dir),
                offline=mode != "online",
                tags=run_tags(ws.experiment, stage, fold) + ([] if fit else [job]),
                **resume,
            )
        )
    return loggers


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to a temporary file beside the checkpoint, fsync, then rename onto it.

    Lightning's own local save writes to the system temp folder and moves the file into place,
    which falls back to a plain (non-atomic) copy into the target when ``$TMPDIR`` is on another
    filesystem (common on clusters: node-local ``$TMPDIR``, shared ``runs/``). Temporary files
    left by a process killed while saving are removed at the next save of the same checkpoint.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        """Save ``checkpoint`` atomically at local ``path`` (remote URLs go through Lightning's save)."""
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        for stale in target.parent.glob(f".{target.name}.*.tmp*"):  # left by a killed save (one writer: rank 0)
            stale.unlink(missing_ok=True)
        try:
            with atomic_path(target) as tmp:
                with open(tmp, "wb") as handle:
                    torch.save(checkpoint, handle)
                    handle.flush()
                    os.fsync(handle.fileno())
        except (OSError, RuntimeError) as exc:
            raise _save_error(exc, target, checkpoint) from exc


def _save_error(exc: BaseException, target: Path, checkpoint: dict[str, Any]) -> BaseException:
    """The error to raise for a failed checkpoint save: a plain "disk full" when the disk is nearly full.

    ``torch.save`` reports a full disk as ``RuntimeError: [enforce fail at inline_container.cc] unexpected
    pos ...``, which says nothing of the cause; the earlier ``last.ckpt``/``best.ckpt`` are left as they were.
    """
    try:
        free = shutil.disk_usage(target.parent).free
    except OSError:
        return exc
    need = sum(t.numel() * t.element_size() for t in _tensors(checkpoint))
    if free >= max(2 * need, 64 * 2**20):
        return exc
    return NeonetError(
        f"{target}: the checkpoint could not be saved, the disk is full ({free / 2**20:.0f} MB free in "
        f"{target.parent}, the checkpoint needs about {need / 2**20:.0f} MB; {type(exc).__name__}: {exc}). "
        "The previous checkpoint is unchanged. Free space (e.g. the checkpoints of stages you no longer need) "
        "or point --data.runs_dir to a larger disk, then run the same command again: the fold resumes from "
        "its last.ckpt."
    )


def _tensors(node: Any) -> list[torch.Tensor]:
    """Every tensor inside a nested checkpoint dict/list."""
    if isinstance(node, torch.Tensor):
        return [node]
    if isinstance(node, dict):
        return [t for v in node.values() for t in _tensors(v)]
    if isinstance(node, (list, tuple)):
        return [t for v in node for t in _tensors(v)]
    return []


class _CheckpointCommon(TypedDict):
    """The :class:`ModelCheckpoint` arguments every neonet checkpoint callback shares."""

    dirpath: str
    auto_insert_metric_name: bool
    enable_version_counter: bool


def checkpoint_callbacks(dirpath: Path, monitor: str | None, mode: str = "min", every_n_steps: int = 0) -> list[ModelCheckpoint]:
    """``best.ckpt`` (best ``monitor``), ``last.ckpt`` after every epoch and, optionally, every N steps.

    The ``best`` callback comes first, so it is ``trainer.checkpoint_callback``. ``last.ckpt`` has
    its own callback: with ``save_last=True`` on the ``best`` one, Lightning rewrites ``last.ckpt``
    only in epochs where ``best`` improves, and a resumed fit would go back to that epoch.
    """
    common: _CheckpointCommon = {"dirpath": str(dirpath), "auto_insert_metric_name": False, "enable_version_counter": False}
    out = [
        ModelCheckpoint(filename="best", monitor=monitor, mode=mode, **common),
        ModelCheckpoint(filename="last", monitor=None, save_top_k=1, every_n_epochs=1, save_on_train_epoch_end=True, **common),
    ]
    if every_n_steps > 0:  # mid-epoch resume points, also written to last.ckpt
        out.append(ModelCheckpoint(save_top_k=0, save_last=True, every_n_train_steps=every_n_steps, **common))
    return out


def _with_atomic_checkpoint_io(plugins: Any) -> list[Any]:
    """The trainer's ``plugins`` plus :class:`AtomicCheckpointIO` unless a CheckpointIO is already given."""
    items = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
    if not any(isinstance(p, CheckpointIO) for p in items):
        items.append(AtomicCheckpointIO())
    return items


#: Packages whose modules, data modules and networks may be named by their class name alone
#: (``--model SegModule``, ``--model.help SegModule``, ``class_path: PattenNet``): jsonargparse resolves a
#: short name among the subclasses already imported.
SHORT_NAME_PACKAGES = ("neonet.seg", "neonet.gen", "neonet.cls", "neonet.nets")


class NeonetParser(SuggestingParser, LightningArgumentParser):
    """LightningCLI's parser with "did you mean" for an unknown option (:class:`neonet.run.console.SuggestingParser`)."""


def _parser_class(verb: str) -> type[NeonetParser]:
    """:class:`NeonetParser` whose helper parsers (``--model.help CLASS``) are named ``neonet <verb>``."""
    return type("NeonetParser", (NeonetParser,), {"default_prog": f"neonet {verb}".strip()})


def _verb_of(args: Any) -> str:
    """The Lightning verb of a command line (``fit``, ...), or "" when there is none."""
    given = sys.argv[1:] if args is None else args
    first = next(iter(given), "") if isinstance(given, (list, tuple)) else ""
    return first if isinstance(first, str) and not first.startswith("-") else ""


def progress_bar_wanted() -> bool:
    """Whether a fit may draw a progress bar: only when its output is a terminal (not a log file such as ``cv.log``)."""
    return sys.stdout.isatty()


class NeonetCLI(LightningCLI):
    """LightningCLI in subclass mode, with the experiment/stage/fold folder convention."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        for package in SHORT_NAME_PACKAGES:
            importlib.import_module(package)
        route_lightning_logging()
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("save_config_callback", WandbConfigCallback)  # config.yaml, and the same config in W&B
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("parser_kwargs", {"default_env": False, "prog": "neonet"})
        kwargs.setdefault("parser_class", _parser_class(_verb_of(kwargs.get("args"))))
        self._fold_locks = contextlib.ExitStack()  # the fold lock of this run (see _lock_fold), released on return
        with self._fold_locks:
            super().__init__(LightningModule, FoldDataModule, *args, **kwargs)

    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs: Any) -> None:
        """LightningCLI's subcommands, each named ``neonet <verb>`` in its usage and messages."""
        super()._add_subcommands(parser, **kwargs)
        for verb, sub in self._subcommand_parsers.items():
            sub.prog = f"neonet {verb}"

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Options of every neonet Lightning verb beyond the trainer, model and data."""
        parser.add_argument(
            "--checkpoint_every_n_steps",
            type=int,
            default=0,
            help="fit: also save checkpoints/last.ckpt every N optimizer steps (mid-epoch resume point "
            "after a crash or kill); 0 = only at epoch ends",
        )

    def _parse_ckpt_path(self) -> None:
        """Check ``--ckpt_path`` before Lightning reads it: a truncated file is named with the way on
        (:func:`neonet.run.reload.check_checkpoint_path`), not left to torch's zip reader."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if isinstance(ckpt_path, (str, os.PathLike)) and Path(ckpt_path).is_file():
            check_checkpoint_path(Path(ckpt_path), resume=subcommand == "fit")
        super()._parse_ckpt_path()

    # ------------------------------------------------------------------ trainer wiring
    def _stage_fold(self) -> tuple[str, int, Any]:
        model, dm = self.model, self.datamodule
        if not isinstance(model, StageModule):
            raise NeonetError(
                f"{type(model).__name__} is not a neonet stage module (neonet.stage.StageModule): "
                "`neonet fit` files each run under <experiment>/<stage>/fold<k>"
            )
        if not isinstance(dm, FoldDataModule):
            raise NeonetError(f"{type(dm).__name__} is not a neonet FoldDataModule: it must know the experiment and fold")
        return model.stage, int(dm.fold), dm.workspace

    def _lock_fold(self, stage: str, fold: int, ws: Workspace) -> None:
        """Hold the fold lock (``neonet.run.fold_lock``) for the rest of this run, before anything is written.

        ``fit`` takes it (rank zero only: the other ranks belong to the same fit), so a second fit of the
        fold is refused; a verb started by ``neonet cv`` adopts the lock cv handed down and names itself in it.
        """
        if self.subcommand is None or getattr(rank_zero_only, "rank", 0) != 0:
            return
        lock = worker_lock(ws.fold_lock(stage, fold), stage, fold, f"neonet {self.subcommand}", take=self.subcommand == "fit")
        self._fold_locks.enter_context(lock)

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Any:
        stage, fold, ws = self._stage_fold()
        self._lock_fold(stage, fold, ws)
        stage_dir = ws.stage_dir(stage, fold)
        stage_dir.mkdir(parents=True, exist_ok=True)
        if not config.get("default_root_dir") or config.get("default_root_dir") == os.getcwd():
            config["default_root_dir"] = str(stage_dir)
        job = self.subcommand or "fit"
        logger = config.get("logger")
        if job == "predict":
            config["logger"] = False
        elif logger is None or logger is True:
            config["logger"] = make_loggers(ws, stage, fold, job)
        config["plugins"] = _with_atomic_checkpoint_io(config.get("plugins"))
        existing = list(config.get("callbacks") or []) + list(callbacks)
        if not progress_bar_wanted() and not any(isinstance(c, ProgressBar) for c in existing):
            config["enable_progress_bar"] = False  # a bar's \r updates in a log file: one line per epoch instead
        if job == "fit" and not any(isinstance(c, EpochProgress) for c in existing):
            log_lines = config.get("enable_progress_bar") is False
            callbacks.append(EpochProgress(ws.fold_progress(stage, fold), stage, fold, log_lines=log_lines))
        if not any(isinstance(c, ModelCheckpoint) for c in existing):
            every = int(self._get(self.config_init, "checkpoint_every_n_steps", 0) or 0) if job == "fit" else 0
            callbacks += checkpoint_callbacks(ws.checkpoint_dir(stage, fold), self.model.monitor, self.model.monitor_mode, every)
        if job == "fit" and not any(isinstance(c, FiniteLossGuard) for c in existing):
            callbacks.append(FiniteLossGuard(stage, fold))
        if job == "fit" and config["logger"] and not any(isinstance(c, LearningRateMonitor) for c in existing):
            callbacks.append(LearningRateMonitor(logging_interval="epoch"))
        return super()._instantiate_trainer(config, callbacks)

    # ------------------------------------------------------------------ after each verb
    def before_fit(self) -> None:
        """Check the fold's data before spending compute."""
        self._stage_fold()
        self.datamodule.check_inputs()

    def after_fit(self) -> None:
        """Write ``artifact.json`` (rank zero), log the fold's model artifact to W&B and close the W&B run.

        Raises:
            NeonetError: the fit ended without a single optimizer step (every rank agrees on this),
                so nothing may claim the fold is trained.
        """
        trainer = self.trainer
        if not trainer.interrupted and trainer.global_step == 0:
            stage, fold, _ = self._stage_fold()
            self._finish_wandb()
            raise NeonetError(
                f"stage {stage}, fold {fold}: the fit ended after 0 training steps (no training batches on "
                f"{trainer.world_size} rank(s)?). Check the fold's training data, batch_size (each rank gets "
                "1/world_size of the data; a loader with drop_last needs at least batch_size samples per rank) "
                "and trainer.limit_train_batches / max_steps."
            )
        if trainer.is_global_zero and not trainer.interrupted:
            stage, fold, ws = self._stage_fold()
            # the "best" callback of checkpoint_callbacks(), or a ModelCheckpoint the config gave instead
            ckpt_cb = cast("ModelCheckpoint | None", trainer.checkpoint_callback)
            best = Path(ckpt_cb.best_model_path) if ckpt_cb and ckpt_cb.best_model_path else None
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
            fields: dict[str, Any] = {
                "status": "fit-complete",
                "epochs": trainer.current_epoch,
                "global_step": trainer.global_step,
                "best_checkpoint": ws.checkpoint_record(best) if best and best.exists() else None,
                "best_score": float(ckpt_cb.best_model_score) if ckpt_cb and ckpt_cb.best_model_score is not None else None,
                "monitor": self.model.monitor,
                "final_metrics": metrics,
                "config": str(ws.config_path(stage, fold)),
                "precision": str(trainer.precision),
                "world_size": trainer.world_size,
            }
            fields.update(self.datamodule.split_record())
            fields.update(self.model.describe())
            fields["upstream"] = self.model.upstream()
            runs = [_wandb_record(lg) for lg in trainer.loggers if isinstance(lg, WandbLogger)]
            if runs:
                fields["wandb"] = runs[0]
            ws.write_artifact(stage, fold, **fields)
            log.info("%s fold %d finished: %s", stage, fold, ws.stage_dir(stage, fold))
            for lg in trainer.loggers:
                if isinstance(lg, WandbLogger):  # the model and its inputs, for W&B's lineage graph
                    log_fold_model(lg.experiment, ws, stage, fold)
        self._finish_wandb()

    def after_test(self) -> None:
        """Close the W&B run."""
        self._finish_wandb()

    def after_validate(self) -> None:
        """Close the W&B run."""
        self._finish_wandb()

    def _finish_wandb(self) -> None:
        for lg in self.trainer.loggers:
            if isinstance(lg, WandbLogger):
                lg.finalize("success")
                import wandb

                if wandb.run is not None:
                    wandb.finish()


def _wandb_record(logger: WandbLogger) -> dict[str, Any]:
    """The fit's W&B run for ``artifact.json``: name, id and project (shown on the experiment page)."""
    run = logger.experiment
    return {"name": getattr(run, "name", None), "id": getattr(run, "id", None), "project": getattr(run, "project", None)}


class _Parsed(Exception):
    """Carries the parsed config out of :class:`_StageConfigReader` before anything is instantiated."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__("parsed")
        self.config = config


class _StageConfigReader(NeonetCLI):
    """``NeonetCLI``'s own parser, stopped after parsing: the config a fit would save, nothing built."""

    def _set_seed(self) -> None:
        """Reading a config seeds nothing."""

    def before_instantiate_classes(self) -> None:
        import yaml

        raise _Parsed(yaml.safe_load(self.parser.dump(self.config, skip_none=False)) or {})


def resolve_stage_config(configs: list[Any], overrides: list[str] | None = None) -> dict[str, Any]:
    """A stage config resolved exactly as ``neonet fit --config ... OVERRIDES`` resolves it (as a plain dict).

    The one parser of stage configs: ``neonet cv`` reads the stage, experiment and folds from it, and
    compares it with each fold's saved ``config.yaml``. Nothing is instantiated.

    Raises:
        NeonetError: when the configs do not parse (the parser's message names the key and the file).
    """
    args = [a for c in configs for a in ("--config", str(c))] + list(overrides or [])
    try:
        with warnings.catch_warnings():  # LightningCLI warns about args given while sys.argv has others
            warnings.simplefilter("ignore")
            _StageConfigReader(args=args, run=False)
    except _Parsed as parsed:
        return parsed.config
    except SystemExit as exc:  # jsonargparse printed its message (the key and the problem) already
        raise NeonetError(f"the stage config {' + '.join(map(str, configs))} does not parse (the message is above)") from exc
    raise NeonetError("internal: the stage config reader did not stop after parsing")


class _Built(Exception):
    """Carries the model and DataModule out of :class:`_StageBuilder` before a trainer is made."""

    def __init__(self, model: LightningModule, datamodule: Any, config: dict[str, Any]) -> None:
        super().__init__("built")
        self.model, self.datamodule, self.config = model, datamodule, config


class _StageBuilder(NeonetCLI):
    """``NeonetCLI``'s own parser and instantiation, stopped before the trainer: nothing is written."""

    def instantiate_classes(self) -> None:
        import yaml

        init = self.parser.instantiate_classes(self.config)
        config = yaml.safe_load(self.parser.dump(self.config, skip_none=False)) or {}
        raise _Built(self._get(init, "model"), self._get(init, "data"), config)


def instantiate_stage_config(
    configs: list[Any], overrides: list[str] | None = None
) -> tuple[LightningModule, Any, dict[str, Any]]:
    """The model and DataModule of a stage config, built exactly as ``neonet fit --config ... OVERRIDES`` builds them.

    The config is parsed, seeded (``seed_everything``) and instantiated by :class:`NeonetCLI` itself (networks
    injected, optimizers as factories), but no trainer is made, no fold is locked and nothing is written: for
    benchmarks and checks that run the stage's own module outside ``neonet fit``.

    Returns:
        (model, datamodule, the resolved config as a plain dict).

    Raises:
        NeonetError: when the configs do not parse (the parser's message names the key and the file).
    """
    args = [a for c in configs for a in ("--config", str(c))] + list(overrides or [])
    try:
        with warnings.catch_warnings():  # LightningCLI warns about args given while sys.argv has others
            warnings.simplefilter("ignore")
            _StageBuilder(args=args, run=False)
    except _Built as built:
        return built.model, built.datamodule, built.config
    except SystemExit as exc:  # jsonargparse printed its message (the key and the problem) already
        raise NeonetError(f"the stage config {' + '.join(map(str, configs))} does not parse (the message is above)") from exc
    raise NeonetError("internal: the stage builder did not stop after instantiating")
