"""``benchmarks/gpu_check.py`` on CPU (``--device cpu --tiny``): what it measures, what it writes, its budget.

The networks are the ``experiments/paper`` configs shrunk by ``--tiny``; the full run (both precisions and one
short ``neonet fit`` per stage through the CLI) is the slow test.
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

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
sys.path.insert(0, str(SCRIPT.parent))
import gpu_check  # noqa: E402  (a script beside its worker gpu_check_step.py, not a package)


def _run(out: Path, *args: str) -> tuple[dict[str, Any], str, str]:
    """The script as a user runs it; (its JSON, its markdown, what it printed)."""
    cmd = [sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--out", str(out), *args]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, encoding="utf-8", timeout=1800, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return (
        json.loads((out / "gpu_check.json").read_text(encoding="utf-8")),
        (out / "gpu_check.md").read_text(encoding="utf-8"),
        proc.stdout,
    )


def _check_measured(result: dict[str, Any], md: str, stdout: str, precisions: list[str]) -> None:
    assert list(result["stages"]) == list(gpu_check.STAGES)
    for stage, row in result["stages"].items():
        assert "error" not in row and "skipped" not in row, row
        assert row["flops_per_step"] > 0 and row["params"]["trainable"] > 0
        assert row["config"] == f"experiments/paper/{gpu_check.STAGES[stage]}"
        assert list(row["precisions"]) == precisions
        for m in row["precisions"].values():
            assert m["step_s"] > 0 and len(m["step_s_all"]) == result["settings"]["steps"]
            assert m["samples_per_s"] == pytest.approx(row["batch"] / m["step_s"])
            assert m["tflops_per_s"] == pytest.approx(row["flops_per_step"] / m["step_s"] / 1e12)
            assert m["peak_memory_mb"] is None and m["mfu"] is None  # CPU: no CUDA call, no known peak
        assert f"| {stage} | {row['batch']} |" in md and stage in stdout
    # the networks are the configs' (shrunk), not copies of their hyperparameters
    assert result["stages"]["seg"]["network"] == {"net": "DynUNet"}
    assert result["stages"]["seg_swinunetr"]["network"] == {"net": "SwinUNETR"}
    assert result["stages"]["controlnet"]["network"]["controlnet"] == "ControlNet"
    assert result["stages"]["pattennet"]["module"] == "PattenNetModule"
    assert result["stages"]["pattennet"]["shapes"]["image"][1] == 1  # the image patch alone, as the paper (no label_channel)
    assert result["stages"]["densenet121"]["shapes"]["image"][2:] == [32, 32, 32]  # padded for DenseNet-121 (pad_to)
    assert result["device_name"] is None and result["peak_bf16_tflops"] is None


def _check_projection(result: dict[str, Any]) -> None:
    proj = result["projection"]
    assert [r["run"] for r in proj["rows"]] == [p[0] for p in gpu_check.PROTOCOL] + ["seg_swinunetr (variant)"]
    assert proj["complete"]
    assert proj["total_seconds"] == pytest.approx(sum(r["seconds"] for r in proj["rows"][: len(gpu_check.PROTOCOL)]))
    ae = next(r for r in proj["rows"] if r["run"] == "autoencoder")
    assert ae["folds"] == 5 and ae["epochs"] == 500  # the paper config's, --tiny shrinks networks only
    assert ae["train_items_per_fold"] == 82  # 128 patients, 4/5 in training folds, 20 % inner validation
    assert ae["steps"] == math.ceil(82 / ae["batch_size"]) * 500 * 5
    assert ae["seconds"] == pytest.approx(ae["steps"] * result["stages"]["autoencoder"]["precisions"][ae["precision"]]["step_s"])
    syn = next(r for r in proj["rows"] if r["run"] == "pattennet_syn")
    assert syn["train_items_per_fold"] == 2 * round(82 * 84 / 128)  # PNI- patches + as many (synthetic) PNI+


def test_every_stage_has_a_step_time_and_flops(tmp_path: Path) -> None:
    """The fast subset: every stage measured in fp32 (bf16 on CPU is emulated and slow), no CLI fits."""
    result, md, stdout = _run(tmp_path / "out", "--precisions", "fp32", "--fits")
    _check_measured(result, md, stdout, ["fp32"])
    _check_projection(result)
    assert result["fits"] == {"stages": {}, "setup": {}} and result["notes"] == []


@pytest.mark.slow
def test_full_tiny_run_fits_every_stage_through_the_cli(tmp_path: Path) -> None:
    """``--device cpu --tiny`` as documented: both precisions, and every stage's short fit through the real CLI."""
    result, md, stdout = _run(tmp_path / "out", "--budget_s", "1500")
    _check_measured(result, md, stdout, ["fp32", "bf16-mixed"])
    fits = result["fits"]
    assert {k: v["status"] for k, v in fits["setup"].items()} == {"synth": "ok", "crop": "ok"}
    assert {k: v["status"] for k, v in fits["stages"].items()} == dict.fromkeys(gpu_check.STAGES, "ok"), fits
    assert fits["stages"]["autoencoder"]["command"].startswith("python -m neonet cv --config experiments/paper/autoencoder.yaml")
    assert fits["stages"]["seg"]["command"].startswith("python -m neonet fit --config experiments/paper/seg.yaml")
    assert all((tmp_path / "out" / v["log"]).is_file() for v in fits["stages"].values())


