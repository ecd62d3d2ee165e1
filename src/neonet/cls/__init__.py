"""NeoCls: PNI classification (PattenNet and baselines) under leakage-free cross-validation."""

from neonet.cls.datamodule import ClsDataModule, read_synthetic
from neonet.cls.evaluate import cls_stage_of
from neonet.cls.module import ClassifierModule, PattenNetModule

__all__ = ["ClassifierModule", "ClsDataModule", "PattenNetModule", "cls_stage_of", "read_synthetic"]
