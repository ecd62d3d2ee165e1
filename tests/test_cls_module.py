"""``ClassifierModule`` / ``PattenNetModule``: the fold's frozen encoder, losses, thresholds, test predictions and the
fold's recorded identity (in-process Trainer)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from monai.networks.nets import AutoencoderKL
from torch import nn

from neonet.cls import ClassifierModule, ClsDataModule, PattenNetModule
from neonet.errors import MissingUpstreamError, NeonetError
from neonet.nets import AutoencoderKLEncoder, PattenNet
from test_cls_fixtures import (  # noqa: F401
    autoencoder_args,
    cls_datamodule,
    one_thread,
    write_fake_autoencoder,
    write_patch_cohort,
    write_synthetic,
)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return write_patch_cohort(tmp_path_factory.mktemp("cls_module"), n=12)


def datamodule(cohort: dict, fold: int = 0, **kwargs) -> ClsDataModule:
    kwargs.setdefault("augment", False)
    return cls_datamodule(cohort, fold, **kwargs)


def pattennet(seed: int = 123) -> PattenNet:
    torch.manual_seed(seed)  # a different init from the checkpoint's, so loading is visible
    return PattenNet(AutoencoderKLEncoder(AutoencoderKL(**autoencoder_args())), hidden=16, dropout=0.5)


class TinyNet(nn.Module):
    """A small baseline-like classifier (logits of shape (B,)), with BatchNorm like the MONAI baselines."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv3d(1, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten()
        )
        self.fc = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x)).squeeze(-1)


def trainer(steps: int = 3, **kwargs) -> Trainer:
    return Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kwargs,
    )


def test_frozen_encoder_is_the_folds_autoencoder_and_stays_bit_identical_and_eval(cohort: dict) -> None:
    seed_everything(0)
    dm = datamodule(cohort, fold=1)
    train_cases = list(dm.split.train)  # the split file first: it is never made once folds hold checkpoints
    write_fake_autoencoder(cohort["ws"], 0, seed=10)
    _, ae1 = write_fake_autoencoder(cohort["ws"], 1, seed=11, train_cases=train_cases)
    module = PattenNetModule(pattennet(), optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2))
    head_before = {k: v.clone() for k, v in module.net.head.state_dict().items()}
    trainer(steps=4).fit(module, datamodule=dm)
    encoder = module.net.encoder
    expected = {
        f"blocks.{k.removeprefix('encoder.blocks.')}": v for k, v in ae1.state_dict().items() if k.startswith("encoder.blocks.")
    }
    got = encoder.state_dict()
    assert set(got) <= set(expected) and len(got) > 10
    assert all(torch.equal(got[k], expected[k]) for k in got), "encoder weights changed or came from another fold"
    assert not encoder.training and not any(m.training for m in encoder.modules())
    assert all(not p.requires_grad and p.grad is None for p in encoder.parameters())
    assert any(not torch.equal(head_before[k], v) for k, v in module.net.head.state_dict().items()), "head did not train"
    module.train()
    assert not encoder.training  # .train() on the LightningModule keeps the frozen encoder in eval
    opt_params = {id(p) for g in module.trainer.optimizers[0].param_groups for p in g["params"]}
    assert not opt_params & {id(p) for p in encoder.parameters()}
    up = module.upstream()["encoder_checkpoint"]
    assert up["fold"] == 1 and up["path"].endswith("autoencoder/fold1/checkpoints/best.ckpt") and len(up["sha256"]) == 64


def test_missing_or_leaky_or_mismatched_autoencoder_is_refused(cohort: dict, tmp_path: Path) -> None:
    dm = datamodule(cohort, fold=2)
    with pytest.raises(MissingUpstreamError, match="neonet cv --config experiments/demo/autoencoder.yaml --folds 2"):
        trainer().fit(PattenNetModule(pattennet()), datamodule=dm)
    write_fake_autoencoder(cohort["ws"], 2, train_cases=list(dm.split.train) + [dm.split.test[0]])
    with pytest.raises(NeonetError, match="leakage"):
        trainer().fit(PattenNetModule(pattennet()), datamodule=datamodule(cohort, fold=2))
    write_fake_autoencoder(cohort["ws"], 2, prefix="ae.", train_cases=list(dm.split.train))
    with pytest.raises(NeonetError, match=r"Prefixes found in the checkpoint: \['ae.'\]"):
        trainer().fit(PattenNetModule(pattennet()), datamodule=datamodule(cohort, fold=2))