def test_a_spent_budget_skips_with_notes_and_still_writes(tmp_path: Path) -> None:
    """No time left: nothing is started, every stage and fit is recorded as skipped, the files are written."""
    out = tmp_path / "out"
    gpu_check.main(["--device", "cpu", "--tiny", "--budget_s", "0", "--out", str(out)])
    result = json.loads((out / "gpu_check.json").read_text(encoding="utf-8"))
    assert all("time budget" in r["skipped"] for r in result["stages"].values())
    assert list(result["stages"]) == list(gpu_check.STAGES)
    assert result["fits"]["setup"]["synth"]["status"] == "skipped"
    assert {r["status"] for r in result["fits"]["stages"].values()} == {"skipped"}
    assert len(result["notes"]) == 2 * len(gpu_check.STAGES)
    assert not result["projection"]["complete"] and result["projection"]["total_seconds"] == 0
    assert "time budget" in (out / "gpu_check.md").read_text(encoding="utf-8")
    assert not (out / "fit_logs" / "seg.log").exists()


FAKE_WORKER = """
import json, sys, time
for stage in json.loads(sys.argv[1])["stages"]:
    print("START " + stage, flush=True)
    if stage == "diffusion":
        print("out of memory", file=sys.stderr)
        sys.exit(3)
    if stage == "controlnet":
        time.sleep(60)
    print("RESULT " + json.dumps({"stage": stage, "batch": 2, "flops_per_step": 1, "precisions": {}}), flush=True)
"""


def test_a_dying_worker_costs_only_its_stage(tmp_path: Path) -> None:
    """A worker that dies mid-stage (diffusion) leaves an error with its message; the next stages get a new worker."""
    fake = tmp_path / "worker.py"
    fake.write_text(FAKE_WORKER)
    args = gpu_check.parse_args(["--device", "cpu", "--tiny", "--stages", "seg", "diffusion", "resnet18"])
    budget = gpu_check.Budget(60.0)
    rows = gpu_check.measure(args, budget, budget.end, worker_cmd=[sys.executable, str(fake)])
    assert list(rows) == ["seg", "diffusion", "resnet18"]
    assert "error" not in rows["seg"] and "error" not in rows["resnet18"]
    assert rows["diffusion"]["error"] == "worker exited with 3: out of memory"


def test_a_stage_past_the_budget_is_stopped_and_the_rest_skipped(tmp_path: Path) -> None:
    """A stage still running at the deadline is killed and recorded; what no longer fits is skipped with a note."""
    fake = tmp_path / "worker.py"
    fake.write_text(FAKE_WORKER)
    args = gpu_check.parse_args(["--device", "cpu", "--tiny", "--stages", "seg", "controlnet", "resnet18", "--min_stage_s", "1"])
    budget = gpu_check.Budget(3.0)
    rows = gpu_check.measure(args, budget, budget.end, worker_cmd=[sys.executable, str(fake)])
    assert budget.elapsed() < 10  # the sleeping worker was killed at the deadline, not waited for
    assert "error" not in rows["seg"]
    assert rows["controlnet"]["error"].startswith("stopped at the time budget")
    assert rows["resnet18"]["skipped"].startswith("time budget")


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", 989.4),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H200", 989.4),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA L40S", 362.05),
        ("NVIDIA L4", 121.0),
        ("NVIDIA A10", 125.0),
        ("Tesla V100-SXM2-32GB", None),
        (None, None),
    ],
)
def test_peak_table_matches_device_names(name: str | None, peak: float | None) -> None:
    assert gpu_check.peak_bf16_tflops(name) == peak
