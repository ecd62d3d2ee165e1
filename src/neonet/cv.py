"""``neonet cv``: run one stage over the folds, each fold in its own process, then summarise.

Each fold is a fresh ``python -m neonet fit`` process, so no state (model, trainer, W&B run,
random generators) leaks from one fold into the next, DDP launches its own ranks per fold, and
folds can also be spread over machines by running ``neonet fit ... --data.fold k`` directly.
Finished folds are skipped; an interrupted fold resumes from its ``last.ckpt`` — both only when
the fold's saved ``config.yaml`` agrees with the command's settings (``neonet.config_drift``).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Protocol

from neonet.atomic import read_json
from neonet.config import data_args, import_class, load_config, stage_of
from neonet.config_drift import check_fold_configs
from neonet.errors import NeonetError
from neonet.fold_lock import fold_lock
from neonet.workspace import Workspace

log = logging.getLogger(__name__)


class StageHooks(Protocol):
    """What a stage does around its folds in ``neonet cv``."""

    def after_fold(self, ws: Workspace, fold: int, run: "FoldRunner") -> dict[str, Any]:
        """Post-fit work of one fold (e.g. out-of-fold prediction); returns artifact fields."""

    def after_all(self, ws: Workspace, cfg: dict[str, Any], folds: list[int]) -> None:
        """Cross-fold summary (tables, plots, W&B summary run)."""




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


def load_hooks(cfg: dict[str, Any]) -> StageHooks | None:
    """The cv hooks named by the stage module's ``cv_hooks`` attribute (``"module:Class"``), or None."""
    spec = getattr(import_class(cfg["model"]["class_path"]), "cv_hooks", None)
    if not spec:
        return None
    module, name = spec.split(":")
    return import_class(f"{module}.{name}")()


def fold_env(jobs: int) -> dict[str, str]:
    """Environment of one of ``jobs`` concurrent fold processes: CPU threads split between them.

    ``OMP_NUM_THREADS`` set by the user wins; on CUDA machines each process still sees every GPU, so
    give each fold its own devices with ``--trainer.devices`` or run folds on separate nodes.
    """
    env = dict(os.environ)
    if "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    return env


def run_parallel(configs: list[Path], overrides: list[str], todo: list[int], jobs: int, force: bool, ws: Workspace,
                 stage: str) -> None:
    """Run ``neonet cv`` for each fold of ``todo`` as its own process, ``jobs`` at a time (no summary).

    Each fold's output goes to ``<stage>/fold<k>/cv.log``; a failed fold is named with the tail of its log.
    """
    from concurrent.futures import ThreadPoolExecutor

    def one(k: int) -> tuple[int, int, float, Path]:
        logfile = ws.stage_dir(stage, k) / "cv.log"
        logfile.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "neonet", "cv"] + [a for c in configs for a in ("--config", str(c))]
        cmd += ["--folds", str(k), "--no_summary"] + (["--force"] if force else [])
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
        tails = "\n".join(f"--- fold {k} ({f}):\n" + "".join(f.read_text(errors="replace").splitlines(True)[-15:])
                          for k, f in failed)
        raise NeonetError(
            f"{len(failed)} fold(s) of stage {stage} failed: {[k for k, _ in failed]}. Last lines of their logs:\n{tails}\n"
            "Fix the cause and run the same `neonet cv` command again: finished folds are skipped."
        )


