"""``LatentDataModule``: a fold's latent cache for the diffusion model and the ControlNet.

It reads ``latents/fold<k>/`` (see :mod:`neonet.gen.latents`) and stops with the command to run
when the cache is missing or was encoded by another autoencoder checkpoint than the fold's
current ``best.ckpt``. Items: ``z`` (C, x, y, z) unscaled latents, ``pni`` (0/1, -1 unknown),
``case_id`` and, with ``masks``, ``label`` (1, X, Y, Z) — the full-resolution label patch flipped
exactly like the image that was encoded.
"""

from __future__ import annotations

import logging
from typing import Any

from torch.utils.data import DataLoader, Dataset

from neonet.data.base import FoldDataModule
from neonet.errors import DataError
from neonet.gen.latents import load_latent_cache

log = logging.getLogger(__name__)


class LatentDataset(Dataset):
    """Rows of a loaded latent cache.

    Args:
        cache: the dict stored in ``cache.pt``.
        indices: which rows to serve.
        masks: also serve the label patch of each row.
    """

    def __init__(self, cache: dict[str, Any], indices: list[int], masks: bool = False) -> None:
        self.cache = cache
        self.indices = list(indices)
        self.masks = masks

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        idx = self.indices[i]
        item = {"z": self.cache["z"][idx], "pni": int(self.cache["pni"][idx]), "case_id": self.cache["case_id"][idx]}
        if self.masks:
            item["label"] = self.cache["label"][int(self.cache["label_index"][idx])][None]
        return item

    @property
    def case_ids(self) -> set[str]:
        """Case ids of the served rows."""
        return {self.cache["case_id"][i] for i in self.indices}


class LatentDataModule(FoldDataModule):
    """Latents (and optionally label patches) of one fold, from its latent cache.

    The fold's test cases are not in the cache.

    Args:
        val_batch_size: validation batch size.
        masks: also serve the label patches (the ControlNet's conditioning).
        **kwargs: the cohort, the fold, ``batch_size`` (training) and ``num_workers``
            (:class:`~neonet.data.base.FoldDataModule`).
    """

    loader_class = DataLoader  # PyTorch's: see FoldDataModule.loader_class

    def __init__(
        self,
        *,
        val_batch_size: int = 16,
        masks: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.val_batch_size = int(val_batch_size)
        self.masks = bool(masks)
        self.cache_meta: dict[str, Any] | None = None
        self.train_ds: LatentDataset | None = None
        self.val_ds: LatentDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        """Check and load the fold's latent cache."""
        if self.train_ds is not None:
            return
        _ = self.split  # writes/reads the split file and checks it against the case manifest
        meta, cache = load_latent_cache(self.workspace, self.fold)
        self.cache_meta = meta
        splits = cache["split"]
        train = [i for i, s in enumerate(splits) if s == "train"]
        val = [i for i, s in enumerate(splits) if s == "val"]
        if not train:
            raise DataError(f"fold {self.fold}: the latent cache {self.workspace.latents_dir(self.fold)} has no training latents")
        self.train_ds = LatentDataset(cache, train, self.masks)
        self.val_ds = LatentDataset(cache, val or train[: self.val_batch_size], self.masks)
        log.info(
            "fold %d: %d training / %d validation latents of shape %s",
            self.fold,
            len(train),
            len(val),
            tuple(cache["z"].shape[1:]),
        )

    def latent_shape(self) -> tuple[int, ...]:
        """(C, x, y, z) of the cached latents."""
        self.setup("fit")
        assert self.train_ds is not None
        return tuple(int(s) for s in self.train_ds.cache["z"].shape[1:])

    def train_dataloader(self) -> DataLoader:
        """Shuffled training latents."""
        assert self.train_ds is not None
        drop = self.drop_last(len(self.train_ds), self.batch_size)
        return self.loader(self.train_ds, shuffle=True, drop_last=drop)

    def val_dataloader(self) -> DataLoader:
        """Inner validation latents (posterior means) in a fixed order."""
        assert self.val_ds is not None
        return self.loader(self.val_ds, batch_size=self.val_batch_size)

    def upstream(self) -> dict[str, Any]:
        """The latent cache this fold trains on and the autoencoder checkpoint that encoded it (for ``artifact.json``)."""
        meta = self.cache_meta or {}
        return {"autoencoder": meta.get("autoencoder_checkpoint"), "latent_cache": str(self.workspace.latents_dir(self.fold))}

    def split_record(self) -> dict[str, Any]:
        """The fold's split, the case ids actually served and the latent cache's source checkpoint."""
        record: dict[str, Any] = dict(super().split_record())
        used: set[str] = set()
        for ds in (self.train_ds, self.val_ds):
            if ds is not None:
                used |= ds.case_ids
        record["trained_on_cases"] = sorted(used)
        if self.cache_meta is not None:
            record["latent_cache"] = {
                "path": str(self.workspace.latents_dir(self.fold)),
                "autoencoder_checkpoint": self.cache_meta.get("autoencoder_checkpoint"),
                "settings": self.cache_meta.get("settings"),
            }
        return record
