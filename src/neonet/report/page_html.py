"""HTML pieces of the experiment page: escaped cells, tables, sections, figures (stdlib only).

Every value that reaches the page goes through :func:`esc` (or :func:`cell`, which formats and then
escapes), so a case id, stage name or file name can never inject markup.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd

#: A SHA-256 (or git sha) cell: set in a monospace font and broken anywhere.
HASH = re.compile(r"[0-9a-f]{40,64}")

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1200px;
       padding: 0 1.5em 3em; color: #1d2329; line-height: 1.45; }
header { border-bottom: 2px solid #2c5d8a; margin-bottom: 1em; }
nav a { margin-right: 0.9em; white-space: nowrap; }
section { border-top: 1px solid #cfd6dd; padding-top: 0.4em; margin-top: 1.6em; }
h1 { margin-bottom: 0.2em; } h2 { color: #2c5d8a; } h3 { margin-bottom: 0.3em; }
.wide { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; margin: 0.4em 0 1em; font-size: 0.86em; }
th, td { border: 1px solid #cfd6dd; padding: 0.2em 0.5em; text-align: right; vertical-align: top; }
th { background: #eef2f6; } td.text, th.text { text-align: left; }
td.hash { font-family: ui-monospace, monospace; font-size: 0.9em; word-break: break-all; min-width: 18em; }
tr.pooled td { font-weight: 600; background: #f6f8fa; }
code { font-size: 0.9em; background: #f3f5f7; padding: 0 0.2em; }
.not-run { color: #8a5a00; background: #fff6e0; padding: 0.4em 0.7em; border-left: 4px solid #e0a800; }
.problem { color: #8a1c1c; background: #fde8e8; padding: 0.4em 0.7em; border-left: 4px solid #c62828; }
.note { color: #44505c; font-size: 0.92em; }
.figures { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; max-width: 560px; } figure img { max-width: 100%; border: 1px solid #cfd6dd; }
figcaption { font-size: 0.85em; color: #44505c; }
"""


def esc(value: Any) -> str:
    """``value`` as text safe inside HTML elements and quoted attributes."""
    return html.escape(str(value), quote=True)


def fmt(value: Any) -> str:
    """A value as the page shows it (not escaped): 3 decimals, small numbers in e-notation, "—" for missing."""
    if value is None:
        return "—"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return "—"
        if math.isinf(v):
            return "∞" if v > 0 else "−∞"
        return f"{v:.2e}" if v != 0 and abs(v) < 1e-3 else f"{v:.3f}"
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v) for v in value)
    return str(value)


def cell(value: Any, tag: str = "td") -> str:
    """One table cell, numbers right-aligned, text left-aligned."""
    numeric = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    cls = "" if numeric or value is None else ' class="text hash"' if HASH.fullmatch(str(value)) else ' class="text"'
    return f"<{tag}{cls}>{esc(fmt(value))}</{tag}>"


def shown_rows(rows: Sequence[Mapping[str, Any]] | pd.DataFrame, columns: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The rows as a table shows them: dicts of ``columns`` (those the rows have, in order; default all)."""
    records = rows.to_dict("records") if isinstance(rows, pd.DataFrame) else [dict(r) for r in rows]
    present: list[str] = []
    for r in records:
        present += [c for c in r if c not in present]
    cols = [c for c in columns if c in present] if columns is not None else present
    return [{c: r.get(c) for c in cols} for r in records]


def table(rows: Sequence[Mapping[str, Any]], pooled: Iterable[int] = ()) -> str:
    """An HTML table of ``rows`` (from :func:`shown_rows`: every row has the same keys, the columns).

    Args:
        rows: the rows.
        pooled: indices of rows to emphasise (e.g. the pooled row).
    """
    if not rows:
        return '<p class="note">(no rows)</p>'
    cols = list(rows[0])
    emphasised = set(pooled)
    # a column name may break after each underscore, so that wide tables fit the page
    head = "<tr>" + "".join(f'<th class="text">{esc(c).replace("_", "_<wbr>")}</th>' for c in cols) + "</tr>"
    body = [
        ('<tr class="pooled">' if i in emphasised else "<tr>") + "".join(cell(r.get(c)) for c in cols) + "</tr>"
        for i, r in enumerate(rows)
    ]
    rows_html = "\n".join(body)
    return f'<div class="wide"><table>\n<thead>{head}</thead>\n<tbody>\n{rows_html}\n</tbody>\n</table></div>\n'


def paragraph(text: str, cls: str = "note") -> str:
    """An escaped paragraph."""
    return f'<p class="{esc(cls)}">{esc(text)}</p>\n'


def not_run(make_target: str, what: str = "not run") -> str:
    """The line of a stage that has not run: ``not run — run `make <target>```."""
    return f'<p class="not-run">{esc(what)} — run <code>make {esc(make_target)}</code></p>\n'


def problem(text: str) -> str:
    """A part of the page that could not be read (the rest of the page is still written)."""
    return f'<p class="problem">{esc(text)}</p>\n'


def link(href: str, text: str) -> str:
    """A link to a file relative to the page."""
    return f'<a href="{esc(quote(href))}">{esc(text)}</a>'


def figures(paths: Sequence[Path], base: Path) -> str:
    """Figures referenced beside the page (relative links), captioned from their file names."""
    if not paths:
        return ""
    items = []
    for path in paths:
        rel = path.relative_to(base).as_posix()
        caption = Path(rel).with_suffix("").as_posix().replace("_", " ").replace("/", " / ")
        src = esc(quote(rel))
        items.append(
            f'<figure><a href="{src}"><img src="{src}" alt="{esc(caption)}"></a>'
            f"<figcaption>{esc(caption)} (<code>{esc(rel)}</code>)</figcaption></figure>"
        )
    return '<h3>Figures</h3>\n<div class="figures">\n' + "\n".join(items) + "\n</div>\n"


def section(section_id: str, title: str, body: str) -> str:
    """One section of the page with its anchor id."""
    return f'<section id="{esc(section_id)}">\n<h2>{esc(title)}</h2>\n{body}</section>\n'


def document(title: str, header: str, nav: Sequence[tuple[str, str]], body: str) -> str:
    """The whole page: inline style, no scripts, nothing fetched from the network."""
    links = " ".join(f'<a href="#{esc(i)}">{esc(t)}</a>' for i, t in nav)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<link rel="icon" href="data:,">\n'
        f"<title>{esc(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        f"<header>\n<h1>{esc(title)}</h1>\n{header}<nav>{links}</nav>\n</header>\n{body}</body>\n</html>\n"
    )
