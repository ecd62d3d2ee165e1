"""The ``neonet plan`` verb: fingerprint a cohort and suggest spacings and patch sizes (nnU-Net's plans step).

For every case (:mod:`neonet.data.fingerprint`): spacing, shape, liver intensity percentiles, tumour
count, volumes and extents. From the cohort:

* **target spacing** — nnU-Net's rule: the median spacing per axis; but when the coarsest axis is
  anisotropic (its median spacing more than :data:`ANISOTROPY_THRESHOLD` times the finest other
  axis's, and its median size in voxels less than 1/:data:`ANISOTROPY_THRESHOLD` of the smallest
  other axis's), that axis takes the 10th percentile of its spacings instead (never finer than the
  other axes), so thick-slice scans are not interpolated into many made-up slices;
* **NeoSeg patch size** — the median image size at the target spacing, rounded up to a multiple of
  the network's downsampling per axis; while it holds more voxels than the budget, the axis that is
  longest in mm loses one multiple;
* **TLCR patch size** at the crop spacing — the smallest patch (rounded up to the autoencoder's
  multiple) that holds at least 95 % of the tumours whole (each case's largest tumour, the one TLCR
  centres on; :func:`neonet.seg.tlcr.patch_for_share`), and the share of tumours each crop config
  (``experiments/*/crop.yaml``) holds with its own patch size and spacing.

Writes ``plans.json`` (summary, rules and per-case fingerprints), ``plans.csv`` (one row per case),
``plans.md`` and ``plans.png`` (what each tumour needs against the suggested patch), into the
experiment folder (``--experiment``) or beside ``--out``.
"""

from __future__ import annotations

import datetime as _dt
import inspect
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from tqdm import tqdm

from neonet import __version__
from neonet.data.cases import LabelMap, read_cases
from neonet.data.fingerprint import (
    PERCENTILES,
    STATUS_NO_LABEL,
    STATUS_NO_TUMOR,
    CaseFingerprint,
    fingerprint_case,
    geometry,
)
from neonet.data.nifti import load_nifti
from neonet.data.plans_output import case_record, case_row, figure, fmt, markdown, pct, summary_stats
from neonet.errors import DataError, NeonetError
from neonet.run.atomic import read_json, write_csv, write_json, write_text
from neonet.seg.tlcr import patch_for_share
from neonet.workspace import Workspace, git_sha

log = logging.getLogger(__name__)

#: nnU-Net's anisotropy threshold (spacing ratio, and size ratio, between the coarsest axis and the others).
ANISOTROPY_THRESHOLD = 3.0
#: Share of tumours the suggested TLCR patch must hold.
FIT_SHARE = 0.95
#: TLCR patch sizes are multiples of this per axis (the autoencoder and the diffusion UNet halve them).
CROP_DIVISOR = (8, 8, 8)
#: NeoSeg patch voxel budget: the paper config's 160 x 160 x 48.
SEG_VOXELS = 160 * 160 * 48
#: NeoSeg patch sizes are multiples of this per axis (the paper DynUNet's downsampling: strides 16, 16, 4).
SEG_DIVISOR = (16, 16, 4)
#: Where the shipped crop configs are looked for (relative to the working directory).
CROP_CONFIG_GLOB = "experiments/*/crop.yaml"
_AXES = ("x", "y", "z")

Triple = tuple[float, float, float]


