"""``benchmarks/demo_timeline.py``: the per-step seconds of a ``make demo`` console log."""

from __future__ import annotations

from types import ModuleType

import pytest

from bench_scripts import load_benchmark


def _timeline() -> ModuleType:
    return load_benchmark("demo_timeline")


LOG = """\
.venv/bin/python -m neonet synth --out runs/demo/data --cases 72 --seed 0
23:59:50 INFO neonet.data.phantom: phantom: wrote 72 cases
.venv/bin/python -m neonet cv --jobs 3  --config experiments/demo/seg.yaml
23:59:58 INFO neonet.run.cv: cv: stage seg
crop:  50%|#####     | 1/2\r00:01:10 WARNING neonet.seg.crop: a warning inside a progress bar
00:02:00 INFO neonet.run.cv: cv: seg done
.venv/bin/python -m neonet cv --config experiments/demo/pattennet.yaml -- --model.stage=pattennet_syn
00:02:05 INFO neonet.run.cv: cv: stage pattennet_syn
00:03:00 INFO neonet.run.cv: cv: pattennet_syn done
demo finished in 200 s
"""


def test_steps_run_from_the_previous_steps_last_timestamp_across_midnight() -> None:
    result = _timeline().timeline(LOG)
    assert result["total_s"] == 200
    assert [r["step"] for r in result["steps"]] == ["synth", "cv seg", "cv pattennet (pattennet_syn)"]
    # the run started 200 s before its last timestamp (00:03:00): 23:59:40
    assert [r["seconds"] for r in result["steps"]] == [10, 130, 60]


def test_an_unfinished_log_is_refused() -> None:
    with pytest.raises(ValueError, match="demo finished in"):
        _timeline().timeline(LOG.replace("demo finished in 200 s\n", ""))
