"""Controls of a classifier: the manual-mask patch set, the image-free input, and their rows in the report."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from neonet.cls.datamodule import CONSTANT_IMAGE_VALUE
from neonet.data.patches import PATCH_SHELL, PATCH_TUMOR
from neonet.errors import MissingUpstreamError, NeonetError
from neonet.report.cls_report import report
from neonet.report.controls import ABOVE, BELOW, WITHIN, control_of, main_stage_of
from neonet.run.atomic import read_json, sha256_file, write_json
from neonet.run.cli import main
from neonet.workspace import Workspace
from test_cls_fixtures import CONF, SHAPE, cls_datamodule, one_thread, save_nifti, write_fake_autoencoder, write_patch_cohort  # noqa: F401


def label_patch(rng: np.random.Generator, radius: float) -> np.ndarray:
    """A label patch: liver everywhere, a tumour ball of ``radius`` voxels and a 2-voxel shell around it."""
    x, y, z = np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij")
    c = np.array(SHAPE) / 2 + rng.uniform(-1, 1, 3)
    d = np.sqrt((x - c[0]) ** 2 + (y - c[1]) ** 2 + ((z - c[2]) * 2) ** 2)
    out = np.ones(SHAPE, np.uint8)
    out[d < radius + 2] = PATCH_SHELL
    out[d < radius] = PATCH_TUMOR
    return out


def with_labels(cohort: dict, patch_set: str | None = None, radius: float = 3.0, seed: int = 1) -> Workspace:
    """Label patches with a tumour and shell for every case of ``cohort``; for a ``patch_set`` first a copy of
    ``patches/`` as ``patches_<set>/`` (the images stay the same, the labels differ by ``radius``)."""
    ws = Workspace(cohort["runs_dir"], cohort["experiment"], patch_set)
    if patch_set is not None:
        shutil.copytree(cohort["ws"].patches_dir, ws.patches_dir)
    rng = np.random.default_rng(seed)
    for path in sorted((ws.patches_dir / "labels").glob("*.nii.gz")):
        save_nifti(path, label_patch(rng, radius))
    return ws


@pytest.fixture()
def cohort(tmp_path: Path) -> dict:
    cohort = write_patch_cohort(tmp_path, n=12)
    with_labels(cohort)
    return cohort


# ----------------------------------------------------------------------------- image-free data
def test_constant_image_feeds_only_the_label_patch(cohort: dict) -> None:
    plain = cls_datamodule(cohort, label_channel=True)
    free = cls_datamodule(cohort, label_channel=True, image="constant")
    for dm in (plain, free):
        dm.setup("fit")
        dm.setup("test")
    for split in ("train", "val", "test"):  # training batches are augmented; the image is replaced after that
        image = next(iter(getattr(free, f"{split}_dataloader")()))["image"]
        reference = next(iter(getattr(plain, f"{split}_dataloader")()))["image"]
        assert image.shape == reference.shape and image.shape[1] == 2
        assert (image[:, 0] == CONSTANT_IMAGE_VALUE).all()
        assert reference[:, 0].std() > 0.05  # the ordinary module feeds the image patch itself
        assert set(image[:, 1].unique().tolist()) <= {0.0, 1.0, float(PATCH_SHELL), float(PATCH_TUMOR)}
        if split != "train":  # no augmentation: the label channel is the label patch as stored
            assert (image[:, 1] == reference[:, 1]).all()
            assert (image[:, 1] == PATCH_TUMOR).any()
    assert free.control() == {"image": "constant"} and plain.control() == {}
    assert free.upstream()["control"] == {"image": "constant"}


def test_constant_image_needs_the_label_channel(cohort: dict) -> None:
    with pytest.raises(ValueError, match="label_channel"):
        cls_datamodule(cohort, image="constant")
    with pytest.raises(ValueError, match="constant"):
        cls_datamodule(cohort, label_channel=True, image="zeros")


# ----------------------------------------------------------------------------- the manual-mask patch set
def test_crop_writes_another_patch_set_beside_patches(phantom_cohort: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    base = ["crop", "--config", str(CONF / "crop.yaml"), f"--cases={phantom_cohort}", f"--runs_dir={runs}", "--source=manual"]
    assert main(base) == 0
    main_ws, manual_ws = Workspace(runs, "test"), Workspace(runs, "test", "manual")
    before = {p: sha256_file(p) for p in sorted(main_ws.patches_dir.rglob("*")) if p.is_file()}
    figure = main_ws.figure("tlcr_patches")
    figure_before = sha256_file(figure)
    assert main([*base, "--patches=manual", "--shell_mm=5"]) == 0
    assert manual_ws.patches_dir == runs / "test" / "patches_manual"
    assert {p: sha256_file(p) for p in sorted(main_ws.patches_dir.rglob("*")) if p.is_file()} == before
    assert sha256_file(figure) == figure_before and main_ws.figure("tlcr_patches_manual").is_file()
    record = read_json(manual_ws.crop_config)
    assert record["settings"]["source"] == "manual" and record["settings"]["shell_mm"] == 5.0 and record["patches"] == "manual"
    manifest = pd.read_csv(manual_ws.patches_manifest)
    assert (manifest["status"] == "ok").all() and len(manifest) == len(pd.read_csv(phantom_cohort))

    dm = cls_datamodule(
        {"cases": str(phantom_cohort), "runs_dir": str(runs), "experiment": "test"}, label_channel=True, patches="manual"
    )
    items = dm.items("train") + dm.items("test")
    assert all(Path(i["image"]).parent.parent == manual_ws.patches_dir for i in items)
    assert all(Path(i["region"]).parent.parent == manual_ws.patches_dir for i in items)
    assert dm.upstream()["patches_manifest"]["path"] == str(manual_ws.patches_manifest)
    assert dm.control() == {"patches": {"set": "manual", "dir": "patches_manual", "source": "manual"}}
    ordinary = cls_datamodule({"cases": str(phantom_cohort), "runs_dir": str(runs), "experiment": "test"}, label_channel=True)
    assert all(Path(i["image"]).parent.parent == main_ws.patches_dir for i in ordinary.items("train"))


def test_a_missing_patch_set_names_the_crop_that_makes_it(cohort: dict) -> None:
    with pytest.raises(MissingUpstreamError, match="--patches other"):
        cls_datamodule(cohort, patches="other").items("train")
    with pytest.raises(ValueError, match="patch set name"):
        cls_datamodule(cohort, patches="../up")


def test_a_control_fit_records_what_makes_it_a_control(cohort: dict) -> None:
    """``neonet fit`` of the tiny PattenNet on the manual patch set with a constant image: the fold's artifact says so."""
    ws = cohort["ws"]
    manual = with_labels(cohort, "manual", radius=4.0, seed=2)
    write_json(manual.crop_config, {"provenance": 1, "settings": {"source": "manual"}, "inputs": {}})
    from neonet.data.base import FoldDataModule

    split = FoldDataModule(cohort["cases"], experiment=cohort["experiment"], runs_dir=cohort["runs_dir"], fold=0, folds=3).split
    write_fake_autoencoder(ws, 0, train_cases=list(split.train))
    stage = "pattennet_hist_manualmask_imagefree"
    args = [
        "fit",
        "--config",
        str(CONF / "pattennet_hist.yaml"),
        f"--data.cases={cohort['cases']}",
        f"--data.runs_dir={cohort['runs_dir']}",
        f"--data.experiment={cohort['experiment']}",
        "--data.fold=0",
        "--trainer.max_epochs=1",
        "--data.patches=manual",
        "--data.image=constant",
        f"--model.stage={stage}",
    ]
    assert main(args) == 0
    art = ws.read_artifact(stage, 0)
    assert art["classifier"]["control"] == {
        "patches": {"set": "manual", "dir": "patches_manual", "source": "manual"},
        "image": "constant",
    }
    assert art["upstream"]["patches_manifest"]["path"] == str(manual.patches_manifest)
    assert art["upstream"]["patches_manifest"]["sha256"] == sha256_file(manual.patches_manifest)
    from neonet.predict.source import RunsSource
    from neonet.report.external import classifier_stages

    with pytest.raises(NeonetError, match="diagnostic control"):  # it scores no new scan's patch
        RunsSource(ws).cls_models(stage, [0])
    assert stage not in classifier_stages(ws)  # neonet evaluate leaves it out


