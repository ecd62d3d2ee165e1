"""``neonet cv``: run one stage over the folds, each fold in its own process, then summarise.

Each fold's fit is a process of its own (``neonet fit``, forked from this driver's imports where that is
safe: :mod:`neonet.run.child`), so no state (model, trainer, W&B run, random generators) leaks from one
fold into the next, DDP launches its own ranks per fold, and folds can also be spread over machines by
running ``neonet fit ... --data.fold k`` directly.
Finished folds are skipped; an interrupted fold resumes from its ``last.ckpt`` — both only when
the fold's saved ``config.yaml`` agrees with the command's settings (``neonet.run.config_drift``).
``--seeds`` trains the stage under several training seeds on the same splits and upstream models, each
seed other than the config's in its own stage folder ``<stage>_seed<s>`` (:class:`SeedRun`).
"""

from __future__ import annotations

import copy
import inspect
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neonet.data.cases import read_cases
from neonet.data.splits import check_missing_splits, check_splits_match, planned_folds, read_splits
from neonet.errors import NeonetError
from neonet.run.child import Child, run_neonet, start_mode, start_neonet
from neonet.run.config_drift import check_fold_configs
from neonet.run.fold_lock import child_env, fold_lock, restamp
from neonet.run.progress import FoldBoard, progress_line, read_progress
from neonet.run.reload import check_resume_checkpoint
from neonet.stage import CVContext, FoldContext, StageModule
from neonet.workspace import Workspace

log = logging.getLogger(__name__)

#: Seconds between two looks at the fold processes of ``neonet cv --jobs``.
POLL_S = 0.5


