"""Distributed: a diffusion fit under DDP (2 CPU ranks, gloo) through the real CLI in a subprocess.

Checks that the ranks agree on the all-reduced scale factor (and that it is the pooled value of
both ranks' first batches, not either rank's own), that the checkpoint stores it, and that only
rank zero writes the fold's artifacts. ``neonet cv`` with DDP options after ``--`` is checked too.
The latent cache is fabricated (tests/fit_probes.py), so no autoencoder is trained.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from fit_probes import write_latent_fixture
from neonet.run.atomic import read_json
from neonet.workspace import Workspace

TESTS = Path(__file__).resolve().parent
CONF = TESTS / "conf"
EXP = "toy"
DDP = ["--trainer.strategy=ddp", "--trainer.accelerator=cpu", "--trainer.devices=2"]

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="needs torch.distributed with the gloo backend",
)


def fit_env() -> dict[str, str]:
    """Environment of a fit subprocess: one thread per rank, no W&B, the test helpers importable."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", WANDB_MODE="disabled", NEONET_LOG_LEVEL="INFO")
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), *filter(None, [env.get("PYTHONPATH")])])
    return env


def probe(out_dir: Path) -> str:
    """``--trainer.callbacks+=`` option adding the per-rank probe."""
    spec = {"class_path": "fit_probes.RankProbe", "init_args": {"out_dir": str(out_dir)}}
    return "--trainer.callbacks+=" + json.dumps(spec)


def run(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "neonet", *args],
        env=fit_env(),
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def rank_records(out_dir: Path) -> list[dict[str, Any]]:
    records = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(out_dir.glob("rank*.json"))]
    assert [r["rank"] for r in records] == [0, 1], records
    return records


def pooled_inverse_std(stats: list[dict[str, float]]) -> float:
    total, sq, n = (sum(s[k] for s in stats) for k in ("sum", "sumsq", "n"))
    return 1.0 / math.sqrt(sq / n - (total / n) ** 2)


def stray_temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp" in p.name]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Toy cohort with fabricated latent caches for folds 0, 1 and 2."""
    root = tmp_path_factory.mktemp("ddp")
    cases = write_latent_fixture(root, EXP, folds=(0, 1, 2))
    runs = root / "runs"
    data = [f"--data.cases={cases}", f"--data.runs_dir={runs}", "--data.batch_size=4", "--trainer.max_epochs=1"]
    return {"root": root, "runs": runs, "ws": Workspace(runs, EXP), "data": data}


def test_ddp_fit_ranks_agree_and_rank_zero_writes_once(cohort: dict[str, Any]) -> None:
    ws, out = cohort["ws"], cohort["root"] / "probe-fit"
    run(["fit", "--config", str(CONF / "diffusion.yaml"), *cohort["data"], "--data.fold=0", *DDP, probe(out)])

    r0, r1 = rank_records(out)
    assert r0["world_size"] == r1["world_size"] == 2 and r0["pid"] != r1["pid"]
    assert r0["backend"] == r1["backend"] == "gloo"
    assert r0["checkpoint_io"] == r1["checkpoint_io"] == "AtomicCheckpointIO"
    # the ranks saw different first batches, yet agree on one scale factor: the pooled 1/std
    pooled = pooled_inverse_std([r0["first_batch"], r1["first_batch"]])
    own = [pooled_inverse_std([r["first_batch"]]) for r in (r0, r1)]
    assert all(abs(o - pooled) > 1e-4 for o in own), "the ranks' batches must differ for this check to mean anything"
    scale = r0["scale_factor"]
    assert scale > 0 and r1["scale_factor"] == scale
    assert r0["scale_factor_after_first_batch"] == r1["scale_factor_after_first_batch"] == scale
    assert scale == pytest.approx(pooled, rel=1e-5)
    assert r0["global_step"] == r1["global_step"] == 3  # 24 training latents / (2 ranks x batch 4)

    for ckpt in (ws.last_checkpoint("diffusion", 0), ws.best_checkpoint("diffusion", 0)):
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        assert float(state["state_dict"]["scale_factor"]) == pytest.approx(scale, rel=1e-6)
        assert state["global_step"] == 3

    # artifacts: written by rank zero only, once per fold folder
    assert r0["artifact_writes"] >= 1 and r1["artifact_writes"] == 0
    art = read_json(ws.artifact_path("diffusion", 0))
    assert art["status"] == "fit-complete" and art["world_size"] == 2 and art["global_step"] == 3
    assert art["scale_factor"] == pytest.approx(scale, rel=1e-6)
    assert math.isfinite(art["final_metrics"]["train/loss"]) and math.isfinite(art["final_metrics"]["val/loss"])
    assert sorted(p.name for p in (ws.root / "diffusion").iterdir()) == ["fold0"]
    assert sorted(p.name for p in ws.checkpoint_dir("diffusion", 0).iterdir()) == ["best.ckpt", "last.ckpt"]
    assert (ws.stage_dir("diffusion", 0) / "config.yaml").is_file()
    assert not stray_temp_files(ws.root)


@pytest.mark.slow
def test_ddp_resume_restores_the_scale_factor_on_every_rank(cohort: dict[str, Any]) -> None:
    """A DDP fit resumed from ``last.ckpt`` keeps the stored scale factor on both ranks (not recomputed)."""
    ws, fold = cohort["ws"], 2
    fit = ["fit", "--config", str(CONF / "diffusion.yaml"), *cohort["data"], f"--data.fold={fold}", *DDP]
    run([*fit, probe(cohort["root"] / "probe-first")])
    scale = rank_records(cohort["root"] / "probe-first")[0]["scale_factor"]
    out = cohort["root"] / "probe-resumed"
    proc = run([*fit, "--trainer.max_epochs=2", "--ckpt_path", str(ws.last_checkpoint("diffusion", fold)), probe(out)])
    r0, r1 = rank_records(out)
    assert pooled_inverse_std([r0["first_batch"], r1["first_batch"]]) != pytest.approx(scale, rel=1e-4)
    assert r0["scale_factor_after_first_batch"] == r1["scale_factor_after_first_batch"] == scale
    assert r0["global_step"] == r1["global_step"] == 6
    assert "scale factor" not in proc.stderr  # restored from the checkpoint, never recomputed
    assert read_json(ws.artifact_path("diffusion", fold))["scale_factor"] == pytest.approx(scale, rel=1e-6)


@pytest.mark.slow
def test_cv_with_ddp_options_completes_a_fold(cohort: dict[str, Any]) -> None:
    """``neonet cv ... -- --trainer.strategy=ddp --trainer.devices=2``: each fold launches its own ranks."""
    ws, out = cohort["ws"], cohort["root"] / "probe-cv"
    proc = run(["cv", "--config", str(CONF / "diffusion.yaml"), "--folds", "1", "--", *cohort["data"], *DDP, probe(out)])

    r0, r1 = rank_records(out)
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["scale_factor"] == r1["scale_factor"] > 0
    assert r0["artifact_writes"] >= 1 and r1["artifact_writes"] == 0
    art = read_json(ws.artifact_path("diffusion", 1))
    assert art["status"] == "complete" and art["world_size"] == 2
    assert art["scale_factor"] == pytest.approx(r0["scale_factor"], rel=1e-6)
    summary = read_json(ws.reports_dir / "diffusion_summary.json")
    assert [row["fold"] for row in summary["per_fold"]] == [1]
    assert not stray_temp_files(ws.root)
    assert "cv: diffusion done" in proc.stderr
