"""One process at a time per stage fold.

``neonet cv`` holds an exclusive lock on ``<stage>/fold<k>/.cv.lock`` while it works on fold k, and
passes the locked descriptor to the ``neonet fit`` / ``test`` processes it starts, so the lock lives
as long as any of them does. A second ``neonet cv`` on the same fold (for instance a rerun after the
first driver was killed while its fold processes kept going) then stops with a clear message instead
of training the fold twice into the same checkpoints. The operating system drops the lock when the
last process holding it exits, however it exits, so there are no stale locks to clean up. On systems
without ``fcntl`` (Windows) no lock is taken.
"""

from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def fold_lock(path: str | os.PathLike, stage: str, fold: int) -> Iterator[int | None]:
    """Hold the fold's lock file for the duration of the block.

    Args:
        path: the lock file (created if missing).
        stage: stage name, for the error message.
        fold: fold index, for the error message.

    Yields:
        The locked file descriptor (pass it to child processes with ``pass_fds``), or None without ``fcntl``.

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
            holder = path.read_text(errors="replace").strip() or "unknown process"
            raise NeonetError(
                f"fold {fold} of stage {stage} is being run by another process ({holder}; lock file {path}). "
                "Wait for it to finish, or stop it, then run the same command again."
            ) from None
        os.ftruncate(fd, 0)
        os.write(
            fd, f"started by pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode()
        )
        yield fd
    finally:
        os.close(fd)
