"""W&B wiring: one offline run per stage and fold, in that fold's folder, carrying its config, tags and lineage.

The offline runs are read back from their transaction log (``run-<id>.wandb``, what ``wandb sync`` uploads):
the installed wandb has no Python reader for it, so :func:`wandb_records` splits the file's LevelDB-log
framing (checking each chunk's CRC) and parses each record with wandb's own protobuf ``Record``.
"""

from __future__ import annotations

import json
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from neonet import __version__
from neonet.run.atomic import write_json
from neonet.run.cli import main
from neonet.run.lightning_cli import make_loggers
from neonet.run.wandb_privacy import OPT_IN_ENV, REDACTED, redact
from neonet.run.wandb_run import log_dataset_run, run_config, synthetic_artifact
from neonet.workspace import Workspace, git_sha
from test_cls_fixtures import (
    SHAPE,
    cls_datamodule,
    save_nifti,
    write_fake_autoencoder,
    write_patch_cohort,
    write_synthetic,
)  # noqa: F401

CONF = Path(__file__).resolve().parent / "conf"
_BLOCK, _HEADER = 32768, 7  # the LevelDB log format of W&B's transaction log
_FULL, _LAST = 1, 4


def wandb_records(path: Path) -> list[Any]:
    """Every record of an offline run's ``.wandb`` transaction log, as wandb's protobuf ``Record``."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    pos, parts, out = _HEADER, b"", []
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if left < _HEADER or (length == 0 and kind == 0):  # block trailer / padding
            pos += left
            continue
        if pos + _HEADER + length > len(data):  # still being written
            break
        payload = data[pos + _HEADER : pos + _HEADER + length]
        assert zlib.crc32(payload, zlib.crc32(bytes([kind]))) == int.from_bytes(data[pos : pos + 4], "little"), pos
        pos, parts = pos + _HEADER + length, parts + payload
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            out.append(record)
            parts = b""
    return out


def read_run(run_dir: Path) -> dict[str, Any]:
    """An offline run's id, tags, name, config (merged updates), artifacts logged and artifacts used.

    Waits for the run's ``exit`` record: W&B's service may still be writing the log when ``finish`` returns.
    """
    (log_file,) = run_dir.glob("run-*.wandb")
    deadline = time.monotonic() + 60
    records = wandb_records(log_file)
    while not any(r.WhichOneof("record_type") == "exit" for r in records) and time.monotonic() < deadline:
        time.sleep(0.2)
        records = wandb_records(log_file)
    run: dict[str, Any] = {"config": {}, "logged": {}, "used": {}}
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.update(id=record.run.run_id, name=record.run.display_name, tags=list(record.run.tags), job=record.run.job_type)
        if kind in ("run", "config"):  # wandb.init(config=...) comes with the run record, later updates on their own
            updates = record.run.config.update if kind == "run" else record.config.update
            run["config"].update({u.key: json.loads(u.value_json) for u in updates if u.key != "_wandb"})
        elif kind == "artifact":
            art = record.artifact
            entry = {
                "type": art.type,
                "digest": art.digest,
                "files": sorted(e.path for e in art.manifest.contents),
                "metadata": json.loads(art.metadata or "{}"),
            }
            run["used" if art.use_after_commit else "logged"][art.name] = entry
    return run


def offline_runs(folder: Path) -> list[Path]:
    """The offline run folders under ``folder/wandb``, oldest first."""
    return sorted((folder / "wandb").glob("offline-run-*"))


def test_logger_naming(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    ws = Workspace(tmp_path, "cohortA")
    loggers = make_loggers(ws, "seg", 2)
    assert isinstance(loggers[0], CSVLogger)
    wb = next(lg for lg in loggers if isinstance(lg, WandbLogger))
    init = wb._wandb_init
    assert (init["project"], init["group"], init["job_type"], init["name"]) == ("neonet", "cohortA", "seg", "seg-fold2")
    assert wb._offline and Path(init["dir"]) == ws.stage_dir("seg", 2)
    assert init["tags"] == ["cohortA", "seg", "fold2"] and init["resume"] == "allow"
    assert init["id"] == ws.wandb_id("seg", 2).read_text(encoding="utf-8").strip()  # kept in the fold folder
    again = next(lg for lg in make_loggers(ws, "seg", 2) if isinstance(lg, WandbLogger))
    assert again._wandb_init["id"] == init["id"]
    test_run = next(lg for lg in make_loggers(ws, "seg", 2, job="test") if isinstance(lg, WandbLogger))
    assert test_run._wandb_init["id"] is None and test_run._wandb_init["tags"] == ["cohortA", "seg", "fold2", "test"]
    assert ws.wandb_id("seg", 2) in ws.fold_outputs("seg", 2)  # `neonet cv --force` starts a new W&B run
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert not any(isinstance(lg, WandbLogger) for lg in make_loggers(ws, "seg", 0))


def test_run_config_is_filtered(monkeypatch: pytest.MonkeyPatch) -> None:
    config = {"seed_everything": 4, "data": {"init_args": {"cases": "/site/cohort/cases.csv", "fold": 1}}}
    monkeypatch.delenv(OPT_IN_ENV, raising=False)
    sent = run_config(config)
    assert (sent["seed"], sent["git_sha"], sent["neonet_version"]) == (4, git_sha(), __version__)
    assert sent["data"] == {"init_args": {"cases": REDACTED, "fold": 1}}
    monkeypatch.setenv(OPT_IN_ENV, "1")
    assert run_config(config)["data"]["init_args"]["cases"] == "/site/cohort/cases.csv"


def test_offline_runs_per_fold(phantom_cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two folds fitted in one process write two separate offline runs, each in its fold folder."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    runs = tmp_path / "runs"
    for fold in (1, 2):
        args = ["fit", "--config", str(CONF / "seg.yaml"), f"--data.cases={phantom_cohort}", f"--data.runs_dir={runs}"]
        assert main([*args, f"--data.fold={fold}", "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1"]) == 0
    import wandb

    assert wandb.run is None  # finished after each fit
    run_dirs = {fold: list((runs / "test" / "seg" / f"fold{fold}" / "wandb").glob("offline-run-*")) for fold in (1, 2)}
    assert all(len(dirs) == 1 for dirs in run_dirs.values()), run_dirs
    assert run_dirs[1][0].name != run_dirs[2][0].name
    for fold, (folder,) in run_dirs.items():  # each fold's artifact.json names its run (read by the experiment page)
        record = Workspace(runs, "test").read_artifact("seg", fold)["wandb"]
        assert record["name"] == f"seg-fold{fold}" and folder.name.endswith(f"-{record['id']}")


def _fake_fold(ws: Workspace, stage: str, fold: int, content: bytes) -> Path:
    """A finished fold of ``stage`` with a checkpoint and an ``artifact.json`` (no training)."""
    ckpt = ws.best_checkpoint(stage, fold)
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    ckpt.write_bytes(content)
    write_json(ws.artifact_path(stage, fold), {"stage": stage, "fold": fold, "status": "complete", "host": "lab-pc-7"})
    return ckpt


def test_fold_run_carries_config_tags_and_lineage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wandb_home: None) -> None:
    """A PattenNet fit (real + synthetic patches) read back from its offline run: the resolved config with trainer,
    seed, git sha and version; tags; its model artifact and the autoencoder, patches and synthetic patches it
    declares as inputs; a resumed fit continues the same run; producers and consumers agree on each artifact."""
    from neonet.report.wandb_summary import log_cv_summary

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv(OPT_IN_ENV, raising=False)
    cohort = write_patch_cohort(tmp_path, experiment="t")
    ws: Workspace = cohort["ws"]
    dm = cls_datamodule(cohort, 0)
    write_fake_autoencoder(ws, 0, train_cases=list(dm.split.train))
    sources = [i["case_id"] for i in dm.items("train") if i["label"] == 1][:2]
    write_synthetic(ws, 0, sources)
    for source in sources:
        save_nifti(ws.synthetic_dir(0) / "labels" / f"{source}.nii.gz", np.zeros(SHAPE, np.uint8))
    case_ids = pd.read_csv(ws.patches_manifest)["case_id"].tolist()
    data = [f"--data.cases={cohort['cases']}", f"--data.runs_dir={cohort['runs_dir']}", "--data.experiment=t", "--data.fold=0"]
    fit = ["fit", "--config", str(CONF / "pattennet.yaml"), *data, "--data.use_synthetic=true", "--trainer.limit_train_batches=1"]
    assert main([*fit, "--trainer.max_epochs=1", "--trainer.limit_val_batches=1"]) == 0

    fold_dir = ws.stage_dir("pattennet", 0)
    (first_dir,) = offline_runs(fold_dir)
    first = read_run(first_dir)
    assert (first["name"], first["job"], first["tags"]) == ("pattennet-fold0", "pattennet", ["t", "pattennet", "fold0"])
    cfg = first["config"]
    assert cfg["trainer"]["max_epochs"] == 1 and cfg["trainer"]["limit_train_batches"] == 1  # the whole config.yaml
    assert cfg["model"]["class_path"] == "neonet.cls.PattenNetModule" and cfg["data"]["init_args"]["use_synthetic"] is True
    assert (cfg["seed"], cfg["seed_everything"], cfg["git_sha"], cfg["neonet_version"]) == (0, 0, git_sha(), __version__)
    assert cfg["data"]["init_args"]["cases"] == REDACTED and cfg["data"]["init_args"]["runs_dir"] == REDACTED
    saved = yaml.safe_load(ws.config_path("pattennet", 0).read_text(encoding="utf-8"))
    assert {key: cfg[key] for key in saved} == redact(saved)  # the fold's config.yaml, as W&B may receive it

    model = first["logged"]["t-pattennet-fold0"]
    assert model["type"] == "model" and model["files"] == ["artifact.json", "best.ckpt"]
    local = json.loads(ws.artifact_path("pattennet", 0).read_text(encoding="utf-8"))
    assert model["metadata"]["best_score"] == local["best_score"] and model["metadata"]["train_cases"] == REDACTED
    assert model["metadata"]["host"] == REDACTED and local["host"] != REDACTED
    assert (
        json.loads(ws.wandb_artifact_record("pattennet", 0).read_text(encoding="utf-8")) == model["metadata"]
    )  # the file it holds
    used = first["used"]
    assert set(used) == {"t-autoencoder-fold0", "t-patches", "t-synthetic-fold0"}
    assert (used["t-autoencoder-fold0"]["type"], used["t-patches"]["type"]) == ("model", "dataset")
    sent = json.dumps([cfg, first["logged"], used])
    assert not [c for c in case_ids + sources if c in sent] and str(tmp_path) not in sent

    # a resumed fit continues the same W&B run and logs the new best model
    assert (
        main(
            [*fit, "--trainer.max_epochs=2", "--trainer.limit_val_batches=1", f"--ckpt_path={ws.last_checkpoint('pattennet', 0)}"]
        )
        == 0
    )
    runs = offline_runs(fold_dir)
    assert len(runs) == 2
    resumed = read_run(runs[1])
    assert resumed["id"] == first["id"] == ws.wandb_id("pattennet", 0).read_text(encoding="utf-8").strip()
    assert resumed["config"]["trainer"]["max_epochs"] == 2
    produced = resumed["logged"]["t-pattennet-fold0"]["digest"]

    # the synthetic patches' producer (`neonet synthesize`) logs the artifact the classifier declared
    controlnet = _fake_fold(ws, "controlnet", 0, b"controlnet weights")
    log_dataset_run(
        ws, "synthesize", 0, lambda: synthetic_artifact(ws, 0), {"controlnet checkpoint": {"path": str(controlnet)}}, {"steps": 5}
    )
    synth = read_run(offline_runs(ws.wandb_run_dir("synthesize", 0))[0])
    assert synth["tags"] == ["t", "synthesize", "fold0"] and synth["config"]["steps"] == 5
    assert synth["logged"]["t-synthetic-fold0"]["digest"] == used["t-synthetic-fold0"]["digest"]
    assert set(synth["used"]) == {"t-controlnet-fold0"}
    assert synth["used"]["t-controlnet-fold0"]["metadata"]["host"] == REDACTED

    # the cross-fold summary run: config and tags, and the very model version the fold run logged as its input
    log_cv_summary(
        ws, "pattennet", {"folds": pd.DataFrame({"fold": [0], "auc": [0.5]})}, {"auc_mean": 0.5}, config={"seed_everything": 3}
    )
    summary = read_run(offline_runs(ws.root / "pattennet" / "cv")[0])
    assert summary["tags"] == ["t", "pattennet", "cv"]
    assert (summary["config"]["seed"], summary["config"]["git_sha"], summary["config"]["neonet_version"]) == (
        3,
        git_sha(),
        __version__,
    )
    assert summary["used"]["t-pattennet-fold0"]["digest"] == produced


def test_upstream_records_name_the_pipeline_artifacts(tmp_path: Path, wandb_home: None) -> None:
    """Each stage's ``artifact.json`` upstream record (as the stages write it) names the artifacts of W&B's lineage
    graph: seg → patches → autoencoder → diffusion → ControlNet → synthetic → classifier."""
    from neonet.run.wandb_run import upstream_artifacts

    cohort = write_patch_cohort(tmp_path, n=4, experiment="t")
    ws: Workspace = cohort["ws"]
    moved = Workspace(tmp_path / "elsewhere", "t")  # records written before the runs folder moved still place their files
    ckpt = {s: _fake_fold(ws, s, 1, s.encode()) for s in ("seg", "autoencoder", "diffusion", "controlnet")}
    manifest = write_synthetic(ws, 1, ["c000"])

    def record(stage: str) -> dict[str, str]:
        return {"path": str(moved.best_checkpoint(stage, 1)), "sha256": "0" * 64}

    expected = {
        "crop": ([str(ckpt["seg"])], {"t-seg-fold1"}),
        "autoencoder": ({"patches_manifest": ws.checkpoint_record(ws.patches_manifest)}, {"t-patches"}),
        "diffusion": ({"autoencoder": record("autoencoder"), "latent_cache": str(ws.latents_dir(1))}, {"t-autoencoder-fold1"}),
        "controlnet": (
            {"diffusion": record("diffusion"), "autoencoder": record("autoencoder")},
            {"t-diffusion-fold1", "t-autoencoder-fold1"},
        ),
        "synthesize": (
            {"controlnet checkpoint": record("controlnet"), "patch manifest": {"path": str(ws.patches_manifest)}},
            {"t-controlnet-fold1", "t-patches"},
        ),
        "pattennet_syn": (
            {"encoder_checkpoint": record("autoencoder"), "synthetic": {"manifest": str(manifest)}, "pos_weight": 1.0},
            {"t-autoencoder-fold1", "t-synthetic-fold1"},
        ),
    }
    for stage, (upstream, names) in expected.items():
        arts = upstream_artifacts(ws, upstream)
        assert {a.name for a in arts} == names, stage
    (model,) = upstream_artifacts(ws, {"diffusion": record("diffusion")})
    assert model.type == "model" and sorted(model.manifest.entries) == ["artifact.json", "best.ckpt"]
    assert upstream_artifacts(ws, {"autoencoder": record("vae_missing")}) == []  # a fold without best.ckpt: nothing
