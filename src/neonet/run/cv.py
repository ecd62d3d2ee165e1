"""``neonet cv``: run one stage over the folds, each fold in its own process, then summarise.

Each fold is a fresh ``python -m neonet fit`` process, so no state (model, trainer, W&B run,
random generators) leaks from one fold into the next, DDP launches its own ranks per fold, and
folds can also be spread over machines by running ``neonet fit ... --data.fold k`` directly.
Finished folds are skipped; an interrupted fold resumes from its ``last.ckpt`` — both only when
the fold's saved ``config.yaml`` agrees with the command's settings (``neonet.run.config_drift``).
"""

from __future__ import annotations

import inspect
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from neonet.errors import NeonetError
from neonet.run.atomic import read_json
from neonet.run.config_drift import check_fold_configs
from neonet.run.fold_lock import fold_lock
from neonet.stage import CVContext, FoldContext, StageModule
from neonet.workspace import Workspace

log = logging.getLogger(__name__)


class FoldRunner:
    """Runs ``python -m neonet <verb>`` for one fold with the cv's configs and overrides."""

    def __init__(self, configs: list[Path], overrides: list[str], fold: int, pass_fds: tuple[int, ...] = ()) -> None:
        self.configs = configs
        self.overrides = overrides
        self.fold = fold
        self.pass_fds = pass_fds  # the fold lock, so that it is held while the child runs

    def command(self, verb: str, extra: list[str] | None = None) -> list[str]:
        """The command line of a verb for this fold."""
        cmd = [sys.executable, "-m", "neonet", verb]
        for cfg in self.configs:
            cmd += ["--config", str(cfg)]
        cmd += list(self.overrides)
        cmd += [f"--data.fold={self.fold}"]
        return cmd + list(extra or [])

    def __call__(self, verb: str, extra: list[str] | None = None) -> None:
        cmd = self.command(verb, extra)
        log.info("fold %d: %s", self.fold, " ".join(cmd[2:]))
        start = time.time()
        proc = subprocess.run(cmd, check=False, pass_fds=self.pass_fds)
        if proc.returncode != 0:
            raise NeonetError(
                f"fold {self.fold}: `neonet {verb}` failed with exit code {proc.returncode} (its output is above). "
                "Fix the cause and run the same `neonet cv` command again: finished folds are skipped and "
                "this fold resumes from its last checkpoint."
            )
        log.info("fold %d: %s done in %.0f s", self.fold, verb, time.time() - start)


def stage_module_of(cfg: dict[str, Any]) -> type[StageModule]:
    """The :class:`~neonet.stage.StageModule` class of a resolved stage config (``model.class_path``)."""
    import importlib

    class_path = str((cfg.get("model") or {}).get("class_path") or "")
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise NeonetError(f"model.class_path {class_path!r} cannot be imported ({exc})") from exc
    if not (isinstance(cls, type) and issubclass(cls, StageModule)):
        raise NeonetError(f"model.class_path {class_path!r} is not a neonet stage module (neonet.stage.StageModule)")
    return cls


def stage_of(cfg: dict[str, Any]) -> str:
    """The stage folder of a resolved stage config: ``model.init_args.stage`` when the module takes one, else its class's."""
    explicit = ((cfg.get("model") or {}).get("init_args") or {}).get("stage")
    return explicit if isinstance(explicit, str) and explicit else stage_module_of(cfg).stage


def fold_env(jobs: int) -> dict[str, str]:
    """Environment of one of ``jobs`` concurrent fold processes: CPU threads split between them.

    ``OMP_NUM_THREADS`` set by the user wins; on CUDA machines each process still sees every GPU, so
    give each fold its own devices with ``--trainer.devices`` or run folds on separate nodes.
    """
    env = dict(os.environ)
    if "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    return env


def run_parallel(
    configs: list[Path], overrides: list[str], todo: list[int], jobs: int, force: bool, ws: Workspace, stage: str
) -> None:
    """Run ``neonet cv`` for each fold of ``todo`` as its own process, ``jobs`` at a time (no summary).

    Each fold's output goes to ``<stage>/fold<k>/cv.log``; a failed fold is named with the tail of its log.
    """
    from concurrent.futures import ThreadPoolExecutor

    def one(k: int) -> tuple[int, int, float, Path]:
        logfile = ws.cv_log(stage, k)
        logfile.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "neonet", "cv"] + [a for c in configs for a in ("--config", str(c))]
        cmd += ["--folds", str(k), "--summary=false"] + (["--force"] if force else [])
        cmd += ["--", *overrides] if overrides else []
        start = time.time()
        log.info("fold %d: started (log: %s)", k, logfile)
        with open(logfile, "w") as handle:
            code = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, env=fold_env(jobs), check=False).returncode
        log.info("fold %d: %s in %.0f s", k, "done" if code == 0 else f"FAILED (exit {code})", time.time() - start)
        return k, code, time.time() - start, logfile

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        results = list(pool.map(one, todo))
    failed = [(k, f) for k, code, _, f in results if code != 0]
    if failed:
        tails = "\n".join(
            f"--- fold {k} ({f}):\n" + "".join(f.read_text(errors="replace").splitlines(True)[-15:]) for k, f in failed
        )
        raise NeonetError(
            f"{len(failed)} fold(s) of stage {stage} failed: {[k for k, _ in failed]}. Last lines of their logs:\n{tails}\n"
            "Fix the cause and run the same `neonet cv` command again: finished folds are skipped."
        )


