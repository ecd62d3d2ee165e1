"""What a neonet W&B run carries: the resolved config, its provenance, tags, and the lineage of its models.

Every fit (``<stage>-fold<k>``) and every cross-fold summary run (``<stage>-cv``) gets:

- **config**: the fully resolved config (trainer, model, data: the content of the fold's ``config.yaml``),
  plus ``seed``, ``git_sha`` and ``neonet_version`` (:func:`run_config`), through the privacy filter of
  :mod:`neonet.run.wandb_privacy`;
- **tags**: the experiment, the stage and the fold (:func:`run_tags`);
- **one run per fold**: the fit's run id is kept in ``<stage>/fold<k>/wandb_id.txt``
  (:func:`fold_run_id`), so a resumed fit continues its W&B run (``resume="allow"``); ``neonet cv
  --force`` moves the file aside with the fold's results, so a re-trained fold is a new run.

**Lineage.** A finished fit logs its model as a W&B artifact of type ``model`` named
``<experiment>-<stage>-fold<k>`` (:func:`log_fold_model`): ``best.ckpt`` and the fold's
``artifact.json`` (identifiers and paths left out unless opted in; that copy is kept as
``wandb_artifact.json``). The fit then declares as its inputs the artifacts of what its
``artifact.json`` ``upstream`` record names (:func:`upstream_artifacts`): another fold's checkpoint
(the autoencoder of a diffusion model, the diffusion model of a ControlNet, the encoder of PattenNet),
the TLCR patches (``<experiment>-patches``, type ``dataset``) and a fold's synthetic patches
(``<experiment>-synthetic-fold<k>``). ``neonet crop`` and ``neonet synthesize`` log those two
datasets with the models they were made from as inputs (:func:`log_dataset_run`), so W&B's lineage
graph shows seg → patches → autoencoder → diffusion → ControlNet → synthetic → classifier.

An upstream artifact is rebuilt from the same files it was logged with (the checkpoint, the kept
``wandb_artifact.json``; for a dataset, a small record of its manifest's SHA-256), so it has the
same content digest and W&B files the input under the version its producer logged (the checkpoint is
not copied: ``wandb sync`` reads it from the fold folder; after the sync the graph links the runs).
Offline runs record the declaration in the run's transaction log the way ``Run.use_artifact`` sends
it online (``wandb`` refuses ``use_artifact`` in offline mode), and ``wandb sync`` replays it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import string
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from neonet import __version__
from neonet.errors import NeonetError
from neonet.run.atomic import read_json, sha256_file, write_json, write_text
from neonet.run.wandb_privacy import redact
from neonet.workspace import Workspace, git_sha

log = logging.getLogger(__name__)

#: W&B artifact types of neonet's outputs.
MODEL, DATASET = "model", "dataset"


# ----------------------------------------------------------------------------- config and tags
def wandb_mode() -> str:
    """W&B mode: ``WANDB_MODE`` if set (online/offline/disabled), else offline (no account needed)."""
    return os.environ.get("WANDB_MODE", "offline").lower()


def wandb_project() -> str:
    """The W&B project: ``WANDB_PROJECT``, else ``neonet``."""
    return os.environ.get("WANDB_PROJECT", "neonet")


def run_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` plus ``seed`` (its ``seed_everything``), ``git_sha`` and ``neonet_version``, as W&B may receive it."""
    out = dict(config)
    out.update({"seed": config.get("seed_everything", config.get("seed")), "git_sha": git_sha(), "neonet_version": __version__})
    return dict(redact(out))


def run_tags(experiment: str, stage: str, fold: int | str) -> list[str]:
    """The tags of a neonet run: experiment, stage and fold (``fold<k>``, or e.g. ``cv`` for a summary)."""
    return [experiment, stage, f"fold{fold}" if isinstance(fold, int) else fold]


def fold_run_id(ws: Workspace, stage: str, fold: int) -> str | None:
    """The W&B run id of the fold's fit: the one in ``wandb_id.txt``, or a new one written there (rank zero).

    Returns None on other ranks (they start no W&B run).
    """
    if getattr(rank_zero_only, "rank", 0) != 0:
        return None
    path = ws.wandb_id(stage, fold)
    if path.is_file():
        found = path.read_text().strip()
        if re.fullmatch(r"[A-Za-z0-9_-]{1,64}", found):
            return found
        log.warning("%s: not a W&B run id (%r); the fold starts a new W&B run", path, found[:80])
    new = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))  # W&B's id form
    write_text(path, new + "\n")
    return new


