"""Base class of every stage's DataModule: experiment, fold and split handling in one place."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from lightning.pytorch import LightningDataModule
from monai.data import DataLoader as MonaiDataLoader
from torch.utils.data import DataLoader, Dataset

from neonet.data.cases import Case, LabelMap, read_cases
from neonet.data.splits import Fold, ensure_splits, get_fold
from neonet.workspace import Workspace

log = logging.getLogger(__name__)


class FoldDataModule(LightningDataModule):
    """Knows the experiment's workspace, the split file and which fold it serves.

    Subclasses state only the parameters they add, keyword-only, and pass the rest on with
    ``super().__init__(**kwargs)``: jsonargparse follows ``**kwargs`` into this signature, so their
    ``--help`` and config files still offer (and document) every option below. This ``__init__``
    records every argument, the subclass's included, with ``save_hyperparameters()``; subclasses
    do not call it again (that would drop the defaults of the parameters they did not get).

    Args:
        cases: path of the experiment's ``cases.csv``.
        experiment: experiment name; outputs go to ``<runs_dir>/<experiment>/``.
        runs_dir: folder holding all experiments.
        fold: the fold k (its test cases are held out; its inner validation cases select models).
        folds: number of folds (used only when the split file is first written).
        split_seed: seed of the split (used only when the split file is first written).
        val_fraction: fraction of training patients held out for inner validation.
        liver: raw label values meaning liver (read by the stages that load whole label volumes;
            the patch stages accept them so that one data block can serve every stage).
        tumor: raw label values meaning tumour.
        other: raw label values mapped to background (e.g. other organs).
        batch_size: training batch size (each stage's docstring says what validation uses).
        num_workers: data-loader worker processes (kept alive between epochs when > 0).
    """

    #: The DataLoader class of :meth:`loader`. MONAI's (the default) collates MetaTensors and lists of
    #: random crops and seeds each worker's random transforms; NeoGen's patch and latent stages, whose
    #: items are plain tensors, keep PyTorch's (switching reorders their shuffling, and with it the
    #: demo's published figures).
    loader_class: ClassVar[type[DataLoader]] = MonaiDataLoader

    def __init__(
        self,
        cases: str,
        experiment: str = "default",
        runs_dir: str = "runs",
        fold: int = 0,
        folds: int = 5,
        split_seed: int = 0,
        val_fraction: float = 0.2,
        liver: list[int] | None = None,
        tumor: list[int] | None = None,
        other: list[int] | None = None,
        batch_size: int = 2,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.cases_csv = Path(cases)
        self.experiment = experiment
        self.runs_dir = Path(runs_dir)
        self.fold = int(fold)
        self.folds = int(folds)
        self.split_seed = int(split_seed)
        self.val_fraction = float(val_fraction)
        self.label_map = LabelMap(
            liver=tuple(liver if liver is not None else [1]),
            tumor=tuple(tumor if tumor is not None else [2]),
            other=tuple(other or []),
        )
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.workspace = Workspace(self.runs_dir, experiment)
        self._cases: list[Case] | None = None
        self._fold: Fold | None = None
        self.save_hyperparameters()  # walks up the __init__ frames: the subclass's arguments too

    @property
    def all_cases(self) -> list[Case]:
        """Every case of the manifest."""
        if self._cases is None:
            self._cases = read_cases(self.cases_csv)
        return self._cases

    @property
    def split(self) -> Fold:
        """This fold's case ids (the split file is written on first use, then only read)."""
        if self._fold is None:
            doc = ensure_splits(
                self.workspace.splits_path,
                self.all_cases,
                folds=self.folds,
                seed=self.split_seed,
                val_fraction=self.val_fraction,
                workspace=self.workspace,
            )
            self._fold = get_fold(doc, self.fold)
        return self._fold

    def cases_of(self, ids: tuple[str, ...] | list[str]) -> list[Case]:
        """Cases with the given ids, in that order."""
        by_id = {c.case_id: c for c in self.all_cases}
        return [by_id[i] for i in ids]

    def split_record(self) -> dict[str, list[str]]:
        """Case ids per split, for ``artifact.json`` (what this fold was trained and tested on)."""
        return {"train_cases": list(self.split.train), "val_cases": list(self.split.val), "test_cases": list(self.split.test)}

    def drop_last(self, n_train: int, batch_size: int) -> bool:
        """Drop the last incomplete training batch only when each rank still gets a full one.

        Under DDP every rank sees ``n_train / world_size`` samples; deciding on the whole set would
        leave ranks of a small set without a single batch.
        """
        trainer = self.trainer
        world = int(getattr(trainer, "world_size", 1) or 1) if trainer is not None else 1
        return n_train // world > batch_size

    def loader(
        self,
        dataset: Dataset,
        *,
        batch_size: int | None = None,
        shuffle: bool = False,
        drop_last: bool = False,
        collate_fn: Callable[[list[Any]], Any] | None = None,
    ) -> DataLoader:
        """The one way a stage's DataLoader is built: ``num_workers`` workers, persistent when there are any.

        Args:
            dataset: what to load.
            batch_size: None uses the training ``batch_size``.
            shuffle: reshuffle every epoch (training).
            drop_last: drop the last incomplete batch (see :meth:`drop_last`).
            collate_fn: None uses the loader class's default collation.
        """
        # MONAI's default collation applies only when collate_fn is absent (not when it is None)
        extra: dict[str, Any] = {} if collate_fn is None else {"collate_fn": collate_fn}
        return self.loader_class(
            dataset,
            batch_size=self.batch_size if batch_size is None else int(batch_size),
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            **extra,
        )

    def check_inputs(self) -> None:
        """Check the fold's inputs before ``neonet fit`` spends compute (subclasses add their checks)."""

    def upstream(self) -> dict[str, Any]:
        """Inputs of the fold beyond its cases (manifests, caches with hashes), for ``artifact.json``."""
        return {}