# ---------------------------------------------------------------------------------------------- rules
def target_spacing(spacings: np.ndarray, shapes: np.ndarray, threshold: float = ANISOTROPY_THRESHOLD) -> dict[str, Any]:
    """nnU-Net's full-resolution target spacing (see the module docstring).

    Args:
        spacings: (cases, 3) voxel sizes in mm along R, A, S.
        shapes: (cases, 3) image sizes in voxels along R, A, S.
        threshold: the anisotropy threshold.

    Returns:
        ``{"spacing": [x, y, z], "median_spacing": [...], "anisotropic_axis": "z" or None, "rule": text}``.
    """
    median = np.median(spacings, axis=0)
    size = np.median(shapes, axis=0)
    worst = int(np.argmax(median))
    others = [i for i in range(3) if i != worst]
    aniso_spacing = bool(median[worst] > threshold * max(median[i] for i in others))
    aniso_voxels = bool(size[worst] * threshold < min(size[i] for i in others))
    target = median.astype(float).copy()
    axis = None
    rule = "median spacing per axis"
    if aniso_spacing and aniso_voxels:
        axis = _AXES[worst]
        tenth = float(np.percentile(spacings[:, worst], 10))
        finest_allowed = max(float(median[i]) for i in others)
        target[worst] = max(tenth, finest_allowed)
        rule = (
            f"median spacing per axis, except the anisotropic {axis} axis (median spacing > {threshold:g} x the others' "
            f"and median size < 1/{threshold:g} of the others'): the 10th percentile of its spacings, "
            "at least the other axes' spacing"
        )
    else:
        rule += (
            f" (no anisotropic axis: the coarsest, {_AXES[worst]}, is not both more than {threshold:g} x coarser and "
            f"{threshold:g} x shorter in voxels than the others)"
        )
    return {
        "spacing": [round(float(t), 4) for t in target],
        "median_spacing": [round(float(m), 4) for m in median],
        "anisotropic_axis": axis,
        "rule": rule,
    }


