"""Both PattenNet heads through ``predict-case`` and ``export``.

The paper's head (the image patch alone, one input channel) is the ``pattennet`` of ``conftest.py``'s trained
experiment, which ``test_predict_case.py`` and ``test_export.py`` use. This module trains the histogram-head
variant (``tests/conf/pattennet_hist.yaml``: the TLCR label patch as a second channel, pooled over the shell and
the tumour) as stage ``pattennet_hist`` beside it, on a copy of that experiment, and runs it the same ways.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from neonet.run.cli import main
from neonet.run.reload import load_trained_fold
from neonet.workspace import Workspace
from test_cls_fixtures import CONF, one_thread  # noqa: F401  (autouse: tiny convolutions on one thread)


@pytest.fixture(scope="module")
def variant(trained_experiment: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A copy of the trained experiment with fold 0 of ``pattennet_hist`` trained beside ``pattennet``."""
    runs = tmp_path_factory.mktemp("heads") / "runs"
    shutil.copytree(trained_experiment["runs"], runs)
    cases = trained_experiment["root"] / "cases.csv"
    data = [f"--data.cases={cases}", f"--data.runs_dir={runs}", "--data.experiment=test", "--data.fold=0"]
    assert main(["fit", "--config", str(CONF / "pattennet_hist.yaml"), *data]) == 0
    return {**trained_experiment, "runs": runs, "ws": Workspace(runs, "test")}


def test_the_two_heads_take_their_own_inputs(variant: dict) -> None:
    """The paper's head reads the image alone; the variant reads the label patch as its last channel."""
    paper = load_trained_fold(variant["ws"], "pattennet", 0).module.net
    hist = load_trained_fold(variant["ws"], "pattennet_hist", 0).module.net
    assert paper.region_labels is None and paper.pool_mode == "avg" and paper.histogram is None
    assert hist.region_labels == [2, 3] and hist.pool_mode == "hist" and hist.histogram is not None


def test_predict_case_and_its_bundle_run_the_variant(variant: dict, tmp_path: Path) -> None:
    row = variant["cases"].loc["phantom_003"]
    image, label = variant["root"] / row["image"], variant["root"] / row["label"]
    runs = ["--experiment", "test", "--runs_dir", str(variant["runs"]), "--folds", "[0]", "--classifier", "pattennet_hist"]

    out = tmp_path / "runs_pred"
    assert main(["predict-case", str(image), *runs, "--mask", str(label), "--out", str(out)]) == 0
    ref = json.loads((out / "prediction.json").read_text(encoding="utf-8"))
    assert ref["classifier"]["stage"] == "pattennet_hist" and ref["classifier"]["folds"] == [0]
    assert 0.0 <= ref["pni_probability"] <= 1.0 and ref["saliency"]["layer"] == "attention.1"
    assert (out / "saliency.nii.gz").is_file() and (out / "patch_label.nii.gz").is_file()

    bundle = tmp_path / "bundle"
    assert main(["export", *runs, "--out", str(bundle)]) == 0
    config = json.loads((bundle / "configs" / "inference.json").read_text(encoding="utf-8"))
    assert config["classifier"]["stage"] == "pattennet_hist" and config["classifier"]["settings"]["label_channel"] is True
    out = tmp_path / "bundle_pred"
    assert main(["predict-case", str(image), "--bundle", str(bundle), "--mask", str(label), "--out", str(out)]) == 0
    got = json.loads((out / "prediction.json").read_text(encoding="utf-8"))
    assert got["pni_probability"] == pytest.approx(ref["pni_probability"], abs=1e-5)
