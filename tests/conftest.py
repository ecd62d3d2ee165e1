"""Shared fixtures: quiet W&B, a small phantom cohort, and the optional real samples."""

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
