"""The path convention: every stage output is found from (experiment, stage, fold) alone.

::

    <runs_dir>/<experiment>/
      splits.json                       written once, then only read
      plans.{json,csv,md,png}           cohort fingerprint and suggested spacing / patch sizes (neonet plan)
      cohort_fingerprint.json           what the trained models saw (spacing, liver intensities, volumes,
                                        NeoSeg confidence); predict-case flags scans outside it
      cohort_sha256.json                the cohort scans' content hashes (cache of predict-case's cohort check)
      data/cases.csv                    a phantom cohort made for this experiment (neonet synth --out <root>/data)
      <stage>/fold<k>/                  config.yaml, checkpoints/{best,last}.ckpt, artifact.json,
                                        csv/ (CSV log), wandb/, wandb_id.txt, wandb_artifact.json
      radiomics/fold<k>/                neonet radiomics: features.csv, model.json, test_predictions.csv,
                                        artifact.json, radiomics_config.json (provenance)
      <stage>_seed<s>/fold<k>/          the same stage under another training seed (neonet cv --seeds)
      seg/predictions/<case>.nii.gz     out-of-fold NeoSeg masks in each input's original space
      patches/ + patches/manifest.csv   TLCR output
      patches/crop_config.json          provenance of the patches (neonet.run.provenance)
      patches_<set>/                    another set of TLCR patches of the same cases (``neonet crop --patches <set>``,
                                        e.g. ``patches_manual/`` from the manual masks for a control stage)
      latents/fold<k>/                  latent cache of the fold's autoencoder: cache.pt, manifest.csv,
                                        cache.json (provenance)
      synthetic/fold<k>/ + manifest.csv synthetic patches with provenance (synth_config.json);
                                        synthetic_<name>/fold<k>/ another set (synthesize --name)
      roundtrip/fold<k>/                real training patches through the fold's autoencoder (roundtrip_real)
      reports/                          tables (csv/json/md) and figures (png); index.html, the
                                        experiment page
      reports/external/<name>/          neonet evaluate: the folds on an external cohort (ExternalPaths)
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import socket
import subprocess
from pathlib import Path
from typing import Any

from neonet import __version__
from neonet.data.cases import case_file
from neonet.errors import NeonetError
from neonet.run.atomic import read_json, sha256_file, write_json

STAGES = ("seg", "autoencoder", "diffusion", "controlnet", "pattennet")
#: The default synthetic set (``synthetic/fold<k>``); other sets are folders named ``synthetic_<name>``.
SYNTHETIC = "synthetic"


def check_synthetic_name(name: str) -> str:
    """``name`` if it names a synthetic set: ``synthetic`` or ``synthetic_<letters, digits, _>``.

    Raises:
        NeonetError: any other name (it could clash with a stage folder or leave the experiment).
    """
    rest = name.removeprefix(SYNTHETIC + "_")
    if name != SYNTHETIC and (rest == name or not rest or not all((c.isascii() and c.isalnum()) or c == "_" for c in rest)):
        raise NeonetError(
            f"synthetic set name {name!r}: use `synthetic` or `synthetic_<name>` (letters, digits, _), e.g. `synthetic_both`"
        )
    return name


#: ``<stage><SEED_SUFFIX><s>``: the stage's folder under training seed ``s`` (:meth:`Workspace.seed_stage`).
SEED_SUFFIX = "_seed"


def git_sha() -> str | None:
    """The git commit of the neonet source tree, if it is a checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


