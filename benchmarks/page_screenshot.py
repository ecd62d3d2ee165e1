"""Full-page screenshot of an experiment's page ``reports/index.html`` in headless Chromium.

Prints what the browser saw (images loaded, console errors, sections) and writes the PNG, by default
beside the page as ``reports/index.png`` (the page never shows that file), and the same record as
JSON beside the PNG (``index_browser.json``). Exits with 1 when an image did not load or the console
has an error. Needs Selenium and a local Chromium with its driver (``apt-get install chromium
chromium-driver``); nothing is downloaded.

Usage (after ``neonet report --experiment demo``, e.g. ``make report``)::

    python benchmarks/page_screenshot.py runs demo
    python benchmarks/page_screenshot.py runs demo --out /tmp/demo.png --width 1600
    python benchmarks/page_screenshot.py runs demo --write   # (re)write the page first, from the files on disk
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from neonet.errors import NeonetError
from neonet.report.browser import check_page
from neonet.report.page import write_page
from neonet.run.atomic import write_json
from neonet.workspace import Workspace


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs_dir", type=Path, help="folder holding the experiments (e.g. runs)")
    parser.add_argument("experiment", help="experiment name (e.g. demo)")
    parser.add_argument("--out", type=Path, default=None, help="PNG to write (default: <experiment>/reports/index.png)")
    parser.add_argument("--width", type=int, default=1280, help="window width in CSS pixels")
    parser.add_argument("--write", action="store_true", help="write the page from the experiment's files first")
    args = parser.parse_args()
    ws = Workspace(args.runs_dir, args.experiment)
    out = args.out or ws.page_screenshot
    try:
        if args.write:
            write_page(ws)
        check = check_page(ws.page, screenshot=out, width=args.width)
    except NeonetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"page        {ws.page}")
    print(f"sections    {' '.join(check.section_ids)}")
    print(f"images      {len(check.images)} ({len(check.broken_images)} not loaded: {check.broken_images})")
    print(f"console     {len(check.errors)} error(s)" + "".join(f"\n            {e}" for e in check.errors))
    print(f"screenshot  {out}")
    record = {"page": str(ws.page), "screenshot": str(out), "sections": check.section_ids, "images": check.images}
    print(f"record      {write_json(out.with_name(out.stem + '_browser.json'), record | {'console_errors': check.errors})}")
    return 1 if check.broken_images or check.errors else 0


if __name__ == "__main__":
    sys.exit(main())
