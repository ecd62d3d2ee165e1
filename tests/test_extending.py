"""``docs/extending.md`` followed literally: its network file and its config train a new classifier through
``neonet cv``, and the report lists it under its own name."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

from test_cls_fixtures import REPO, write_patch_cohort

DOC = REPO / "docs" / "extending.md"


def doc_block(marker: str) -> str:
    """The fenced code block of docs/extending.md whose first line carries ``(extending: <marker>)``."""
    for block in re.findall(r"```(?:python|yaml)\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S):
        if f"(extending: {marker})" in block.splitlines()[0]:
            return block
    raise AssertionError(f"docs/extending.md has no code block marked (extending: {marker})")


def test_a_classifier_network_added_as_the_doc_says_trains_and_is_reported_under_its_name(tmp_path: Path) -> None:
    cohort = write_patch_cohort(tmp_path, n=12, experiment="ext")
    (tmp_path / "my_nets.py").write_text(doc_block("network"))
    config = yaml.safe_load(doc_block("config"))
    config["trainer"].update({"accelerator": "cpu", "max_epochs": 1, "enable_progress_bar": False})
    config["data"]["init_args"]["batch_size"] = 4
    path = tmp_path / "classifier_tinycnn.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {
        **os.environ,
        "WANDB_MODE": "disabled",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [
        sys.executable,
        "-m",
        "neonet",
        "cv",
        "--config",
        str(path),
        "--",
        f"--data.cases={cohort['cases']}",
        f"--data.runs_dir={cohort['runs_dir']}",
        "--data.experiment=ext",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, encoding="utf-8", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ws = cohort["ws"]
    for k in range(3):
        art = ws.read_artifact("tinycnn", k)
        assert art["status"] == "complete" and "auroc" in art["test_metrics"]
        assert art["classifier"] == {
            "model": "tinycnn",
            "variant": "real only",
            "use_synthetic": False,
            "network": "my_nets.TinyCNN",
            "module": "ClassifierModule",
        }
    summary = pd.read_csv(ws.reports_dir / "cls_summary.csv")
    assert list(summary["stage"]) == ["tinycnn"] and list(summary["model"]) == ["tinycnn"]
    assert summary["n"].iloc[0] == 12  # every patient once, out of fold
    assert "| tinycnn |" in (ws.reports_dir / "cls_report.md").read_text(encoding="utf-8")
