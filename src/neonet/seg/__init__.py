"""NeoSeg: liver + tumour segmentation (SegModule, SegDataModule), mask writer and TLCR crops."""

from neonet.seg.datamodule import SegDataModule
from neonet.seg.module import SegModule
from neonet.seg.writer import SegMaskWriter

__all__ = ["SegDataModule", "SegModule", "SegMaskWriter"]
