"""The stage contract: every neonet LightningModule is a :class:`StageModule`.

A stage answers the same questions in one place, so ``neonet fit`` and ``neonet cv`` need no
per-stage code and a new stage is added by filling them in:

- ``stage``: its folder under the experiment (``<runs>/<experiment>/<stage>/fold<k>/``);
- ``monitor`` / ``monitor_mode``: the inner-validation metric that selects ``best.ckpt``;
- :meth:`StageModule.upstream`: what the fit read (checkpoints, caches, manifests, with hashes),
  recorded in ``artifact.json``;
- :meth:`StageModule.after_fold`: the work ``neonet cv`` does after a fold's fit (NeoSeg's
  out-of-fold masks, the autoencoder's latent cache, a classifier's test predictions);
- :meth:`StageModule.after_folds`: the stage's cross-fold summary (tables, figures, W&B run);
- optimiser and scheduler factories, wired once here (:meth:`StageModule.configure_optimizers`);
- every ``__init__`` argument recorded as a hyper-parameter, once, here (subclasses do not call
  ``save_hyperparameters``).

The class attributes are checked when a subclass is created and the hooks are abstract, so a stage
that forgets one cannot be defined (or instantiated).
"""

from __future__ import annotations

import inspect
import warnings
from abc import ABCMeta, abstractmethod
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any, ClassVar, cast

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

if TYPE_CHECKING:
    from lightning.fabric.utilities.data import AttributeDict

    from neonet.data.base import FoldDataModule
    from neonet.workspace import Workspace

#: Runs one Lightning verb (``fit``, ``test``, ``predict``) for the fold, with extra options.
FoldRun = Callable[[str, "list[str] | None"], None]


@dataclass
class FoldContext:
    """What a stage's :meth:`~StageModule.after_fold` gets from ``neonet cv``.

    Attributes:
        ws: the experiment's workspace.
        fold: the fold that has just finished its fit.
        config: the fold's resolved stage config (as ``neonet fit`` parses it, overrides included).
        run: runs another Lightning verb for this fold with the same configs and overrides.
    """

    ws: Workspace
    fold: int
    config: dict[str, Any]
    run: FoldRun


@dataclass
class CVContext:
    """What a stage's :meth:`~StageModule.after_folds` gets from ``neonet cv``.

    Attributes:
        ws: the experiment's workspace.
        config: the resolved stage config of the ``neonet cv`` command.
        folds: the folds the command ran (others may have finished in earlier calls).
    """

    ws: Workspace
    config: dict[str, Any]
    folds: list[int] = field(default_factory=list)

    def data_args(self) -> dict[str, Any]:
        """``data.init_args`` of the config."""
        return dict((self.config.get("data") or {}).get("init_args") or {})

    def model_args(self) -> dict[str, Any]:
        """``model.init_args`` of the config."""
        return dict((self.config.get("model") or {}).get("init_args") or {})


_REQUIRED = ("stage", "monitor", "monitor_mode")


