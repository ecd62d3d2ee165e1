"""W&B wiring: one offline run per stage and fold, in that fold's folder, never shared."""

from __future__ import annotations

from pathlib import Path

import pytest
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from neonet.run.cli import main
from neonet.run.lightning_cli import make_loggers
from neonet.workspace import Workspace

CONF = Path(__file__).resolve().parent / "conf"


def test_logger_naming(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    loggers = make_loggers("seg", 2, "cohortA", tmp_path)
    assert isinstance(loggers[0], CSVLogger)
    wb = next(lg for lg in loggers if isinstance(lg, WandbLogger))
    init = wb._wandb_init
    assert (init["project"], init["group"], init["job_type"], init["name"]) == ("neonet", "cohortA", "seg", "seg-fold2")
    assert wb._offline and Path(init["dir"]) == tmp_path
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert not any(isinstance(lg, WandbLogger) for lg in make_loggers("seg", 0, "cohortA", tmp_path))


def test_offline_runs_per_fold(phantom_cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two folds fitted in one process write two separate offline runs, each in its fold folder."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    runs = tmp_path / "runs"
    for fold in (1, 2):
        args = ["fit", "--config", str(CONF / "seg.yaml"), f"--data.cases={phantom_cohort}", f"--data.runs_dir={runs}"]
        assert main([*args, f"--data.fold={fold}", "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1"]) == 0
    import wandb

    assert wandb.run is None  # finished after each fit
    run_dirs = {fold: list((runs / "test" / "seg" / f"fold{fold}" / "wandb").glob("offline-run-*")) for fold in (1, 2)}
    assert all(len(dirs) == 1 for dirs in run_dirs.values()), run_dirs
    assert run_dirs[1][0].name != run_dirs[2][0].name
    for fold, (folder,) in run_dirs.items():  # each fold's artifact.json names its run (read by the experiment page)
        record = Workspace(runs, "test").read_artifact("seg", fold)["wandb"]
        assert record["name"] == f"seg-fold{fold}" and folder.name.endswith(f"-{record['id']}")
