"""``neonet.run.config_drift``: a fold is skipped or resumed only under the settings it was trained with."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from neonet.errors import NeonetError
from neonet.run.config_drift import check_fold_configs, config_drift
from neonet.run.provenance import OutOfDateError, UnreadableRecordError
from neonet.workspace import Workspace

#: A saved LightningCLI config: every setting spelled out, defaults included.
STORED = {
    "seed_everything": 0,
    "trainer": {"accelerator": "auto", "devices": 1, "precision": "32-true", "max_epochs": 30, "logger": None},
    "model": {
        "class_path": "neonet.cls.PattenNetModule",
        "init_args": {
            "stage": "pattennet",
            "net": {
                "class_path": "neonet.nets.PattenNet",
                "init_args": {"hist_bins": 14, "region_labels": [2, 3], "dropout": 0.3, "hidden": 64},
            },
            "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.001, "weight_decay": 0.01}},
            "pos_weight": "auto",
        },
    },
    "data": {
        "class_path": "neonet.cls.ClsDataModule",
        "init_args": {"fold": 0, "batch_size": 8, "num_workers": 0, "flip_axes": [0]},
    },
    "callbacks": [
        {"class_path": "lightning.pytorch.callbacks.EarlyStopping", "init_args": {"monitor": "val/loss", "patience": 3}}
    ],
}
STORED["trainer"]["callbacks"] = [
    {"class_path": "neonet.seg.SegMaskWriter", "init_args": {"output_dir": None}},
    {"class_path": "probes.PauseAtStep", "init_args": {"step": 4}},
]


def test_the_same_settings_written_differently_are_no_drift() -> None:
    requested = {
        "seed_everything": 0,
        "trainer": {
            "precision": "32-true",
            "max_epochs": 30.0,
            "devices": 4,  # devices: hardware, ignored
            "callbacks": [{"class_path": "neonet.seg.SegMaskWriter"}],
        },  # one of the fit's callbacks
        "model": {
            "class_path": "neonet.cls.PattenNetModule",
            "init_args": {
                "net": {"class_path": "PattenNet", "hist_bins": 14, "region_labels": [2, 3]},  # init_args left out
                "optimizer": {"class_path": "AdamW", "init_args": {"lr": "1e-3"}},
            },
        },  # YAML 1.1 reads 1e-3 as text
        "data": {"init_args": {"fold": 2, "num_workers": 8, "flip_axes": [0]}},  # fold and workers: ignored
        "callbacks": [{"class_path": "EarlyStopping", "init_args": {"patience": 3}}],
    }
    assert config_drift(requested, STORED) == []


def test_changed_and_unknown_settings_are_listed_with_both_values() -> None:
    requested = {
        "seed_everything": 1,
        "model": {
            "init_args": {
                "net": {"init_args": {"region_labels": [2], "hist_bins": 14}},
                "optimizer": {"init_args": {"lr": 0.002}},
                "loss": "focal",
            }
        },
        "callbacks": [{"class_path": "EarlyStopping", "init_args": {"patience": 5}}],
        "trainer": {"callbacks": [{"class_path": "lightning.pytorch.callbacks.EMAWeightAveraging"}]},
    }
    drift = {key: (old, new) for key, old, new in config_drift(requested, STORED)}
    assert drift == {
        "seed_everything": (0, 1),
        "model.net.region_labels": ([2, 3], [2]),
        "model.optimizer.lr": (0.001, 0.002),
        "model.loss": ("<missing>", "focal"),
        "callbacks": (STORED["callbacks"], requested["callbacks"]),
        "trainer.callbacks": (STORED["trainer"]["callbacks"], requested["trainer"]["callbacks"]),
    }


def test_overrides_resolved_by_the_fit_parser_compare_against_the_saved_config() -> None:
    """``neonet cv`` resolves its configs with the parser of ``neonet fit``; overrides then compare as a fit saves them."""
    from neonet.run.lightning_cli import resolve_stage_config

    config = Path(__file__).parent / "conf" / "pattennet.yaml"
    stored = resolve_stage_config([config])  # what the fit of this config saves as config.yaml
    same = resolve_stage_config([config], ["--model.stage=pattennet", "--data.num_workers=4"])
    assert config_drift(same, stored) == []
    changed = resolve_stage_config([config], ["--model.net.init_args.dropout=0.5", "--data.batch_size=3"])
    old_dropout = stored["model"]["init_args"]["net"]["init_args"]["dropout"]
    old_batch = stored["data"]["init_args"]["batch_size"]
    assert sorted(config_drift(changed, stored)) == [("data.batch_size", old_batch, 3), ("model.net.dropout", old_dropout, 0.5)]


def _fold_config(ws: Workspace, stage: str, fold: int, config: dict) -> Path:
    path = ws.stage_dir(stage, fold) / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


def test_check_fold_configs_names_the_folds_their_settings_and_the_way_out(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "runs", "demo")
    _fold_config(ws, "pattennet", 0, STORED)
    _fold_config(ws, "pattennet", 1, {**STORED, "seed_everything": 3})
    requested = {"seed_everything": 0, "model": {"init_args": {"stage": "pattennet"}}}
    check_fold_configs(ws, "pattennet", [0, 2], requested, stage_option=True)  # same settings; fold 2 has no config
    with pytest.raises(OutOfDateError) as info:
        check_fold_configs(ws, "pattennet", [0, 1, 2], requested, stage_option=True)
    message = str(info.value)
    assert isinstance(info.value, NeonetError)
    assert "fold 1" in message and "fold 0" not in message and "pattennet/fold1/config.yaml" in message
    assert message.startswith(
        f"pattennet fold 1 at {ws.config_path('pattennet', 1)} was made from other settings or "
        "inputs than this command's: setting seed_everything: 3 (stored) -> 0 (now).\n"
        "Re-run with --force to replace it (or write to another `-- --data.experiment`)."
    )
    assert "--model.stage=pattennet_v2" in message
    with pytest.raises(NeonetError, match=r"(?s)another `-- --data\.experiment`.*--data\.runs_dir"):
        check_fold_configs(ws, "pattennet", [1], requested, stage_option=False)
    _fold_config(ws, "pattennet", 2, {**STORED, "seed_everything": 4, "trainer": {**STORED["trainer"], "max_epochs": 9}})
    with pytest.raises(OutOfDateError) as info:
        check_fold_configs(ws, "pattennet", [1, 2], requested, stage_option=True)
    lines = str(info.value).splitlines()  # one sentence per fold, then the one remedy
    assert lines[0].startswith("pattennet fold 1 at ") and lines[1].startswith("pattennet fold 2 at ")
    assert "setting seed_everything: 4 (stored) -> 0 (now)" in lines[1]
    assert lines[2] == "Re-run with --force to replace them (or write to another `-- --data.experiment`)."
    ws.config_path("pattennet", 2).write_text("trainer: [unclosed\n")
    with pytest.raises(
        UnreadableRecordError,
        match=r"pattennet/fold2/config\.yaml: unreadable record of pattennet fold 2 "
        r"\(not YAML.*Re-run with --force",
    ):
        check_fold_configs(ws, "pattennet", [2], requested, stage_option=True)


def test_one_file_named_by_two_paths_is_no_drift(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs/demo/data").mkdir(parents=True)
    (tmp_path / "runs/demo/data/cases.csv").write_text("case_id\n")
    (tmp_path / "other.csv").write_text("case_id\n")
    (tmp_path / "link.csv").symlink_to(tmp_path / "runs/demo/data/cases.csv")
    stored = {"data": {"init_args": {"cases": "runs/demo/data/cases.csv", "runs_dir": "runs"}}}
    for same in (
        "./runs/demo/data/cases.csv",
        "runs/demo/../demo/data/cases.csv",
        str(tmp_path / "runs/demo/data/cases.csv"),
        "link.csv",
    ):
        assert config_drift({"data": {"cases": same, "runs_dir": "./runs"}}, stored) == [], same
    assert config_drift({"data": {"cases": "other.csv"}}, stored) == [("data.cases", "runs/demo/data/cases.csv", "other.csv")]
    # where the runs folder is, is bookkeeping: the folds compared are those under the new runs folder
    assert config_drift({"data": {"runs_dir": "runs2"}}, stored) == []
    assert config_drift({"data": {"cases": "other.csv", "runs_dir": "runs2"}}, stored) == [
        ("data.cases", "runs/demo/data/cases.csv", "other.csv")
    ]
