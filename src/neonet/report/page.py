"""The experiment page: ``<runs>/<experiment>/reports/index.html``, written by ``neonet report``.

One self-contained HTML file (inline style, no scripts, nothing from the network) that shows what the
experiment's files hold: the cohort and its splits (``splits.json``), each stage's per-fold and pooled
results (the NeoSeg report, the TLCR manifest, the NeoGen stage summaries and synthetic-patch
quality, the classification table with its ablation, DeLong tests and controls), every PNG under
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
from neonet.report.page_provenance import files_section, provenance_section, wandb_section
from neonet.run.atomic import read_json, write_json, write_text
from neonet.workspace import STAGES, Workspace, git_sha

log = logging.getLogger(__name__)

#: Stage folders whose folds the page shows in the NeoGen sections.
GEN_STAGES = ("autoencoder", "diffusion", "controlnet")


@dataclass(frozen=True)
class Section:
    """One stage's part of the page.

    Attributes:
        id: the section's anchor (``index.html#<id>``).
        title: its heading.
        make: the make target that runs the stage (named when it has not run).
        prefixes: file-name prefixes of the stage's figures under ``reports/``.
    """

    id: str
    title: str
    make: str
    prefixes: tuple[str, ...]


SECTIONS = (
    Section("cohort", "Cohort and splits", "seg", ()),
    Section("seg", "NeoSeg: liver and tumour segmentation", "seg", ("seg",)),
    Section("crop", "TLCR: tumour-centred crops", "crop", ("crop", "patch", "tlcr", "pni_signal")),
    Section("autoencoder", "NeoGen 1a: autoencoder", "autoencoder", ("autoencoder", "reconstruction", "ae_")),
    Section("diffusion", "NeoGen 1b: latent diffusion", "diffusion", ("diffusion",)),
    Section("controlnet", "NeoGen 2: ControlNet", "controlnet", ("controlnet",)),
    Section("synthesize", "Synthetic patches and their quality", "synthesize", ("gen_quality", "synth")),
    Section("classification", "NeoCls: classification", "pattennet", ("cls", "roc", "scores", "calibration", "saliency")),
)
OTHER_STAGES = Section("other-stages", "Other stages", "report", ())
OTHER_FIGURES = Section("figures", "Other figures", "report", ())


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


# ----------------------------------------------------------------------------- sections
def _cohort(page: PageSources) -> str:
    doc = page.splits
    if page.splits_problem:
        return h.problem(page.splits_problem)
    if doc is None:
        return h.not_run("seg", "no splits.json yet (the first fold of any stage writes it)")
    records = doc.get("cases") or {}

    def counts(cases: list[str]) -> dict[str, int]:
        pni = [records.get(c, {}).get("pni") for c in cases]
        return {"pos": sum(p == 1 for p in pni), "neg": sum(p == 0 for p in pni), "unlabelled": sum(p not in (0, 1) for p in pni)}

    rows: list[dict[str, Any]] = []
    for s in doc["splits"]:
        test, fit = counts(list(s["test"])), counts(list(s["train"]) + list(s["val"]))
        rows.append(
            {
                "fold": int(s["fold"]),
                "test cases": len(s["test"]),
                "test PNI+": test["pos"],
                "test PNI−": test["neg"],
                "training cases": len(s["train"]),
                "inner validation cases": len(s["val"]),
                "training PNI+": fit["pos"],
                "training PNI−": fit["neg"],
            }
        )
    every = counts(list(records))
    rows.append({"fold": "all", "test cases": len(records), "test PNI+": every["pos"], "test PNI−": every["neg"]})
    patients = {r.get("patient_id", c) for c, r in records.items()}
    groups = {r["group"] for r in records.values() if r.get("group")}
    lines = [
        f"{len(records)} cases of {len(patients)} patients: {every['pos']} PNI+, {every['neg']} PNI−"
        + (f", {every['unlabelled']} unlabelled" if every["unlabelled"] else "")
        + (f", in {len(groups)} groups kept within one fold" if groups else "")
        + f". {doc['folds']} folds, patient-level and PNI-stratified, split seed {doc.get('seed')}, inner validation "
        f"fraction {doc.get('val_fraction')}; manifest fingerprint {doc.get('fingerprint')}. Training counts include "
        "the inner validation cases."
    ]
    return (
        "".join(h.paragraph(line) for line in lines) + page.table(rows, pooled=[len(rows) - 1]) + h.paragraph("from splits.json")
    )


def _fold_status(page: PageSources, stage: str) -> list[dict[str, Any]]:
    return [
        {
            "fold": k,
            "status": a.get("status"),
            "monitor": a.get("monitor"),
            "best score": a.get("best_score"),
            "epochs": a.get("epochs"),
        }
        for k, a in page.artifacts(stage)
    ]


def _seg(page: PageSources) -> str:
    path = page.ws.reports_dir / "seg_summary.json"
    if not path.is_file():
        status = _fold_status(page, "seg")
        if not status:
            return h.not_run("seg")
        return page.table(status) + h.not_run("seg", "out-of-fold report not written yet (neonet cv writes it after the folds)")
    summary = read_json(path)
    rows: list[dict[str, Any]] = [
        {"fold": int(k), "cases": v.get("n"), "Dice liver": v.get("dice_liver"), "Dice tumour": v.get("dice_tumor")}
        for k, v in sorted((summary.get("per_fold") or {}).items(), key=lambda kv: int(kv[0]))
    ]
    liver, tumour = summary.get("dice_liver") or {}, summary.get("dice_tumor") or {}
    rows.append(
        {
            "fold": "pooled (mean ± sd)",
            "cases": summary.get("n_cases"),
            "Dice liver": f"{h.fmt(liver.get('mean'))} ± {h.fmt(liver.get('sd'))}",
            "Dice tumour": f"{h.fmt(tumour.get('mean'))} ± {h.fmt(tumour.get('sd'))}",
        }
    )
    note = f"{summary.get('n_missing')} case(s) without an out-of-fold prediction. " if summary.get("n_missing") else ""
    return (
        h.paragraph(f"Out-of-fold Dice of each test case's mask in its original space. {note}")
        + page.table(rows, pooled=[len(rows) - 1])
        + page.source("seg_summary.json", "seg_oof_dice.csv")
    )


def _crop(page: PageSources) -> str:
    ws = page.ws
    if not ws.patches_manifest.is_file():
        return h.not_run("crop")
    frame = pd.read_csv(ws.patches_manifest, dtype={"case_id": str, "patient_id": str})
    status = frame["status"].astype(str).str.split(":").str[0]
    pni = pd.to_numeric(frame["pni"], errors="coerce").map({1.0: "PNI+", 0.0: "PNI−"}).fillna("unlabelled")
    by = pd.crosstab(status, pni)
    rows = [{"status": s, **{c: int(by.loc[s, c]) for c in by.columns}, "cases": int(by.loc[s].sum())} for s in by.index]
    parts = [h.paragraph(f"{len(frame)} cases in patches/manifest.csv, by crop status and label:"), page.table(rows)]
    if "n_tumors" in frame:
        tumours = frame["n_tumors"].dropna().astype(int).value_counts().sort_index()
        parts.append(page.table([{"tumours in the mask": int(n), "cases": int(c)} for n, c in tumours.items()]))
    if "tumor_volume_ml" in frame and frame["tumor_volume_ml"].notna().any():
        vol = frame.groupby(pni)["tumor_volume_ml"].median()
        parts.append(h.paragraph("median largest-tumour volume (ml): " + ", ".join(f"{k} {h.fmt(v)}" for k, v in vol.items())))
    if ws.crop_config.is_file():
        settings = read_json(ws.crop_config).get("settings") or {}
        parts.append("<h3>Settings (patches/crop_config.json)</h3>\n" + page.key_values(settings))
    return "".join(parts)


def _gen_stage(stage: str) -> Callable[[PageSources], str]:
    def build(page: PageSources) -> str:
        frame = page.report_csv(f"{stage}_summary")
        if frame is None:
            status = _fold_status(page, stage)
            if not status:
                return h.not_run(stage)
            return page.table(status) + h.not_run(
                stage, "cross-fold summary not written yet (neonet cv writes it after the folds)"
            )
        rows = frame.to_dict("records")
        record = page.ws.reports_dir / f"{stage}_summary.json"
        summary = (read_json(record).get("summary") or {}) if record.is_file() else {}
        if summary:  # mean and sd over the folds, as the stage's summary recorded them
            rows.append({"fold": "mean", **{c: v.get("mean") for c, v in summary.items()}})
            rows.append({"fold": "sd", **{c: v.get("sd") for c, v in summary.items()}})
        pooled = [len(rows) - 2, len(rows) - 1] if summary else []
        return page.table(rows, pooled=pooled) + page.source(f"{stage}_summary.csv", f"{stage}_summary.json")

    return build


def _synthesize(page: PageSources) -> str:
    ws = page.ws
    frame = page.report_csv("gen_quality")
    folds = [k for k in range(int((page.splits or {}).get("folds") or 0)) if ws.synthetic_manifest(k).is_file()]
    if frame is None and not folds:
        return h.not_run("synthesize")
    parts = []
    if folds:
        counts = []
        for k in folds:
            manifest = pd.read_csv(ws.synthetic_manifest(k))
            counts.append({"fold": k, "synthetic patches": len(manifest)})
        parts.append(page.table(counts) + h.paragraph("from synthetic/fold<k>/manifest.csv"))
    if frame is None:
        parts.append(h.not_run("synthesize", "quality report not written yet"))
    else:
        parts.append(
            "<h3>Quality (real vs synthetic, per fold)</h3>\n"
            + page.table(frame)
            + page.source("gen_quality.csv", "gen_quality.json")
        )
    return "".join(parts)


SUMMARY_COLUMNS = [
    "stage", "model", "variant", "folds", "n", "n_pos", "auc_mean", "auc_sd", "auc_pooled", "auc_ci_lo", "auc_ci_hi",
    "auc_delong_lo", "auc_delong_hi", "sensitivity_youden", "specificity_youden", "brier", "ece",
]  # fmt: skip
FOLD_COLUMNS = [
    "stage", "fold", "n", "n_pos", "auc", "ap", "threshold_youden_val", "sensitivity_youden", "specificity_youden",
    "accuracy_05", "f1_05", "logit_median_neg", "logit_median_pos",
]  # fmt: skip


def _classification(page: PageSources) -> str:
    from neonet.report.cls_report import _below_chance_note, _scale_note

    summary = page.report_csv("cls_summary")
    if summary is None:
        if page.classifiers:
            return h.not_run("report", f"trained ({', '.join(page.classifiers)}) but not reported yet")
        return h.not_run("pattennet") + _controls(page)
    doc = read_json(page.ws.reports_dir / "cls_report.json") if (page.ws.reports_dir / "cls_report.json").is_file() else {}
    settings = doc.get("settings") or {}
    level = round(100 * (1 - float(settings.get("alpha", 0.05))))
    parts = [
        h.paragraph(
            f"Out-of-fold predictions on real held-out patients. Pooled AUC with a {level} % "
            f"{settings.get('bootstrap', 'bootstrap')} bootstrap CI ({settings.get('n_boot', '?')} resamples) and a "
            f"DeLong CI; thresholded metrics at {settings.get('threshold', 'each fold’s validation Youden threshold')}."
        ),
        "<h3>Summary</h3>\n" + page.table(summary, SUMMARY_COLUMNS),
    ]
    notes = (_scale_note(summary) + _below_chance_note(summary, level)).strip()
    parts += [h.paragraph(n.strip()) for n in notes.split("\n\n") if n.strip()]
    ablation = page.report_csv("cls_ablation")
    if ablation is not None:
        cols = [c for c in ablation.columns if not c.startswith("auc_pooled")]
        parts.append("<h3>Ablation: real only vs real + synthetic</h3>\n" + page.table(ablation, cols))
    delong = page.report_csv("cls_delong")
    if delong is not None:
        parts.append(f"<h3>DeLong tests ({settings.get('delong_variance', 'DeLong')} variance)</h3>\n")
        parts.append(page.table(delong) if len(delong) else h.paragraph("(one stage only)"))
    folds = page.report_csv("cls_per_fold")
    if folds is not None:
        parts.append("<h3>Per fold</h3>\n" + page.table(folds, FOLD_COLUMNS))
    parts.append(page.source("cls_summary.csv", "cls_ablation.csv", "cls_delong.csv", "cls_per_fold.csv", "cls_report.json"))
    return "".join(parts) + _controls(page)


def _flat(data: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Scalar leaves of nested dicts as (dotted name, value); lists are left out."""
    if isinstance(data, dict):
        for k, v in data.items():
            yield from _flat(v, f"{prefix}{k}.")
    elif isinstance(data, (int, float, str, bool)) or data is None:
        yield prefix[:-1], data


