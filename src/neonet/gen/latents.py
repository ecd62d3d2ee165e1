"""The latent cache of a fold: its frozen autoencoder's latents of the fold's training patches.

Built once per fold (by the autoencoder's ``neonet cv`` hook, or standalone with
``python -m neonet.gen.latents --experiment demo --runs_dir runs --folds 0 1 2``)::

    <runs_dir>/<experiment>/latents/fold<k>/
      cache.pt       z (N, C, x, y, z) float32, label (M, X, Y, Z) uint8 (the label patch of each
                     flipped copy), label_index (N,), pni (N,), split (N,)
      manifest.csv   one row per latent: case_id, patient_id, pni, split, flip, sample, index
      cache.json     provenance (:mod:`neonet.run.provenance`): settings (samples, flips, seed, the
                     fold's split), the autoencoder checkpoint + sha256, the sha256 of cache.pt,
                     case ids and shapes (written last: the cache is complete only when it exists)

Training cases are encoded under every combination of ``flip_axes`` and with ``samples``
stochastic posterior samples ``mu + sigma * eps`` each; inner validation cases once, unflipped,
from the posterior mean (deterministic validation). Test cases are never read. A cache that is not
current is rebuilt; the diffusion and ControlNet data modules refuse a cache whose autoencoder
checkpoint hash no longer matches the fold's ``autoencoder/fold<k>/checkpoints/best.ckpt``, whose
split is not the fold's, or whose ``cache.pt`` is not the file recorded.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from neonet.data.patches import patch_records
from neonet.data.splits import Fold, get_fold, read_splits
from neonet.errors import MissingUpstreamError, NeonetError
from neonet.gen.patch_data import load_patch
from neonet.gen.upstream import cache_command, load_autoencoder, require_checkpoint, stage_command
from neonet.run.atomic import atomic_path, write_csv
from neonet.run.provenance import FileRecord, Provenance, UnreadableRecordError, differences, ensure_current, read_provenance
from neonet.run.reload import safe_torch_load
from neonet.workspace import Workspace

log = logging.getLogger(__name__)

#: Names of the cache record's settings, input and output.
SPLIT, AUTOENCODER, CACHE = "split", "autoencoder checkpoint", "latent cache"


def read_fold(ws: Workspace, fold: int) -> Fold:
    """The fold's case ids from the experiment's split file (MissingUpstreamError if absent)."""
    if not ws.splits_path.is_file():
        raise MissingUpstreamError("split file", ws.splits_path, stage_command(ws, "autoencoder", fold))
    return get_fold(read_splits(ws.splits_path), fold)


def _what(fold: int) -> str:
    return f"the latent cache of fold {int(fold)}"


def _split_setting(split: Fold) -> dict[str, list[str]]:
    """The fold's training and inner validation case ids (the cache's ``split`` setting)."""
    return {"train": sorted(split.train), "val": sorted(split.val)}


def _legacy_record(data: dict[str, Any], split: Fold, cache_path: Path) -> Provenance:
    """A ``cache.json`` of before :mod:`neonet.run.provenance`.

    It recorded the encoded case ids, not the split: the cache counts as made from the fold's split
    when every encoded case is in it (as the check of that time did).
    """
    train, val = data.get("train_cases", []), data.get("val_cases", [])
    inside = set(train) <= set(split.train) and set(val) <= set(split.val)
    ae = data.get("autoencoder_checkpoint") or {}
    return Provenance(
        settings={
            **(data.get("settings") or {}),
            SPLIT: _split_setting(split) if inside else {"train": sorted(train), "val": sorted(val)},
        },
        inputs={AUTOENCODER: FileRecord.from_json(ae)},
        outputs={CACHE: FileRecord(str(cache_path), data["cache_sha256"])} if data.get("cache_sha256") else {},
        extra={k: v for k, v in data.items() if k not in ("settings", "autoencoder_checkpoint", "cache_sha256")},
    )


def read_cache_record(ws: Workspace, fold: int, split: Fold) -> Provenance | None:
    """The provenance record of the fold's latent cache (either format), None when there is none.

    Raises:
        UnreadableRecordError: ``cache.json`` is truncated or corrupt.
    """
    return read_provenance(
        ws.latent_record(fold),
        _what(fold),
        lambda data: _legacy_record(data, split, ws.latent_cache_file(fold)),
        cache_command(ws, fold),
    )


def cache_meta(record: Provenance) -> dict[str, Any]:
    """The cache description the data modules record in their artifacts: the record's informational
    fields, the encoding ``settings`` and the ``autoencoder_checkpoint`` (path, sha256)."""
    return {
        **record.extra,
        "settings": {k: v for k, v in record.settings.items() if k != SPLIT},
        "autoencoder_checkpoint": record.inputs[AUTOENCODER].to_json() if AUTOENCODER in record.inputs else None,
    }


def flip_variants(flip_axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of ``flip_axes`` (the identity first)."""
    axes = sorted({int(a) for a in flip_axes})
    return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]