def seg_patch_size(
    spacings: np.ndarray,
    shapes: np.ndarray,
    target: Sequence[float],
    budget: int = SEG_VOXELS,
    divisor: Sequence[int] = SEG_DIVISOR,
) -> dict[str, Any]:
    """The suggested NeoSeg training patch (see the module docstring).

    Args:
        spacings: (cases, 3) voxel sizes in mm.
        shapes: (cases, 3) image sizes in voxels.
        target: the target spacing in mm.
        budget: the most voxels a patch may hold.
        divisor: each axis is a multiple of this (the network's downsampling per axis).

    Returns:
        ``{"patch_size", "median_shape_at_target", "voxel_budget", "divisor", "rule"}``.
    """
    div = np.asarray([max(1, int(d)) for d in divisor])
    median_shape = np.median(shapes * spacings / np.asarray(target, dtype=float), axis=0)
    patch = np.maximum(-(-np.ceil(median_shape - 1e-6).astype(int) // div) * div, div)
    while int(np.prod(patch)) > budget and np.any(patch > div):
        mm = np.where(patch > div, patch * np.asarray(target, dtype=float), -1.0)
        axis = int(np.argmax(mm))
        patch[axis] -= div[axis]
    return {
        "patch_size": [int(p) for p in patch],
        "median_shape_at_target": [round(float(m), 1) for m in median_shape],
        "voxel_budget": int(budget),
        "divisor": [int(d) for d in div],
        "rule": (
            "the median image size at the target spacing, rounded up to a multiple of the divisor; while it holds more "
            "than the voxel budget, the axis longest in mm loses one multiple"
        ),
    }


def read_crop_config(path: Path) -> tuple[Triple, tuple[int, int, int]]:
    """The ``spacing`` and ``patch_size`` a ``neonet crop`` config crops with (``crop``'s defaults where it says none).

    Raises:
        NeonetError: the file is missing, not YAML, or its values are not three numbers.
    """
    from neonet.seg.crop import crop

    defaults = {name: p.default for name, p in inspect.signature(crop).parameters.items()}
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise NeonetError(f"{path}: cannot read this crop config ({exc}); fix it or leave it out with --crop_configs") from exc
    if not isinstance(data, dict):
        raise NeonetError(f"{path}: a crop config is a YAML mapping of `neonet crop` options; leave it out with --crop_configs")
    try:
        spacing = tuple(float(s) for s in data.get("spacing", defaults["spacing"]))
        patch = tuple(int(p) for p in data.get("patch_size", defaults["patch_size"]))
    except (TypeError, ValueError) as exc:
        raise NeonetError(f"{path}: spacing and patch_size must be three numbers each ({exc})") from exc
    if len(spacing) != 3 or len(patch) != 3:
        raise NeonetError(f"{path}: spacing and patch_size must be three numbers each, got {spacing} and {patch}")
    return (spacing[0], spacing[1], spacing[2]), (patch[0], patch[1], patch[2])


def fit_summary(needs: list[tuple[int, int, int]], patch: Sequence[int]) -> dict[str, Any]:
    """How many of the tumours (their needed patch sizes) a patch holds: ``{"n_fit", "n_tumors", "share"}``."""
    arr = np.asarray(needs, dtype=np.int64).reshape(-1, 3)
    n_fit = int(np.all(arr <= np.asarray(patch), axis=1).sum())
    return {"n_fit": n_fit, "n_tumors": len(needs), "share": round(n_fit / len(needs), 4) if needs else None}


# ---------------------------------------------------------------------------------------------- reading plans
def suggested_patch(
    plans_path: Path, spacing: Sequence[float], cases: Path | None = None
) -> tuple[tuple[int, int, int], float | None] | None:
    """The patch size ``plans.json`` suggests at ``spacing`` (its TLCR suggestion or a crop config's), with its share.

    Args:
        plans_path: the ``plans.json`` to read.
        spacing: the crop spacing in mm.
        cases: when given, only a plan of this case manifest counts.

    Returns:
        ``(patch size, share of tumours it holds)``; None when the file is absent, unreadable (logged),
        planned another manifest or has no suggestion at that spacing.
    """
    if not Path(plans_path).is_file():
        return None
    try:
        plans = read_json(plans_path)
    except NeonetError as exc:
        log.warning("ignoring %s: %s", plans_path, exc)
        return None
    if not isinstance(plans, dict):
        return None
    if cases is not None and Path(str(plans.get("cases", ""))).resolve() != Path(cases).resolve():
        log.info("%s planned %s, not %s: not used for the patch size suggestion", plans_path, plans.get("cases"), cases)
        return None
    want = np.asarray([float(s) for s in spacing])
    tlcr = plans.get("tlcr") or {}
    candidates = [(tlcr.get("spacing"), tlcr.get("patch_size"), tlcr.get("share"))]
    candidates += [
        (c.get("spacing"), c.get("patch_size_for_share"), c.get("share_for_share")) for c in plans.get("crop_configs", [])
    ]
    for cand_spacing, patch, share in candidates:
        if cand_spacing and patch and np.allclose(np.asarray(cand_spacing, dtype=float), want, atol=1e-4):
            return (int(patch[0]), int(patch[1]), int(patch[2])), share
    return None


# ---------------------------------------------------------------------------------------------- the verb
def plan(
    cases: Path,
    experiment: str | None = None,
    runs_dir: Path = Path("runs"),
    out: Path | None = None,
    crop_spacing: tuple[float, float, float] | None = None,
    crop_configs: list[Path] | None = None,
    fit_share: float = FIT_SHARE,
    crop_divisor: tuple[int, int, int] = CROP_DIVISOR,
    seg_voxels: int = SEG_VOXELS,
    seg_divisor: tuple[int, int, int] = SEG_DIVISOR,
    liver: list[int] = [1],  # noqa: B006 - never mutated; a list reads best in --help
    tumor: list[int] = [2],  # noqa: B006
    other: list[int] = [],  # noqa: B006
) -> Path:
    """Fingerprint a cohort and suggest target spacing, NeoSeg patch and TLCR patch (nnU-Net's plans step).

    Per case: voxel spacing and shape (along R, A, S), intensity percentiles 0.5/50/99.5 inside the
    liver, tumour count (26-connected components), each tumour's volume (ml) and bounding-box extent
    (mm per axis). From the cohort: the target spacing (median spacing; an anisotropic axis takes the
    10th percentile of its spacings, nnU-Net's rule), the NeoSeg patch size (median image size at the
    target spacing within a voxel budget), and the TLCR patch size at the crop spacing that holds at
    least ``fit_share`` of the tumours whole (each case's largest, centred as ``neonet crop`` centres
    it), plus the share each crop config holds with its own patch size and spacing. Cases without
    tumour voxels (or without a label) are counted, not an error. Prints a summary and writes
    ``plans.json``, ``plans.csv`` (one row per case), ``plans.md`` and ``plans.png``.

    Args:
        cases: the case manifest (``cases.csv``).
        experiment: write into this experiment's folder (``<runs_dir>/<experiment>/plans.json``).
        runs_dir: folder holding all experiments.
        out: without ``experiment``: the ``plans.json`` to write (``.csv``, ``.md``, ``.png`` beside it).
        crop_spacing: the spacing (mm) of the suggested TLCR patch; default the suggested target spacing.
        crop_configs: ``neonet crop`` configs whose patch size and spacing are checked (default every
            ``experiments/*/crop.yaml`` below the working directory; ``[]`` for none).
        fit_share: the share of tumours the suggested TLCR patch must hold, in (0, 1].
        crop_divisor: the TLCR patch is a multiple of this per axis.
        seg_voxels: the most voxels the suggested NeoSeg patch may hold.
        seg_divisor: the NeoSeg patch is a multiple of this per axis (the network's downsampling).
        liver: label values meaning liver.
        tumor: label values meaning tumour.
        other: label values to treat as background.

    Returns:
        The path of ``plans.json``.

    Raises:
        DataError: the manifest or a case's files cannot be read (every such case is named; nothing is written).
    """
    if (experiment is None) == (out is None):
        raise NeonetError(
            "give --experiment NAME (writes <runs_dir>/NAME/plans.json) or --out FILE.json (writes there), one of the two"
        )
    if out is not None and Path(out).suffix != ".json":
        raise NeonetError(
            f"--out names the plans.json to write (plans.csv, .md, .png go beside it), e.g. --out plans/plans.json; got {out}"
        )
    if not 0 < fit_share <= 1:
        raise NeonetError(f"--fit_share must be in (0, 1], e.g. 0.95, got {fit_share}")
    if crop_spacing is not None and (len(crop_spacing) != 3 or min(crop_spacing) <= 0):
        raise NeonetError(f"--crop_spacing needs three positive values in mm, got {crop_spacing}")
    for name, value in (("crop_divisor", crop_divisor), ("seg_divisor", seg_divisor)):
        if len(value) != 3 or min(value) < 1:
            raise NeonetError(f"--{name} needs three positive voxel counts, got {value}")
    if seg_voxels < 1:
        raise NeonetError(f"--seg_voxels must be positive, got {seg_voxels}")
    try:
        label_map = LabelMap(liver=tuple(liver), tumor=tuple(tumor), other=tuple(other))
    except ValueError as exc:
        raise DataError(str(exc)) from exc
    if experiment is not None:
        ws = Workspace(runs_dir, experiment)
        json_path, csv_path, md_path, png_path = (ws.plans_file(ext) for ext in ("json", "csv", "md", "png"))
    else:
        assert out is not None
        json_path = Path(out)
        csv_path, md_path, png_path = (json_path.with_suffix(ext) for ext in (".csv", ".md", ".png"))
    case_list = read_cases(cases)
    if not case_list:
        raise DataError(f"{cases}: the case manifest has no rows; add the cases to plan for")
    configs = sorted(Path().glob(CROP_CONFIG_GLOB)) if crop_configs is None else [Path(c) for c in crop_configs]
    shipped = [(c, *read_crop_config(c)) for c in configs]

    # the target spacing needs every case's spacing first (headers only)
    headers: dict[str, tuple[Triple, tuple[int, int, int]]] = {}
    failed: dict[str, str] = {}
    for case in case_list:
        try:
            headers[case.case_id] = geometry(load_nifti(case.image, case.case_id, "image"))
        except DataError as exc:
            failed[case.case_id] = str(exc)
    fps: list[CaseFingerprint] = []
    if headers:
        spacings = np.asarray([h[0] for h in headers.values()])
        shapes = np.asarray([h[1] for h in headers.values()], dtype=float)
        target = target_spacing(spacings, shapes)
        seg = seg_patch_size(spacings, shapes, target["spacing"], seg_voxels, seg_divisor)
        at = tuple(float(s) for s in (crop_spacing or target["spacing"]))
        crop_at: Triple = (at[0], at[1], at[2])
        wanted = list(dict.fromkeys([crop_at, *(s for _, s, _ in shipped)]))
        for case in tqdm([c for c in case_list if c.case_id in headers], desc="plan", unit="case", dynamic_ncols=True):
            try:
                fps.append(fingerprint_case(case, label_map, wanted))
            except DataError as exc:
                failed[case.case_id] = str(exc)
    if failed:
        shown = "\n".join(f"  {why}" for why in list(failed.values())[:20])
        more = f"\n  ... and {len(failed) - 20} more" if len(failed) > 20 else ""
        raise DataError(
            f"{len(failed)} of {len(case_list)} case(s) of {cases} cannot be read, so no plan was written:\n{shown}{more}\n"
            f"Fix them (`neonet check-data --cases {cases}` lists every problem) or remove them from the manifest."
        )

    def needs_at(spacing: Triple) -> list[tuple[int, int, int]]:
        return [fp.needed_patch[spacing] for fp in fps if spacing in fp.needed_patch]

    needs = needs_at(crop_at)
    patch, n_fit = patch_for_share(needs, fit_share, crop_divisor)
    tlcr = {
        "spacing": list(crop_at),
        "patch_size": list(patch) if needs else None,  # no tumour: nothing to fit
        **fit_summary(needs, patch),
        "divisor": list(crop_divisor),
        "rule": (
            f"the smallest patch (a multiple of {fmt(crop_divisor)}) holding at least {pct(fit_share)} of the tumours whole: "
            "each case's largest tumour, centred on its centroid as `neonet crop` centres it"
        ),
    }
    config_rows = []
    for path, spacing, config_patch in shipped:
        at_config = needs_at(spacing)
        for_share, _ = patch_for_share(at_config, fit_share, crop_divisor)
        config_rows.append(
            {
                "config": str(path),
                "spacing": list(spacing),
                "patch_size": list(config_patch),
                **fit_summary(at_config, config_patch),
                "patch_size_for_share": list(for_share) if at_config else None,
                "share_for_share": fit_summary(at_config, for_share)["share"],
            }
        )
    tumours = [t for fp in fps for t in fp.tumours]
    percentiles = np.asarray([fp.liver_percentiles for fp in fps if fp.liver_percentiles is not None]).reshape(-1, 3)
    with_label = [fp for fp in fps if fp.status != STATUS_NO_LABEL]
    plans: dict[str, Any] = {
        "cases": str(Path(cases).resolve()),
        "counts": {
            "cases": len(fps),
            "with_tumor": sum(bool(fp.tumours) for fp in fps),
            "without_tumor": sum(fp.status == STATUS_NO_TUMOR for fp in fps),
            "without_label": sum(fp.status == STATUS_NO_LABEL for fp in fps),
        },
        "label_map": {"liver": list(label_map.liver), "tumor": list(label_map.tumor), "other": list(label_map.other)},
        "fingerprint": {
            "spacing_mm": summary_stats(spacings, 4),
            "shape": summary_stats(shapes, 1),
            "liver_intensity": {f"p{q:g}": summary_stats(percentiles[:, i], 4) for i, q in enumerate(PERCENTILES)},
            "tumors": {
                "count": len(tumours),
                "per_case": summary_stats(np.asarray([len(fp.tumours) for fp in with_label], dtype=float), 2),
                "volume_ml": summary_stats(np.asarray([t.volume_ml for t in tumours]), 3),
                "extent_mm": summary_stats(np.asarray([t.extent_mm for t in tumours]).reshape(-1, 3), 2),
            },
        },
        "target_spacing": target,
        "seg_patch": seg,
        "tlcr": tlcr,
        "fit_share": fit_share,
        "crop_configs": config_rows,
        "per_case": [case_record(fp) for fp in fps],
        "neonet_version": __version__,
        "git_sha": git_sha(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    assert n_fit == tlcr["n_fit"]
    table = markdown(plans)
    write_csv(csv_path, pd.DataFrame([case_row(fp, crop_at, patch) for fp in fps]))
    write_text(md_path, table)
    figure(png_path, needs, tlcr)
    write_json(json_path, plans)  # last: plans.json exists only beside its csv, md and png
    print(table)
    log.info("plan: wrote %s (and %s, %s, %s)", json_path, csv_path.name, md_path.name, png_path.name)
    return json_path
