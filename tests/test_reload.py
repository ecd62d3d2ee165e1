"""Reloading trained folds (``neonet.run.reload``): real folds give the trained outputs; a stored config that
names a class outside neonet/monai/torch, or a checkpoint holding a crafted pickle, is refused before
anything runs; truncated or mismatched files are errors that name the file and the re-train command.

Trained folds come from the session fixture ``trained_experiment`` (``conftest.py``: NeoSeg and PattenNet
folds) and one baseline ResNet fold trained here; tampering happens on copies of their folders.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from monai.networks.nets import DynUNet

from neonet.errors import MissingUpstreamError, NeonetError
from neonet.run.cli import main
from neonet.run.reload import build, build_network, load_checkpoint_fold, load_trained_fold, read_state_dict
from neonet.workspace import Workspace
from test_cls_fixtures import CONF, one_thread, write_patch_cohort  # noqa: F401

NOT_ALLOWED = "is not allowed; neonet rebuilds trained folds only from neonet, monai and torch classes"


class Touch:
    """Pickles as ``os.system("touch <marker>")``: unpickling it would run the command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def popen_spec(marker: Path) -> dict:
    """A spec whose construction would create ``marker``."""
    return {"class_path": "subprocess.Popen", "init_args": {"args": ["touch", str(marker)]}}