# ----------------------------------------------------------------------------- the report's control rows
FOLDS = 3


def write_stage(ws: Workspace, stage: str, cases: list[str], y: np.ndarray, prob: np.ndarray, control: dict | None) -> None:
    """A classifier stage's out-of-fold predictions and artifacts, as ``neonet cv`` leaves them."""
    fold = np.arange(len(cases)) % FOLDS
    frame = pd.DataFrame(
        {
            "case_id": cases,
            "patient_id": cases,
            "fold": fold,
            "y_true": y,
            "prob": prob,
            "logit": np.log(prob / (1 - prob)),
            "threshold_youden_val": 0.5,
        }
    )
    for k in range(FOLDS):
        ws.stage_dir(stage, k).mkdir(parents=True, exist_ok=True)
        frame[frame["fold"] == k].to_csv(ws.test_predictions(stage, k), index=False)
        record = {"model": stage, "variant": "real only", **({"control": control} if control else {})}
        write_json(ws.artifact_path(stage, k), {"stage": stage, "fold": k, "status": "complete", "classifier": record})


def brute_auc(y: np.ndarray, p: np.ndarray) -> float:
    pos, neg = p[y == 1], p[y == 0]
    return float(np.mean([(a > b) + 0.5 * (a == b) for a in pos for b in neg]))


