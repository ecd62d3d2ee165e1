"""Faults: a non-finite loss stops the fit with a message naming stage, fold and step."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from neonet.run.cli import main
from neonet.seg.module import SegModule
from neonet.workspace import Workspace

CONF = Path(__file__).resolve().parent / "conf"


def test_nan_loss_stops_with_stage_fold_step(
    phantom_cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real_step = SegModule.model_step

    def poisoned(self: SegModule, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        loss, logits = real_step(self, batch)
        return (loss * float("nan") if self.global_step >= 1 else loss), logits

    monkeypatch.setattr(SegModule, "model_step", poisoned)
    runs = tmp_path / "runs"
    code = main(
        [
            "fit",
            "--config",
            str(CONF / "seg.yaml"),
            f"--data.cases={phantom_cohort}",
            f"--data.runs_dir={runs}",
            "--data.fold=1",
            "--trainer.max_epochs=3",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert re.search(r"stage seg, fold 1, step \d+ \(epoch 0, batch 1\): non-finite training loss", err), err
    assert Workspace(runs, "test").read_artifact("seg", 1) is None  # a failed fit never claims to be finished
