"""The experiment page: ``<runs>/<experiment>/reports/index.html``, written by ``neonet report``.

One self-contained HTML file (inline style, no scripts, nothing from the network) that shows what the
experiment's files hold: the cohort and its splits (``splits.json``), each stage's per-fold and pooled
results (the NeoSeg report, the TLCR manifest, the NeoGen stage summaries and synthetic-patch
quality, the classification table with its ablation, DeLong tests, training seeds and controls), every PNG under
``reports/`` grouped by stage (referenced beside the page, captioned from its file name), the
provenance of every fold (git sha, config, checkpoint SHA-256 and upstream files from its
``artifact.json``; the provenance records of patches, latents and synthetic patches) and the W&B runs.

A stage that has not run gets a "not run — run ``make <stage>``" line; a file that cannot be read
gets a line naming it, and the rest of the page is still written. The page only reads: every number
on it comes from a file in the experiment folder, and the page links those files; every table it
shows is also written as JSON, ``reports/index.json`` (``{"sections": {<section id>: [[row, ...], ...]}}``).
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from neonet import __version__
from neonet.data.splits import read_splits
from neonet.errors import NeonetError
from neonet.report import page_html as h
from neonet.report import page_stages as sections
from neonet.report.page_provenance import files_section, provenance_section, wandb_section
from neonet.report.page_stages import GEN_STAGES
from neonet.run.atomic import write_json, write_text
from neonet.workspace import STAGES, Workspace, git_sha

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Section:
    """One stage's part of the page.

    Attributes:
        id: the section's anchor (``index.html#<id>``).
        title: its heading.
        prefixes: file-name prefixes of the stage's figures under ``reports/``.
    """

    id: str
    title: str
    prefixes: tuple[str, ...]


SECTIONS = (
    Section("cohort", "Cohort and splits", ()),
    Section("seg", "NeoSeg: liver and tumour segmentation", ("seg",)),
    Section("crop", "TLCR: tumour-centred crops", ("crop", "patch", "tlcr", "pni_signal")),
    Section("autoencoder", "NeoGen 1a: autoencoder", ("autoencoder", "reconstruction", "ae_")),
    Section("diffusion", "NeoGen 1b: latent diffusion", ("diffusion",)),
    Section("controlnet", "NeoGen 2: ControlNet", ("controlnet",)),
    Section("synthesize", "Synthetic patches and their quality", ("gen_quality", "synth")),
    Section("classification", "NeoCls: classification", ("cls", "roc", "scores", "calibration", "saliency")),
)
OTHER_STAGES = Section("other-stages", "Other stages", ())
OTHER_FIGURES = Section("figures", "Other figures", ())


def _plain(value: Any) -> Any:
    """A table value for JSON: numpy scalars as Python numbers, NaN as null."""
    value = value.item() if hasattr(value, "item") else value
    return None if isinstance(value, float) and math.isnan(value) else value


class PageSources:
    """What one page build reads: the split file, the stages with fold results, the classifier stages.

    Args:
        ws: the experiment.
    """

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        #: the section being built, and every table shown, by section (written to ``reports/index.json``)
        self.section = ""
        self.tables: dict[str, list[list[dict[str, Any]]]] = {}
        self.splits: dict[str, Any] | None = None
        self.splits_problem: str | None = None
        try:
            self.splits = read_splits(ws.splits_path) if ws.splits_path.is_file() else None
        except NeonetError as exc:  # shown in the cohort section; the other sections do without it
            self.splits_problem = str(exc)
        found = {p.parent.parent.name for p in ws.root.glob("*/fold*/artifact.json")} if ws.root.is_dir() else set()
        self.stages = [s for s in STAGES if s in found] + sorted(found - set(STAGES))
        self.classifiers = sorted({p.parent.parent.name for p in ws.all_test_predictions()})
        shown = {"seg", *GEN_STAGES, *self.classifiers}
        #: stages of no section of their own (e.g. a stage added to neonet): shown under "other stages"
        self.other_stages = [s for s in self.stages if s not in shown and not self._is_classifier(s)]

    def _is_classifier(self, stage: str) -> bool:
        try:
            return any("classifier" in art for _, art in self.artifacts(stage))
        except NeonetError:
            return False

    def table(
        self, rows: Sequence[Mapping[str, Any]] | pd.DataFrame, columns: Sequence[str] | None = None, pooled: Iterable[int] = ()
    ) -> str:
        """An HTML table of ``rows`` (``columns`` picks and orders them); the rows shown are also kept for
        ``reports/index.json`` under the current section."""
        shown = h.shown_rows(rows, columns)
        self.tables.setdefault(self.section, []).append([{k: _plain(v) for k, v in r.items()} for r in shown])
        return h.table(shown, pooled)

    def key_values(self, pairs: Mapping[str, Any]) -> str:
        """A two-column table of names and values."""
        return self.table([{"name": k, "value": h.fmt(v) if isinstance(v, (dict, list)) else v} for k, v in pairs.items()])

    def artifacts(self, stage: str) -> Iterator[tuple[int, dict[str, Any]]]:
        """(fold, artifact.json) of every fold of ``stage`` that has one."""
        for k in self.ws.stage_folds(stage):
            art = self.ws.read_artifact(stage, k)
            if art is not None:
                yield k, art

    def rel(self, path: Any) -> str:
        """A path as the page shows it: relative to the experiment folder when inside it."""
        p = Path(str(path))
        try:
            return p.resolve().relative_to(self.ws.root.resolve()).as_posix()
        except (ValueError, OSError):
            return str(path)

    def report_csv(self, name: str) -> pd.DataFrame | None:
        """``reports/<name>.csv``, or None when it is not there."""
        path = self.ws.reports_dir / f"{name}.csv"
        return pd.read_csv(path) if path.is_file() else None

    def source(self, *names: str) -> str:
        """A "from <files>" line with links to the report files a table came from."""
        files = [h.link(n, n) for n in names if (self.ws.reports_dir / n).is_file()]
        return f'<p class="note">from {", ".join(files)}</p>\n' if files else ""


BUILDERS: dict[str, Callable[[PageSources], str]] = {
    "cohort": sections.cohort,
    "seg": sections.seg,
    "crop": sections.crop,
    **{s: sections.gen_stage(s) for s in GEN_STAGES},
    "synthesize": sections.synthesize,
    "classification": sections.classification,
    OTHER_STAGES.id: sections.other_stages,
}


# ----------------------------------------------------------------------------- figures
def figure_groups(ws: Workspace, classifiers: Sequence[str] = (), others: Sequence[str] = ()) -> dict[str, list[Path]]:
    """Every PNG under ``reports/`` by section id (``figures`` for those of no stage), from its file name.

    A figure belongs to the section whose prefix starts its name (or the name of its subfolder of
    ``reports/``), the longest prefix first; a classifier stage's name counts as a prefix of the
    classification section, and the name of a stage in ``others`` as one of the "other stages" section.
    """
    prefixes = [(p, s.id) for s in SECTIONS for p in s.prefixes] + [(c, "classification") for c in classifiers]
    prefixes += [(o, OTHER_STAGES.id) for o in others]
    prefixes.sort(key=lambda ps: -len(ps[0]))
    groups: dict[str, list[Path]] = {}
    for path in ws.report_figures():
        rel = path.relative_to(ws.reports_dir)
        names = [rel.parts[0].lower(), rel.stem.lower()] if len(rel.parts) > 1 else [rel.stem.lower()]
        found = next((sid for name in names for p, sid in prefixes if name.startswith(p)), OTHER_FIGURES.id)
        groups.setdefault(found, []).append(path)
    return groups


# ----------------------------------------------------------------------------- the page
def _guarded(build: Callable[[PageSources], str], page: PageSources, what: str) -> str:
    """A section's body, or a line naming the file that could not be read (the page is written anyway)."""
    try:
        return build(page)
    except (NeonetError, OSError, ValueError, KeyError, TypeError, pd.errors.ParserError) as exc:
        log.warning("experiment page: %s: %s", what, exc)
        return h.problem(f"could not show {what}: {exc}")