@pytest.fixture(scope="module")
def controlled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, dict[str, np.ndarray], dict]:
    """Main stage ``pattennet`` (AUC about 0.8), an image-free control that scores nearly as it does, a manual-mask
    control that separates the classes, and an image-free control of ``resnet18`` that scores both classes alike."""
    ws = Workspace(tmp_path_factory.mktemp("controls"), "r")
    rng = np.random.default_rng(0)
    n = 60
    y = np.array([1] * 20 + [0] * 40)
    cases = [f"c{i:03d}" for i in range(n)]
    main_score = 1.6 * y + rng.normal(0, 1, n)
    probs = {
        "pattennet": main_score,
        "pattennet_imagefree": main_score + rng.normal(0, 0.1, n),
        "pattennet_manualmask": 6.0 * y + rng.normal(0, 1, n),
        "resnet18": 1.6 * y + rng.normal(0, 1, n),
        "resnet18_imagefree": np.where(y == 1, np.linspace(-1, 1, n), np.linspace(-1.01, 1.01, n)),  # alike in both classes
    }
    controls = {
        "pattennet_imagefree": {"image": "constant"},
        "pattennet_manualmask": {"patches": {"set": "manual", "dir": "patches_manual", "source": "manual"}},
        "resnet18_imagefree": {"image": "constant"},
    }
    out = {}
    for stage, score in probs.items():
        prob = 1 / (1 + np.exp(-score))
        write_stage(ws, stage, cases, y, prob, controls.get(stage))
        out[stage] = prob
    folds = np.arange(n) % FOLDS
    splits = [{"fold": k, "train": [], "val": [], "test": [c for c, f in zip(cases, folds) if f == k]} for k in range(FOLDS)]
    write_json(ws.splits_path, {"folds": FOLDS, "splits": splits})
    doc = report("r", ws.runs_dir, n_boot=500, log_wandb=False)
    return ws, {"y": y, **out}, doc


def test_report_gives_each_control_its_row_against_its_main_stage(controlled) -> None:
    ws, probs, doc = controlled
    table = pd.read_csv(ws.reports_dir / "cls_controls.csv").set_index("stage")
    summary = pd.read_csv(ws.reports_dir / "cls_summary.csv").set_index("stage")
    assert sorted(table.index) == ["pattennet_imagefree", "pattennet_manualmask", "resnet18_imagefree"]
    expected = {"pattennet_imagefree": ("pattennet", WITHIN), "pattennet_manualmask": ("pattennet", ABOVE)}
    expected["resnet18_imagefree"] = ("resnet18", BELOW)
    for stage, (main_stage, where) in expected.items():
        row = table.loc[stage]
        assert row["main_stage"] == main_stage and row["position"] == where
        assert row["auc_pooled"] == pytest.approx(brute_auc(probs["y"], probs[stage]), abs=1e-12)
        assert row["auc_pooled"] == summary.loc[stage, "auc_pooled"]
        assert (row["main_ci_lo"], row["main_ci_hi"]) == (
            summary.loc[main_stage, "auc_ci_lo"],
            summary.loc[main_stage, "auc_ci_hi"],
        )
        lo, hi = row["main_ci_lo"], row["main_ci_hi"]
        assert {WITHIN: lo <= row["auc_pooled"] <= hi, ABOVE: row["auc_pooled"] > hi, BELOW: row["auc_pooled"] < lo}[where]
        assert 0 <= row["delong_p"] <= 1
    assert table.loc["pattennet_manualmask", "delong_p"] < 0.01  # 0.99 against 0.8 on the same 60 patients
    assert table.loc["pattennet_imagefree", "delong_p"] > 0.05
    assert [r["stage"] for r in doc["controls"]] == list(table.index)


