"""The latent cache of a fold: its frozen autoencoder's latents of the fold's training patches.

Built once per fold (by the autoencoder's ``neonet cv`` hook, or standalone with
``python -m neonet.gen.latents --experiment demo --runs_dir runs --folds 0 1 2``)::

    <runs_dir>/<experiment>/latents/fold<k>/
      cache.pt       z (N, C, x, y, z) float32, label (M, X, Y, Z) uint8 (the label patch of each
                     flipped copy), label_index (N,), pni (N,), split (N,)
      manifest.csv   one row per latent: case_id, patient_id, pni, split, flip, sample, index
      cache.json     source autoencoder checkpoint + sha256, settings, case ids (written last:
                     the cache is complete only when it exists)

Training cases are encoded under every combination of ``flip_axes`` and with ``samples``
stochastic posterior samples ``mu + sigma * eps`` each; inner validation cases once, unflipped,
from the posterior mean (deterministic validation). Test cases are never read. The diffusion and
ControlNet data modules refuse a cache whose autoencoder checkpoint hash no longer matches the
fold's ``autoencoder/fold<k>/checkpoints/best.ckpt``.
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

from neonet.atomic import atomic_path, read_json, sha256_file, write_csv, write_json
from neonet.data.patches import patch_records
from neonet.data.splits import Fold, get_fold
from neonet.errors import MissingUpstreamError, NeonetError
from neonet.gen.patch_data import load_patch
from neonet.gen.upstream import cache_command, load_autoencoder, require_checkpoint, stage_command
from neonet.reload import safe_torch_load
from neonet.workspace import Workspace

log = logging.getLogger(__name__)

CACHE_FILE, MANIFEST_FILE, META_FILE = "cache.pt", "manifest.csv", "cache.json"


def read_fold(ws: Workspace, fold: int) -> Fold:
    """The fold's case ids from the experiment's split file (MissingUpstreamError if absent)."""
    if not ws.splits_path.is_file():
        raise MissingUpstreamError("split file", ws.splits_path, stage_command(ws, "autoencoder", fold))
    return get_fold(read_json(ws.splits_path), fold)


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
    digest = sha256_file(ckpt)
    settings = {"samples": int(samples), "flip_axes": sorted(int(a) for a in flip_axes), "seed": int(seed)}
    meta_path = out / META_FILE
    if not force and meta_path.is_file():
        meta = read_json(meta_path)
        if meta.get("autoencoder_checkpoint", {}).get("sha256") == digest and meta.get("settings") == settings:
            log.info("fold %d: latent cache is up to date (%s)", fold, out)
            return out
    split = read_fold(ws, fold)
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
            draws = [("mean", mu[j])] if name == "val" else [
                (str(s), mu[j] + sigma[j] * torch.randn(mu[j].shape, generator=gen)) for s in range(int(samples))
            ]
            for tag, z in draws:
                rows.append({"case_id": rec.case_id, "patient_id": rec.patient_id, "pni": -1 if rec.pni is None else rec.pni,
                             "split": name, "flip": "".join(str(a) for a in axes) or "none", "sample": tag,
                             "index": len(zs), "label_index": label_index})
                zs.append(z)
    if not zs:
        raise NeonetError(f"fold {fold}: no training patches to encode (see {ws.patches_manifest})")
    frame = pd.DataFrame(rows)
    cache = {
        "z": torch.stack(zs).contiguous(),
        "label": torch.stack(labels).contiguous(),
        "label_index": torch.tensor(frame["label_index"].to_numpy(), dtype=torch.long),
        "pni": torch.tensor(frame["pni"].to_numpy(), dtype=torch.long),
        "split": list(frame["split"]),
        "case_id": list(frame["case_id"]),
    }
    with atomic_path(out / CACHE_FILE) as tmp:
        torch.save(cache, tmp)
    write_csv(out / MANIFEST_FILE, frame)
    meta = {
        "fold": int(fold),
        "autoencoder_checkpoint": {"path": str(ckpt), "sha256": digest},
        "settings": settings,
        "latent_shape": list(cache["z"].shape[1:]),
        "patch_shape": list(cache["label"].shape[1:]),
        "n_latents": {"train": int((frame["split"] == "train").sum()), "val": int((frame["split"] == "val").sum())},
        "train_cases": sorted(set(frame.loc[frame["split"] == "train", "case_id"])),
        "val_cases": sorted(set(frame.loc[frame["split"] == "val", "case_id"])),
        "cache_sha256": sha256_file(out / CACHE_FILE),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(meta_path, meta)
    log.info("fold %d: latent cache %s: %s latents of shape %s", fold, out, meta["n_latents"], meta["latent_shape"])
    return out


def check_latent_cache(ws: Workspace, fold: int) -> dict[str, Any]:
    """The cache's ``cache.json`` after checking it is complete and made by the fold's current autoencoder.

    Raises:
        MissingUpstreamError: no autoencoder checkpoint, or no (complete) cache.
        NeonetError: the cache was made by another autoencoder checkpoint (stale) or split.
    """
    ckpt = require_checkpoint(ws, "autoencoder", fold)
    meta_path = ws.latents_dir(fold) / META_FILE
    if not meta_path.is_file() or not (ws.latents_dir(fold) / CACHE_FILE).is_file():
        raise MissingUpstreamError(f"latent cache of fold {fold}", meta_path, cache_command(ws, fold))
    meta = read_json(meta_path)
    digest = sha256_file(ckpt)
    if meta.get("autoencoder_checkpoint", {}).get("sha256") != digest:
        raise NeonetError(
            f"the latent cache {ws.latents_dir(fold)} is stale: it was encoded by an autoencoder checkpoint with "
            f"sha256 {meta.get('autoencoder_checkpoint', {}).get('sha256', '?')[:12]}..., but {ckpt} now has "
            f"{digest[:12]}.... Rebuild it:\n    {cache_command(ws, fold)}"
        )
    split = read_fold(ws, fold)
    foreign = sorted(set(meta.get("train_cases", [])) - set(split.train)) + sorted(set(meta.get("val_cases", [])) - set(split.val))
    if foreign:
        raise NeonetError(
            f"the latent cache {ws.latents_dir(fold)} holds case(s) {foreign[:5]} that are not in fold {fold}'s "
            f"training/validation split; rebuild it:\n    {cache_command(ws, fold)}"
        )
    return meta


def load_latent_cache(ws: Workspace, fold: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(meta, cache)`` of a checked cache (see :func:`check_latent_cache`).

    ``cache.pt`` holds tensors and lists of strings only, so it is read with ``weights_only=True``; a
    file holding other pickled objects is refused (:func:`neonet.reload.safe_torch_load`).
    """
    meta = check_latent_cache(ws, fold)
    path = ws.latents_dir(fold) / CACHE_FILE
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
        n = int(read_json(ws.splits_path)["folds"]) if ws.splits_path.is_file() else 0
        folds = [k for k in range(n) if ws.best_checkpoint("autoencoder", k).is_file()]
        if not folds:
            raise MissingUpstreamError("autoencoder checkpoints", ws.root / "autoencoder", stage_command(ws, "autoencoder", 0))
    for k in folds:
        build_latent_cache(ws, k, samples, flip_axes, batch_size, seed, device, force)
    return 0


if __name__ == "__main__":  # python -m neonet.gen.latents --experiment ... --folds ...
    import sys

    from jsonargparse import auto_cli

    from neonet.cli import _setup_logging

    _setup_logging()
    try:
        sys.exit(auto_cli(cache_latents, as_positional=False))
    except NeonetError as exc:
        print(f"neonet.gen.latents: error: {exc}", file=sys.stderr)
        sys.exit(2)
