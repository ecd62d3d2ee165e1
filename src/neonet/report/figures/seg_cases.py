"""``seg_cases.png`` of ``neonet evaluate``: NeoSeg's Dice, HD95 and surface Dice for every external case.

One bar per case and metric (liver; tumour too when a manual mask holds one), the cohort mean as a dashed
line, and the scans that lie outside the training cohort's fingerprint (``ood.csv``) hatched and named in the
legend, so a low Dice can be read beside the reason the models may not know that scan.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import numpy as np
import pandas as pd

from neonet.report.figures.common import plt, save_png

#: (column of ``seg_metrics.csv``, axis label), liver first; a tumour column is drawn only where it has values.
METRICS = (
    ("dice_liver", "Dice, liver"),
    ("hd95_liver", "HD95 (mm), liver"),
    ("nsd_liver", "NSD at 2 mm, liver"),
    ("dice_tumor", "Dice, tumour"),
    ("hd95_tumor", "HD95 (mm), tumour"),
    ("nsd_tumor", "NSD at 2 mm, tumour"),
)


def plot_seg_cases(metrics: pd.DataFrame, path: Path, title: str, flagged: Collection[str] = ()) -> Path | None:
    """Write ``path``: one panel per metric with values, one bar per case; None when no case has any.

    Args:
        metrics: ``seg_metrics.csv`` of the external report (``case_id`` and the metric columns).
        path: the PNG to write (atomically).
        title: the figure's title (names the experiment and the cohort).
        flagged: case ids outside the training cohort's fingerprint, drawn hatched.
    """
    panels = [(c, name) for c, name in METRICS if c in metrics and pd.to_numeric(metrics[c], errors="coerce").notna().any()]
    if not panels:
        return None
    cases = metrics["case_id"].astype(str).tolist()
    x = np.arange(len(cases))
    fig, axes = plt.subplots(1, len(panels), figsize=(1.2 + max(2.6, 0.45 * len(cases)) * len(panels), 3.8), squeeze=False)
    for ax, (column, name) in zip(axes[0], panels):
        values = pd.to_numeric(metrics[column], errors="coerce").to_numpy(float)
        ood = [c in flagged for c in cases]
        # a case without the metric gets no bar (a 0 would read as a perfect HD95)
        bars = ax.bar(x, values, color=["tab:orange" if o else "tab:blue" for o in ood])
        for bar, o in zip(bars, ood):
            if o:
                bar.set_hatch("//")
        finite = values[np.isfinite(values)]
        if len(finite):
            ax.axhline(float(finite.mean()), color="black", linewidth=0.8, linestyle="--", label=f"mean {finite.mean():.3g}")
        if column.startswith(("dice", "nsd")):
            ax.set_ylim(0, 1)
        ax.set_xticks(x, cases, rotation=60, ha="right", fontsize=7)
        ax.set_title(name, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right" if column.startswith(("dice", "nsd")) else "upper right")
    note = f"; hatched: outside the training cohort ({', '.join(sorted(set(flagged) & set(cases)))})" if flagged else ""
    fig.suptitle(f"{title}{note}", fontsize=9)
    fig.tight_layout()
    return save_png(fig, path)