def render(ws: Workspace) -> tuple[str, dict[str, Any]]:
    """The experiment page as HTML text, and every table it shows (by section) as a JSON-ready record."""
    page = PageSources(ws)
    groups = figure_groups(ws, page.classifiers, page.other_stages)
    body, nav = [], []
    sections = [*SECTIONS, OTHER_STAGES] if page.other_stages else SECTIONS
    for sec in sections:
        page.section = sec.id
        content = _guarded(BUILDERS[sec.id], page, sec.title) + h.figures(groups.get(sec.id, []), ws.reports_dir)
        body.append(h.section(sec.id, sec.title, content))
        nav.append((sec.id, sec.id.replace("-", " ")))
    if groups.get(OTHER_FIGURES.id):
        body.append(h.section(OTHER_FIGURES.id, OTHER_FIGURES.title, h.figures(groups[OTHER_FIGURES.id], ws.reports_dir)))
        nav.append((OTHER_FIGURES.id, "other figures"))
    for sid, title, build in (
        ("provenance", "Provenance", provenance_section),
        ("wandb", "Weights & Biases runs", wandb_section),
        ("files", "Report files", files_section),
    ):
        page.section = sid
        body.append(h.section(sid, title, _guarded(build, page, title)))
        nav.append((sid, sid))
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    header = h.paragraph(
        f"Written {now} by neonet {__version__} (git {git_sha() or 'unknown'}) from the files of this experiment."
    )
    record = {"experiment": ws.experiment, "written": now, "neonet_version": __version__, "git_sha": git_sha()}
    return h.document(f"neonet experiment {ws.experiment}", header, nav, "".join(body)), record | {"sections": page.tables}


def write_page(ws: Workspace) -> Path:
    """Write the experiment page ``reports/index.html`` and its tables ``reports/index.json`` (each
    atomically, the page last) and return the page's path."""
    text, tables = render(ws)
    write_json(ws.page_tables, tables)
    path = write_text(ws.page, text)
    log.info("experiment page: %s (its tables: %s)", path, ws.page_tables)
    return path
