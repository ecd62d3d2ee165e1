"""``benchmarks/stage_profile.py``: a Lightning ``SimpleProfiler`` report read back and split into categories."""

from __future__ import annotations

import time
from types import ModuleType

from lightning.pytorch.profilers import SimpleProfiler

from bench_scripts import load_benchmark


def _stage_profile() -> ModuleType:
    return load_benchmark("stage_profile")


def test_simple_profiler_report_is_split_into_categories() -> None:
    sp = _stage_profile()
    prof = SimpleProfiler(extended=True)
    durations = {  # seconds per call, as Lightning names the actions of an automatically optimised fit
        "run_training_epoch": [5.0, 5.0],
        "run_training_batch": [1.0] * 8,
        "[LightningModule]SegModule.optimizer_step": [0.9] * 8,  # wraps training_step + backward
        "[Strategy]SingleDeviceStrategy.training_step": [0.3] * 8,
        "[Strategy]SingleDeviceStrategy.backward": [0.5] * 8,
        "[LightningModule]SegModule.optimizer_zero_grad": [0.01] * 8,
        "[_TrainingEpochLoop].train_dataloader_next": [0.05] * 8,
        "[LightningDataModule]SegDataModule.setup": [2.0],
        "[Strategy]SingleDeviceStrategy.validation_step": [0.2] * 3,
        "[Callback]ModelCheckpoint{'monitor': 'val/dice_mean'}.on_validation_end": [0.1],
        "save_checkpoint": [0.4],
        "[Callback]EpochProgress.on_train_epoch_end": [0.02, 0.02],
    }
    for name, values in durations.items():
        prof.recorded_durations[name] = list(values)
    prof.start_time = time.monotonic() - 20.0
    rows = sp.parse_simple_profile(prof.summary())
    assert rows["run_training_batch"]["calls"] == 8
    assert abs(rows["Total"]["total_s"] - 20.0) < 1.0
    cats = sp.categorise(rows)
    assert abs(cats["forward"] - 2.4) < 1e-6
    assert abs(cats["backward"] - 4.0) < 1e-6
    assert abs(cats["optimizer"] - (7.2 - 2.4 - 4.0 + 0.08)) < 1e-6  # the step less its closure, plus zero_grad
    assert abs(cats["data"] - 0.4) < 1e-6 and abs(cats["data_setup"] - 2.0) < 1e-6
    assert abs(cats["validation"] - 0.6) < 1e-6
    assert abs(cats["checkpoint"] - 0.5) < 1e-6 and abs(cats["callbacks"] - 0.04) < 1e-6
    assert cats["epochs"] == 2 and cats["train_steps"] == 8
    named = sum(
        cats[c]
        for c in ("data_setup", "data", "forward", "backward", "optimizer", "validation", "checkpoint", "callbacks", "hooks")
    )
    assert abs(named + cats["other"] - cats["profiler_total"]) < 1e-6
