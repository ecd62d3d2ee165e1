"""NeoGen across all folds with `neonet cv` (one process per fold) and `synthesize`: no fold leaks into another.

Slow (about two minutes on 2 CPU cores): run with ``pytest -m slow tests/test_gen_cv.py``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from neonet.data.patches import patch_records
from neonet.gen.latents import read_fold
from neonet.gen.toy import write_toy_cohort
from neonet.run.atomic import read_json
from neonet.workspace import Workspace

CONF = Path(__file__).resolve().parent / "conf"
EXP = "toy"


@pytest.mark.slow
def test_cv_all_stages_and_folds_then_synthesize_without_leakage(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # fold processes: tiny 3D convs run best single-threaded
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _run_and_check(tmp_path)
    finally:
        torch.set_num_threads(threads)


def _run_and_check(tmp_path: Path) -> None:
    from neonet.gen.synthesize import synthesize
    from neonet.run.cv import cv

    write_toy_cohort(tmp_path, experiment=EXP, cases=12, pni_fraction=0.34, seed=3)
    overrides = [f"--data.cases={tmp_path / 'data' / 'cases.csv'}", f"--data.runs_dir={tmp_path / 'runs'}"]
    for stage in ("autoencoder", "diffusion", "controlnet"):
        assert cv([CONF / f"{stage}.yaml"], override=overrides) == 0
    ws = Workspace(tmp_path / "runs", EXP)
    assert synthesize(experiment=EXP, runs_dir=ws.runs_dir, steps=2, device="cpu") == 0
    folds = int(read_json(ws.splits_path)["folds"])
    assert folds == 3
    for k in range(folds):
        split = read_fold(ws, k)
        test, fit_cases = set(split.test), set(split.train) | set(split.val)
        for stage in ("autoencoder", "diffusion", "controlnet"):
            art = ws.read_artifact(stage, k)
            assert art["status"] == "complete" and art["fold"] == k
            assert set(art["trained_on_cases"]) <= fit_cases and not set(art["trained_on_cases"]) & test
        assert ws.read_artifact("autoencoder", k)["evaluation"]["val_psnr"] > 0
        cache = pd.read_csv(ws.latents_dir(k) / "manifest.csv", dtype={"case_id": str})
        assert set(cache["case_id"]) <= fit_cases
        up = ws.read_artifact("controlnet", k)["upstream"]
        assert up["diffusion"]["path"].endswith(f"diffusion/fold{k}/checkpoints/best.ckpt")
        assert up["autoencoder"]["path"].endswith(f"autoencoder/fold{k}/checkpoints/best.ckpt")
        syn = pd.read_csv(ws.synthetic_dir(k) / "manifest.csv", dtype={"case_id": str, "source_case": str})
        train = patch_records(ws, split.train)
        n_pos, n_neg = sum(r.pni == 1 for r in train), sum(r.pni == 0 for r in train)
        assert len(syn) == max(0, n_neg - n_pos)
        assert set(syn["source_case"]) <= {r.case_id for r in train if r.pni == 1}
        assert not set(syn["source_case"]) & test
    for stage in ("autoencoder", "diffusion", "controlnet"):
        assert (ws.reports_dir / f"{stage}_summary.csv").is_file()
    quality = pd.read_csv(ws.reports_dir / "gen_quality.csv")
    assert sorted(quality["fold"]) == list(range(folds))
    # a second cv skips finished folds
    assert cv([CONF / "diffusion.yaml"], override=overrides) == 0
