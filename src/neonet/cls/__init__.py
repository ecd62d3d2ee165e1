"""NeoCls: PNI classification (PattenNet and baselines) under leakage-free cross-validation."""

from neonet.cls.datamodule import ClsDataModule, read_synthetic
from neonet.cls.evaluate import ClsCVHooks, cls_stage_of
from neonet.cls.module import PattenNetModule

__all__ = ["ClsCVHooks", "ClsDataModule", "PattenNetModule", "cls_stage_of", "read_synthetic"]