class WandbConfigCallback(SaveConfigCallback):
    """Lightning's config saving (``config.yaml`` in the fold folder), also sending that config to each W&B logger.

    The W&B run gets the same content as ``config.yaml`` (trainer included) with seed, git sha and
    neonet version (:func:`run_config`), without identifiers or paths unless opted in.
    """

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Log the resolved config to the W&B runs (rank zero, called by Lightning after ``config.yaml`` is saved)."""
        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not loggers:
            return
        config = yaml.safe_load(self.parser.dump(self.config, skip_none=False)) or {}
        for lg in loggers:
            lg.experiment.config.update(run_config(config), allow_val_change=True)


# ----------------------------------------------------------------------------- artifacts
def artifact_name(ws: Workspace, what: str, fold: int | None = None) -> str:
    """``<experiment>-<what>[-fold<k>]`` in the characters W&B allows in artifact names."""
    name = f"{ws.experiment}-{what}" + ("" if fold is None else f"-fold{int(fold)}")
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def model_artifact(ws: Workspace, stage: str, fold: int) -> Any | None:
    """The model artifact of a finished fold as it was logged (``best.ckpt`` + its kept ``wandb_artifact.json``).

    None when the fold has no ``best.ckpt``. Without the kept record (the fold was trained with W&B
    disabled) the fold's current ``artifact.json`` goes in instead: W&B then stores another version.
    """
    import wandb

    ckpt, record = ws.best_checkpoint(stage, fold), ws.wandb_artifact_record(stage, fold)
    if not ckpt.is_file():
        return None
    metadata = None
    if record.is_file():
        try:
            metadata = read_json(record)
        except NeonetError as exc:  # written atomically, so rarely; the fold's artifact.json stands in
            log.warning("%s; rebuilt from %s", exc, ws.artifact_path(stage, fold))
    if not isinstance(metadata, dict):
        metadata = redact(ws.read_artifact(stage, fold) or {})
        record = write_json(record, metadata)
    art = wandb.Artifact(artifact_name(ws, stage, fold), type=MODEL, metadata=metadata)
    # the checkpoint is read where it is when the run is uploaded (no copy); the small record is copied
    # into W&B's staging folder, so a later fit's record does not change what this run uploads
    art.add_file(str(ckpt), name=ckpt.name, policy="immutable")
    art.add_file(str(record), name=ws.artifact_path(stage, fold).name)
    return art


def dataset_artifact(ws: Workspace, manifest: Path, what: str, fold: int | None = None) -> Any | None:
    """A dataset artifact standing for a manifest's content: a record of its SHA-256 (no case ids, no paths)."""
    import wandb

    if not manifest.is_file():
        return None
    record = {"experiment": ws.experiment, "dataset": what, "fold": fold, "manifest_sha256": sha256_file(manifest)}
    art = wandb.Artifact(artifact_name(ws, what, fold), type=DATASET, metadata=record)
    with art.new_file("record.json") as handle:
        handle.write(json.dumps(record, sort_keys=True))
    return art


def patches_artifact(ws: Workspace) -> Any | None:
    """The experiment's TLCR patches as a dataset artifact (``<experiment>-patches``; another patch set's
    ``<experiment>-patches_<set>``)."""
    return dataset_artifact(ws, ws.patches_manifest, ws.patches_dir.name)


def synthetic_artifact(ws: Workspace, fold: int) -> Any | None:
    """Fold ``k``'s synthetic patches as a dataset artifact (``<experiment>-synthetic-fold<k>``)."""
    return dataset_artifact(ws, ws.synthetic_manifest(fold), "synthetic", fold)


def _paths(record: Any) -> Iterator[str]:
    """Every string of a nested record (paths of checkpoints and manifests among them)."""
    if isinstance(record, Mapping):
        for value in record.values():
            yield from _paths(value)
    elif isinstance(record, (list, tuple)):
        for value in record:
            yield from _paths(value)
    elif isinstance(record, str):
        yield record