class StageModule(LightningModule, metaclass=ABCMeta):
    """Base of every neonet LightningModule (see the module docstring for the contract).

    Args:
        optimizer: optimizer factory (e.g. ``torch.optim.AdamW`` with its init args in the config).
        scheduler: optional learning-rate scheduler factory, stepped per epoch.
    """

    #: Stage folder name under the experiment.
    stage: ClassVar[str]
    #: Metric logged on the inner validation split that selects ``best.ckpt``.
    monitor: ClassVar[str]
    #: ``min`` or ``max``: which direction of ``monitor`` is better.
    monitor_mode: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("abstract_stage", False):  # an intermediate base (e.g. the classifier module)
            return
        missing = [name for name in _REQUIRED if not isinstance(getattr(cls, name, None), str) or not getattr(cls, name)]
        if missing:
            raise TypeError(
                f"{cls.__qualname__} is a StageModule without {', '.join(missing)}: every stage declares "
                "its folder name (stage), the metric selecting best.ckpt (monitor) and its mode"
            )
        if cls.monitor_mode not in ("min", "max"):
            raise TypeError(f"{cls.__qualname__}.monitor_mode must be 'min' or 'max', not {cls.monitor_mode!r}")

    def __init__(self, optimizer: OptimizerCallable = torch.optim.AdamW, scheduler: LRSchedulerCallable | None = None) -> None:
        super().__init__()
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self._record_hparams(inspect.currentframe())

    def _record_hparams(self, frame: FrameType | None) -> None:
        """Every ``__init__`` argument of the stage (its subclasses' included) as hyper-parameters, without networks.

        ``save_hyperparameters`` walks up the ``__init__`` frames from this one, so a subclass records
        nothing itself (a second call would drop the defaults of the arguments it did not get). Under
        LightningCLI the hyper-parameters hold each network's *config* (class path + arguments); a
        network built in Python is left out instead of being pickled into every checkpoint (which could
        then be read only with ``weights_only=False``). Trained folds are rebuilt from their
        ``config.yaml`` by :mod:`neonet.run.reload`.
        """
        with warnings.catch_warnings():  # Lightning warns about nn.Module arguments: they are dropped below
            warnings.simplefilter("ignore")
            self.save_hyperparameters(frame=frame)
        for store in cast("tuple[MutableMapping[str, Any], ...]", (self._hparams, self._hparams_initial)):
            for key in [k for k, v in store.items() if isinstance(v, torch.nn.Module)]:
                del store[key]

    if TYPE_CHECKING:  # for type checkers only: ``save_hyperparameters()`` always stores an AttributeDict

        @property
        def hparams(self) -> AttributeDict: ...

    # ------------------------------------------------------------------ context
    @property
    def fold_data(self) -> FoldDataModule | None:
        """The trainer's fold DataModule (workspace, fold, split), or None outside ``neonet fit``."""
        from neonet.data.base import FoldDataModule

        trainer = self._trainer
        dm = getattr(trainer, "datamodule", None) if trainer is not None else None
        return dm if isinstance(dm, FoldDataModule) else None

    # ------------------------------------------------------------------ contract
    def upstream(self) -> dict[str, Any]:
        """Inputs of this fit beyond the fold's cases (checkpoints, caches, manifests with hashes).

        Recorded in ``artifact.json`` under ``upstream``. The default is the DataModule's record.
        """
        dm = self.fold_data
        return dict(dm.upstream()) if dm is not None else {}

    def describe(self) -> dict[str, Any]:
        """What this fold's model is, for ``artifact.json`` (e.g. a classifier's model name and variant)."""
        return {}

    @classmethod
    @abstractmethod
    def after_fold(cls, ctx: FoldContext) -> dict[str, Any]:
        """Work after one fold's fit in ``neonet cv``; returns fields for the fold's ``artifact.json``."""

    @classmethod
    @abstractmethod
    def after_folds(cls, ctx: CVContext) -> None:
        """The stage's cross-fold summary after ``neonet cv`` (tables and figures in ``reports/``)."""

    # ------------------------------------------------------------------ optimisation
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters the optimizer updates (frozen sub-networks are left out)."""
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizers(self) -> Any:
        """The optimizer over :meth:`trainable_parameters`, with the scheduler stepped per epoch if given."""
        optimizer = self.optimizer_factory(self.trainable_parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "epoch"}}


def stage_modules() -> list[type[StageModule]]:
    """Every concrete stage module neonet ships (imports the stage packages)."""
    import neonet.cls
    import neonet.gen
    import neonet.seg  # noqa: F401

    out: list[type[StageModule]] = []
    todo = list(StageModule.__subclasses__())
    while todo:
        cls = todo.pop(0)
        todo.extend(cls.__subclasses__())
        if not cls.__dict__.get("abstract_stage", False) and cls.__module__.startswith("neonet."):
            out.append(cls)
    return out