def cv(
    config: list[Path],
    folds: list[int] | None = None,
    force: bool = False,
    jobs: int = 1,
    summary: bool = True,
    print_config: bool = False,
    override: list[str] | None = None,
) -> int:
    """Run a stage over the folds of an experiment, each fold in its own process.

    Every fold trains on its training patients only, selects its checkpoint on its inner
    validation patients and is evaluated on its held-out patients. A fold whose
    ``artifact.json`` says ``complete`` is skipped; an interrupted fold resumes from
    ``last.ckpt``. Neither happens when the fold's saved ``config.yaml`` has other settings than
    this command (another learning rate, seed, network...): that is an error naming them, and
    ``--force`` re-trains such folds. After the folds, the stage's cross-fold summary is written to
    ``reports/``. Options after ``--`` go to every fold's ``neonet fit``, e.g.
    ``neonet cv --config experiments/demo/seg.yaml --folds 0 1 -- --trainer.max_epochs=5``.

    Args:
        config: stage config file(s), merged in order (as ``neonet fit --config``).
        folds: folds to run (default: all folds of the experiment).
        force: re-run folds that are already complete (their checkpoints are replaced).
        jobs: folds trained at the same time, each its own process with ``cpu_count // jobs`` CPU
            threads (unless ``OMP_NUM_THREADS`` is set) and its output in ``<stage>/fold<k>/cv.log``.
            Small CPU models finish sooner this way; on GPUs give each fold its own devices.
        summary: write the stage's cross-fold summary after the folds (off for the per-fold workers of ``jobs``).
        print_config: print the stage config as every fold's ``neonet fit`` resolves it (overrides
            included) and stop.
        override: extra ``--key=value`` options passed to every fold (the options after ``--``), e.g.
            ``--trainer.max_epochs=5`` or ``--trainer.devices=2``.
    """
    from neonet.run.lightning_cli import resolve_stage_config

    if jobs < 1:
        raise NeonetError(f"--jobs must be >= 1, got {jobs}")
    configs = [Path(c) for c in config]
    overrides = list(override or [])
    cfg = resolve_stage_config(configs, overrides)
    if print_config:
        import yaml

        print(yaml.safe_dump(cfg, sort_keys=False), end="")
        return 0
    module = stage_module_of(cfg)
    stage = stage_of(cfg)
    dargs = dict((cfg.get("data") or {}).get("init_args") or {})
    ws = Workspace(dargs.get("runs_dir") or "runs", dargs.get("experiment") or "default")
    n_folds = int(read_json(ws.splits_path)["folds"]) if ws.splits_path.exists() else int(dargs.get("folds") or 5)
    todo = list(range(n_folds)) if folds is None else [int(k) for k in folds]
    bad = [k for k in todo if not 0 <= k < n_folds]
    if bad:
        raise NeonetError(f"fold(s) {bad} do not exist: the experiment has folds 0..{n_folds - 1}")
    if not force:  # a finished fold is skipped and an interrupted one resumed only under the same settings
        started = [k for k in todo if ws.is_complete(stage, k) or ws.last_checkpoint(stage, k).exists()]
        check_fold_configs(ws, stage, started, cfg, stage_option="stage" in inspect.signature(module).parameters)
    log.info("cv: stage %s, experiment %s, folds %s", stage, ws.experiment, todo)
    ran_any = False
    pending = [k for k in todo if force or not ws.is_complete(stage, k)]
    if jobs > 1 and len(pending) > 1:
        log.info("cv: folds %s, %d at a time", pending, jobs)
        run_parallel(configs, overrides, pending, jobs, force, ws, stage)
        ran_any, todo_serial = True, []
    else:
        todo_serial = todo
    for k in todo_serial:
        if ws.is_complete(stage, k) and not force:
            log.info("fold %d: %s already complete (%s) — skipped", k, stage, ws.artifact_path(stage, k))
            continue
        with fold_lock(ws.fold_lock(stage, k), stage, k) as lock_fd:
            if ws.is_complete(stage, k) and not force:  # finished by another process since the check above
                log.info("fold %d: %s already complete (%s) — skipped", k, stage, ws.artifact_path(stage, k))
                continue
            run = FoldRunner(configs, overrides, k, pass_fds=() if lock_fd is None else (lock_fd,))
            art = ws.read_artifact(stage, k) or {}
            if force and ws.stage_dir(stage, k).exists():
                shutil.rmtree(ws.checkpoint_dir(stage, k), ignore_errors=True)
                ws.artifact_path(stage, k).unlink(missing_ok=True)
                art = {}
            if art.get("status") != "fit-complete":
                last = ws.last_checkpoint(stage, k)
                extra = ["--ckpt_path", str(last)] if last.exists() else []
                if extra:
                    log.info("fold %d: resuming from %s", k, last)
                run("fit", extra)
            ran_any = True
            fields = module.after_fold(FoldContext(ws, k, cfg, run))
            ws.write_artifact(stage, k, status="complete", **fields)
    summary_path = ws.reports_dir / f"{stage}_summary.json"
    if summary and (ran_any or not summary_path.exists()):
        module.after_folds(CVContext(ws, cfg, todo))
    elif summary:
        log.info("cv: nothing new to summarise; the report is %s", summary_path)
    log.info("cv: %s done — results under %s", stage, ws.root)
    return 0