def _flip(t: torch.Tensor, axes: tuple[int, ...]) -> torch.Tensor:
    """Flip a (C, X, Y, Z) tensor along spatial ``axes``."""
    return t.flip([a + 1 for a in axes]) if axes else t


@torch.no_grad()
def build_latent_cache(
    ws: Workspace,
    fold: int,
    samples: int = 4,
    flip_axes: Sequence[int] = (0, 1),
    batch_size: int = 8,
    seed: int = 0,
    device: str = "cpu",
    force: bool = False,
) -> Path:
    """Encode the fold's training (and inner validation) patches with its frozen autoencoder.

    Args:
        ws: the experiment's workspace.
        fold: the fold k.
        samples: stochastic posterior samples per training patch and flip.
        flip_axes: axes whose flips (all combinations) augment the training patches.
        batch_size: patches per encoder forward pass.
        seed: seed of the posterior samples.
        device: torch device for encoding.
        force: rebuild even when a fresh cache exists.

    Returns:
        The cache folder.
    """
    out = ws.latents_dir(fold)
    ckpt = require_checkpoint(ws, "autoencoder", fold)
    split = read_fold(ws, fold)
    settings = {
        "samples": int(samples),
        "flip_axes": sorted(int(a) for a in flip_axes),
        "seed": int(seed),
        SPLIT: _split_setting(split),
    }
    now = Provenance(settings, inputs={AUTOENCODER: FileRecord.of(ckpt)})
    meta_path, cache_path = ws.latent_record(fold), ws.latent_cache_file(fold)
    if not force:
        try:
            stored = read_cache_record(ws, fold, split)
        except UnreadableRecordError as exc:
            log.warning("fold %d: %s; rebuilding the cache", fold, exc)
            stored = None
        if stored is not None and cache_path.is_file():
            found = differences(stored, Provenance(settings, now.inputs, _cache_output(stored, cache_path)))
            if not found:
                log.info("fold %d: latent cache is up to date (%s)", fold, out)
                return out
            log.info("fold %d: rebuilding the latent cache %s: %s", fold, out, "; ".join(found))
    ae = load_autoencoder(ckpt).to(device)
    gen = torch.Generator(device="cpu").manual_seed(int(seed) * 1000 + int(fold))
    zs: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    rows: list[dict[str, Any]] = []
    jobs: list[tuple[str, Any, tuple[int, ...]]] = []
    for name, ids, variants in (("train", split.train, flip_variants(flip_axes)), ("val", split.val, [()])):
        for rec in patch_records(ws, ids):
            jobs += [(name, rec, v) for v in variants]
    meta_path.unlink(missing_ok=True)  # the cache is incomplete from here until cache.json is written
    patches = {}
    for start in tqdm(range(0, len(jobs), batch_size), desc=f"latents fold {fold}", unit="batch", leave=False):
        chunk = jobs[start : start + batch_size]
        images, labs = [], []
        for _, rec, axes in chunk:
            if rec.case_id not in patches:
                patches[rec.case_id] = load_patch(rec, with_label=True)
            item = patches[rec.case_id]
            images.append(_flip(item["image"], axes))
            labs.append(_flip(item["label"], axes)[0])
        mu, sigma = ae.encode(torch.stack(images).to(device))
        mu, sigma = mu.float().cpu(), sigma.float().cpu()
        for j, (name, rec, axes) in enumerate(chunk):
            label_index = len(labels)
            labels.append(labs[j])
            draws = (
                [("mean", mu[j])]
                if name == "val"
                else [(str(s), mu[j] + sigma[j] * torch.randn(mu[j].shape, generator=gen)) for s in range(int(samples))]
            )
            for tag, z in draws:
                rows.append(
                    {
                        "case_id": rec.case_id,
                        "patient_id": rec.patient_id,
                        "pni": -1 if rec.pni is None else rec.pni,
                        "split": name,
                        "flip": "".join(str(a) for a in axes) or "none",
                        "sample": tag,
                        "index": len(zs),
                        "label_index": label_index,
                    }
                )
                zs.append(z)
    if not zs:
        raise NeonetError(f"fold {fold}: no training patches to encode (see {ws.patches_manifest})")
    frame = pd.DataFrame(rows)
    cache: dict[str, Any] = {
        "z": torch.stack(zs).contiguous(),
        "label": torch.stack(labels).contiguous(),
        "label_index": torch.tensor(frame["label_index"].to_numpy(), dtype=torch.long),
        "pni": torch.tensor(frame["pni"].to_numpy(), dtype=torch.long),
        "split": list(frame["split"]),
        "case_id": list(frame["case_id"]),
    }
    with atomic_path(cache_path) as tmp:
        torch.save(cache, tmp)
    write_csv(ws.latent_manifest(fold), frame)
    info = {
        "fold": int(fold),
        "latent_shape": list(cache["z"].shape[1:]),
        "patch_shape": list(cache["label"].shape[1:]),
        "n_latents": {"train": int((frame["split"] == "train").sum()), "val": int((frame["split"] == "val").sum())},
        "train_cases": sorted(set(frame.loc[frame["split"] == "train", "case_id"])),
        "val_cases": sorted(set(frame.loc[frame["split"] == "val", "case_id"])),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    Provenance(settings, now.inputs, {CACHE: FileRecord.of(cache_path)}, info).write(meta_path)
    log.info("fold %d: latent cache %s: %s latents of shape %s", fold, out, info["n_latents"], info["latent_shape"])
    return out


def _cache_output(stored: Provenance, cache_path: Path) -> dict[str, FileRecord]:
    """``cache.pt`` as it is now, when the record vouches for it (records of before the check do not)."""
    return {CACHE: FileRecord.of(cache_path)} if CACHE in stored.outputs else {}


def check_latent_cache(ws: Workspace, fold: int) -> dict[str, Any]:
    """The cache's description (:func:`cache_meta`) after checking that it is complete and current.

    Current for a stage reading it: made by the fold's current autoencoder checkpoint from the fold's
    split, and ``cache.pt`` is the file the record vouches for. The encoding settings (samples,
    flips, seed) are the autoencoder stage's business and not compared here.

    Raises:
        MissingUpstreamError: no autoencoder checkpoint, or no (complete) cache.
        OutOfDateError: the cache is not current (the message names the command that rebuilds it).
        UnreadableRecordError: ``cache.json`` is truncated or corrupt.
    """
    ckpt = require_checkpoint(ws, "autoencoder", fold)
    meta_path, cache_path = ws.latent_record(fold), ws.latent_cache_file(fold)
    if not meta_path.is_file() or not cache_path.is_file():
        raise MissingUpstreamError(f"latent cache of fold {fold}", meta_path, cache_command(ws, fold))
    split = read_fold(ws, fold)
    stored = read_cache_record(ws, fold, split)
    assert stored is not None
    now = Provenance({SPLIT: _split_setting(split)}, {AUTOENCODER: FileRecord.of(ckpt)}, _cache_output(stored, cache_path))
    ensure_current(stored, now, _what(fold), ws.latents_dir(fold), only=(SPLIT,), command=cache_command(ws, fold))
    return cache_meta(stored)


def load_latent_cache(ws: Workspace, fold: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(meta, cache)`` of a checked cache (see :func:`check_latent_cache`).

    ``cache.pt`` holds tensors and lists of strings only, so it is read with ``weights_only=True``; a
    file holding other pickled objects is refused (:func:`neonet.run.reload.safe_torch_load`).
    """
    meta = check_latent_cache(ws, fold)
    path = ws.latent_cache_file(fold)
    cache = safe_torch_load(path, "latent cache", f"Rebuild it:\n    {cache_command(ws, fold)}")
    if not isinstance(cache, dict) or not torch.is_tensor(cache.get("z")):
        raise NeonetError(f"{path}: not a latent cache (no latents `z`); rebuild it:\n    {cache_command(ws, fold)}")
    return meta, cache


def cache_latents(
    experiment: str = "default",
    runs_dir: Path = Path("runs"),
    folds: list[int] | None = None,
    samples: int = 4,
    flip_axes: list[int] = [0, 1],  # noqa: B006 - never mutated; a list reads best in --help
    batch_size: int = 8,
    seed: int = 0,
    device: str = "cpu",
    force: bool = False,
) -> int:
    """Encode each fold's training patches with the fold's frozen autoencoder (the latent cache).

    Args:
        experiment: experiment name (folder below ``runs_dir``).
        runs_dir: folder holding all experiments.
        folds: folds to cache (default: every fold with an autoencoder ``best.ckpt``).
        samples: stochastic posterior samples per training patch and flip.
        flip_axes: axes whose flips (all combinations) augment the training patches.
        batch_size: patches per encoder forward pass.
        seed: seed of the posterior samples.
        device: torch device.
        force: rebuild caches that are up to date.
    """
    ws = Workspace(runs_dir, experiment)
    if folds is None:
        n = int(read_splits(ws.splits_path)["folds"]) if ws.splits_path.is_file() else 0
        folds = [k for k in range(n) if ws.best_checkpoint("autoencoder", k).is_file()]
        if not folds:
            raise MissingUpstreamError("autoencoder checkpoints", ws.root / "autoencoder", stage_command(ws, "autoencoder", 0))
    for k in folds:
        build_latent_cache(ws, k, samples, flip_axes, batch_size, seed, device, force)
    return 0


if __name__ == "__main__":  # python -m neonet.gen.latents --experiment ... --folds ...
    import sys

    from jsonargparse import auto_cli

    from neonet.run.console import setup_logging

    setup_logging()
    try:
        sys.exit(auto_cli(cache_latents, as_positional=False))
    except NeonetError as exc:
        print(f"neonet.gen.latents: error: {exc}", file=sys.stderr)
        sys.exit(2)
