"""``neonet report`` with a named variant of the reference model (``pattennet_hist``): "paper vs variant" DeLong rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from neonet.cls.module import SYNTHETIC
from neonet.report.cls_report import delong_table, discover_stages, load_predictions
from neonet.run.atomic import write_json
from test_report import FOLDS, brute_delong, make_experiment


def add_stage(
    ws, frames: dict[str, pd.DataFrame], stage: str, signal: float, seed: int, record: dict[str, str] | None = None
) -> None:
    """Out-of-fold predictions of another stage on the same patients, read by the folder-name rule unless ``record``
    (model and variant, as :meth:`neonet.cls.module.ClassifierModule.describe` writes them) goes in artifact.json."""
    rng = np.random.default_rng(seed)
    frame = frames["pattennet"].copy()
    y = frame["y_true"].to_numpy()
    frame["prob"] = 1 / (1 + np.exp(-(signal * y + rng.normal(0, 1, len(y)))))
    frame["logit"] = np.log(frame["prob"] / (1 - frame["prob"]))
    for k in range(FOLDS):
        path = ws.stage_dir(stage, k) / "test_predictions.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        frame[frame["fold"] == k].to_csv(path, index=False)
        if record is not None:
            write_json(ws.artifact_path(stage, k), {"stage": stage, "fold": k, "status": "complete", "classifier": record})
    frames[stage] = frame


def test_report_tests_the_paper_model_against_its_named_variant(tmp_path: Path) -> None:
    ws, frames = make_experiment(tmp_path)
    add_stage(ws, frames, "pattennet_hist", 1.0, seed=1)
    add_stage(ws, frames, "pattennet_hist_syn", 0.3, seed=2)
    frame = load_predictions(ws, discover_stages(ws))  # what `neonet report` tests, without its figures
    delong = delong_table(frame, "pattennet", named_variants=["pattennet_hist"])
    rows = {(r.stage_a, r.stage_b): r for r in delong.itertuples()}
    assert sorted(rows) == sorted(
        [
            ("pattennet", "resnet18"),
            ("pattennet_syn", "resnet18"),
            ("pattennet", "pattennet_hist"),  # real against real ...
            ("pattennet_syn", "pattennet_hist_syn"),  # ... and synthetic against synthetic
            ("pattennet_syn", "pattennet"),
            ("pattennet_hist_syn", "pattennet_hist"),
        ]
    )
    y = frames["pattennet"]["y_true"].to_numpy()
    for a, b in [("pattennet", "pattennet_hist"), ("pattennet_syn", "pattennet_hist_syn")]:
        row = rows[(a, b)]
        assert row.comparison == "paper vs variant"
        z, p = brute_delong(y, frames[a]["prob"].to_numpy(), frames[b]["prob"].to_numpy())
        assert row.z == pytest.approx(z, rel=1e-9) and row.p_value == pytest.approx(p, rel=1e-9)
    assert rows[("pattennet_hist_syn", "pattennet_hist")].comparison == "synthetic vs real only"


def test_only_the_configured_variant_is_tested_as_the_papers_variant(tmp_path: Path) -> None:
    """Confound stages of the variant (models ``pattennet_hist_syn_both``, ``pattennet_hist_syn_roundtrip``, as
    ``make confound`` names them) start with ``pattennet_`` but are not the configured variant: no "paper vs variant"
    row, and no "reference vs baseline" row either (they are PattenNet, not a baseline); each is tested against the
    model it extends, ``pattennet_hist``, on the same (synthetic) data."""
    ws, frames = make_experiment(tmp_path)
    add_stage(ws, frames, "pattennet_hist", 1.0, seed=1)
    add_stage(ws, frames, "pattennet_hist_syn", 0.3, seed=2)
    for seed, name in enumerate(["pattennet_hist_syn_both", "pattennet_hist_syn_roundtrip"], start=3):
        add_stage(ws, frames, name, 0.5, seed=seed, record={"model": name, "variant": SYNTHETIC})
    frame = load_predictions(ws, discover_stages(ws))
    delong = delong_table(frame, "pattennet", named_variants=["pattennet_hist"])
    variant_rows = {(r.stage_a, r.stage_b) for r in delong.itertuples() if r.comparison == "paper vs variant"}
    assert variant_rows == {("pattennet", "pattennet_hist"), ("pattennet_syn", "pattennet_hist_syn")}
    confound = {"pattennet_hist_syn_both", "pattennet_hist_syn_roundtrip"}
    rows = {(r.stage_a, r.stage_b): r.comparison for r in delong.itertuples() if confound & {r.stage_a, r.stage_b}}
    assert rows == {("pattennet_hist_syn", s): "derived vs base model" for s in confound}
    # no configured variant: no "paper vs variant" row at all, and the variant is no baseline of its paper model
    plain = delong_table(frame, "pattennet")
    assert "paper vs variant" not in set(plain["comparison"])
    assert {(r.stage_a, r.stage_b) for r in plain.itertuples() if r.comparison == "derived vs base model"} == {
        ("pattennet", "pattennet_hist"),
        ("pattennet_syn", "pattennet_hist_syn"),
        *(("pattennet_hist_syn", s) for s in confound),
    }
    assert {(r.stage_a, r.stage_b) for r in plain.itertuples() if r.comparison == "reference vs baseline"} == {
        ("pattennet", "resnet18"),
        ("pattennet_syn", "resnet18"),
    }
