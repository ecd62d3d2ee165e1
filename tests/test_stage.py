"""The stage contract: every stage module is a StageModule that declares its folder, monitor and cv hooks."""

from __future__ import annotations

from typing import Any

import pytest

from neonet.stage import CVContext, FoldContext, StageModule, stage_modules

#: The stage modules neonet ships (a new one is added here and to the README's config table).
SHIPPED = {"SegModule", "AutoencoderModule", "DiffusionModule", "ControlNetModule", "ClassifierModule", "PattenNetModule"}


def test_every_stage_module_is_a_stage_module_with_the_whole_contract() -> None:
    found = {cls.__name__: cls for cls in stage_modules()}
    assert set(found) == SHIPPED
    for cls in found.values():
        assert isinstance(cls.stage, str) and cls.stage
        assert isinstance(cls.monitor, str) and cls.monitor.startswith("val/")
        assert cls.monitor_mode in ("min", "max")
        assert not getattr(cls, "__abstractmethods__", None), f"{cls.__name__} leaves {cls.__abstractmethods__} abstract"
        assert "cv_hooks" not in vars(cls)  # hooks are methods, not strings naming a class


def test_a_stage_that_forgets_a_member_cannot_be_defined_or_built() -> None:
    with pytest.raises(TypeError, match="without monitor, monitor_mode"):

        class NoMonitor(StageModule):  # noqa: F841 - the definition itself fails
            stage = "x"

    with pytest.raises(TypeError, match="monitor_mode must be 'min' or 'max'"):

        class BadMode(StageModule):  # noqa: F841
            stage, monitor, monitor_mode = "x", "val/loss", "lowest"

    class NoHooks(StageModule):
        stage, monitor, monitor_mode = "x", "val/loss", "min"

    with pytest.raises(TypeError, match="abstract"):
        NoHooks()

    class Complete(NoHooks):
        @classmethod
        def after_fold(cls, ctx: FoldContext) -> dict[str, Any]:
            return {"fold": ctx.fold}

        @classmethod
        def after_folds(cls, ctx: CVContext) -> None:
            return None

    module = Complete()
    assert module.upstream() == {} and module.describe() == {} and module.fold_data is None


def test_stage_records_every_init_argument_of_the_subclass_chain_once() -> None:
    """StageModule records the hyper-parameters of every __init__ in the chain (defaults included), networks left out."""
    import torch

    from neonet.cls.module import PattenNetModule

    module = PattenNetModule(torch.nn.Linear(2, 1), encoder_checkpoint=None, loss="focal", monitor="val/auc")
    hp = dict(module.hparams)
    assert hp["loss"] == "focal" and hp["monitor"] == "val/auc"  # ClassifierModule's, given
    assert hp["select_from_epoch"] == 0 and hp["cosine"] is True  # ClassifierModule's, defaults
    assert hp["encoder_stage"] == "autoencoder" and hp["encoder_checkpoint"] is None  # PattenNetModule's
    assert hp["optimizer"] is torch.optim.AdamW and hp["scheduler"] is None  # StageModule's
    assert "net" not in hp  # a network built in Python is not pickled into checkpoints
    for cls in stage_modules():  # one place records them: a second call would drop the defaults above
        assert "save_hyperparameters" not in vars(cls).get("__init__", lambda: None).__code__.co_names, cls.__name__
