"""The CLI spine: help, every shipped config parses, test configs mirror experiments/."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from neonet.run.cli import LIGHTNING_VERBS, PROJECT_VERBS, main
from neonet.run.config_drift import config_drift
from neonet.run.lightning_cli import resolve_stage_config

REPO = Path(__file__).resolve().parents[1]
# `_*.yaml` are include-only blocks (a folder's seed, trainer defaults and cohort): parsed through the configs
# that include them (tests/test_configs.py)
CONFIGS = [
    p
    for p in sorted((REPO / "experiments").rglob("*.yaml")) + sorted((REPO / "tests" / "conf").rglob("*.yaml"))
    if not p.name.startswith("_")
]


def test_help_lists_every_verb(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for verb in list(LIGHTNING_VERBS) + list(PROJECT_VERBS):
        assert f"  {verb} " in out


@pytest.mark.parametrize("verb", sorted(PROJECT_VERBS))
def test_each_project_verb_has_help(verb: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([verb, "--help"])
    assert exc.value.code == 0
    assert f"neonet {verb}" in capsys.readouterr().out


@pytest.mark.parametrize("verb", sorted(PROJECT_VERBS) + sorted(LIGHTNING_VERBS))
def test_every_verb_prints_its_config(verb: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`--print_config` works the same for every verb: the options it would run with, as YAML."""
    stage = ["--config", str(REPO / "tests" / "conf" / "seg.yaml")]
    args = stage if verb in LIGHTNING_VERBS or verb == "cv" else []
    if verb == "cv":  # cv's --config is its stage configs; --print_config shows them resolved as each fold's fit
        assert main([verb, *args, "--print_config"]) == 0
    else:
        with pytest.raises(SystemExit) as exc:
            main([verb, *args, "--print_config"])
        assert exc.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert isinstance(printed, dict) and printed
    if verb in LIGHTNING_VERBS or verb == "cv":
        assert printed["model"]["class_path"] == "neonet.seg.SegModule"


def test_lightning_verbs_are_named_neonet_in_their_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    assert capsys.readouterr().out.startswith("usage: neonet fit [")
    with pytest.raises(SystemExit):  # jsonargparse's parser of a class's help is named after the verb too
        main(["fit", "--model.help", "neonet.seg.SegModule"])
    assert capsys.readouterr().out.startswith("usage: neonet fit ")


def test_unknown_verb_fails_with_a_suggestion(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frobnicate"]) == 2
    assert capsys.readouterr().err.startswith("neonet: unknown verb 'frobnicate'\n")
    assert main(["crpo"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("neonet: unknown verb 'crpo'; did you mean 'crop'?\n") and "Project verbs" not in err


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["crop", "--forse"], "neonet crop: error: unknown option '--forse'; did you mean '--force'?"),
        (
            ["fit", "--config", str(REPO / "tests" / "conf" / "seg.yaml"), "--trainer.max_epohcs", "3"],
            "neonet fit: error: unknown option '--trainer.max_epohcs'; did you mean '--trainer.max_epochs'?",
        ),
    ],
)
def test_unknown_option_fails_with_a_suggestion(args: list[str], line: str, capsys: pytest.CaptureFixture[str]) -> None:
    """One line with the closest option, not the verb's whole usage."""
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[0] == line and "usage:" not in err


def test_short_class_names_are_accepted(capsys: pytest.CaptureFixture[str]) -> None:
    """``--model.help SegModule`` (not only the dotted path), and a short class name as a value."""
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--model.help", "SegModule"])
    assert exc.value.code == 0 and "--model.roi_size" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--data.help", "ClsDataModule"])
    assert exc.value.code == 0 and "--data.use_synthetic" in capsys.readouterr().out
    config = ["--config", str(REPO / "tests" / "conf" / "baseline.yaml"), "--model.net", "DenseNet121Classifier"]
    with pytest.raises(SystemExit) as exc:
        main(["fit", *config, "--print_config"])
    assert exc.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["init_args"]["net"]["class_path"] == "neonet.nets.DenseNet121Classifier"


def test_list_options_take_several_values_or_repeat() -> None:
    from neonet.run.cli import _list_values
    from neonet.run.cv import cv

    assert _list_values(cv, ["--config", "a.yaml", "--folds", "0", "2", "--jobs", "2"]) == [
        "--config",
        "[a.yaml]",
        "--folds",
        "[0,2]",
        "--jobs",
        "2",
    ]
    assert _list_values(cv, ["--config", "a.yaml", "--folds", "[0,1]", "--config", "b.yaml"]) == [
        "--config",
        "[a.yaml,b.yaml]",
        "--folds",
        "[0,1]",
    ]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_config_parses(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--print_config` works for every config: Lightning configs with `fit`, verb configs by file stem."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    configs = ["--config", str(path)]
    if "model" in data:
        verb = "fit"
    elif "data" in data:  # an overlay (the null control, a classifier control): parse it on top of a stage config
        base = path.parents[1] / "pattennet_hist.yaml" if path.parent.name == "controls" else REPO / "experiments/demo/seg.yaml"
        verb, configs = "fit", ["--config", str(base), *configs]
    else:
        verb = path.stem
    assert verb in LIGHTNING_VERBS or verb in PROJECT_VERBS, f"{path}: no verb named {verb}"
    with pytest.raises(SystemExit) as exc:
        main([verb, *configs, "--print_config"])
    assert exc.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    if "model" in data:
        assert printed["model"]["class_path"] == data["model"]["class_path"]
    if verb == "fit":  # what a fit saves as config.yaml agrees with the file, so `neonet cv` may skip or resume it
        assert config_drift(resolve_stage_config([c for c in configs if c != "--config"]), printed) == []


def test_test_configs_mirror_experiments() -> None:
    # the baselines share one tiny mirror: they differ only in the injected network
    demo = {"baseline.yaml" if p.name.startswith("baseline_") else p.name for p in (REPO / "experiments" / "demo").glob("*.yaml")}
    tests = {p.name for p in (REPO / "tests" / "conf").glob("*.yaml")}
    assert demo <= tests, f"experiments/demo configs without a tests/conf mirror: {sorted(demo - tests)}"


def test_bare_boolean_flag_means_true() -> None:
    """`neonet crop ... --force` works as the error message and README say (jsonargparse wants a value)."""
    from neonet.run.cli import _bare_bool_flags
    from neonet.seg.crop import crop

    assert _bare_bool_flags(crop, ["--cases", "c.csv", "--force"]) == ["--cases", "c.csv", "--force=true"]
    assert _bare_bool_flags(crop, ["--force", "--cases", "c.csv"]) == ["--force=true", "--cases", "c.csv"]
    assert _bare_bool_flags(crop, ["--force", "false"]) == ["--force", "false"]
    assert _bare_bool_flags(crop, ["--force=false"]) == ["--force=false"]
    assert _bare_bool_flags(crop, ["--source", "--force"]) == ["--source", "--force=true"]  # --source is not bool


def test_crop_accepts_a_bare_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # the parse succeeds, then the missing manifest is a clear error (exit code, not a usage error)
    assert main(["crop", "--cases", str(tmp_path / "missing.csv"), "--force"]) != 0
    err = capsys.readouterr().err
    assert "expected one argument" not in err
    assert "missing.csv" in err
