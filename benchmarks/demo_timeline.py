"""Per-step wall time of a ``make demo`` run, read from its console log.

``make demo`` echoes each step's command (``.../python -m neonet <verb> ...``) and every neonet process logs
``HH:MM:SS LEVEL logger: message`` lines; the run ends with ``demo finished in N s``. A step runs from the last
timestamp of the step before it (the run's start, ``N`` s before its last line, for the first step) to its own
last timestamp. Run it on a log of ``make demo > demo.log 2>&1``::

    python benchmarks/demo_timeline.py demo.log --out benchmarks/results/demo_timeline_after

It prints a markdown table and writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import json
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

STEP = re.compile(r"-m neonet (\S+)(.*)$")
STAMP = re.compile(r"(?:^|\r)(\d\d:\d\d:\d\d) [A-Z]+ ")
TOTAL = re.compile(r"demo finished in (\d+) s")


def step_name(verb: str, rest: str) -> str:
    """A short name for a step: the verb, plus the config's stem and any ``--model.stage``."""
    config = re.findall(r"--config \S*/([\w.-]+)\.yaml", rest)
    stage = re.search(r"--model\.stage=(\S+)", rest)
    name = verb if not config else f"{verb} {config[-1]}"
    return f"{name} ({stage.group(1)})" if stage else name


def timeline(text: str) -> dict[str, Any]:
    """The steps of a demo log with their seconds, and the run's total.

    Raises:
        ValueError: the log has no ``demo finished in N s`` line or no step.
    """
    steps: list[dict[str, Any]] = []
    last: datetime | None = None
    day = 0
    total = None
    for line in text.splitlines():
        if match := TOTAL.search(line):
            total = int(match.group(1))
        if (match := STEP.search(line)) and not STAMP.search(line):
            steps.append({"step": step_name(match.group(1), match.group(2)), "start": last, "end": None})
            continue
        for stamp in STAMP.findall(line):
            now = datetime.strptime(stamp, "%H:%M:%S") + timedelta(days=day)
            if last is not None and now < last - timedelta(hours=1):  # past midnight
                day += 1
                now += timedelta(days=1)
            last = now
            if steps:
                steps[-1]["end"] = now
    if total is None or not steps:
        raise ValueError("not a finished `make demo` log: no `demo finished in N s` line, or no neonet step")
    end = last or datetime.min
    steps[0]["start"] = end - timedelta(seconds=total)
    rows = []
    for step in steps:
        start, stop = step["start"] or steps[0]["start"], step["end"] or step["start"]
        rows.append({"step": step["step"], "seconds": round((stop - start).total_seconds())})
    return {"steps": rows, "total_s": total, "sum_of_steps_s": sum(r["seconds"] for r in rows)}


def markdown(result: dict[str, Any]) -> str:
    """The steps as a markdown table."""
    lines = ["| step | s |", "|---|---|"]
    lines += [f"| {r['step']} | {r['seconds']} |" for r in result["steps"]]
    lines.append(f"| **total (make demo)** | **{result['total_s']}** |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Read the log, print the table, write ``<out>.json`` and ``<out>.md``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", type=Path, help="console log of `make demo`")
    parser.add_argument("--out", type=Path, default=None, help="write <out>.json and <out>.md")
    args = parser.parse_args()
    result = timeline(args.log.read_text(encoding="utf-8", errors="replace"))
    table = markdown(result)
    print(table, end="")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        args.out.with_suffix(".md").write_text(table, encoding="utf-8")


if __name__ == "__main__":
    main()
