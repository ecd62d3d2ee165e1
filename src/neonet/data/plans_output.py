"""What ``neonet plan`` writes besides ``plans.json``: the per-case rows (``plans.csv``), the summary
tables (``plans.md``, also printed) and the figure (``plans.png``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from neonet.data.fingerprint import PERCENTILES, CaseFingerprint, Spacing
from neonet.run.atomic import atomic_path

_AXES = ("x", "y", "z")


def summary_stats(values: np.ndarray, digits: int = 3) -> dict[str, Any]:
    """Median, min and max (per column for a 2D array); None for no values."""
    if values.size == 0:
        return {"median": None, "min": None, "max": None}

    def out(v: np.ndarray) -> Any:
        return [round(float(x), digits) for x in v] if np.ndim(v) else round(float(v), digits)

    return {"median": out(np.median(values, axis=0)), "min": out(values.min(axis=0)), "max": out(values.max(axis=0))}


def fmt(values: Sequence[float] | None, sep: str = "×") -> str:
    """``(32, 32, 16)`` → ``32×32×16``; ``-`` for None."""
    return "-" if values is None else sep.join(f"{float(v):g}" for v in values)


def _row(name: str, stats: dict[str, Any]) -> str:
    """A markdown row ``| name | median | min | max |`` ("-" for no value)."""
    cells = [fmt(v) if isinstance(v, list) else ("-" if v is None else f"{v:g}") for v in stats.values()]
    return f"| {name} | " + " | ".join(cells) + " |"


def case_row(fp: CaseFingerprint, crop_spacing: Spacing, patch: Sequence[int]) -> dict[str, Any]:
    """One case's row of ``plans.csv``: its fingerprint, its largest tumour, and what that needs at the crop spacing."""
    row: dict[str, Any] = {"case_id": fp.case_id, "status": fp.status}
    row |= {f"spacing_{a}": round(s, 4) for a, s in zip(_AXES, fp.spacing)}
    row |= {f"shape_{a}": s for a, s in zip(_AXES, fp.shape)}
    row["liver_ml"] = "" if fp.liver_ml is None else round(fp.liver_ml, 3)
    for q, value in zip(PERCENTILES, fp.liver_percentiles or (None, None, None)):
        row[f"liver_p{q:g}"] = "" if value is None else round(value, 4)
    row["n_tumors"] = len(fp.tumours)
    row["tumor_volume_total_ml"] = round(sum(t.volume_ml for t in fp.tumours), 4)
    largest = fp.tumours[0] if fp.tumours else None
    row["largest_tumor_ml"] = "" if largest is None else round(largest.volume_ml, 4)
    for i, a in enumerate(_AXES):
        row[f"largest_extent_{a}_mm"] = "" if largest is None else round(largest.extent_mm[i], 3)
    need = fp.needed_patch.get(crop_spacing)
    for i, a in enumerate(_AXES):
        row[f"needed_patch_{a}"] = "" if need is None else need[i]
    row["fits_suggested_patch"] = "" if need is None else bool(all(n <= p for n, p in zip(need, patch)))
    return row


def case_record(fp: CaseFingerprint) -> dict[str, Any]:
    """One case's entry of ``plans.json`` (every tumour, the patch needed at every spacing planned for)."""
    return {
        "case_id": fp.case_id,
        "status": fp.status,
        "spacing": [round(s, 4) for s in fp.spacing],
        "shape": list(fp.shape),
        "liver_ml": None if fp.liver_ml is None else round(fp.liver_ml, 3),
        "liver_percentiles": None
        if fp.liver_percentiles is None
        else dict(zip((f"p{q:g}" for q in PERCENTILES), fp.liver_percentiles)),
        "tumors": [{"volume_ml": round(t.volume_ml, 4), "extent_mm": [round(e, 3) for e in t.extent_mm]} for t in fp.tumours],
        "needed_patch": [{"spacing": list(s), "patch_size": list(n)} for s, n in fp.needed_patch.items()],
    }


def markdown(plans: dict[str, Any]) -> str:
    """The summary as markdown (printed and written to ``plans.md``)."""
    fp, tlcr = plans["fingerprint"], plans["tlcr"]
    counts = plans["counts"]
    spacing, shape = fp["spacing_mm"], fp["shape"]
    tum = fp["tumors"]
    lines = [
        f"# neonet plan: {plans['cases']}",
        "",
        f"{counts['cases']} case(s): {counts['with_tumor']} with tumour, {counts['without_tumor']} without tumour voxels, "
        f"{counts['without_label']} without label; {tum['count']} tumour(s).",
        "",
        "| fingerprint | median | min | max |",
        "|---|---|---|---|",
        _row("spacing (mm)", spacing),
        _row("shape (voxels)", shape),
    ]
    lines += [_row(f"liver intensity {key}", stats) for key, stats in fp["liver_intensity"].items()]
    lines += [
        _row("tumours per case", tum["per_case"]),
        _row("tumour volume (ml)", tum["volume_ml"]),
        _row("tumour extent (mm)", tum["extent_mm"]),
        "",
        "| suggestion | value | rule |",
        "|---|---|---|",
        f"| target spacing (mm) | {fmt(plans['target_spacing']['spacing'])} | {plans['target_spacing']['rule']} |",
        f"| NeoSeg patch (voxels) | {fmt(plans['seg_patch']['patch_size'])} | {plans['seg_patch']['rule']} |",
        f"| TLCR patch (voxels at {fmt(tlcr['spacing'])} mm) | {fmt(tlcr['patch_size'])} | holds "
        f"{tlcr['n_fit']} of {tlcr['n_tumors']} tumours ({pct(tlcr['share'])}); {tlcr['rule']} |",
    ]
    if plans["crop_configs"]:
        lines += [
            "",
            f"| crop config | spacing (mm) | patch | tumours it holds | patch holding {pct(plans['fit_share'])} |",
            "|---|---|---|---|---|",
        ]
        for c in plans["crop_configs"]:
            lines.append(
                f"| {c['config']} | {fmt(c['spacing'])} | {fmt(c['patch_size'])} | {c['n_fit']} of {c['n_tumors']} "
                f"({pct(c['share'])}) | {fmt(c['patch_size_for_share'])} |"
            )
    return "\n".join(lines) + "\n"


def pct(share: float | None) -> str:
    """``0.953`` → ``95 %``; ``-`` for None."""
    return "-" if share is None else f"{100 * share:.0f} %"


def figure(path: Path, needs: list[tuple[int, int, int]], tlcr: dict[str, Any]) -> None:
    """``plans.png``: per axis, the patch size each tumour needs at the crop spacing, and the suggested patch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arr = np.asarray(needs, dtype=int).reshape(-1, 3)
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for i, ax in enumerate(axes):
        ax.set_xlabel(f"voxels along {_AXES[i]} at {tlcr['spacing'][i]:g} mm")
        if not arr.size:
            ax.text(0.5, 0.5, "no tumour in any case", ha="center", va="center", transform=ax.transAxes)
            continue
        ax.hist(arr[:, i], bins=np.arange(arr[:, i].min() - 0.5, arr[:, i].max() + 1.5), color="tab:blue")
        ax.axvline(tlcr["patch_size"][i], color="tab:red", ls="--", label=f"suggested {tlcr['patch_size'][i]}")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("tumours")
    fig.suptitle(
        f"patch each largest tumour needs (TLCR centring); {fmt(tlcr['patch_size'])} holds {pct(tlcr['share'])}", fontsize=10
    )
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
