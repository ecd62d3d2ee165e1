"""The experiment page's provenance, W&B and file sections (see :mod:`neonet.report.page`).

Every fold's ``artifact.json`` gives the git commit, the resolved config, the best checkpoint's SHA-256
and the hashes of the files the fold read; the provenance records beside shared outputs (patches,
latent caches, synthetic patches, their quality report) give theirs. W&B runs come from the name and
id each fit records in ``artifact.json`` and from the run folders on disk.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from neonet.report import page_html as h
from neonet.run.atomic import read_json

if TYPE_CHECKING:
    from neonet.report.page import PageSources

#: Keys of a provenance record that are not informational (see :mod:`neonet.run.provenance`).
RESERVED = ("provenance", "settings", "inputs", "outputs", "git_sha")


def _hashed(data: Any, name: str = "") -> Iterator[tuple[str, str, str]]:
    """Every ``{"path", "sha256"}`` record inside ``data`` as (name, path, sha256)."""
    if isinstance(data, dict):
        if isinstance(data.get("sha256"), str):
            yield name or "file", str(data.get("path") or data.get("manifest") or ""), data["sha256"]
        for k, v in data.items():
            if isinstance(v, (dict, list)):
                yield from _hashed(v, f"{name}.{k}" if name else str(k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from _hashed(v, f"{name}[{i}]")


def _short(sha: str | None) -> str:
    return f"{sha[:12]}…" if sha else "—"


def provenance_section(page: PageSources) -> str:
    parts = [
        h.paragraph(
            "Each fold's artifact.json: the git commit that trained it, its resolved config, the SHA-256 of its "
            "best checkpoint and of the files it read (upstream)."
        )
    ]
    for stage in page.stages:
        rows = []
        for k, art in page.artifacts(stage):
            best = art.get("best_checkpoint") or {}
            upstream = "; ".join(f"{n}: {Path(p).name} {_short(s)}" for n, p, s in _hashed(art.get("upstream") or {}))
            rows.append(
                {
                    "fold": k,
                    "status": art.get("status"),
                    "git sha": (art.get("git_sha") or "—")[:12],
                    "updated": art.get("updated"),
                    "config": page.rel(config) if (config := page.ws.config_path(stage, k)).is_file() else "missing",
                    "best checkpoint": Path(str(best.get("path"))).name if best.get("path") else None,
                    "sha256": best.get("sha256"),
                    "upstream": upstream or None,
                }
            )
        parts.append(f"<h3>{h.esc(stage)}</h3>\n" + page.table(rows))
    records = _records(page)
    if records:
        parts.append("<h3>Provenance records of shared outputs</h3>\n" + page.table(records))
    if not page.stages and not records:
        parts.append(h.not_run("seg", "nothing trained yet"))
    return "".join(parts)


def _records(page: PageSources) -> list[dict[str, Any]]:
    """One row per provenance record beside a shared output: what it recorded and its inputs' hashes."""
    ws = page.ws
    folds = range(int((page.splits or {}).get("folds") or 0))
    paths = [ws.crop_config, *(ws.latent_record(k) for k in folds), *(ws.synthetic_config(k) for k in folds)]
    paths.append(ws.gen_quality_report("json"))
    rows = []
    for path in (p for p in paths if p.is_file()):
        data = read_json(path)
        about = "; ".join(f"{k}: {v}" for k, v in data.items() if k not in RESERVED and isinstance(v, (str, int, float)))
        inputs = "; ".join(f"{n}: {Path(p).name} {_short(s)}" for n, p, s in _hashed(data.get("inputs") or {}))
        rows.append(
            {
                "record": page.rel(path),
                "git sha": str(data.get("git_sha") or "—")[:12],
                "settings": len(data.get("settings") or {}),
                "recorded": about or None,
                "inputs (sha256)": inputs or None,
            }
        )
    return rows


def wandb_section(page: PageSources) -> str:
    recorded = {}
    for stage in page.stages:
        for k, art in page.artifacts(stage):
            run = art.get("wandb")
            if isinstance(run, dict) and run.get("id"):
                recorded[str(run["id"])] = (stage, f"fold{k}", run)
    rows, seen = [], set()
    for folder in page.ws.wandb_runs():
        run_id = folder.name.rsplit("-", 1)[-1]
        stage, where = folder.parents[2].name, folder.parents[1].name  # <stage>/<fold<k> or cv>/wandb/<run>
        stage, where, run = recorded.get(run_id, (stage, where, {}))
        name = run.get("name") or (f"{stage}-cv" if where == "cv" else None)
        mode = "offline" if folder.name.startswith("offline-") else "online"
        rows.append({"stage": stage, "fold": where, "run name": name, "run id": run_id, "mode": mode, "folder": page.rel(folder)})
        seen.add(run_id)
    for run_id, (stage, where, run) in recorded.items():
        if run_id not in seen:
            rows.append({"stage": stage, "fold": where, "run name": run.get("name"), "run id": run_id, "folder": None})
    if not rows:
        return h.paragraph("No W&B runs in this experiment (WANDB_MODE=disabled, or the runs were moved).")
    return page.table(rows) + h.paragraph(
        "Project neonet, group = experiment. Upload offline runs with: wandb sync <stage>/*/wandb/offline-run-*"
    )


def files_section(page: PageSources) -> str:
    ws = page.ws
    files = [p for p in sorted(ws.reports_dir.rglob("*")) if p.is_file() and p.suffix != ".png" and p != ws.page]
    if not files:
        return h.paragraph("(none)")
    items = "".join(
        f"<li>{h.link(p.relative_to(ws.reports_dir).as_posix(), p.relative_to(ws.reports_dir).as_posix())}</li>" for p in files
    )
    return f"<ul>{items}</ul>\n"
