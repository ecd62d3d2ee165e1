"""A CSV logger whose ``metrics.csv`` survives a resumed fit.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when it starts, so a fit resumed from
``last.ckpt`` keeps only the epochs it ran after the resume. :class:`ResumableCSVLogger` keeps the
file instead and, at its first write, drops the rows a resumed fit is about to log again: every
row whose step is at or after the first step the new fit logs (a fresh fit logs step 0 first, so it
starts a clean file). It also flushes its rows whenever a checkpoint is saved, so the rows up to a
checkpoint are on disk when a later crash sends the fit back to that checkpoint.
"""

from __future__ import annotations

import csv
from typing import Any

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from neonet.run.atomic import atomic_path


class KeepingExperimentWriter(ExperimentWriter):
    """CSV writer that keeps an existing ``metrics.csv`` up to the first step it is given.

    Args:
        log_dir: folder of ``metrics.csv`` and ``hparams.yaml``.
    """

    def __init__(self, log_dir: str) -> None:
        self._trimmed = False
        super().__init__(log_dir=log_dir)

    def _check_log_dir_exists(self) -> None:
        """Keep ``metrics.csv`` (Lightning deletes it here) and continue with its columns."""
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as handle:
                self.metrics_keys = sorted(next(csv.reader(handle), []))

    def _trim_before(self, first_step: int) -> None:
        """Drop the rows of the existing file whose step is ``>= first_step``."""
        if not self._fs.isfile(self.metrics_file_path):
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as handle:
            reader = csv.DictReader(handle)
            fields = list(reader.fieldnames or [])
            rows = [row for row in reader if _step(row) < first_step]
        if not rows:
            self._fs.rm_file(self.metrics_file_path)
            self.metrics_keys = []
            return
        with atomic_path(self.metrics_file_path) as tmp, open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)

    def save(self) -> None:
        """Append the recorded rows; at the first call, first drop the rows they replace."""
        if self.metrics and not self._trimmed:
            self._trim_before(min(int(m.get("step", 0)) for m in self.metrics))
            self._trimmed = True
        super().save()


def _step(row: dict[str, Any]) -> float:
    """A CSV row's step (rows without one count as step 0)."""
    try:
        return float(row.get("step") or 0)
    except ValueError:
        return 0.0


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` that keeps ``metrics.csv`` across a resumed fit (see the module docstring)."""

    _experiment: KeepingExperimentWriter | None  # set only by ``experiment`` below

    @property
    @rank_zero_experiment
    def experiment(self) -> KeepingExperimentWriter:
        """The writer of ``metrics.csv`` and ``hparams.yaml``."""
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = KeepingExperimentWriter(log_dir=self.log_dir)
        return self._experiment

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """Flush the rows logged so far, so that they are on disk with the checkpoint."""
        self.save()