class EncoderNet(TinyNet):
    """A baseline-like network that happens to have an ``encoder`` attribute (and does not declare it takes one)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Conv3d(1, 1, 1)


def test_identity_is_recorded_from_the_data_and_encoder_weights_go_only_to_declaring_networks(cohort: dict) -> None:
    dm = datamodule(cohort, fold=0, use_synthetic=True)
    write_synthetic(cohort["ws"], 0, [dm.split.train[0]])
    module = ClassifierModule(TinyNet(), stage="resnet18_syn")
    trainer(steps=1, limit_val_batches=0).fit(module, datamodule=dm)
    assert module.describe()["classifier"] | {"network": None} == {
        "model": "resnet18",
        "variant": "real + synthetic",
        "use_synthetic": True,
        "network": None,
        "module": "ClassifierModule",
    }
    named = ClassifierModule(TinyNet(), stage="resnet18_late", model_name="resnet18-late")
    trainer(steps=1, limit_val_batches=0).fit(named, datamodule=datamodule(cohort, fold=0))
    assert named.describe()["classifier"]["model"] == "resnet18-late"
    assert named.describe()["classifier"]["variant"] == "real only"
    write_fake_autoencoder(cohort["ws"], 0, seed=10)  # a fold-0 autoencoder exists, and must not be loaded
    plain = ClassifierModule(EncoderNet(), stage="enc")
    trainer(steps=1, limit_val_batches=0).fit(plain, datamodule=datamodule(cohort, fold=0))
    assert "encoder_checkpoint" not in plain.upstream()
    with pytest.raises(NeonetError, match="does not declare that it takes one"):
        trainer().fit(PattenNetModule(EncoderNet(), stage="enc2"), datamodule=datamodule(cohort, fold=0))
    with pytest.raises(ValueError):
        ClassifierModule(TinyNet(), stage="../x")


def test_losses_and_auto_pos_weight(cohort: dict) -> None:
    logits, labels = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([1.0, 0.0, 0.0])
    bce = ClassifierModule(TinyNet(), stage="resnet18", pos_weight=3.0)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, pos_weight=torch.tensor(3.0))
    assert torch.allclose(bce.compute_loss(logits, labels), expected)
    focal = ClassifierModule(TinyNet(), stage="resnet18", loss="focal", focal_gamma=0.0)
    assert torch.allclose(
        focal.compute_loss(logits, labels), torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
    )
    with pytest.raises(ValueError):
        ClassifierModule(TinyNet(), loss="focal", pos_weight=2.0)
    dm = datamodule(cohort, fold=0)
    auto = ClassifierModule(TinyNet(), stage="resnet18", pos_weight="auto")
    trainer(steps=1, limit_val_batches=0).fit(auto, datamodule=dm)
    neg, pos = dm.class_counts()
    assert auto.pos_weight_value == pytest.approx(neg / pos)


def test_validation_threshold_is_checkpointed_and_written_with_test_predictions(cohort: dict, tmp_path: Path) -> None:
    seed_everything(0)
    dm = datamodule(cohort, fold=0)
    module = ClassifierModule(TinyNet(), stage="resnet18")
    trainer(steps=2).fit(module, datamodule=dm)
    threshold = float(module.val_threshold)
    assert 0.0 < threshold < 1.0 and threshold != 0.5  # set from the validation probabilities
    assert "val_threshold" in module.state_dict()
    trainer().test(module, datamodule=dm)
    out = cohort["ws"].stage_dir("resnet18", 0) / "test_predictions.csv"
    frame = pd.read_csv(out, dtype={"case_id": str})
    assert list(frame.columns) == ["case_id", "patient_id", "fold", "y_true", "prob", "logit", "threshold_youden_val"]
    assert sorted(frame["case_id"]) == sorted(dm.split.test) and (frame["fold"] == 0).all()
    assert frame["threshold_youden_val"].eq(threshold).all()
    assert torch.allclose(torch.sigmoid(torch.tensor(frame["logit"].values)), torch.tensor(frame["prob"].values))
