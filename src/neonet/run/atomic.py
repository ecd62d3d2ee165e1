"""Atomic file writes: write to a temporary file beside the target, then rename.

An interrupted run therefore never leaves a half-written file that a later stage trusts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from neonet.errors import NeonetError


def _umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it onto ``target`` on success.

    Args:
        target: final file path.
        suffix: suffix of the temporary file (default: the target's full suffix, so that
            libraries choosing a format from the extension, e.g. ``.nii.gz``, still work).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(target.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{suffix}", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600; give the result the permissions a plain open() would (0666 minus the
        # umask), so that results stay readable by the group on a shared cluster
        if tmp_path.exists():
            tmp_path.chmod(0o666 & ~_umask())
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it is renamed onto ``target``.

    An interrupted or failed write leaves ``target`` as it was and removes the temporary folder.

    Args:
        target: the final folder.
        replace: replace an existing non-empty ``target`` (moved aside first, deleted once the new folder is in
            place, put back if the rename fails). An empty ``target`` folder is always replaced.

    Raises:
        NeonetError: ``target`` is a file, or a non-empty folder and ``replace`` is False (checked after the
            caller's writes; callers check first so that nothing is computed in vain).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        tmp.chmod(0o777 & ~_umask())  # mkdtemp creates 0700
        old = None
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()
        elif target.exists():
            if not replace or not target.is_dir():
                raise NeonetError(f"{target} exists and is not an empty folder; nothing was written there")
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            os.replace(target, old / target.name)
        try:
            os.replace(tmp, target)
        except OSError:
            if old is not None:
                os.replace(old / target.name, target)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_text(target: str | os.PathLike, text: str) -> Path:
    """Atomically write ``text`` to ``target`` (UTF-8, whatever the locale: reports hold ``±`` and ``✓``)."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


def write_json(target: str | os.PathLike, data: Any) -> Path:
    """Atomically write ``data`` as indented JSON (paths and numpy scalars are converted)."""

    def default(obj: Any) -> Any:
        if isinstance(obj, os.PathLike):
            return str(obj)
        if hasattr(obj, "item"):
            return obj.item()
        if hasattr(obj, "tolist"):
            return obj.tolist()
        raise TypeError(f"not JSON serialisable: {type(obj).__name__}")

    return write_text(target, json.dumps(data, indent=2, sort_keys=False, default=default) + "\n")


#: What to do about an unreadable JSON file when its reader names nothing more specific.
JSON_REMEDY = (
    "It was cut short or damaged (a crash, a full disk or a partial copy): restore it from a backup, "
    "or delete it and run the command that wrote it again."
)


def read_json(path: str | os.PathLike, remedy: str = JSON_REMEDY) -> Any:
    """Read a JSON file; an unreadable one is an error that names the file and ``remedy``.

    Every JSON file neonet reads back from a runs folder (``splits.json``, ``artifact.json``,
    reports) is read here, so a truncated or damaged one never surfaces as a bare ``JSONDecodeError``.

    Args:
        path: the file.
        remedy: what to do when it cannot be read (a sentence naming the way on).

    Raises:
        FileNotFoundError: the file does not exist.
        NeonetError: the file cannot be read, is not UTF-8 text, or is truncated or not JSON.
    """
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise  # a missing file means something else to each reader (not run yet, deleted...)
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise NeonetError(f"{path}: cannot read this JSON file: {_json_problem(exc)}. {remedy}") from exc


def _json_problem(exc: Exception) -> str:
    """What is wrong with a JSON file, in words."""
    if isinstance(exc, json.JSONDecodeError):
        if not exc.doc.strip():
            return "it is empty"
        return f"it is truncated or not JSON ({exc.msg}: line {exc.lineno} column {exc.colno})"
    if isinstance(exc, UnicodeDecodeError):
        return f"it is not text ({exc.reason} at byte {exc.start})"
    return f"it cannot be read ({getattr(exc, 'strerror', None) or type(exc).__name__})"


def write_csv(target: str | os.PathLike, frame: Any) -> Path:
    """Atomically write a pandas DataFrame as CSV without its index."""
    with atomic_path(target) as tmp:
        frame.to_csv(tmp, index=False)
    return Path(target)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