class FoldRunner:
    """Runs ``python -m neonet <verb>`` for one fold with the cv's configs and overrides.

    The fold lock ``lock_fd`` (held by cv) is handed to each child, which adopts it
    (:func:`neonet.run.fold_lock.worker_lock`): the lock file then names the child while it runs, and cv
    names itself in it again when the child is done.
    """

    def __init__(self, configs: list[Path], overrides: list[str], fold: int, lock_fd: int | None = None) -> None:
        self.configs = configs
        self.overrides = overrides
        self.fold = fold
        self.lock_fd = lock_fd

    def command(self, verb: str, extra: list[str] | None = None) -> list[str]:
        """The command line of a verb for this fold."""
        cmd = [sys.executable, "-m", "neonet", verb]
        for cfg in self.configs:
            cmd += ["--config", str(cfg)]
        cmd += list(self.overrides)
        cmd += [f"--data.fold={self.fold}"]
        return cmd + list(extra or [])

    def __call__(self, verb: str, extra: list[str] | None = None) -> None:
        argv = self.command(verb, extra)[2:]
        log.info("fold %d: %s", self.fold, " ".join(argv))
        start = time.time()
        fds = () if self.lock_fd is None else (self.lock_fd,)
        code = run_neonet(argv[1:], env=child_env(self.lock_fd), pass_fds=fds)
        restamp(self.lock_fd, "neonet cv")
        if code != 0:
            raise NeonetError(
                f"fold {self.fold}: `neonet {verb}` failed with exit code {code} (its output is above). "
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


@dataclass
class SeedRun:
    """The stage under one training seed: its folder, its fit overrides and its resolved config.

    The config's own seed (``seed_everything``) trains the stage's plain folder ``<stage>/fold<k>`` with the
    command's overrides; another seed ``s`` trains ``<stage>_seed<s>/fold<k>`` (:meth:`Workspace.seed_stage`)
    with ``--seed_everything=s --model.stage=<stage>_seed<s>`` added. Splits and upstream inputs (e.g.
    PattenNet's fold autoencoder) are the same for every seed: the seed varies the stage's own training only.
    """

    seed: int | None
    stage: str
    user: list[str]  # the command's overrides (after ``--``)
    config: dict[str, Any]
    seeded: bool = False  # named with --seeds in this command's messages and per-fold workers
    extra: list[str] = field(default_factory=list)  # the seed's own overrides

    @property
    def overrides(self) -> list[str]:
        """What every fold's ``neonet fit`` gets: the command's overrides, then the seed's."""
        return [*self.user, *self.extra]

    def command(self, configs: list[Path], fold: int | None, force: bool, summary: bool = True) -> list[str]:
        """``neonet cv`` options that redo this seed's work for one fold (``fold``) or for all folds."""
        cmd = [a for c in configs for a in ("--config", str(c))]
        cmd += ["--folds", str(fold)] if fold is not None else []
        cmd += ["--seeds", str(self.seed)] if self.seeded and self.seed is not None else []
        cmd += (["--force"] if force else []) + ([] if summary else ["--summary=false"])
        return cmd + (["--", *self.user] if self.user else [])


def config_seed(cfg: dict[str, Any]) -> int | None:
    """The training seed a resolved stage config states (``seed_everything`` as an integer), else None."""
    seed = cfg.get("seed_everything")
    return int(seed) if isinstance(seed, int) and not isinstance(seed, bool) else None


def seed_runs(cfg: dict[str, Any], overrides: list[str], seeds: list[int] | None, module: type[StageModule]) -> list[SeedRun]:
    """The stage under each of ``seeds`` (default: the config's own seed only), in the order given.

    Raises:
        NeonetError: a seed other than the config's for a stage module without a ``stage`` argument
            (its folder cannot be renamed; the classifiers have one).
    """
    stage, own = stage_of(cfg), config_seed(cfg)
    if not seeds:
        return [SeedRun(own, stage, list(overrides), cfg)]
    runs = []
    for seed in dict.fromkeys(int(s) for s in seeds):
        if seed == own:
            runs.append(SeedRun(seed, stage, list(overrides), cfg, seeded=True))
            continue
        if "stage" not in inspect.signature(module).parameters:
            raise NeonetError(
                f"--seeds {seed}: {module.__name__} has no `stage` argument, so its folds cannot be filed under "
                f"{Workspace.seed_stage(stage, seed)}/ beside {stage}/ (the classifier stages have one). Train it under "
                f"its config's seed ({own}), or set seed_everything in a config of another experiment."
            )
        name = Workspace.seed_stage(stage, seed)
        config = copy.deepcopy(cfg)
        config["seed_everything"] = seed
        config.setdefault("model", {}).setdefault("init_args", {})["stage"] = name
        runs.append(SeedRun(seed, name, list(overrides), config, True, [f"--seed_everything={seed}", f"--model.stage={name}"]))
    return runs


def run_parallel(configs: list[Path], pending: list[tuple[SeedRun, int]], jobs: int, force: bool, ws: Workspace) -> None:
    """Run ``neonet cv`` for each (seed, fold) of ``pending`` as its own process, ``jobs`` at a time (no summary).

    Each fold's output goes to ``<stage>/fold<k>/cv.log``; a failed fold is named with the tail of its log.
    Meanwhile one line per fold shows its progress (:class:`SeedFoldBoard`). The processes are started and
    watched from this thread alone, so that they can be forked from it (:mod:`neonet.run.child`).
    """
    board = SeedFoldBoard(ws, pending)
    waiting = list(range(len(pending)))
    running: dict[int, tuple[Child, float, Path]] = {}
    results: list[tuple[str, int, Path]] = []
    with board:
        while waiting or running:
            while waiting and len(running) < jobs:
                i = waiting.pop(0)
                run, k = pending[i]
                logfile = ws.cv_log(run.stage, k)
                logfile.parent.mkdir(parents=True, exist_ok=True)
                log.info("%s: started (log: %s)", board.name(i), logfile)
                board.fold_started(i)
                argv = ["cv", *run.command(configs, k, force, summary=False)]
                running[i] = (start_neonet(argv, env=fold_env(jobs), output=logfile), time.time(), logfile)
            time.sleep(POLL_S)
            for i, (child, start, logfile) in list(running.items()):
                code = child.poll()
                if code is None:
                    continue
                del running[i]
                board.fold_ended(i)
                name = board.name(i)
                log.info("%s: %s in %.0f s", name, "done" if code == 0 else f"FAILED (exit {code})", time.time() - start)
                results.append((name, code, logfile))
            board.tick()
    failed = [(name, f) for name, code, f in results if code != 0]
    if failed:
        tails = "\n".join(
            f"--- {name} ({f}):\n" + "".join(f.read_text(errors="replace").splitlines(True)[-15:]) for name, f in failed
        )
        stages = sorted({run.stage for run, _ in pending})
        raise NeonetError(
            f"{len(failed)} fold(s) of stage {', '.join(stages)} failed: {[name for name, _ in failed]}. Last lines of "
            f"their logs:\n{tails}\nFix the cause and run the same `neonet cv` command again: finished folds are skipped."
        )


class SeedFoldBoard(FoldBoard):
    """:class:`~neonet.run.progress.FoldBoard` over (seed, fold) pairs: entry ``i`` is ``pending[i]``, shown as
    ``fold k`` when one seed trains and ``seed s fold k`` when several do."""

    def __init__(self, ws: Workspace, pending: list[tuple[SeedRun, int]]) -> None:
        super().__init__(ws, pending[0][0].stage, list(range(len(pending))))
        self.pending = pending
        self.several = len({run.stage for run, _ in pending}) > 1

    def name(self, i: int) -> str:
        """``fold k``, or ``seed s fold k`` when several seeds train."""
        run, k = self.pending[i]
        return f"seed {run.seed} fold {k}" if self.several else f"fold {k}"

    def lines(self, now: float | None = None) -> dict[int, str]:
        """The line of each (seed, fold) that has not ended."""
        now = time.time() if now is None else now
        running = {i: self.started.get(i) for i in self.folds if i not in self.ended}
        out = {}
        for i, started in running.items():
            run, k = self.pending[i]
            record = read_progress(self.ws.fold_progress(run.stage, k), started) if started is not None else None
            line = progress_line(k, record, now, started)
            out[i] = f"seed {run.seed} {line}" if self.several else line
        return out


def check_manifest(dargs: dict[str, Any], ws: Workspace) -> None:
    """Check the stage's case manifest against the experiment's split file, as every fold's fit will.

    Raises:
        NeonetError: the manifest cannot be read, or no longer matches ``splits.json`` (the message
            names the cases), before ``--force`` has touched any fold.
    """
    cases = dargs.get("cases")
    if not cases or not ws.splits_path.exists():
        return
    from neonet.data.cases import read_cases

    check_splits_match(read_splits(ws.splits_path), read_cases(cases), ws.splits_path)


def put_aside(ws: Workspace, stage: str, fold: int) -> Path | None:
    """Move a fold's results into ``<stage>/fold<k>/replaced/`` before ``--force`` re-trains it.

    They stay there until a fit of the fold succeeds (:func:`drop_replaced`), and go back in place
    when the new fit fails before saving a checkpoint (:func:`after_failed_fit`). When ``replaced/``
    is already there (an earlier ``--force`` whose fit failed after saving checkpoints), it keeps the
    fold's last finished results: what the failed fit left is removed, unless it finished after all.

    Returns:
        The ``replaced/`` folder, or None when the fold had no results.
    """
    present = [p for p in ws.fold_outputs(stage, fold) if p.exists()]
    dest = ws.replaced_dir(stage, fold)
    if not present:
        return dest if dest.is_dir() else None
    if dest.is_dir() and not _finished(ws, stage, fold):
        log.warning("fold %d: removing what a failed --force fit left (%s); %s keeps the earlier results", fold, present, dest)
        for item in present:
            shutil.rmtree(item) if item.is_dir() else item.unlink()
        return dest
    if dest.is_dir():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for item in present:
        os.replace(item, dest / item.name)
    log.info("fold %d: earlier results moved to %s until the new fit succeeds", fold, dest)
    return dest


def _finished(ws: Workspace, stage: str, fold: int) -> bool:
    """Whether the fold's ``artifact.json`` says its fit finished (a damaged one says nothing)."""
    try:
        return (ws.read_artifact(stage, fold) or {}).get("status") in ("fit-complete", "complete")
    except NeonetError:
        return False


def after_failed_fit(ws: Workspace, stage: str, fold: int, replaced: Path | None) -> str:
    """After a failed fit under ``--force``: put the earlier results back when the fit saved no checkpoint.

    Returns:
        A sentence for the error message saying where the fold's earlier results are ("" without ``--force``).
    """
    if replaced is None or not replaced.is_dir():
        return ""
    if any(ws.checkpoint_dir(stage, fold).glob("*.ckpt")):
        return (
            f"\nThe fold's earlier results (checkpoints, artifact.json, config.yaml, metrics.csv) are kept in {replaced}; "
            "they are removed when a fit of this fold succeeds. To go back to them, move them into "
            f"{ws.stage_dir(stage, fold)} in place of the new ones."
        )
    for item in ws.fold_outputs(stage, fold):  # what the failed fit wrote before it stopped (no checkpoint)
        if item.exists():
            shutil.rmtree(item) if item.is_dir() else item.unlink()
    for item in replaced.iterdir():
        os.replace(item, ws.stage_dir(stage, fold) / item.name)
    replaced.rmdir()
    return f"\nThe fit saved no checkpoint, so the fold's earlier results are back in place in {ws.stage_dir(stage, fold)}."


def drop_replaced(ws: Workspace, stage: str, fold: int) -> None:
    """Remove the results ``--force`` moved aside, now that a fit of the fold has succeeded."""
    dest = ws.replaced_dir(stage, fold)
    if dest.is_dir():
        shutil.rmtree(dest)
        log.info("fold %d: the new fit succeeded; the earlier results in %s were removed", fold, dest)


def cv(
    config: list[Path],
    folds: list[int] | None = None,
    force: bool = False,
    jobs: int = 1,
    summary: bool = True,
    seeds: list[int] | None = None,
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
        force: re-run folds that are already complete (after checking the manifest, their results are moved to
            ``<stage>/fold<k>/replaced/`` until the new fit succeeds).
        jobs: folds trained at the same time, each its own process with ``cpu_count // jobs`` CPU
            threads (unless ``OMP_NUM_THREADS`` is set) and its output in ``<stage>/fold<k>/cv.log``.
            Small CPU models finish sooner this way; on GPUs give each fold its own devices. With
            ``--seeds``, the (seed, fold) pairs share the ``jobs`` slots.
        summary: write the stage's cross-fold summary after the folds (off for the per-fold workers of ``jobs``).
        seeds: train the stage under each of these training seeds (``seed_everything``) on the same splits
            and upstream models (e.g. PattenNet's fold autoencoders): the config's own seed in
            ``<stage>/fold<k>/``, any other seed ``s`` in ``<stage>_seed<s>/fold<k>/``. The classification
            report then gives each seed's pooled AUC, their mean ± sd and an interval over patients and
            seeds. Stages with a ``stage`` argument only (the classifiers). Default: the config's seed.
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
    module = stage_module_of(cfg)
    runs = seed_runs(cfg, overrides, seeds, module)
    if print_config:
        import yaml

        for run in runs:
            print(yaml.safe_dump(run.config, sort_keys=False), end="" if run is runs[-1] else "---\n")
        return 0
    dargs = dict((cfg.get("data") or {}).get("init_args") or {})
    ws = Workspace(dargs.get("runs_dir") or "runs", dargs.get("experiment") or "default")
    check_missing_splits(ws)  # a deleted splits.json is never re-made under trained folds
    if ws.splits_path.exists():
        n_folds = int(read_splits(ws.splits_path)["folds"])
    else:  # a manifest with a split column gives one fold
        n_folds = int(dargs.get("folds") or 5)
        cases = Path(dargs["cases"]) if dargs.get("cases") else None
        if cases is not None and cases.is_file():  # a missing manifest is named by the fold's own data check
            n_folds = planned_folds(read_cases(cases), n_folds)
    todo = list(range(n_folds)) if folds is None else [int(k) for k in folds]
    bad = [k for k in todo if not 0 <= k < n_folds]
    if bad:
        raise NeonetError(f"fold(s) {bad} do not exist: the experiment has folds 0..{n_folds - 1}")

    def command(run: SeedRun, k: int, force_it: bool) -> str:
        """This command for one seed and fold ``k`` alone (what a message tells the user to run)."""
        return " ".join(["neonet cv", *run.command(configs, k, force_it)])

    def verified_complete(run: SeedRun, k: int) -> bool:
        """Whether fold ``k`` is complete, with its recorded best checkpoint still intact (else an error)."""
        if not ws.is_complete(run.stage, k):
            return False
        ws.verify_checkpoint(
            run.stage,
            k,
            remedy=f"Restore the file from a backup, or re-train the fold (its current results are moved aside to "
            f"{ws.replaced_dir(run.stage, k)} until the new fit succeeds):\n    {command(run, k, True)}",
        )
        return True

    stage_option = "stage" in inspect.signature(module).parameters
    if force:  # checks first: --force moves a fold's results aside only once the inputs are known to be usable
        check_manifest(dargs, ws)
    else:  # a finished fold is skipped and an interrupted one resumed only under the same settings
        for run in runs:
            started = [k for k in todo if ws.is_complete(run.stage, k) or ws.last_checkpoint(run.stage, k).exists()]
            check_fold_configs(ws, run.stage, started, run.config, stage_option=stage_option)
    for run in runs:
        seed = "" if run.seed is None or not seeds else f", training seed {run.seed}"
        log.info("cv: stage %s%s, experiment %s, folds %s", run.stage, seed, ws.experiment, todo)
    ran_any = False
    pending = [(run, k) for run in runs for k in todo if force or not verified_complete(run, k)]
    if jobs > 1 and len(pending) > 1:
        how = "forked from this process" if start_mode() == "fork" else "each a fresh interpreter"
        log.info("cv: %s, %d at a time (%s)", ", ".join(f"{r.stage} fold {k}" for r, k in pending), jobs, how)
        run_parallel(configs, pending, jobs, force, ws)
        ran_any, todo_serial = True, []
    else:
        todo_serial = [(run, k) for run in runs for k in todo]
    for run, k in todo_serial:
        stage = run.stage
        if not force and verified_complete(run, k):
            log.info("fold %d: %s already complete (%s) — skipped", k, stage, ws.artifact_path(stage, k))
            continue
        with fold_lock(ws.fold_lock(stage, k), stage, k, holder="neonet cv") as lock_fd:
            if not force and verified_complete(run, k):  # finished by another process since the check above
                log.info("fold %d: %s already complete (%s) — skipped", k, stage, ws.artifact_path(stage, k))
                continue
            runner = FoldRunner(configs, run.overrides, k, lock_fd)
            last = ws.last_checkpoint(stage, k)
            if not force and last.exists() and (ws.read_artifact(stage, k) or {}).get("status") != "fit-complete":
                check_resume_checkpoint(ws, stage, k, last, rerun=f"`{command(run, k, False)}`", retrain=command(run, k, True))
            replaced = put_aside(ws, stage, k) if force else None
            art = ws.read_artifact(stage, k) or {}
            if art.get("status") != "fit-complete":
                extra = ["--ckpt_path", str(last)] if last.exists() else []
                if extra:
                    log.info("fold %d: resuming from %s", k, last)
                try:
                    runner("fit", extra)
                except NeonetError as exc:
                    raise NeonetError(f"{exc}{after_failed_fit(ws, stage, k, replaced)}") from exc
            else:
                ws.verify_checkpoint(stage, k, remedy=f"Re-train the fold:\n    {command(run, k, True)}")
            drop_replaced(ws, stage, k)
            ran_any = True
            fields = module.after_fold(FoldContext(ws, k, run.config, runner))
            if run.seeded:
                fields["training_seed"] = run.seed
            ws.write_artifact(stage, k, status="complete", **fields)
    summary_path = ws.reports_dir / f"{runs[0].stage}_summary.json"
    if summary and (ran_any or not summary_path.exists()):
        module.after_folds(CVContext(ws, runs[0].config, todo))  # the classifiers' report covers every seed
    elif summary:
        log.info("cv: nothing new to summarise; the report is %s", summary_path)
    log.info("cv: %s done — results under %s", ", ".join(r.stage for r in runs), ws.root)
    return 0