def _controls(page: PageSources) -> str:
    ws = page.ws
    parts = []
    null = Workspace(ws.runs_dir, f"{ws.experiment}-null")
    null_summary = null.reports_dir / "cls_summary.csv"
    if null_summary.is_file():
        frame = pd.read_csv(null_summary)
        parts.append(
            h.paragraph(f"Null control (experiment {null.experiment}, a strength-0 phantom): its pooled AUC must stay near 0.5.")
            + page.table(frame, ["stage", "folds", "n", "auc_pooled", "auc_ci_lo", "auc_ci_hi", "auc_mean", "auc_sd"])
        )
        if null.page.is_file():
            parts.append("<p>" + h.link(f"../../{null.experiment}/reports/index.html", f"{null.experiment}'s page") + "</p>\n")
    probe = ws.reports_dir / "pni_signal_probe.json"
    if probe.is_file():
        values = dict(_flat(read_json(probe)))
        parts.append(h.paragraph("PNI signal probe (benchmarks/pni_signal_probe.py):") + page.key_values(values))
    if not parts:
        return "<h3>Controls</h3>\n" + h.not_run("null", "no null control or signal probe for this experiment")
    return "<h3>Controls</h3>\n" + "".join(parts)


def _other_stages(page: PageSources) -> str:
    """Stages without a section of their own: their ``reports/<stage>_summary.csv``, else their folds' status."""
    parts = []
    for stage in page.other_stages:
        frame = page.report_csv(f"{stage}_summary")
        body = (
            page.table(frame) + page.source(f"{stage}_summary.csv")
            if frame is not None
            else page.table(_fold_status(page, stage))
        )
        parts.append(f"<h3>{h.esc(stage)}</h3>\n{body}")
    return "".join(parts)


BUILDERS: dict[str, Callable[[PageSources], str]] = {
    "cohort": _cohort,
    "seg": _seg,
    "crop": _crop,
    **{s: _gen_stage(s) for s in GEN_STAGES},
    "synthesize": _synthesize,
    "classification": _classification,
    OTHER_STAGES.id: _other_stages,
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
