"""One process at a time per stage fold.

The lock is an exclusive ``flock`` on ``<stage>/fold<k>/.cv.lock``, held by whoever works on the fold:

- ``neonet fit`` takes it itself (rank zero, before it writes anything into the fold folder), so two
  fits of one fold (a cluster job submitted twice, a fit started by hand beside a ``neonet cv``) never
  train into the same checkpoints and ``metrics.csv``: the second stops with a message naming the first.
- ``neonet cv`` takes it before it decides anything about the fold and holds it until the fold is
  finished, post-fit work included; a second ``neonet cv`` on the fold is refused. It hands the lock
  to the ``neonet fit`` / ``predict`` / ``test`` processes it starts: the locked descriptor is inherited
  (``pass_fds``) and named in :data:`LOCK_FD_ENV`, and the child adopts it (the same lock, so the child
  does not wait for its own parent) and writes its own pid into the lock file. When the driver is
  killed, the lock lives on in the child, and the lock file names the child that is still training.

The operating system drops the lock when the last process holding it exits, however it exits, so
there are no stale locks to clean up. On systems without ``fcntl`` (Windows) no lock is taken, and on a
file system without lock support the run goes on with a warning.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from neonet.errors import NeonetError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

#: Environment variable naming the fold lock's descriptor that ``neonet cv`` hands to a child process.
LOCK_FD_ENV = "NEONET_FOLD_LOCK_FD"


def _stamp(fd: int, holder: str) -> None:
    """Write who holds the lock into the lock file (read by whoever is refused)."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{holder}, pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)


def restamp(fd: int | None, holder: str) -> None:
    """Name this process (as ``holder``) in a lock it holds again, e.g. after the child it handed the lock to exited."""
    if fd is not None and fcntl is not None:
        _stamp(fd, holder)


@contextlib.contextmanager
def fold_lock(path: str | os.PathLike, stage: str, fold: int, holder: str = "neonet cv") -> Iterator[int | None]:
    """Hold the fold's lock file for the duration of the block.

    Args:
        path: the lock file (created if missing).
        stage: stage name, for the error message.
        fold: fold index, for the error message.
        holder: what this process is, written into the lock file (``neonet cv``, ``neonet fit``).

    Yields:
        The locked file descriptor (hand it to child processes with :func:`child_env` and ``pass_fds``),
        or None without ``fcntl``.

    Raises:
        NeonetError: another process holds the lock; the message names it.
    """
    if fcntl is None:  # pragma: no cover - Windows
        yield None
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held = path.read_text(errors="replace").strip() or "unknown process"
            raise NeonetError(
                f"fold {fold} of stage {stage} is being run by another process ({held}; lock file {path}). "
                "Wait for it to finish, or stop it, then run the same command again."
            ) from None
        except OSError as exc:  # e.g. a cluster file system mounted without lock support
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            log.warning("%s: no lock support on this file system (%s): fold %d of %s runs unprotected", path, exc, fold, stage)
            yield None
            return
        _stamp(fd, holder)
        yield fd
    finally:
        os.close(fd)


def child_env(fd: int | None, env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a child process that takes over the lock ``fd`` (pass ``fd`` in ``pass_fds`` too)."""
    out = dict(os.environ if env is None else env)
    out.pop(LOCK_FD_ENV, None)
    if fd is not None:
        out[LOCK_FD_ENV] = str(fd)
    return out


def handed_lock(path: str | os.PathLike) -> int | None:
    """The descriptor of ``path``'s lock that a parent ``neonet cv`` handed to this process, or None.

    The descriptor named in :data:`LOCK_FD_ENV` counts only when it is open on ``path`` itself (same
    device and inode), so a variable inherited by an unrelated process never stands for a lock.
    """
    value = os.environ.get(LOCK_FD_ENV, "")
    if fcntl is None or not value.isdigit():
        return None
    try:
        handed, target = os.fstat(int(value)), os.stat(path)
    except OSError:
        return None
    return int(value) if (handed.st_dev, handed.st_ino) == (target.st_dev, target.st_ino) else None


@contextlib.contextmanager
def worker_lock(path: str | os.PathLike, stage: str, fold: int, holder: str, take: bool) -> Iterator[int | None]:
    """The lock of the process doing a fold's work: the one ``neonet cv`` handed down, else its own.

    Args:
        path: the fold's lock file.
        stage: stage name, for the error message.
        fold: fold index, for the error message.
        holder: what this process is (``neonet fit``), written into the lock file.
        take: take the lock when none was handed down (``neonet fit``); otherwise work without it.

    Yields:
        The lock's descriptor, or None when no lock is held.

    Raises:
        NeonetError: ``take`` and another process holds the lock; the message names it.
    """
    handed = handed_lock(path)
    if handed is not None:
        os.environ.pop(LOCK_FD_ENV, None)  # not for this process's own children (e.g. DDP ranks)
        _stamp(handed, holder)  # the lock file names the process that is actually working
        yield handed
    elif take:
        with fold_lock(path, stage, fold, holder) as fd:
            yield fd
    else:
        yield None
