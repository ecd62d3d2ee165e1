"""A neonet verb in a child process that starts from this interpreter's imports (``neonet cv``'s folds).

``neonet cv`` runs each fold's work (its driver, ``neonet fit``, NeoSeg's ``neonet predict``) in a process of
its own, so that nothing (model, trainer, W&B run, random generators, CUDA context) carries over from one fold
into the next. A fresh ``python -m neonet`` process imports torch, Lightning, MONAI and W&B again: a few seconds
on a quiet machine, two or three times per fold and stage, and much more when the cores are shared. On Linux the
child is therefore *forked* from the driver, which has imported all that and built nothing: it starts in
milliseconds with the same modules, runs :func:`neonet.run.cli.main` on its command line exactly as
``python -m neonet`` would (``sys.argv`` included, so Lightning's DDP launcher re-runs the same command for the
other ranks), and exits. A fork is only safe from a process with one thread and no CUDA context; otherwise (and
on systems without ``fork``) the child is a fresh interpreter, as before. :func:`start_mode` says which.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

#: ``NEONET_CHILD_START=exec`` makes every child a fresh interpreter (e.g. to compare, or where a library
#: misbehaves after ``fork``); the default ``auto`` forks where that is safe.
START_ENV = "NEONET_CHILD_START"


def start_mode() -> str:
    """``fork`` when a child can be forked from this process safely, else ``exec`` (a fresh interpreter).

    Forking needs Linux's ``fork`` start method, a process with a single thread (a lock held by another thread
    at the moment of the fork would stay locked in the child forever) and no CUDA context (CUDA cannot be used
    again in a forked child); ``NEONET_CHILD_START=exec`` asks for fresh interpreters.
    """
    if os.environ.get(START_ENV, "auto") == "exec" or not sys.platform.startswith("linux"):
        return "exec"
    if "fork" not in multiprocessing.get_all_start_methods() or threading.active_count() > 1:
        return "exec"
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return "exec"
    return "fork"


def neonet_command(argv: list[str]) -> list[str]:
    """The command line of ``python -m neonet <argv>`` in a fresh interpreter."""
    return [sys.executable, "-m", "neonet", *argv]


def _rebind_streams() -> None:
    """Point ``sys.stdout``/``sys.stderr`` and the log handlers that wrote to them at descriptors 1 and 2.

    After ``dup2`` a plain interpreter's streams already write to the log; a host that had replaced them (a test
    runner's capture) would otherwise keep the child's output.
    """
    import logging

    old = {id(sys.stdout): 1, id(sys.stderr): 2}
    sys.stdout = open(1, "w", encoding="utf-8", errors="replace", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", encoding="utf-8", errors="replace", buffering=1, closefd=False)  # noqa: SIM115
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and id(handler.stream) in old:
            handler.setStream(sys.stdout if old[id(handler.stream)] == 1 else sys.stderr)


def _as_neonet_main(argv: list[str], env: dict[str, str], output: Path | None) -> None:
    """In the forked child: become ``python -m neonet <argv>`` and run it (the child's exit code is its result)."""
    atexit._clear()  # the parent's exit handlers are the parent's: this process runs its own only
    if output is not None:  # the fold's log takes stdout and stderr, as a fresh process's redirection would
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        _rebind_streams()
    os.environ.clear()
    os.environ.update(env)
    threads = env.get("OMP_NUM_THREADS", "")
    torch = sys.modules.get("torch")
    if torch is not None and threads.isdigit() and int(threads) > 0:
        torch.set_num_threads(int(threads))  # torch read the variable when this process imported it
    import neonet.__main__ as entry

    sys.argv = [str(entry.__file__), *argv]
    sys.modules["__main__"] = entry  # what Lightning's DDP launcher reads to re-run this command for other ranks
    from neonet.run.cli import main

    try:
        code = main(list(argv))
    finally:
        atexit._run_exitfuncs()  # as an interpreter's exit would (multiprocessing ends a forked child with os._exit)
    sys.exit(code)


def start_neonet(
    argv: list[str], env: dict[str, str] | None = None, output: Path | None = None, pass_fds: tuple[int, ...] = ()
) -> Child:
    """Start ``python -m neonet <argv>`` as a child process (forked where :func:`start_mode` allows).

    Args:
        argv: the verb and its options, e.g. ``["fit", "--config", "seg.yaml", "--data.fold=0"]``.
        env: the child's environment (default: this process's).
        output: file that receives the child's stdout and stderr (default: this process's).
        pass_fds: descriptors the child must keep open (a fold lock); a forked child keeps them all anyway.
    """
    env = dict(os.environ if env is None else env)
    if start_mode() == "exec":
        handle: IO[Any] | None = open(output, "w") if output is not None else None  # noqa: SIM115 - Child closes it
        stderr = subprocess.STDOUT if handle is not None else None
        proc = subprocess.Popen(neonet_command(argv), stdout=handle, stderr=stderr, env=env, pass_fds=pass_fds)
        return Child(proc, handle)
    for stream in (sys.stdout, sys.stderr):  # nothing buffered here may be printed twice (once by the child)
        stream.flush()
    forked = multiprocessing.get_context("fork").Process(
        target=_as_neonet_main, args=(list(argv), env, output), name=f"neonet {argv[0]}"
    )
    forked.start()
    return Child(forked)


def run_neonet(
    argv: list[str], env: dict[str, str] | None = None, output: Path | None = None, pass_fds: tuple[int, ...] = ()
) -> int:
    """Run ``python -m neonet <argv>`` as a child process (:func:`start_neonet`) and return its exit code."""
    return start_neonet(argv, env, output, pass_fds).wait()


class Child:
    """A running ``neonet`` child: a forked :class:`multiprocessing.Process` or a fresh interpreter's ``Popen``."""

    def __init__(self, proc: Any, handle: IO[Any] | None = None) -> None:
        self.proc, self.handle = proc, handle
        self.forked = isinstance(proc, multiprocessing.process.BaseProcess)

    def poll(self) -> int | None:
        """The exit code when the child has ended (1 for an uncaught exception, whose traceback it printed), else None."""
        if self.forked:
            code = self.proc.exitcode
        else:
            code = self.proc.poll()
        if code is not None and self.handle is not None:
            self.handle.close()
        return None if code is None else int(code)

    def wait(self) -> int:
        """Wait for the child to end and return its exit code."""
        if self.forked:
            self.proc.join()
        else:
            self.proc.wait()
        code = self.poll()
        assert code is not None
        return code
