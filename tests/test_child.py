"""neonet.run.child: fold processes forked from the driver's imports, a fresh interpreter where a fork is unsafe."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from neonet import __version__
from neonet.run import child
from neonet.run.child import start_mode, start_neonet


def test_a_forked_child_runs_the_verb_into_its_log(tmp_path: Path) -> None:
    # in a fresh interpreter, as `neonet cv` is: the test runner itself may hold threads of earlier tests
    out = tmp_path / "cv.log"
    script = (
        "import sys; from pathlib import Path; from neonet.run.child import start_mode, start_neonet\n"
        "assert start_mode() == 'fork', start_mode()\n"
        "child = start_neonet(['--version'], output=Path(sys.argv[1]))\n"
        "assert child.forked\n"
        "sys.exit(child.wait())\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True, text=True, encoding="utf-8", check=False)
    assert proc.returncode == 0, proc.stderr
    assert out.read_text(encoding="utf-8").strip() == f"neonet {__version__}"


def test_a_failing_child_returns_its_exit_code_and_message(tmp_path: Path) -> None:
    out = tmp_path / "cv.log"
    handle = start_neonet(["nosuchverb"], output=out)
    assert handle.forked == (start_mode() == "fork")
    assert handle.wait() == 2
    assert "unknown verb 'nosuchverb'" in out.read_text(encoding="utf-8")


def test_another_thread_means_a_fresh_interpreter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stop = threading.Event()
    worker = threading.Thread(target=stop.wait)
    worker.start()
    try:
        assert start_mode() == "exec"  # a lock held by the other thread would stay locked in a forked child
        out = tmp_path / "cv.log"
        handle = start_neonet(["--version"], output=out)
        assert not handle.forked
        assert handle.wait() == 0
        assert out.read_text(encoding="utf-8").strip() == f"neonet {__version__}"
    finally:
        stop.set()
        worker.join()
    monkeypatch.setenv(child.START_ENV, "exec")
    assert start_mode() == "exec"