def checkpoint_tensors(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def copy_fold(ws: Workspace, stage: str, fold: int, root: Path) -> Workspace:
    """A copy of one fold folder in a new experiment below ``root`` (safe to tamper with)."""
    copy = Workspace(root / "runs", ws.experiment)
    shutil.copytree(ws.stage_dir(stage, fold), copy.stage_dir(stage, fold))
    return copy


def edit_config(ws: Workspace, stage: str, fold: int, edit) -> Path:
    path = ws.stage_dir(stage, fold) / "config.yaml"
    cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    edit(cfg)
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """One baseline classifier fold (``model.class_path: neonet.cls.PattenNetModule`` with a ResNet18 ``net``)."""
    cohort = write_patch_cohort(tmp_path_factory.mktemp("reload_baseline"), n=12)
    args = [
        "fit",
        "--config",
        str(CONF / "baseline.yaml"),
        f"--data.cases={cohort['cases']}",
        f"--data.runs_dir={cohort['runs_dir']}",
        f"--data.experiment={cohort['experiment']}",
        "--data.fold=0",
        "--trainer.max_epochs=1",
    ]
    assert main(args) == 0
    return cohort["ws"]


# ----------------------------------------------------------------------------- real folds
def test_seg_fold_reloads_with_the_trained_weights_and_outputs(trained_experiment: dict) -> None:
    from neonet.predict.ensemble import load_fold
    from neonet.seg import SegDataModule, SegModule

    ws = trained_experiment["ws"]
    fold = load_trained_fold(ws, "seg", 0)
    assert isinstance(fold.module, SegModule) and not fold.module.training
    assert isinstance(fold.data, SegDataModule) and fold.data.fold == 0 and fold.fold == 0
    assert fold.checkpoint == ws.best_checkpoint("seg", 0) and fold.config == ws.stage_dir("seg", 0) / "config.yaml"
    assert fold.cfg["model"]["class_path"] == "neonet.seg.SegModule"
    stored = checkpoint_tensors(fold.checkpoint)
    own = fold.module.state_dict()
    assert own.keys() == stored.keys() and all(torch.equal(own[k], stored[k]) for k in stored)

    # the same network built by hand from tests/conf/seg.yaml, with the checkpoint's weights
    net_args = yaml.safe_load((CONF / "seg.yaml").read_text(encoding="utf-8"))["model"]["init_args"]["net"]["init_args"]
    reference = SegModule(net=DynUNet(**net_args), min_tumor_voxels=0)
    reference.load_state_dict(stored, strict=True)
    x = torch.rand(1, 1, 32, 32, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = fold.module(x)
        assert torch.equal(out, reference.eval()(x))
        assert torch.equal(out, load_fold(ws, "seg", 0).module(x))  # the ensemble's name for the same loader


def test_pattennet_fold_and_last_checkpoint_reload(trained_experiment: dict) -> None:
    from neonet.cls import PattenNetModule
    from neonet.nets import PattenNet

    ws = trained_experiment["ws"]
    best = load_trained_fold(ws, "pattennet", 1)
    assert isinstance(best.module, PattenNetModule) and isinstance(best.module.net, PattenNet)
    stored = checkpoint_tensors(ws.best_checkpoint("pattennet", 1))
    assert float(best.module.val_threshold) == float(stored["val_threshold"])
    assert all(torch.equal(best.module.state_dict()[k], v) for k, v in stored.items())
    last = load_trained_fold(ws, "pattennet", 1, checkpoint="last")
    assert last.checkpoint == ws.last_checkpoint("pattennet", 1)
    assert all(torch.equal(last.module.state_dict()[k], v) for k, v in checkpoint_tensors(last.checkpoint).items())


@pytest.mark.parametrize("class_path", ["neonet.cls.PattenNetModule", "neonet.cls.module.PattenNetModule"])
def test_baseline_fold_stored_as_pattennet_module_reloads(baseline: Workspace, tmp_path: Path, class_path: str) -> None:
    from neonet.cls import PattenNetModule
    from neonet.nets import ResNet18Classifier

    ws = copy_fold(baseline, "resnet18", 0, tmp_path)
    edit_config(ws, "resnet18", 0, lambda cfg: cfg["model"].__setitem__("class_path", class_path))
    fold = load_trained_fold(ws, "resnet18", 0)
    assert isinstance(fold.module, PattenNetModule) and isinstance(fold.module.net, ResNet18Classifier)
    reference = PattenNetModule(net=ResNet18Classifier(in_channels=1), stage="resnet18")
    reference.load_state_dict(checkpoint_tensors(fold.checkpoint), strict=True)
    x = torch.rand(2, 1, 16, 16, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(fold.module(x), reference.eval()(x))


# ----------------------------------------------------------------------------- refused configs
@pytest.mark.parametrize("where", ["model.init_args.net", "data", "model.init_args.net.init_args.encoder.init_args.autoencoder"])
def test_config_naming_popen_is_refused_and_nothing_runs(trained_experiment: dict, tmp_path: Path, where: str) -> None:
    stage = "seg" if where != "model.init_args.net.init_args.encoder.init_args.autoencoder" else "pattennet"
    ws = copy_fold(trained_experiment["ws"], stage, 0, tmp_path)
    marker = tmp_path / "popen_ran"

    def plant(cfg: dict) -> None:
        *parents, last = where.split(".")
        node = cfg
        for name in parents:
            node = node[name]
        node[last] = popen_spec(marker)

    config = edit_config(ws, stage, 0, plant)
    with pytest.raises(NeonetError) as err:
        load_trained_fold(ws, stage, 0)
    message = str(err.value)
    assert message.startswith(f"{config}: {where}: class 'subprocess.Popen' {NOT_ALLOWED}")
    assert "neonet cv --config" in message and "--folds 0" in message
    assert not marker.exists()


def test_optimizer_entries_are_dropped_unread(trained_experiment: dict, tmp_path: Path) -> None:
    """Optimizer and scheduler specs are training-only: never imported or built when reloading."""
    ws = copy_fold(trained_experiment["ws"], "seg", 0, tmp_path)
    marker = tmp_path / "optimizer_ran"
    edit_config(
        ws, "seg", 0, lambda cfg: cfg["model"]["init_args"].update(optimizer=popen_spec(marker), scheduler=popen_spec(marker))
    )
    assert load_trained_fold(ws, "seg", 0).module is not None
    assert not marker.exists()


@pytest.mark.parametrize(
    ("class_path", "reason"),
    [
        ("torch.load", "'torch.load' is not a class (it is a function)"),
        ("torch.serialization.os", "'torch.serialization.os' is not a class (it is a module)"),
        ("torch.multiprocessing.Process", "class 'torch.multiprocessing.Process' is defined in 'multiprocessing.context'"),
        ("torch._C._VariableFunctionsClass", "class 'torch._C._VariableFunctionsClass' is not allowed"),
        ("os.system", "class 'os.system' is not allowed"),
        ("builtins.eval", "class 'builtins.eval' is not allowed"),
        ("neonet", "class 'neonet' is not allowed"),
    ],
)
def test_builder_refuses_everything_but_neonet_monai_torch_classes(class_path: str, reason: str) -> None:
    with pytest.raises(NeonetError) as err:
        build({"class_path": class_path, "init_args": {}}, "stored.yaml", "model.init_args.net")
    assert str(err.value).startswith(f"stored.yaml: model.init_args.net: {reason}")


def test_builder_checks_every_class_before_building_any(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    spec = {"class_path": "torch.nn.Sequential", "init_args": {}, "dict_kwargs": {}}
    assert isinstance(build(spec), torch.nn.Sequential)
    nested = {
        "first": {"class_path": "torch.nn.Linear", "init_args": {"in_features": 2, "out_features": 1}},
        "second": [popen_spec(marker)],
    }
    with pytest.raises(NeonetError, match=r"^cfg: model\.second\[0\]: class 'subprocess\.Popen' is not allowed"):
        build(nested, "cfg", "model")
    with pytest.raises(NeonetError, match="is not a Module"):
        build_network({"class_path": "neonet.seg.SegDataModule", "init_args": {"cases": "x.csv"}}, "ckpt", "neonet_unet.spec")
    assert not marker.exists()


def test_controlnet_checkpoint_unet_record_is_built_through_the_allowlist(tmp_path: Path) -> None:
    from monai.networks.nets import ControlNet

    from neonet.gen.controlnet import ControlNetModule

    net = ControlNet(
        spatial_dims=3,
        in_channels=3,
        channels=(8, 16),
        attention_levels=(False, False),
        num_res_blocks=1,
        norm_num_groups=4,
        num_head_channels=8,
        conditioning_embedding_in_channels=3,
        conditioning_embedding_num_channels=(8, 16),
    )
    marker = tmp_path / "unet_ran"
    module = ControlNetModule(net)
    record = {"spec": popen_spec(marker), "noise_schedule": {}, "num_classes": None}
    with pytest.raises(NeonetError, match=r"^neonet_unet\.spec: class 'subprocess\.Popen' is not allowed"):
        module.on_load_checkpoint({"neonet_unet": record})
    assert module.unet is None and not marker.exists()


# ----------------------------------------------------------------------------- refused and broken checkpoints
def test_checkpoint_with_a_crafted_pickle_is_refused_and_nothing_runs(trained_experiment: dict, tmp_path: Path) -> None:
    ws = copy_fold(trained_experiment["ws"], "seg", 0, tmp_path)
    marker = tmp_path / "pickle_ran"
    ckpt = ws.best_checkpoint("seg", 0)
    content = torch.load(ckpt, map_location="cpu", weights_only=True)
    torch.save({**content, "hyper_parameters": {"payload": Touch(marker)}}, ckpt)
    for load in (lambda: load_trained_fold(ws, "seg", 0), lambda: load_checkpoint_fold(ckpt), lambda: read_state_dict(ckpt)):
        with pytest.raises(NeonetError) as err:
            load()
        message = str(err.value)
        assert message.startswith(f"{ckpt}: refused to load this checkpoint: it holds pickled Python objects other than tensors")
        assert "system" in message and "could run code" in message and "neonet cv --config" in message
    assert not marker.exists()


def test_truncated_checkpoint_names_the_file_and_the_retrain_command(trained_experiment: dict, tmp_path: Path) -> None:
    ws = copy_fold(trained_experiment["ws"], "seg", 0, tmp_path)
    ckpt = ws.best_checkpoint("seg", 0)
    data = ckpt.read_bytes()
    for size in (len(data) // 2, 100, 0):
        ckpt.write_bytes(data[:size])
        with pytest.raises(NeonetError) as err:
            load_trained_fold(ws, "seg", 0)
        message = str(err.value)
        assert message.startswith(f"{ckpt}: cannot read this checkpoint, it is truncated or corrupt")
        assert "Re-train the fold:\n    neonet cv --config" in message and "--folds 0" in message
        assert f"--data.runs_dir={ws.runs_dir}" in message


def test_weights_that_do_not_fit_and_missing_files(trained_experiment: dict, tmp_path: Path) -> None:
    ws = copy_fold(trained_experiment["ws"], "seg", 0, tmp_path)
    config = edit_config(ws, "seg", 0, lambda cfg: cfg["model"]["init_args"]["net"]["init_args"].update(filters=[4, 8, 32]))
    with pytest.raises(NeonetError) as err:
        load_trained_fold(ws, "seg", 0)
    message = str(err.value)
    assert message.startswith(f"{ws.best_checkpoint('seg', 0)}: its weights do not fit the network built from {config}")
    assert "size mismatch" in message and "neonet cv --config" in message

    ws.best_checkpoint("seg", 0).unlink()
    with pytest.raises(MissingUpstreamError, match=r"(?s)checkpoint of trained seg fold 0 not found.*neonet cv --config"):
        load_trained_fold(ws, "seg", 0)
    config.unlink()
    with pytest.raises(MissingUpstreamError, match="config.yaml of trained seg fold 0 not found"):
        load_trained_fold(ws, "seg", 0, checkpoint="last")
