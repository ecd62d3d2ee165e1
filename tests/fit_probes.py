"""Test-only helpers for the distributed and fault tests (fit subprocesses import them via ``PYTHONPATH``).

- ``RankProbe`` (injected with ``--trainer.callbacks+=...``): every rank writes what it saw to
  ``<out_dir>/rank<r>.json`` (first-batch latent statistics, scale factor, world size, steps) and
  counts its own ``artifact.json`` writes, so a test can check that the ranks agree and that only
  rank zero writes the stage's artifact.
- ``PauseAtStep``: at a chosen global step (after that step's checkpoint was saved) writes a marker
  file and sleeps, so a test can SIGKILL the fit at a known mid-epoch point.
- ``write_latent_fixture`` fabricates a fold's latent cache (with a stand-in autoencoder
  checkpoint) so a diffusion fit needs no autoencoder training.
"""

from __future__ import annotations

import atexit
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

import neonet.workspace


class RankProbe(Callback):
    """Record per-rank evidence of a fit under ``out_dir`` (use it in fit subprocesses only: it wraps
    ``Workspace.write_artifact`` for the rest of the process to count the rank's writes).

    Args:
        out_dir: folder for ``rank<r>.json`` files (one per rank).
    """

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.record: dict[str, Any] = {"artifact_writes": 0}

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        real = neonet.workspace.Workspace.write_artifact
        probe = self

        def counted(ws: neonet.workspace.Workspace, *args: Any, **kwargs: Any) -> Path:
            probe.record["artifact_writes"] += 1
            return real(ws, *args, **kwargs)

        neonet.workspace.Workspace.write_artifact = counted  # type: ignore[method-assign]
        dist = torch.distributed
        backend = dist.get_backend() if dist.is_available() and dist.is_initialized() else None
        self.record.update(
            rank=trainer.global_rank,
            world_size=trainer.world_size,
            pid=os.getpid(),
            backend=backend,
            checkpoint_io=type(trainer.strategy.checkpoint_io).__name__,
        )
        atexit.register(self.dump)  # at exit, so the CLI's after_fit writes are counted too

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if "first_batch" not in self.record and isinstance(batch, dict) and "z" in batch:
            z = batch["z"].detach().double()
            self.record["first_batch"] = {"sum": float(z.sum()), "sumsq": float((z * z).sum()), "n": int(z.numel())}

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if "scale_factor_after_first_batch" not in self.record and hasattr(pl_module, "scale_factor"):
            self.record["scale_factor_after_first_batch"] = float(pl_module.scale_factor)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.record.update(
            global_step=trainer.global_step,
            scale_factor=float(getattr(pl_module, "scale_factor", float("nan"))),
        )

    def dump(self) -> None:
        """Write ``rank<r>.json``."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"rank{self.record['rank']}.json").write_text(json.dumps(self.record))


class PauseAtStep(Callback):
    """Write ``marker`` and sleep when a training batch starts at global step ``step``.

    Checkpoints of step ``step`` are saved at the end of the previous batch, so once the marker
    exists, ``last.ckpt`` holds that step.

    Args:
        step: global step to stop at.
        marker: file to write (its text is the step).
        seconds: how long to sleep (the test kills the process meanwhile).
    """

    def __init__(self, step: int, marker: str, seconds: float = 120.0) -> None:
        self.step = int(step)
        self.marker = Path(marker)
        self.seconds = float(seconds)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            self.marker.write_text(f"{trainer.global_step} {batch_idx}")
            time.sleep(self.seconds)


def write_latent_fixture(
    root: Path, experiment: str = "toy", folds: tuple[int, ...] = (0,), per_case: int = 4, seed: int = 0
) -> Path:
    """A toy cohort plus a fabricated latent cache for each of ``folds``; returns the ``cases.csv`` path.

    The autoencoder checkpoints are stand-in files: the latent data module only checks that the
    cache names their hash. Training cases get ``per_case`` latents each (3x8x8x4, std 2.5 so the
    scale factor is informative); inner validation cases one each.
    """
    from neonet.data.cases import read_cases
    from neonet.data.splits import ensure_splits, get_fold
    from neonet.gen.toy import write_toy_cohort
    from neonet.run.atomic import atomic_path, sha256_file, write_json
    from neonet.workspace import Workspace

    cases_csv = write_toy_cohort(root, experiment=experiment, cases=12, pni_fraction=0.34, seed=seed)
    ws = Workspace(root / "runs", experiment)
    cases = read_cases(cases_csv)
    doc = ensure_splits(ws.splits_path, cases, folds=3)
    pni = {c.case_id: c.pni for c in cases}
    gen = torch.Generator().manual_seed(seed)
    for fold in folds:
        split = get_fold(doc, fold)
        ae = ws.best_checkpoint("autoencoder", fold)
        ae.parent.mkdir(parents=True, exist_ok=True)
        ae.write_bytes(f"stand-in autoencoder checkpoint of fold {fold}\n".encode())
        rows = [("train", c) for c in split.train for _ in range(per_case)] + [("val", c) for c in split.val]
        cache = {
            "z": (torch.randn(len(rows), 3, 8, 8, 4, generator=gen) * 2.5 + 0.3).contiguous(),
            "label": torch.zeros(len(rows), 16, 16, 8, dtype=torch.uint8),
            "label_index": torch.arange(len(rows)),
            "pni": torch.tensor([-1 if pni[c] is None else int(pni[c]) for _, c in rows]),
            "split": [s for s, _ in rows],
            "case_id": [c for _, c in rows],
        }
        with atomic_path(ws.latent_cache_file(fold)) as tmp:
            torch.save(cache, tmp)
        # a record in the format of before neonet.run.provenance (still read; it does not vouch for cache.pt)
        write_json(
            ws.latent_record(fold),
            {
                "fold": fold,
                "autoencoder_checkpoint": {"path": str(ae), "sha256": sha256_file(ae)},
                "settings": {"fabricated": True},
                "latent_shape": [3, 8, 8, 4],
                "train_cases": sorted(set(split.train)),
                "val_cases": sorted(set(split.val)),
            },
        )
    return cases_csv