class Workspace:
    """Paths of one experiment.

    Args:
        runs_dir: folder holding all experiments.
        experiment: experiment name (one folder below ``runs_dir``).
        patches: the set of TLCR patches that :attr:`patches_dir` names: None is ``patches/`` (what every
            stage reads by default), a name ``<set>`` is ``patches_<set>/`` (another crop of the same cases,
            e.g. ``manual``: from the manual masks, read by a control stage). Every other path is the same.
    """

    def __init__(self, runs_dir: str | os.PathLike = "runs", experiment: str = "default", patches: str | None = None) -> None:
        if not experiment or "/" in experiment or experiment.startswith("."):
            raise ValueError(f"invalid experiment name {experiment!r}: use a plain folder name")
        if patches is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", patches):
            raise ValueError(f"invalid patch set name {patches!r}: use letters, digits, _ and - (e.g. manual)")
        self.runs_dir = Path(runs_dir)
        self.experiment = experiment
        self.patches = patches

    def __repr__(self) -> str:
        extra = "" if self.patches is None else f", patches={self.patches!r}"
        return f"Workspace({str(self.runs_dir)!r}, {self.experiment!r}{extra})"

    @property
    def root(self) -> Path:
        """``<runs_dir>/<experiment>``."""
        return self.runs_dir / self.experiment

    def plans_file(self, ext: str = "json") -> Path:
        """``neonet plan``'s output: ``plans.json`` (summary, rules, per-case fingerprints), ``.csv``, ``.md``, ``.png``."""
        return self.root / f"plans.{ext}"

    @property
    def cohort_fingerprint(self) -> Path:
        """The training cohort's fingerprint (:mod:`neonet.predict.ood`): ``cohort_fingerprint.json``."""
        return self.root / "cohort_fingerprint.json"

    @property
    def cohort_hashes(self) -> Path:
        """The SHA-256 of each cohort scan (:mod:`neonet.predict.membership`'s cache): ``cohort_sha256.json``."""
        return self.root / "cohort_sha256.json"

    @property
    def phantom_dir(self) -> Path:
        """``<root>/data``: where the demo and the benchmarks put a phantom cohort of their own (``neonet synth --out``)."""
        return self.root / "data"

    @property
    def phantom_cases(self) -> Path:
        """``<root>/data/cases.csv``: the manifest of that phantom cohort (written last by ``neonet synth``)."""
        return self.phantom_dir / "cases.csv"

    @property
    def splits_path(self) -> Path:
        """The experiment's split file."""
        return self.root / "splits.json"

    def stage_dir(self, stage: str, fold: int) -> Path:
        """``<root>/<stage>/fold<k>``."""
        return self.root / stage / f"fold{int(fold)}"

    @staticmethod
    def seed_stage(stage: str, seed: int) -> str:
        """The stage folder of ``stage`` trained under another training seed (``neonet cv --seeds``): ``<stage>_seed<s>``.

        The seed of the stage's own config keeps the plain ``<stage>`` folder.
        """
        return f"{stage}{SEED_SUFFIX}{int(seed)}"

    def seed_stages(self, stage: str) -> dict[int, str]:
        """``{seed: stage folder}`` of every ``<stage>_seed<s>`` folder beside ``stage``, by seed."""
        found = {}
        for path in self.root.glob(f"{stage}{SEED_SUFFIX}*") if self.root.is_dir() else []:
            tail = path.name[len(stage) + len(SEED_SUFFIX) :]
            if path.is_dir() and tail.isdigit():
                found[int(tail)] = path.name
        return dict(sorted(found.items()))

    def checkpoint_dir(self, stage: str, fold: int) -> Path:
        """Folder of ``best.ckpt`` and ``last.ckpt``."""
        return self.stage_dir(stage, fold) / "checkpoints"

    def best_checkpoint(self, stage: str, fold: int) -> Path:
        """The checkpoint selected on the inner validation split."""
        return self.checkpoint_dir(stage, fold) / "best.ckpt"

    def last_checkpoint(self, stage: str, fold: int) -> Path:
        """The most recent checkpoint (used to resume)."""
        return self.checkpoint_dir(stage, fold) / "last.ckpt"

    def artifact_path(self, stage: str, fold: int) -> Path:
        """``artifact.json``: what produced a stage folder."""
        return self.stage_dir(stage, fold) / "artifact.json"

    def config_path(self, stage: str, fold: int) -> Path:
        """``config.yaml``: the full resolved config of the fold's ``neonet fit`` (LightningCLI writes it)."""
        return self.stage_dir(stage, fold) / "config.yaml"

    def wandb_id(self, stage: str, fold: int) -> Path:
        """The W&B run id of the fold's fit, kept so that a resumed fit continues the same W&B run."""
        return self.stage_dir(stage, fold) / "wandb_id.txt"

    def wandb_artifact_record(self, stage: str, fold: int) -> Path:
        """The ``artifact.json`` of the fold as its W&B model artifact holds it (without identifiers, unless
        opted in), kept so that a later stage declares the very same artifact as its input."""
        return self.stage_dir(stage, fold) / "wandb_artifact.json"

    def wandb_run_dir(self, verb: str, fold: int | None = None) -> Path:
        """Where the W&B run of a verb that is not a fit (``crop``, ``synthesize``) keeps its ``wandb/`` folder:
        ``<root>/<verb>/run`` or, for one fold, ``<root>/<verb>/fold<k>``."""
        return self.root / verb / ("run" if fold is None else f"fold{int(fold)}")

    def checkpoint_owner(self, path: str | os.PathLike) -> tuple[str, int] | None:
        """``(stage, fold)`` of a checkpoint under some ``<stage>/fold<k>/checkpoints/``, else None.

        Read from the path's last folders only, so a checkpoint recorded before the runs folder moved is still placed.
        """
        parts = Path(path).parts
        if len(parts) < 4 or parts[-2] != self.checkpoint_dir("s", 0).name or not parts[-1].endswith(".ckpt"):
            return None
        stage, fold = parts[-4], parts[-3]
        if not fold.startswith("fold") or not fold[4:].isdigit():
            return None
        return stage, int(fold[4:])

    def cv_log(self, stage: str, fold: int) -> Path:
        """The fold's output when ``neonet cv --jobs N`` trains folds side by side."""
        return self.stage_dir(stage, fold) / "cv.log"

    def fold_progress(self, stage: str, fold: int) -> Path:
        """``progress.json``: the fold's fit after its latest epoch (epoch, metrics, time), read by ``neonet cv --jobs N``."""
        return self.stage_dir(stage, fold) / "progress.json"

    def fold_lock(self, stage: str, fold: int) -> Path:
        """The lock held by the process working on the fold (``neonet fit``, or ``neonet cv`` around it)."""
        return self.stage_dir(stage, fold) / ".cv.lock"

    def fold_outputs(self, stage: str, fold: int) -> list[Path]:
        """What a fold's fit and post-fit work write in its folder, and ``neonet cv --force`` replaces."""
        d = self.stage_dir(stage, fold)
        files = [
            self.artifact_path(stage, fold),
            self.config_path(stage, fold),
            self.metrics_log(stage, fold),
            d / "hparams.yaml",
        ]
        files += [self.wandb_id(stage, fold), self.wandb_artifact_record(stage, fold)]  # a re-trained fold is a new W&B run
        files.append(self.fold_progress(stage, fold))
        return [self.checkpoint_dir(stage, fold), *files, self.test_predictions(stage, fold)]

    def metrics_log(self, stage: str, fold: int) -> Path:
        """``metrics.csv``: the fold's CSV log (one row per logged step/epoch; :mod:`neonet.run.csv_log`)."""
        return self.stage_dir(stage, fold) / "metrics.csv"

    def replaced_dir(self, stage: str, fold: int) -> Path:
        """Where ``neonet cv --force`` keeps a fold's earlier results until the fit that replaces them succeeds."""
        return self.stage_dir(stage, fold) / "replaced"

    def reconstruction_panel(self, stage: str, fold: int) -> Path:
        """The autoencoder's latest validation reconstructions (PNG)."""
        return self.stage_dir(stage, fold) / "reconstruction.png"

    def test_predictions(self, stage: str, fold: int) -> Path:
        """A classifier fold's predictions on its held-out patients (written by ``neonet test``)."""
        return self.stage_dir(stage, fold) / "test_predictions.csv"

    def radiomics_features(self, stage: str, fold: int) -> Path:
        """The radiomics fold's features of its training, validation and test patches (``features.csv``)."""
        return self.stage_dir(stage, fold) / "features.csv"

    def radiomics_model(self, stage: str, fold: int) -> Path:
        """The radiomics fold's model: coefficients, training statistics, the L2 strength chosen (``model.json``)."""
        return self.stage_dir(stage, fold) / "model.json"

    def radiomics_record(self, stage: str, fold: int) -> Path:
        """Provenance of the radiomics fold (``radiomics_config.json``: settings, patch manifest and split file)."""
        return self.stage_dir(stage, fold) / "radiomics_config.json"

    def all_test_predictions(self) -> list[Path]:
        """Every classifier fold's test predictions in the experiment."""
        return sorted(self.root.glob("*/fold*/test_predictions.csv"))

    def stage_folds(self, stage: str) -> list[int]:
        """The folds of ``stage`` that have a folder, in order."""
        folder = self.root / stage
        found = [p.name[4:] for p in folder.glob("fold*") if p.is_dir()] if folder.is_dir() else []
        return sorted(int(k) for k in found if k.isdigit())

    def artifact_stages(self) -> list[str]:
        """The stages with at least one fold's ``artifact.json`` (finished or not), in name order."""
        found = {p.parent.parent.name for p in self.root.glob("*/fold*/artifact.json")} if self.root.is_dir() else set()
        return sorted(found)

    @property
    def seg_predictions_dir(self) -> Path:
        """Out-of-fold NeoSeg masks, one NIfTI per case."""
        return self.root / "seg" / "predictions"

    def seg_prediction(self, case_id: str) -> Path:
        """The out-of-fold NeoSeg mask of one case.

        Raises:
            DataError: ``case_id`` is not one safe file name (the path would leave the folder).
        """
        return case_file(self.seg_predictions_dir, case_id)

    @property
    def patches_dir(self) -> Path:
        """TLCR patches: ``patches/``, or ``patches_<set>/`` for a workspace of another patch set (``patches``)."""
        return self.root / ("patches" if self.patches is None else f"patches_{self.patches}")

    @property
    def patches_manifest(self) -> Path:
        """TLCR manifest."""
        return self.patches_dir / "manifest.csv"

    def latents_dir(self, fold: int) -> Path:
        """Latent cache of fold ``k``."""
        return self.root / "latents" / f"fold{int(fold)}"

    def latent_cache_file(self, fold: int) -> Path:
        """The latents of fold ``k``'s cache (``torch.save`` of tensors and lists of strings)."""
        return self.latents_dir(fold) / "cache.pt"

    def latent_manifest(self, fold: int) -> Path:
        """One row per cached latent of fold ``k`` (case, split, flip, sample, index)."""
        return self.latents_dir(fold) / "manifest.csv"

    def latent_record(self, fold: int) -> Path:
        """Provenance of fold ``k``'s latent cache (written last: the cache is complete only when it exists)."""
        return self.latents_dir(fold) / "cache.json"

    def synthetic_dir(self, fold: int, name: str = SYNTHETIC) -> Path:
        """Synthetic patches of fold ``k``: ``synthetic/fold<k>``, or those of another synthetic set
        (``neonet synthesize --name synthetic_both``): ``<name>/fold<k>``."""
        return self.root / check_synthetic_name(name) / f"fold{int(fold)}"

    def synthetic_manifest(self, fold: int, name: str = SYNTHETIC) -> Path:
        """Provenance manifest of fold ``k``'s synthetic patches (of the set ``name``)."""
        return self.synthetic_dir(fold, name) / "manifest.csv"

    def synthetic_config(self, fold: int, name: str = SYNTHETIC) -> Path:
        """Provenance (settings, checkpoints) of fold ``k``'s synthetic patches (of the set ``name``)."""
        return self.synthetic_dir(fold, name) / "synth_config.json"

    def roundtrip_dir(self, fold: int) -> Path:
        """Fold ``k``'s real training patches passed through its autoencoder (encode, decode):
        ``roundtrip/fold<k>/images/<case>.nii.gz``, for ``ClsDataModule(roundtrip_real=True)``."""
        return self.root / "roundtrip" / f"fold{int(fold)}"

    def roundtrip_record(self, fold: int) -> Path:
        """Provenance of fold ``k``'s round-trip cache (autoencoder checkpoint, patches; written last)."""
        return self.roundtrip_dir(fold) / "roundtrip.json"

    @property
    def crop_config(self) -> Path:
        """Provenance (settings) of the TLCR patches."""
        return self.patches_dir / "crop_config.json"

    def predict_case_dir(self, name: str) -> Path:
        """Default output folder of ``neonet predict-case`` for the image ``name`` (one safe folder name)."""
        return self.root / "predict_case" / name

    @property
    def reports_dir(self) -> Path:
        """Cross-fold tables and figures."""
        return self.root / "reports"

    def external(self, name: str) -> ExternalPaths:
        """``reports/external/<name>/``: the report of ``neonet evaluate`` on an external cohort.

        Raises:
            DataError: ``name`` is not one safe folder name.
        """
        return ExternalPaths(case_file(self.reports_dir / "external", name, suffix=""))

    @property
    def page(self) -> Path:
        """The experiment page ``reports/index.html`` (written by ``neonet report``)."""
        return self.reports_dir / "index.html"

    @property
    def page_tables(self) -> Path:
        """Every table of the experiment page, by section, as JSON (``reports/index.json``)."""
        return self.reports_dir / "index.json"

    @property
    def page_screenshot(self) -> Path:
        """A full-page screenshot of the experiment page (``benchmarks/page_screenshot.py``)."""
        return self.reports_dir / "index.png"

    def report_figures(self) -> list[Path]:
        """Every PNG under ``reports/`` (subfolders included), the page's own screenshot left out."""
        if not self.reports_dir.is_dir():
            return []
        return sorted(p for p in self.reports_dir.rglob("*.png") if p.is_file() and p != self.page_screenshot)

    def wandb_runs(self) -> list[Path]:
        """Local W&B run folders of the experiment: each fold's (``<stage>/fold<k>/wandb/``) and each
        cross-fold summary's (``<stage>/cv/wandb/``), offline runs first."""
        if not self.root.is_dir():
            return []
        return [*sorted(self.root.glob("*/*/wandb/offline-run-*")), *sorted(self.root.glob("*/*/wandb/run-*"))]

    @property
    def seg_oof_dice(self) -> Path:
        """NeoSeg's out-of-fold metrics per case: ``reports/seg_oof_dice.csv``."""
        return self.reports_dir / "seg_oof_dice.csv"  # Dice, HD95 and NSD; the name is kept for earlier runs

    @property
    def cls_summary(self) -> Path:
        """``neonet report``'s per-stage table (pooled AUC and its CI): ``reports/cls_summary.csv``."""
        return self.reports_dir / "cls_summary.csv"

    def stage_summary(self, stage: str, ext: str = "csv") -> Path:
        """A NeoGen stage's per-fold table: ``reports/<stage>_summary.<ext>``."""
        return self.reports_dir / f"{stage}_summary.{ext}"

    def figure(self, name: str) -> Path:
        """A report figure: ``reports/<name>.png`` (names in :mod:`neonet.report.figures`)."""
        return self.reports_dir / f"{name}.png"

    def gen_quality_report(self, ext: str = "json", fold: int | None = None, synthetic: str = SYNTHETIC) -> Path:
        """The synthetic-patch quality report: ``reports/gen_quality.<ext>`` (``.json`` also holds its
        provenance), or fold ``k``'s part ``reports/gen_quality_fold<k>.<ext>`` (``csv``, ``png``); for
        another synthetic set ``reports/gen_quality_<set>[_fold<k>].<ext>``."""
        stem = "gen_quality" if check_synthetic_name(synthetic) == SYNTHETIC else f"gen_quality_{synthetic}"
        name = stem if fold is None else f"{stem}_fold{int(fold)}"
        return self.reports_dir / f"{name}.{ext}"

    def gen_discriminator_report(self, ext: str = "csv", synthetic: str = SYNTHETIC) -> Path:
        """The real-vs-synthetic discriminator of the quality report: ``reports/gen_discriminator.<ext>``
        (``csv``, ``png``), ``reports/gen_discriminator_<set>.<ext>`` for another synthetic set."""
        stem = "gen_discriminator" if check_synthetic_name(synthetic) == SYNTHETIC else f"gen_discriminator_{synthetic}"
        return self.reports_dir / f"{stem}.{ext}"

    def quality_folds(self) -> list[int]:
        """The folds with a per-patch quality table ``reports/gen_quality_fold<k>.csv``, in order."""
        found = [p.stem.removeprefix("gen_quality_fold") for p in self.reports_dir.glob("gen_quality_fold*.csv")]
        return sorted(int(k) for k in found if k.isdigit())

    def fold_results(self) -> list[Path]:
        """What trained folds left in the experiment: every ``<stage>/fold<k>/artifact.json`` and checkpoint."""
        if not self.root.is_dir():
            return []
        return sorted([*self.root.glob("*/fold*/artifact.json"), *self.root.glob("*/fold*/checkpoints/*.ckpt")])

    def retrain_command(self, stage: str, fold: int) -> str:
        """The ``neonet cv ... --force`` command that re-trains one fold of ``stage`` from scratch."""
        from neonet.predict.ensemble import train_command

        return train_command(self, stage, [int(fold)], force=True)

    # ----------------------------------------------------------------------------- artifacts
    def read_artifact(self, stage: str, fold: int) -> dict[str, Any] | None:
        """The artifact of a stage folder, or None when the stage has not finished a fit.

        Raises:
            NeonetError: ``artifact.json`` is truncated or not JSON (the message names it and the way on).
        """
        path = self.artifact_path(stage, fold)
        if not path.exists():
            return None
        remedy = (
            f"It records how {stage} fold {int(fold)} was trained. Restore it from a backup, or re-train the fold "
            f"(its current results are moved aside to {self.replaced_dir(stage, fold)} until the new fit "
            f"succeeds):\n    {self.retrain_command(stage, fold)}"
        )
        data = read_json(path, remedy=remedy)
        if not isinstance(data, dict):
            raise NeonetError(f"{path}: cannot read this JSON file: it is not a JSON object. {remedy}")
        return data

    def write_artifact(self, stage: str, fold: int, **fields: Any) -> Path:
        """Merge ``fields`` into ``artifact.json`` (atomically), stamping time, host and git sha."""
        path = self.artifact_path(stage, fold)
        data: dict[str, Any] = read_json(path) if path.exists() else {}
        data.update(
            {
                "stage": stage,
                "fold": int(fold),
                "experiment": self.experiment,
                "neonet_version": __version__,
                "git_sha": git_sha(),
                "host": socket.gethostname(),
                "updated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            }
        )
        data.update(fields)
        return write_json(path, data)

    def is_complete(self, stage: str, fold: int) -> bool:
        """True when the stage finished fold ``k`` entirely (fit and post-fit work)."""
        art = self.read_artifact(stage, fold)
        return bool(art and art.get("status") == "complete")

    def checkpoint_record(self, path: str | os.PathLike) -> dict[str, str]:
        """``{"path", "sha256"}`` of a checkpoint, for provenance fields."""
        path = Path(path)
        return {"path": str(path), "sha256": sha256_file(path)}

    def verify_checkpoint(self, stage: str, fold: int, path: str | os.PathLike | None = None, remedy: str | None = None) -> None:
        """Check a finished fold's checkpoint against the SHA-256 its ``artifact.json`` recorded.

        A fold records its best checkpoint's hash when its fit ends (``best_checkpoint``); that file is
        trusted (a finished fold skipped, its weights reloaded) only while its content is still the one
        recorded. Files the artifact records no hash for pass unchecked. The recorded file is matched by
        name inside the fold's ``checkpoints/`` folder, so a moved runs folder still verifies.

        Args:
            stage: the stage folder.
            fold: the fold k.
            path: the checkpoint about to be trusted (default: the one the artifact records).
            remedy: what to do about a mismatch (default: restore the file or re-train the fold with --force).

        Raises:
            NeonetError: the recorded checkpoint is missing or its content changed since the fold finished.
        """
        record = (self.read_artifact(stage, fold) or {}).get("best_checkpoint")
        if not isinstance(record, dict) or not isinstance(record.get("sha256"), str) or not record.get("path"):
            return
        path = self.checkpoint_dir(stage, fold) / Path(str(record["path"])).name if path is None else Path(path)
        if path.name != Path(str(record["path"])).name or path.parent.resolve() != self.checkpoint_dir(stage, fold).resolve():
            return
        remedy = remedy or (
            f"Restore the file from a backup, or re-train the fold (its current results are moved aside to "
            f"{self.replaced_dir(stage, fold)} until the new fit succeeds):\n    {self.retrain_command(stage, fold)}"
        )
        artifact = self.artifact_path(stage, fold)
        if not path.is_file():
            raise NeonetError(
                f"{path}: the checkpoint of {stage} fold {int(fold)} that {artifact} records (sha256 "
                f"{record['sha256'][:12]}…) is missing, so the fold cannot be used as trained. {remedy}"
            )
        now = sha256_file(path)
        if now != record["sha256"]:
            raise NeonetError(
                f"{path}: this checkpoint of {stage} fold {int(fold)} is not the file {artifact} recorded when the "
                f"fold finished (sha256 now {now[:12]}…, recorded {record['sha256'][:12]}…): it was damaged (e.g. "
                f"truncated) or replaced since, so it is not trusted. {remedy}"
            )


class BundlePaths:
    """Files of a bundle written by ``neonet export`` (MONAI's bundle layout), found from its folder alone.

    ::

        <bundle>/
          configs/metadata.json         what it is: version, description, inputs/outputs, versions, git sha
          configs/inference.json        preprocessing, sliding window, TLCR, thresholds, models + source checkpoints
          models/<stage>_fold<k>.ts     each fold's network as TorchScript (seg, then the classifier)
          models/<stage>_fold<k>.json   a radiomics classifier fold's model (coefficients, training statistics)
          docs/README.md                how to run it

    Args:
        root: the bundle's folder.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"BundlePaths({str(self.root)!r})"

    @property
    def metadata(self) -> Path:
        """``configs/metadata.json``."""
        return self.root / "configs" / "metadata.json"

    @property
    def inference(self) -> Path:
        """``configs/inference.json``: everything prediction reads besides the networks."""
        return self.root / "configs" / "inference.json"

    @property
    def models_dir(self) -> Path:
        """``models/``."""
        return self.root / "models"

    def model_name(self, stage: str, fold: int, suffix: str = ".ts") -> str:
        """A fold's model file, relative to the bundle (as ``inference.json`` names it): ``.ts`` for a network,
        ``.json`` for a radiomics model."""
        return f"models/{stage}_fold{int(fold)}{suffix}"

    def model(self, stage: str, fold: int, suffix: str = ".ts") -> Path:
        """A fold's TorchScript network (``suffix`` ``.json``: a radiomics fold's model)."""
        return self.root / self.model_name(stage, fold, suffix)

    @property
    def readme(self) -> Path:
        """``docs/README.md``."""
        return self.root / "docs" / "README.md"

    @staticmethod
    def default_predictions(name: str) -> Path:
        """Default output folder of ``neonet predict-case --bundle`` for the image ``name``: ``predict_case/<name>/``
        in the working directory (a bundle may be read-only and is never written to)."""
        return Path("predict_case") / name


class ExternalPaths:
    """Files of one external-cohort report (``neonet evaluate``), found from its folder alone.

    ::

        reports/external/<name>/
          external.md, external.json        summary: cohort, stages and folds used, every number below
          predictions.csv                   per case and stage: each fold's probability, the ensemble's, threshold
          seg_metrics.csv, seg_summary.{json,md}   NeoSeg Dice / HD95 / NSD per case (cases with a label)
          cls_summary.csv, cls_calibration.csv     per classifier: AUC [CI], sensitivity / specificity, calibration
          ood.csv                           per case: measures inside its mask, checks failed against the cohort fingerprint
          roc.png, calibration.png
          masks/<case>.nii.gz               the NeoSeg fold ensemble's mask in the scan's space
          patches/<case>_{image,label}.nii.gz  the TLCR patch each classifier saw

    Args:
        root: the report's folder.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"ExternalPaths({str(self.root)!r})"

    def table(self, name: str, ext: str = "csv") -> Path:
        """``<name>.<ext>``: ``external``, ``predictions``, ``seg_metrics``, ``seg_summary``, ``cls_summary``,
        ``cls_calibration``, ``ood`` (csv, json or md) or a figure (``roc``, ``calibration``: png)."""
        return self.root / f"{name}.{ext}"

    def mask(self, case_id: str) -> Path:
        """The NeoSeg ensemble's mask of a case."""
        return case_file(self.root / "masks", case_id)

    def patch(self, case_id: str, part: str) -> Path:
        """A case's TLCR patch: ``part`` ``image`` or ``label``."""
        return case_file(self.root / "patches", case_id, suffix=f"_{part}.nii.gz")
