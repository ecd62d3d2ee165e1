"""Atomic writes: all-or-nothing, and the result gets ordinary file permissions."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from neonet.run.atomic import atomic_path, read_json, write_json, write_text


def test_written_file_follows_umask_not_mkstemp(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        target = write_text(tmp_path / "a.txt", "x")
        assert stat.S_IMODE(target.stat().st_mode) == 0o644
        os.umask(0o002)
        target = write_json(tmp_path / "b.json", {"k": 1})
        assert stat.S_IMODE(target.stat().st_mode) == 0o664
    finally:
        os.umask(old)
    assert read_json(tmp_path / "b.json") == {"k": 1}


def test_failed_write_keeps_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "result.json"
    write_json(target, {"version": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert read_json(target) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]
