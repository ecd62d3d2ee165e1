"""Control rows of the classification report: what a classifier's score rests on.

A control stage is a classifier stage trained like another one (its *main* stage) with one input taken
away or swapped, recorded in its folds' ``artifact.json`` (``classifier.control``, from
:meth:`neonet.cls.datamodule.ClsDataModule.control`), never read from the folder name:

- **manual masks** (``--data.patches manual``): patches cut and labelled with the manifest's manual
  masks (``neonet crop --source manual --patches manual``) instead of the masks the main stage read
  (NeoSeg's out-of-fold masks in the demo). The test patients' manual masks are an input here, not a
  label: a diagnostic control of how much the score depends on the masks, not a deployable model.
- **image-free** (``--data.image constant``): the image channel is a constant, so the network sees only
  the label patch. Whatever it scores, it scores without image content.

The main stage is the longest reported non-control stage whose name, followed by ``_``, starts the
control's name (``pattennet_imagefree`` → ``pattennet``; ``pattennet_hist_manualmask`` →
``pattennet_hist``). Each control row states in words where its pooled AUC lies against the main row's
CI (:func:`sentence`); the rows go to ``reports/cls_controls.csv``, under "Controls" in
``cls_report.md`` and on the experiment page.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import pandas as pd

from neonet.errors import NeonetError
from neonet.report.stats import delong_test
from neonet.workspace import Workspace

log = logging.getLogger(__name__)

#: Columns of ``cls_controls.csv``.
COLUMNS = [
    "stage",
    "control",
    "main_stage",
    "n",
    "auc_pooled",
    "auc_ci_lo",
    "auc_ci_hi",
    "main_auc_pooled",
    "main_ci_lo",
    "main_ci_hi",
    "position",
    "delong_diff",
    "delong_p",
    "sentence",
]
#: Where a control's pooled AUC lies against its main row's CI.
WITHIN, ABOVE, BELOW, NO_MAIN = "within", "above", "below", "no main row"


def control_of(ws: Workspace, stage: str) -> dict[str, Any] | None:
    """The control record of a classifier stage (``classifier.control`` of its folds' ``artifact.json``), None
    for an ordinary stage.

    Raises:
        NeonetError: the stage's folds record different controls (they were trained with other settings).
    """
    found: list[dict[str, Any] | None] = []
    for fold in ws.stage_folds(stage):
        classifier = (ws.read_artifact(stage, fold) or {}).get("classifier")
        if not isinstance(classifier, dict):
            continue  # a fold without a record (unfinished, or trained before neonet recorded it)
        record = classifier.get("control") or None
        if record not in found:
            found.append(record)
    if len(found) > 1:
        shown = ", ".join("none" if r is None else str(r) for r in found)
        raise NeonetError(
            f"stage {stage}: its folds record different controls ({shown}); re-train the stage with `neonet cv ... --force`"
        )
    return found[0] if found else None


def find_controls(ws: Workspace, stages: list[str]) -> dict[str, dict[str, Any]]:
    """Control stages among ``stages``: stage → its control record."""
    out = {}
    for stage in stages:
        record = control_of(ws, stage)
        if record is not None:
            out[stage] = record
    return out


def kind(record: dict[str, Any]) -> str:
    """A control in words: ``image-free``, ``manual masks``, or both, from its record."""
    parts = []
    patches = record.get("patches")
    if isinstance(patches, dict):
        source = patches.get("source")
        what = "manual masks" if source == "manual" else f"{source or 'other'} masks"
        parts.append(f"{what} ({patches.get('dir', 'patches_' + str(patches.get('set')))}/)")
    if record.get("image") == "constant":
        parts.append("image-free (constant image, label patch only)")
    return " + ".join(parts) or "control"


def main_stage_of(stage: str, candidates: list[str]) -> str | None:
    """The main stage of a control: the longest of ``candidates`` whose name plus ``_`` starts ``stage``."""
    hits = [c for c in candidates if c != stage and stage.startswith(c + "_")]
    return max(hits, key=len) if hits else None


def position(auc: float, lo: float, hi: float) -> str:
    """Where ``auc`` lies against the CI ``[lo, hi]``: ``within``, ``above`` or ``below``."""
    if auc > hi:
        return ABOVE
    if auc < lo:
        return BELOW
    return WITHIN


def _auc_ci(auc: float, lo: float, hi: float) -> str:
    return f"{auc:.2f} [{lo:.2f}, {hi:.2f}]"


def sentence(row: dict[str, Any], record: dict[str, Any], level: int) -> str:
    """What a control row says about its main stage, in words (one or two sentences).

    Args:
        row: the control's row (``stage``, ``main_stage``, ``position``, AUCs and CIs as in :data:`COLUMNS`).
        record: the control's record (:func:`control_of`).
        level: the CI's confidence level in percent.
    """
    c, m = row["stage"], row["main_stage"]
    own = f"{c} {_auc_ci(row['auc_pooled'], row['auc_ci_lo'], row['auc_ci_hi'])}"
    if row["position"] == NO_MAIN:
        return f"{own}: no main row to compare with (no reported stage whose name starts {c}'s)."
    where = {WITHIN: "lies within", ABOVE: "lies above", BELOW: "lies below"}[row["position"]]
    main_ci = f"[{row['main_ci_lo']:.2f}, {row['main_ci_hi']:.2f}]"
    lead = f"{own} {where} {m}'s {level} % CI {main_ci} ({m} {row['main_auc_pooled']:.2f})"
    image_free = record.get("image") == "constant"
    if image_free:
        meaning = {
            WITHIN: f"its score can be explained without image content: the label patch alone gives as much as {m}",
            BELOW: f"the image content adds to what the label patch alone gives {m}",
            ABOVE: f"{m} scores lower with the image than with the label patch alone",
        }[row["position"]]
    elif not _manual(record):  # another patch set (e.g. the twin test's patches_twin/): no claim about masks
        where_from = kind(record)
        meaning = {
            WITHIN: f"on {where_from} {m} scores alike",
            ABOVE: f"on {where_from} {m} scores higher",
            BELOW: f"on {where_from} {m} scores lower",
        }[row["position"]]
    else:
        meaning = {
            WITHIN: f"with manual masks {m} scores alike: its score does not depend on which masks cut and label its patches",
            ABOVE: f"{m}'s score depends on its masks: with manual masks it scores higher",
            BELOW: f"{m}'s score depends on its masks: with manual masks it scores lower, so part of its score comes "
            "from its own masks (e.g. a segmentation error that follows the label)",
        }[row["position"]]
    text = f"{lead}: {meaning}."
    if image_free and np.isfinite(row["auc_ci_lo"]) and row["auc_ci_lo"] > 0.5:
        text += f" Its CI lies above 0.5: the label patch alone carries the PNI label for {m}'s network."
    if _manual(record):
        text += " (Manual masks of the test patients are an input here: a diagnostic control, not a deployable model.)"
    return text


def _manual(record: dict[str, Any]) -> bool:
    """Whether the control read patches cut with the manual masks (the mask-dependence control)."""
    patches = record.get("patches")
    return isinstance(patches, dict) and patches.get("source") == "manual"


def controls_table(
    summary: pd.DataFrame,
    frame: pd.DataFrame,
    controls: dict[str, dict[str, Any]],
    alpha: float = 0.05,
    clusters: dict[str, str] | None = None,
) -> pd.DataFrame:
    """One row per control stage: its pooled AUC [CI], its main stage's, where it lies, a paired DeLong test, the sentence.

    Args:
        summary: the report's ``cls_summary`` (``stage``, ``auc_pooled``, ``auc_ci_lo``, ``auc_ci_hi``).
        frame: the pooled out-of-fold predictions (``stage``, ``case_id``, ``y_true``, ``prob``).
        controls: control stage → record (:func:`find_controls`).
        alpha: 1 - the CI's confidence level.
        clusters: case_id → resampling cluster (Obuchowski's clustered DeLong variance), None for one case each.
    """
    from neonet.report.cls_report import cluster_array  # cls_report imports this module at call time only

    level = round(100 * (1 - alpha))
    by_stage = summary.set_index("stage")
    mains = [s for s in by_stage.index if s not in controls]
    rows = []
    for stage, record in controls.items():
        if stage not in by_stage.index:
            continue
        r = by_stage.loc[stage]
        main = main_stage_of(stage, mains)
        row: dict[str, Any] = dict.fromkeys(COLUMNS, math.nan)
        row.update(
            stage=stage,
            control=kind(record),
            main_stage=main or "",
            n=int(r["n"]),
            auc_pooled=float(r["auc_pooled"]),
            auc_ci_lo=float(r["auc_ci_lo"]),
            auc_ci_hi=float(r["auc_ci_hi"]),
            position=NO_MAIN,
        )
        if main is not None:
            m = by_stage.loc[main]
            row.update(main_auc_pooled=float(m["auc_pooled"]), main_ci_lo=float(m["auc_ci_lo"]), main_ci_hi=float(m["auc_ci_hi"]))
            row["position"] = position(row["auc_pooled"], row["main_ci_lo"], row["main_ci_hi"])
            both = frame[frame["stage"] == stage][["case_id", "y_true", "prob"]].merge(
                frame[frame["stage"] == main][["case_id", "y_true", "prob"]], on="case_id", suffixes=("_c", "_m")
            )
            try:
                test = delong_test(
                    both["y_true_c"], both["prob_c"], both["prob_m"], clusters=cluster_array(both["case_id"], clusters)
                )
                row.update(delong_diff=float(test["diff"]), delong_p=float(test["p_value"]))
            except ValueError as exc:  # one class only among the shared cases
                log.warning("control %s vs %s: no DeLong test (%s)", stage, main, exc)
        row["sentence"] = sentence(row, record, level)
        rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def controls_markdown(table: pd.DataFrame, alpha: float = 0.05) -> str:
    """The "Controls" section of ``cls_report.md`` (empty without control stages)."""
    from neonet.report.cls_report import markdown
    from neonet.report.stats import format_p

    if table.empty:
        return ""
    level = round(100 * (1 - alpha))
    shown = table.assign(delong_p=table["delong_p"].map(lambda p: format_p(p) if np.isfinite(p) else "—"))
    cols = [c for c in COLUMNS if c not in ("sentence", "n")]
    return (
        "\n## Controls\n\n"
        f"Each control is its main stage trained and tested on the same folds with one input swapped or taken away "
        f"(pooled AUC [{level} % CI]; `delong_p`: paired DeLong test of control against main stage on the same "
        "patients). See docs/controls.md.\n\n" + markdown(shown[cols]) + "\n" + "".join(f"- {s}\n" for s in table["sentence"])
    )