def cv(
    config: list[Path],
    folds: list[int] | None = None,
    override: list[str] | None = None,
    force: bool = False,
    jobs: int = 1,
    summary: bool = True,
) -> int:
    """Run a stage over the folds of an experiment, each fold in its own process.

    Every fold trains on its training patients only, selects its checkpoint on its inner
    validation patients and is evaluated on its held-out patients. A fold whose
    ``artifact.json`` says ``complete`` is skipped; an interrupted fold resumes from
    ``last.ckpt``. Neither happens when the fold's saved ``config.yaml`` has other settings than
    this command (another learning rate, seed, network...): that is an error naming them, and
    ``--force`` re-trains such folds. After the folds, the stage's cross-fold summary is written to ``reports/``.

    Args:
        config: stage config file(s), merged in order (as ``neonet fit --config``).
        folds: folds to run (default: all folds of the experiment).
        override: extra ``--key=value`` options passed to every fold, e.g.
            ``--trainer.max_epochs=5`` or ``--trainer.devices=2``.
        force: re-run folds that are already complete (their checkpoints are replaced).
        jobs: folds trained at the same time, each its own process with ``cpu_count // jobs`` CPU
            threads (unless ``OMP_NUM_THREADS`` is set) and its output in ``<stage>/fold<k>/cv.log``.
            Small CPU models finish sooner this way; on GPUs give each fold its own devices.
        summary: write the stage's cross-fold summary after the folds (off for the per-fold workers of ``jobs``).
    """
    configs = [Path(c) for c in config]
    overrides = list(override or [])
    cfg = load_config(configs, [o.lstrip("-") for o in overrides])
    stage = stage_of(cfg)
    dargs = data_args(cfg)
    ws = Workspace(dargs.get("runs_dir", "runs"), dargs.get("experiment", "default"))
    n_folds = int(read_json(ws.splits_path)["folds"]) if ws.splits_path.exists() else int(dargs.get("folds", 5))
    todo = list(range(n_folds)) if folds is None else [int(k) for k in folds]
    bad = [k for k in todo if not 0 <= k < n_folds]
    if bad:
        raise NeonetError(f"fold(s) {bad} do not exist: the experiment has folds 0..{n_folds - 1}")
    hooks = load_hooks(cfg)
    if not force:  # a finished fold is skipped and an interrupted one resumed only under the same settings
        started = [k for k in todo if ws.is_complete(stage, k) or ws.last_checkpoint(stage, k).exists()]
        explicit_stage = bool(((cfg.get("model") or {}).get("init_args") or {}).get("stage"))
        check_fold_configs(ws, stage, started, cfg, stage_option=explicit_stage)
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
        with fold_lock(ws.stage_dir(stage, k) / ".cv.lock", stage, k) as lock_fd:
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
            fields = hooks.after_fold(ws, k, run) if hooks else {}
            ws.write_artifact(stage, k, status="complete", **fields)
    summary_path = ws.reports_dir / f"{stage}_summary.json"
    if hooks and summary and (ran_any or not summary_path.exists()):
        hooks.after_all(ws, cfg, todo)
    elif hooks and summary:
        log.info("cv: nothing new to summarise; the report is %s", summary_path)
    log.info("cv: %s done — results under %s", stage, ws.root)
    return 0


def cv_main(argv: list[str]) -> int:
    """Command line of ``neonet cv``: ``--config`` may repeat; options after ``--`` go to every fold."""
    import argparse

    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    doc = (cv.__doc__ or "").split("Args:")[0].strip()
    parser = argparse.ArgumentParser(
        prog="neonet cv",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Options after `--` are passed to every fold's `neonet fit`, e.g.\n"
        "  neonet cv --config experiments/demo/seg.yaml --folds 0 1 -- --trainer.max_epochs=5",
    )
    parser.add_argument("--config", action="append", required=True, help="stage config file(s), merged in order")
    parser.add_argument("--folds", type=int, nargs="+", default=None, help="folds to run (default: all)")
    parser.add_argument("--force", action="store_true", help="re-run folds that are already complete")
    parser.add_argument("--jobs", type=int, default=1,
                        help="folds trained at the same time, each with cpu_count/jobs threads and its log in "
                             "<stage>/fold<k>/cv.log (default 1)")
    parser.add_argument("--no_summary", action="store_true", help="skip the cross-fold summary after the folds")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    overrides = _normalise_overrides(extra)
    return cv(args.config, folds=args.folds, override=overrides, force=args.force, jobs=args.jobs,
              summary=not args.no_summary)


def _normalise_overrides(extra: list[str]) -> list[str]:
    """``--a.b value`` and ``--a.b=value`` → ``--a.b=value``."""
    out: list[str] = []
    i = 0
    while i < len(extra):
        item = extra[i]
        if not item.startswith("--"):
            raise NeonetError(f"unexpected argument {item!r} after `--`: use --key=value")
        if "=" in item or i + 1 >= len(extra) or extra[i + 1].startswith("--"):
            out.append(item if "=" in item else f"{item}=true")
            i += 1
        else:
            out.append(f"{item}={extra[i + 1]}")
            i += 2
    return out
