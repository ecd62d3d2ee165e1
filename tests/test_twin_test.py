"""``benchmarks/twin_test.py``: twins without PNI, the control stages it runs, and the table it reads back."""

from __future__ import annotations

import argparse
from pathlib import Path
from types import ModuleType

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest

from bench_scripts import load_benchmark
from neonet.data.cases import read_cases
from neonet.data.nifti import load_nifti
from neonet.data.phantom import cohort_plan, make_case
from neonet.workspace import Workspace


@pytest.fixture(scope="module")
def twin() -> ModuleType:
    return load_benchmark("twin_test")


def _args(twin: ModuleType, **kw: object) -> argparse.Namespace:
    """The options of the session's phantom cohort (tests/conftest.py: 12 cases, seed 1, half PNI+, 48x48x16)."""
    args = twin.parse_args(["--cases", "12", "--seed", "1", "--pni_fraction", "0.5", "--matched", "0", "--strength", "1"])
    args.tumor_radius_mm, args.shape, args.spacing = [14.0, 24.0], [48, 48, 16], [7.0, 7.0, 12.0]
    for key, value in kw.items():
        setattr(args, key, value)
    return args


def test_twins_take_the_pni_out_of_the_positive_images_only(twin: ModuleType, phantom_cohort: Path, tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "runs", "e")
    out = twin.write_twins(ws, phantom_cohort, _args(twin))
    assert out == ws.root / "twin" / "cases.csv"
    original = {c.case_id: c for c in read_cases(phantom_cohort)}
    twins = {c.case_id: c for c in read_cases(out)}
    plan = {p.case_id: p for p in cohort_plan(12, 1, 0.5, 0)}
    assert twins.keys() == original.keys()
    for cid, case in twins.items():
        orig = original[cid]
        assert (case.pni, case.patient_id, case.label.resolve()) == (orig.pni, orig.patient_id, orig.label.resolve())
        if not case.pni:
            assert case.image.resolve() == orig.image.resolve()  # PNI- rows keep their image
            continue
        assert case.image.resolve() == (ws.root / "twin" / "images" / f"{cid}.nii.gz").resolve()
        data = np.asarray(load_nifti(case.image).dataobj, np.float32)
        own = np.asarray(load_nifti(orig.image).dataobj, np.float32)
        expected = make_case(plan[cid].seed, 0, 1.0, (48, 48, 16), (7.0, 7.0, 12.0), (14.0, 24.0), noise_rng=plan[cid].noise_seed)
        np.testing.assert_allclose(data, expected[0], atol=1e-6)
        assert 0 < np.mean(np.abs(data - own) > 1e-6) < 0.2  # the cuff, not the whole anatomy, differs
        np.testing.assert_array_equal(load_nifti(case.image).affine, load_nifti(orig.image).affine)


def test_twins_of_another_cohort_are_refused_before_anything_is_written(
    twin: ModuleType, phantom_cohort: Path, tmp_path: Path
) -> None:
    ws = Workspace(tmp_path / "runs", "e")
    with pytest.raises(SystemExit, match=r"does not reproduce phantom_\d+ .*pass the cohort's synth options"):
        twin.write_twins(ws, phantom_cohort, _args(twin, tumor_radius_mm=[20.0, 30.0]))
    with pytest.raises(SystemExit, match=r"case ids differ from the phantom's"):
        twin.write_twins(ws, phantom_cohort, _args(twin, cases=24))
    assert not (ws.root / "twin").exists()


def test_every_model_is_retrained_on_each_patch_set_then_reported(twin: ModuleType, tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "runs", "e")
    args = _args(twin, shrink_mm=6.0, jobs=2, cv_overrides=["--trainer.max_epochs=1"])
    steps = twin.steps(ws, Path("cases.csv"), Path("twin.csv"), args)
    names = [name for name, _ in steps]
    assert names[0] == "crop twin" and names[-1] == "report"
    for patch_set in ("twin", "shrunk", "twin_shrunk"):
        crop = dict(steps)[f"crop {patch_set}"]
        assert crop[crop.index("--patches") + 1] == patch_set and crop[crop.index("--source") + 1] == "predicted"
        assert crop[crop.index("--cases") + 1] == ("twin.csv" if patch_set.startswith("twin") else "cases.csv")
        assert ("--tumor_shrink_mm" in crop) == patch_set.endswith("shrunk")
        for model in ("pattennet", "pattennet_hist", "resnet18"):
            command = dict(steps)[f"{model}_{patch_set}"]
            assert command[:2] == ["cv", "--jobs"] and f"--data.patches={patch_set}" in command
            assert f"--model.stage={model}_{patch_set}" in command and command[-1] == "--trainer.max_epochs=1"
            assert "--data.cases=cases.csv" in command  # the experiment's own cases and splits
        radiomics = dict(steps)[f"radiomics_{patch_set}"]
        assert radiomics[radiomics.index("--patches") + 1] == patch_set
        assert radiomics[radiomics.index("--model_name") + 1] == f"radiomics_{patch_set}"


def test_table_gives_each_condition_and_the_surviving_signal(twin: ModuleType, tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "runs", "e")
    aucs = {"pattennet": 0.52, "pattennet_twin": 0.50, "pattennet_hist": 0.90, "pattennet_hist_twin": 0.70}
    aucs |= {"pattennet_hist_shrunk": 0.85, "pattennet_hist_twin_shrunk": 0.55, "radiomics": 0.80, "radiomics_twin": 0.80}
    rows = [{"stage": s, "auc_pooled": a, "auc_ci_lo": a - 0.1, "auc_ci_hi": a + 0.1, "n": 72} for s, a in aucs.items()]
    ws.cls_summary.parent.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(ws.cls_summary, index=False)
    table = twin.collect(ws).set_index("model")
    hist = table.loc["pattennet_hist"]
    assert hist["surviving"] == pytest.approx(0.5) and hist["surviving_shrunk"] == pytest.approx(0.05 / 0.35)
    assert hist["status"] == "complete"
    assert np.isnan(table.loc["pattennet", "surviving"])  # 0.52: too close to chance for a fraction
    assert table.loc["radiomics", "surviving"] == pytest.approx(1.0)
    assert table.loc["resnet18", "status"].startswith("missing: resnet18, resnet18_twin")
    md = twin.markdown(table.reset_index(), 6.0)
    assert "| PattenNet, histogram head (`pattennet_hist`) | 0.900 [0.800, 1.000] | 0.700 [0.600, 0.800] | 0.50 |" in md
    assert "n/a (AUC < 0.55)" in md and "not run" in md and "masks shrunk 6 mm" in md
    png = twin.plot(table.reset_index(), tmp_path / "t.png", "e", 6.0)
    assert mpimg.imread(png).shape[2] in (3, 4)
