"""Shared fixtures: quiet W&B, a small phantom cohort, a tiny trained experiment, and the optional real samples."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("NEONET_LOG_LEVEL", "WARNING")

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "tests" / "conf"
REAL_SAMPLES = REPO.parent / "shared" / "real_samples"


@pytest.fixture(scope="session")
def real_samples() -> Path:
    """``../shared/real_samples`` (tests using it skip when it is absent)."""
    if not REAL_SAMPLES.is_dir():
        pytest.skip("../shared/real_samples is not present")
    return REAL_SAMPLES


@pytest.fixture(scope="session")
def phantom_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 12-case phantom cohort at 48x48x16 voxels, spacing 7x7x12 mm; returns its cases.csv."""
    from neonet.data.phantom import synth

    out = tmp_path_factory.mktemp("phantom")
    return synth(out, cases=12, seed=1, pni_fraction=0.5, shape=(48, 48, 16), spacing=(7.0, 7.0, 12.0))


@pytest.fixture(scope="session")
def trained_experiment(phantom_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Experiment ``test`` on the phantom cohort: NeoSeg folds 0-1 (1 epoch each, tests/conf/seg.yaml),
    TLCR patches from the manual masks (tests/conf/crop.yaml) and PattenNet folds 0-1
    (tests/conf/pattennet.yaml on a fake fold autoencoder). Fold 2 is left untrained on purpose.

    Shared by the tests that need trained folds (``neonet predict-case``, reloading folds); they must
    not change it (copy a fold folder to tamper with it).
    """
    import pandas as pd
    import torch

    from neonet.data.base import FoldDataModule
    from neonet.run.cli import main
    from neonet.workspace import Workspace
    from test_cls_fixtures import write_fake_autoencoder

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny 3D convolutions: one thread is fastest on shared CPUs
    try:
        runs = tmp_path_factory.mktemp("trained_experiment") / "runs"
        ws = Workspace(runs, "test")
        data = [f"--data.cases={phantom_cohort}", f"--data.runs_dir={runs}"]
        for k in (0, 1):
            seg = ["fit", "--config", str(CONF / "seg.yaml"), *data, f"--data.fold={k}", "--trainer.enable_progress_bar=false"]
            assert main(seg) == 0
        crop = ["crop", "--config", str(CONF / "crop.yaml"), f"--cases={phantom_cohort}", f"--runs_dir={runs}", "--source=manual"]
        assert main(crop) == 0
        for k in (0, 1):
            dm = FoldDataModule(str(phantom_cohort), experiment="test", runs_dir=str(runs), fold=k, folds=3)
            write_fake_autoencoder(ws, k, seed=k, train_cases=list(dm.split.train))
            assert (
                main(["fit", "--config", str(CONF / "pattennet.yaml"), *data, "--data.experiment=test", f"--data.fold={k}"]) == 0
            )
    finally:
        torch.set_num_threads(threads)
    cases = pd.read_csv(phantom_cohort).set_index("case_id")
    return {"cases": cases, "root": phantom_cohort.parent, "runs": runs, "ws": ws}


@pytest.fixture(scope="session")
def radiomics_experiment(trained_experiment: dict, phantom_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A copy of ``trained_experiment`` with the radiomics baseline on its 3 folds (``neonet radiomics``,
    tests/conf/radiomics.yaml, stage ``radiomics``). The cohort fingerprint is measured first (in the original, as
    its first ``predict-case`` would), so the copy has it too."""
    import shutil

    import torch

    from neonet.predict import ood
    from neonet.predict.pipeline import CachedModels
    from neonet.predict.source import RunsSource
    from neonet.run.cli import main
    from neonet.workspace import Workspace

    ood.load(trained_experiment["ws"], CachedModels(RunsSource(trained_experiment["ws"])), torch.device("cpu"))
    runs = tmp_path_factory.mktemp("radiomics_experiment") / "runs"
    shutil.copytree(trained_experiment["runs"], runs)
    args = ["radiomics", "--config", str(CONF / "radiomics.yaml"), f"--cases={phantom_cohort}", f"--runs_dir={runs}"]
    assert main([*args, "--report=false"]) == 0
    return {**trained_experiment, "runs": runs, "ws": Workspace(runs, "test")}


@pytest.fixture
def wandb_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """W&B's own folders (staging of artifact files, cache, settings) under the test's folder, not ``$HOME``."""
    for env, sub in (("WANDB_DATA_DIR", "data"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config")):
        monkeypatch.setenv(env, str(tmp_path / "wandb-home" / sub))