def test_report_says_in_words_where_each_control_lies(controlled) -> None:
    ws, _, _ = controlled
    table = pd.read_csv(ws.reports_dir / "cls_controls.csv").set_index("stage")
    inside = table.loc["pattennet_imagefree", "sentence"]
    assert inside.startswith(f"pattennet_imagefree {table.loc['pattennet_imagefree', 'auc_pooled']:.2f} [")
    assert "lies within pattennet's 95 % CI" in inside and "can be explained without image content" in inside
    assert "above 0.5" in inside  # its own CI excludes chance: the label patch alone carries the label
    above = table.loc["pattennet_manualmask", "sentence"]
    assert "lies above pattennet's 95 % CI" in above and "depends on its masks" in above and "not a deployable" in above
    below = table.loc["resnet18_imagefree", "sentence"]
    assert "lies below resnet18's 95 % CI" in below and "image content adds" in below and "above 0.5" not in below
    md = (ws.reports_dir / "cls_report.md").read_text(encoding="utf-8")
    summary_part, rest = md.split("## Controls", 1)
    assert "| pattennet |" in summary_part and "pattennet_imagefree" not in summary_part.split("## Summary", 1)[1]
    for sentence in table["sentence"]:
        assert f"- {sentence}" in rest
    page = ws.page.read_text(encoding="utf-8")
    assert "can be explained without image content" in page and "cls_controls.csv" in page


def test_controls_stay_out_of_the_ablation_and_delong_tables(controlled) -> None:
    ws, _, _ = controlled
    ablation = pd.read_csv(ws.reports_dir / "cls_ablation.csv")
    delong = pd.read_csv(ws.reports_dir / "cls_delong.csv")
    assert sorted(ablation["model"]) == ["pattennet", "resnet18"]
    assert len(delong) and (set(delong["stage_a"]) | set(delong["stage_b"])) <= {"pattennet", "resnet18"}


def test_folds_of_a_stage_that_disagree_on_the_control_are_an_error(tmp_path: Path) -> None:
    ws = Workspace(tmp_path, "r")
    y = np.array([1, 0, 1, 0, 1, 0])
    write_stage(ws, "pattennet_imagefree", [f"c{i}" for i in range(6)], y, np.full(6, 0.5), {"image": "constant"})
    assert control_of(ws, "pattennet_imagefree") == {"image": "constant"}
    art = read_json(ws.artifact_path("pattennet_imagefree", 1))
    del art["classifier"]["control"]
    write_json(ws.artifact_path("pattennet_imagefree", 1), art)
    with pytest.raises(NeonetError, match="different controls"):
        control_of(ws, "pattennet_imagefree")


def test_main_stage_is_the_longest_stage_name_the_control_extends() -> None:
    stages = ["pattennet", "pattennet_hist", "resnet18"]
    assert main_stage_of("pattennet_hist_imagefree", stages) == "pattennet_hist"
    assert main_stage_of("pattennet_manualmask", stages) == "pattennet"
    assert main_stage_of("densenet_imagefree", stages) is None


def test_a_patch_set_cut_from_other_masks_is_not_called_a_manual_mask_control() -> None:
    """A control on another patch set (the twin test's ``patches_twin/``, cut from NeoSeg's masks) says where it
    lies and on which patches, with nothing about manual masks."""
    from neonet.report.controls import sentence

    row = {"stage": "pattennet_hist_twin", "main_stage": "pattennet_hist", "position": WITHIN}
    row |= {"auc_pooled": 0.71, "auc_ci_lo": 0.58, "auc_ci_hi": 0.83, "main_auc_pooled": 0.80}
    row |= {"main_ci_lo": 0.69, "main_ci_hi": 0.90}
    record = {"patches": {"set": "twin", "dir": "patches_twin", "source": "predicted"}}
    text = sentence(row, record, 95)
    assert text == (
        "pattennet_hist_twin 0.71 [0.58, 0.83] lies within pattennet_hist's 95 % CI [0.69, 0.90] (pattennet_hist 0.80): "
        "on predicted masks (patches_twin/) pattennet_hist scores alike."
    )
    manual = sentence(row, {"patches": {"set": "manual", "dir": "patches_manual", "source": "manual"}}, 95)
    assert "with manual masks" in manual and "not a deployable" in manual