def upstream_artifacts(ws: Workspace, upstream: Any) -> list[Any]:
    """The artifacts of what an ``upstream`` record (``artifact.json``, ``synth_config.json``) names.

    A checkpoint under ``<stage>/fold<k>/checkpoints/`` stands for that fold's model artifact, the TLCR
    manifest for the patches, a fold's synthetic manifest for its synthetic patches; each appears once.
    """
    found: dict[str, Any] = {}
    manifest = ws.patches_manifest.name
    for text in _paths(upstream):
        parts = Path(text).parts
        owner = ws.checkpoint_owner(text)
        art = None
        if owner is not None:
            art = model_artifact(ws, *owner)
        elif len(parts) > 1 and parts[-1] == manifest and (parts[-2] == "patches" or parts[-2].startswith("patches_")):
            patch_set = None if parts[-2] == "patches" else parts[-2].removeprefix("patches_")
            try:  # patches/ or another patch set's patches_<set>/ (neonet crop --patches)
                art = patches_artifact(Workspace(ws.runs_dir, ws.experiment, patch_set))
            except ValueError:  # not a patch set's name: a manifest of something else
                art = None
        else:
            for fold in ws.stage_folds(ws.synthetic_dir(0).parent.name):
                if parts[-3:] == ws.synthetic_manifest(fold).relative_to(ws.root).parts:
                    art = synthetic_artifact(ws, fold)
        if art is not None:
            found.setdefault(art.name, art)
    return list(found.values())


def declare_use(run: Any, artifact: Any) -> None:
    """Declare ``artifact`` (built from local files) an input of ``run``, online or offline.

    Online this is ``run.use_artifact``; offline ``wandb`` refuses that, so the same declaration (the
    artifact with "use after commit") goes into the run's transaction log for ``wandb sync``.
    """
    if not getattr(run.settings, "_offline", False):
        run.use_artifact(artifact)
        return
    log_artifact = getattr(run, "_log_artifact", None)
    if log_artifact is None:  # a wandb without the offline path: the lineage edge is left out, nothing else
        log.warning("this wandb cannot record artifact use offline; %s is not declared as an input", artifact.name)
        return
    log_artifact(artifact, is_user_created=True, use_after_commit=True)


def log_fold_model(run: Any, ws: Workspace, stage: str, fold: int) -> Any | None:
    """Log the finished fold's model artifact and declare its upstream artifacts (from ``artifact.json``).

    Returns:
        The logged artifact, or None when the fold has no ``best.ckpt``.
    """
    data = ws.read_artifact(stage, fold) or {}
    record = write_json(ws.wandb_artifact_record(stage, fold), redact(data))
    if not ws.best_checkpoint(stage, fold).is_file():
        record.unlink()
        return None
    for upstream in upstream_artifacts(ws, data.get("upstream") or {}):
        declare_use(run, upstream)
    art = model_artifact(ws, stage, fold)
    assert art is not None
    return run.log_artifact(art)


def log_dataset_run(
    ws: Workspace, verb: str, fold: int | None, produced: Callable[[], Any | None], upstream: Any, config: Mapping[str, Any]
) -> str | None:
    """A W&B run ``<verb>`` or ``<verb>-fold<k>`` that logs a dataset artifact made from ``upstream``.

    Args:
        ws: the experiment (the run is kept in :meth:`~neonet.workspace.Workspace.wandb_run_dir`).
        verb: the command (``crop``, ``synthesize``): the run's job type.
        fold: the fold the dataset belongs to (None: the whole experiment).
        produced: builds the dataset artifact to log (called only when W&B is on; None: no run).
        upstream: a record naming the inputs (checkpoint and manifest paths, as in ``artifact.json``).
        config: the command's settings (sent through the privacy filter).

    Returns:
        The run's local folder, or None when W&B is disabled or nothing was produced.
    """
    from neonet.run.wandb_privacy import wandb_settings

    mode = wandb_mode()
    artifact = produced() if mode != "disabled" else None
    if artifact is None:
        return None
    import wandb

    save_dir = ws.wandb_run_dir(verb, fold)
    save_dir.mkdir(parents=True, exist_ok=True)
    name = verb if fold is None else f"{verb}-fold{int(fold)}"
    run = wandb.init(
        project=wandb_project(),
        group=ws.experiment,
        job_type=verb,
        name=name,
        dir=str(save_dir),
        mode="online" if mode == "online" else "offline",
        reinit="finish_previous",
        settings=wandb_settings(),
        config=run_config(config),
        tags=run_tags(ws.experiment, verb, "all" if fold is None else int(fold)),
    )
    try:
        for art in upstream_artifacts(ws, upstream):
            declare_use(run, art)
        run.log_artifact(artifact)
        return run.dir
    finally:
        run.finish()
