"""The ``neonet crop`` verb: TLCR patches for every case of a cohort, plus their manifest.

Output, in the experiment's workspace (see :mod:`neonet.workspace`)::

    <runs_dir>/<experiment>/patches/
      images/<case>.nii.gz     float32 image patch (canonical RAS grid, target spacing)
      labels/<case>.nii.gz     uint8 label patch: 0 bg, 1 liver, 2 peritumoral shell, 3 tumour
                               (none with ``--source none``: the manifest's ``label`` is empty)
      manifest.csv             one row per case (also skipped and failed ones)
      crop_config.json         the settings the patches were made with (a :mod:`neonet.run.provenance` record)
    <runs_dir>/<experiment>/reports/tlcr_patches.png   a grid of patches with their shells, PNI+ over PNI−

``--patches <set>`` writes another set of patches of the same cases to ``patches_<set>/`` (and
``reports/tlcr_patches_<set>.png``) instead, leaving ``patches/`` as it is.

A patch's affine is the canonical (resampled, RAS) volume's affine with its origin moved to the
crop box start, so every patch voxel has the world coordinate of the volume voxel it came from
(padding voxels extend the same grid beyond the volume).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from neonet.data.cases import Case, LabelMap, case_file, read_cases
from neonet.data.nifti import load_nifti, save_nifti, scan_sha256
from neonet.data.patches import PATCH_COLUMNS
from neonet.errors import DataError, MissingUpstreamError, NeonetError
from neonet.run.atomic import write_csv
from neonet.run.provenance import Provenance, check_current, read_provenance
from neonet.seg.tlcr import (
    LIVER_REGIONS,
    NO_TUMOR_POLICIES,
    SHELL_REGIONS,
    STATUS_LIVER_FALLBACK,
    STATUS_NO_LIVER,
    STATUS_NO_MASK,
    STATUS_OK,
    STATUS_SKIPPED,
    TLCRResult,
    centred_patch,
    patch_affine,
    patch_for_share,
    tlcr,
)
from neonet.workspace import Workspace

log = logging.getLogger(__name__)

SOURCES = ("manual", "predicted", "none")
#: Arguments that change the patches; a different value needs ``--force``.
SETTINGS_KEYS = (
    "source",
    "spacing",
    "patch_size",
    "shell_mm",
    "no_tumor",
    "liver",
    "tumor",
    "other",
    "liver_level",
    "liver_region",
    "shell_region",
    "tumor_shrink_mm",
)
#: Settings that older crop configs lack, with the value those crops were made with (a config written
#: before liver normalisation existed read as ``None`` for both of its settings).
SETTINGS_DEFAULTS = {"shell_region": "all", "liver_level": None, "liver_region": None, "tumor_shrink_mm": 0.0}
#: What the crop record describes (in messages).
WHAT = "the TLCR patch folder"
#: Statuses whose rows (and files) a re-run with the same settings and inputs may reuse.
REUSABLE_STATUSES = (STATUS_OK, STATUS_LIVER_FALLBACK, STATUS_SKIPPED, STATUS_NO_LIVER, STATUS_NO_MASK)
#: Status prefix of a case that failed.
STATUS_ERROR = "error"
#: At most this many failed cases are listed in the error message.
MAX_LISTED_FAILURES = 20
_AXES = ("x", "y", "z")

MANIFEST_COLUMNS = [
    *PATCH_COLUMNS,
    "source",
    "status",
    "n_tumors",
    "tumor_volume_ml",
    "tumor_volume_total_ml",
    *(f"centroid_{a}" for a in _AXES),
    *(f"box_start_{a}" for a in _AXES),
    *(f"box_stop_{a}" for a in _AXES),
    *(f"pad_before_{a}" for a in _AXES),
    *(f"pad_after_{a}" for a in _AXES),
    "fits",
    *(f"spacing_{a}" for a in _AXES),
    *(f"patch_{a}" for a in _AXES),
    "shell_mm",
    "shell_region",
    "intensity_scale",
    "intensity_reference",
    *(f"needed_patch_{a}" for a in _AXES),
    "source_image",
    "source_mask",
    "inputs_sha256",
]


def _settings(
    source: str,
    spacing: tuple[float, float, float],
    patch_size: tuple[int, int, int],
    shell_mm: float,
    no_tumor: str,
    liver: list[int],
    tumor: list[int],
    other: list[int],
    liver_level: float | None = None,
    liver_region: str = "volume",
    shell_region: str = "all",
    tumor_shrink_mm: float = 0.0,
) -> dict[str, Any]:
    return {
        "source": source,
        "spacing": [float(s) for s in spacing],
        "patch_size": [int(p) for p in patch_size],
        "shell_mm": float(shell_mm),
        "no_tumor": no_tumor,
        "liver": sorted(int(v) for v in liver),
        "tumor": sorted(int(v) for v in tumor),
        "other": sorted(int(v) for v in other),
        "liver_level": None if liver_level is None else float(liver_level),
        "liver_region": None if liver_level is None else liver_region,
        "shell_region": shell_region,
        "tumor_shrink_mm": float(tumor_shrink_mm),
    }


class CropFailedError(NeonetError):
    """Some cases of a ``neonet crop`` failed (the others were cropped and the manifest written).

    Attributes:
        manifest: the ``manifest.csv`` written (every case's row, failed ones with ``error: ...``).
        failed: case id → why it failed, in manifest order.
    """

    def __init__(self, manifest: Path, failed: dict[str, str], n_cases: int, cases: Path) -> None:
        shown = list(failed.items())[:MAX_LISTED_FAILURES]
        lines = [f"  case {cid}: {why}" for cid, why in shown]
        if len(failed) > len(shown):
            lines.append(f"  ... and {len(failed) - len(shown)} more (see the manifest's status column)")
        super().__init__(
            f"{len(failed)} of {n_cases} case(s) failed and have no patches:\n"
            + "\n".join(lines)
            + f"\nThe {n_cases - len(failed)} other case(s) were cropped; {manifest} lists every case with its status. "
            f"Fix the failed cases (`neonet check-data --cases {cases}` checks every file) or remove them from "
            f"the case manifest, then run the same command again: the cases already cropped are reused."
        )
        self.manifest = manifest
        self.failed = failed


class NoPatchesError(NeonetError):
    """``neonet crop`` ran through every case without a failure, yet no case gave a patch.

    Raised after the manifest (every case with its status) was written, so nothing later mistakes an
    empty patch folder for a finished crop.
    """

    def __init__(self, manifest: Path, statuses: Counter[str], source: str, cases: Path) -> None:
        summary = ", ".join(f"{status} {n}" for status, n in sorted(statuses.items()))
        n = sum(statuses.values())
        super().__init__(
            f"none of the {n} case(s) of {cases} gave a patch ({summary}; {manifest} lists every case with its "
            f"status): the {source} masks hold no tumour (and, where no patch was made, no liver either) under "
            "--liver/--tumor/--other. Check the label values (`neonet check-data --cases "
            f"{cases} --stage crop`); for volumes already cropped around the lesion, without masks, use "
            "--source none (centred patches, no label patch); to cut patches around NeoSeg's tumours, train "
            "NeoSeg and use --source predicted."
        )


def _legacy_record(data: dict[str, Any]) -> Provenance:
    """A ``crop_config.json`` of before :mod:`neonet.run.provenance`: the settings and the command's
    ``cases``/``experiment``/``runs_dir`` side by side in one object."""
    return Provenance(
        settings={k: data[k] for k in SETTINGS_KEYS if k in data}, extra={k: v for k, v in data.items() if k not in SETTINGS_KEYS}
    )


def crop_record(ws: Workspace) -> Provenance | None:
    """The provenance record of the experiment's patches (either format), None before the first crop.

    Settings that an older record lacks are filled in from :data:`SETTINGS_DEFAULTS`.

    Raises:
        UnreadableRecordError: ``crop_config.json`` is truncated or corrupt.
    """
    record = read_provenance(ws.crop_config, WHAT, _legacy_record)
    if record is None:
        return None
    missing = {k: v for k, v in SETTINGS_DEFAULTS.items() if k not in record.settings}
    return Provenance({**record.settings, **missing}, record.inputs, record.outputs, record.extra) if missing else record


def patch_set_control(ws: Workspace) -> dict[str, Any]:
    """What a stage trained on the patch set ``ws.patches`` records as its control (``classifier.control.patches``):
    the set's name, its folder and the masks it was cut with (its crop record's ``source``; None when unreadable)."""
    try:
        record = crop_record(ws)
    except NeonetError:
        record = None
    source = None if record is None else record.settings.get("source")
    return {"set": ws.patches, "dir": ws.patches_dir.name, "source": source}


def _inputs_digest(image: Path, mask: Path | None) -> str:
    """SHA-256 over the image's and the mask's bytes (to notice changed inputs on a re-run)."""
    digest = hashlib.sha256()
    for path in (image, mask):
        if path is not None:
            digest.update(scan_sha256(path).encode())
    return digest.hexdigest()


def _read_manifest(path: Path) -> dict[str, dict[str, str]]:
    if not path.exists():
        return {}
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        log.warning("ignoring unreadable %s (%s); all cases are cropped again", path, exc)
        return {}
    backfill = {
        "intensity_scale": "1.0",
        "intensity_reference": "none",  # before liver normalisation
        "shell_region": "all",  # before the shell could be kept inside the liver
        **{f"needed_patch_{a}": "" for a in _AXES},  # before crop recorded what each tumour needs
    }
    if not set(MANIFEST_COLUMNS) - set(backfill) <= set(frame.columns):
        return {}
    for column, value in backfill.items():
        if column not in frame:
            frame[column] = value
    return {row["case_id"]: row for row in frame[MANIFEST_COLUMNS].to_dict(orient="records")}


def _reusable(old: dict[str, str] | None, digest: str, patches_dir: Path) -> bool:
    if not old or old.get("status") not in REUSABLE_STATUSES or old.get("inputs_sha256") != digest:
        return False
    return all((patches_dir / old[key]).is_file() for key in ("image", "label") if old.get(key))


def _one_line(exc: BaseException, limit: int = 400) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _result_fields(result: TLCRResult) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "status": result.status,
        "n_tumors": int(result.n_tumors),
        "tumor_volume_ml": round(float(result.tumor_volume_ml), 4),
        "tumor_volume_total_ml": round(float(result.tumor_volume_total_ml), 4),
        "fits": "" if result.fits is None else bool(result.fits),
    }
    for i, axis in enumerate(_AXES):
        fields[f"needed_patch_{axis}"] = "" if result.needed_patch is None else int(result.needed_patch[i])
    for i, axis in enumerate(_AXES):
        fields[f"centroid_{axis}"] = "" if result.centroid is None else round(float(result.centroid[i]), 3)
        for key in ("start", "stop", "pad_before", "pad_after"):
            name = f"box_{key}_{axis}" if key in ("start", "stop") else f"{key}_{axis}"
            fields[name] = "" if result.box is None else int(result.box[key][i])
    return fields


def _mask_path(case: Case, source: str, workspace: Workspace) -> Path | None:
    if source == "none":
        return None
    return case.label if source == "manual" else workspace.seg_prediction(case.case_id)


#: A case without a manual label under ``--source manual`` (its manifest row's status).
NO_LABEL_ROW = (
    "no manual label in the case manifest (use --source predicted, or --source none for volumes already cropped "
    "around the lesion)"
)
#: What to do when the manifest has no mask to crop with (``--source manual`` without labels).
NO_MASK_WAY_ON = (
    "for volumes already cropped around the lesion use --source none (centred patches, no label patch); "
    "to crop around NeoSeg's tumours train NeoSeg and use --source predicted"
)


def crop(
    cases: Path,
    experiment: str = "default",
    runs_dir: Path = Path("runs"),
    source: str = "manual",
    spacing: tuple[float, float, float] = (1.5625, 1.5625, 4.0),
    patch_size: tuple[int, int, int] = (96, 96, 48),
    shell_mm: float = 10.0,
    no_tumor: str = "liver",
    liver: list[int] = [1],  # noqa: B006 - never mutated; a list reads best in --help
    tumor: list[int] = [2],  # noqa: B006
    other: list[int] = [],  # noqa: B006
    liver_level: float | None = None,
    liver_region: str = "volume",
    shell_region: str = "all",
    tumor_shrink_mm: float = 0.0,
    patches: str | None = None,
    force: bool = False,
) -> Path:
    """Tumour-localised ROI crop (TLCR): an image patch and a label patch around each tumour.

    Every case is reoriented to RAS and resampled to ``spacing``; the patch is centred on the
    centroid of the largest 3D connected tumour component; at volume borders it is padded to
    ``patch_size`` and the padding is recorded. With ``liver_level`` the image patch is put on a
    liver-relative scale (reference-tissue normalisation). Label patches hold 0 background, 1 liver,
    2 peritumoral shell (non-tumour voxels within ``shell_mm`` mm of a tumour), 3 tumour.
    Writes ``<runs_dir>/<experiment>/patches/{images,labels}/<case>.nii.gz``, ``manifest.csv``
    (one row per case with status, tumour count and volume, centroid, crop box, padding, whether the
    largest tumour fits and the patch size it needs) and ``crop_config.json``. When tumours do not
    fit, a warning says how many and which patch size holds 95 % of them (``neonet plan``'s, from
    the experiment's ``plans.json``, when it planned for this spacing). A re-run skips cases whose
    patches exist with the same settings and unchanged inputs; a case that fails is recorded as
    ``error: ...`` and the others continue, and once the manifest is written the command fails
    (exit code 2) naming every failed case; it fails too when no case gave a patch.

    With ``--source none`` (volumes already cropped around the lesion, no mask) each volume is
    resampled to ``spacing`` and its centre cut or padded to ``patch_size`` (status
    ``no_mask_centred``); no label patch is written (the manifest's ``label`` is empty), so only
    classifiers without a label channel can use the patches.

    Args:
        cases: the case manifest (``cases.csv``).
        experiment: experiment name (folder below ``runs_dir``).
        runs_dir: folder holding all experiments.
        source: ``manual`` uses the masks of the manifest's ``label`` column (mapped with
            ``liver``/``tumor``/``other``); ``predicted`` uses the experiment's out-of-fold NeoSeg
            masks (``seg/predictions/<case>.nii.gz``, made by ``neonet cv`` on the seg stage);
            ``none`` needs no mask: the patch is each volume's centre (for scans that come
            already cropped around the lesion), with no label patch.
        spacing: target voxel spacing in mm (x, y, z).
        patch_size: patch size in voxels (x, y, z).
        shell_mm: width of the peritumoral shell in mm, measured in physical space.
        no_tumor: without tumour voxels, ``liver`` centres the patch on the liver (status
            ``no_tumor_liver_fallback``), ``skip`` makes no patch (status ``no_tumor_skipped``).
        liver: label values meaning liver in manual masks.
        tumor: label values meaning tumour in manual masks.
        other: label values to treat as background in manual masks.
        liver_level: None keeps each volume's percentile scaling; a value in (0, 1] multiplies
            each case's image patch so that the median of its reference liver voxels (from the
            mask the patch is cut with) becomes this value, clipped to [0, 1], so patches read as
            ratios to the liver whatever the scan's scaling. The factor is the manifest's
            ``intensity_scale``; a case whose mask has no liver is an error row.
        liver_region: the reference liver voxels: ``volume`` (the whole volume's liver, tumour
            excluded) or ``patch`` (the patch's liver outside the peritumoral shell, so a bias
            field across the volume does not shift it; the whole volume's liver when the patch
            holds fewer than 50). The manifest's ``intensity_reference`` says which was used.
        shell_region: ``all``: the shell is every non-tumour voxel within ``shell_mm`` of the
            tumour; ``liver``: only the liver voxels among them, so tissue outside the liver next
            to the tumour (fat, bowel, the hilum) stays background in the label patch. Choose
            ``liver`` only when invasion outside the liver is not what the classifier should see.
        tumor_shrink_mm: > 0 erodes the tumour of the mask by this many mm before the label patch is made
            (the rim becomes peritumoral shell, and the shell is measured from the shrunk tumour), for
            masks that draw tissue next to the tumour as tumour: NeoSeg labels part of a perineural cuff
            tumour, so its mask's size carries the label (docs/controls.md, "twin test"). The patch stays
            centred on the unshrunk tumour. 0 (default, the paper) keeps the mask's tumour.
        patches: None writes ``patches/`` (what every stage reads); a name writes another set of
            patches beside it, ``patches_<name>/`` (its own manifest, record and
            ``reports/tlcr_patches_<name>.png``), read by a classifier with ``--data.patches <name>``:
            e.g. ``--source manual --patches manual`` for the manual-mask control of a classifier
            trained on NeoSeg's masks (docs/controls.md).
        force: rewrite all patches, also when they were made with other settings.

    Returns:
        The path of ``manifest.csv``.

    Raises:
        CropFailedError: some cases failed; raised after the patches of the others and the manifest
            (every case, failed ones with ``error: ...``) were written.
    """
    if source not in SOURCES:
        raise NeonetError(f"--source must be one of {', '.join(SOURCES)}, got {source!r}")
    if no_tumor not in NO_TUMOR_POLICIES:
        raise NeonetError(f"--no_tumor must be one of {', '.join(NO_TUMOR_POLICIES)}, got {no_tumor!r}")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise NeonetError(f"--spacing needs three positive values in mm, got {spacing}")
    if len(patch_size) != 3 or min(patch_size) < 1:
        raise NeonetError(f"--patch_size needs three positive voxel counts, got {patch_size}")
    if liver_level is not None and not 0 < liver_level <= 1:
        raise NeonetError(f"--liver_level must be in (0, 1] (or null), got {liver_level}")
    if source == "none" and liver_level is not None:
        raise NeonetError(
            f"--liver_level {liver_level} scales each patch to its liver, which needs a mask; --source none has "
            "none: set --liver_level null (patches keep each volume's percentile scaling)"
        )
    if liver_region not in LIVER_REGIONS:
        raise NeonetError(f"--liver_region must be one of {', '.join(LIVER_REGIONS)}, got {liver_region!r}")
    if shell_region not in SHELL_REGIONS:
        raise NeonetError(f"--shell_region must be one of {', '.join(SHELL_REGIONS)}, got {shell_region!r}")
    if not tumor_shrink_mm >= 0:
        raise NeonetError(f"--tumor_shrink_mm is a depth in mm, 0 or more, got {tumor_shrink_mm}")
    try:
        label_map = LabelMap(liver=tuple(liver), tumor=tuple(tumor), other=tuple(other))
    except ValueError as exc:
        raise DataError(str(exc)) from exc
    mask_map = label_map if source == "manual" else LabelMap()

    try:
        workspace = Workspace(runs_dir, experiment, patches)
    except ValueError as exc:
        raise NeonetError(f"--patches: {exc}") from exc
    patches_dir = workspace.patches_dir
    manifest_path = workspace.patches_manifest
    case_list = read_cases(cases)
    if source == "manual" and case_list and all(c.label is None for c in case_list):
        raise DataError(
            f"{cases}: no case has a manual label (the `label` column is empty), so --source manual has no mask "
            f"to crop with; {NO_MASK_WAY_ON}"
        )
    settings = _settings(
        source,
        spacing,
        patch_size,
        shell_mm,
        no_tumor,
        liver,
        tumor,
        other,
        liver_level,
        liver_region,
        shell_region,
        tumor_shrink_mm,
    )
    extra = {"cases": str(cases), "experiment": experiment, "runs_dir": str(runs_dir)}
    record = Provenance(settings, extra=extra if patches is None else {**extra, "patches": patches})
    # same settings: the patches are current and each case is reused unless its inputs changed
    current = (
        not force
        and check_current(
            workspace.crop_config, record, WHAT, output=patches_dir, legacy=_legacy_record, defaults=SETTINGS_DEFAULTS
        )
        is not None
    )

    if source == "predicted":
        missing = [c.case_id for c in case_list if not workspace.seg_prediction(c.case_id).is_file()]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise MissingUpstreamError(
                f"NeoSeg out-of-fold prediction(s) of {len(missing)} case(s) ({shown})",
                workspace.seg_predictions_dir,
                f"neonet cv --config <the NeoSeg config of experiment {experiment!r}, e.g. experiments/demo/seg.yaml>",
            )

    old_rows = _read_manifest(manifest_path) if current else {}
    if not current and manifest_path.exists():
        # The old manifest describes patches made with other settings; never trust it again.
        manifest_path.unlink()
    record.write(workspace.crop_config, only_if_changed=True)  # also brings an older record to the current format

    rows: list[dict[str, Any]] = []
    reused = 0
    for case in tqdm(case_list, desc="crop", unit="case", dynamic_ncols=True):
        row: dict[str, Any] = dict.fromkeys(MANIFEST_COLUMNS, "")
        row |= {
            "case_id": case.case_id,
            "patient_id": case.patient_id,
            "pni": "" if case.pni is None else int(case.pni),
            "source": source,
            **{f"spacing_{a}": float(s) for a, s in zip(_AXES, spacing)},
            **{f"patch_{a}": int(p) for a, p in zip(_AXES, patch_size)},
            "shell_mm": float(shell_mm),
            "shell_region": shell_region,
            "source_image": str(case.image),
        }
        image_rel, label_rel = case_file("images", case.case_id), case_file("labels", case.case_id)
        try:
            mask_path = _mask_path(case, source, workspace)
            if mask_path is None and source != "none":
                raise DataError(NO_LABEL_ROW)
            row["source_mask"] = "" if mask_path is None else str(mask_path)
            for path in (case.image, mask_path):
                if path is not None and not Path(path).exists():
                    raise DataError(f"{path}: file not found")
            digest = _inputs_digest(case.image, mask_path)
            row["inputs_sha256"] = digest
            old = old_rows.get(case.case_id)
            if old is not None and _reusable(old, digest, patches_dir):
                # Same settings and inputs: keep the patches; identity columns come from cases.csv.
                keep = ("case_id", "patient_id", "pni", "source_image", "source_mask", "inputs_sha256")
                rows.append({**old, **{key: row[key] for key in keep}})
                reused += 1
                continue
            if mask_path is None:
                image, affine = load_image(case.image, spacing, case.case_id)
                result = centred_patch(image, spacing, patch_size)
            else:
                image, mask, affine = load_case(case.image, mask_path, spacing, mask_map, case.case_id)
                result = tlcr(
                    image,
                    mask,
                    spacing,
                    patch_size=patch_size,
                    shell_mm=shell_mm,
                    no_tumor=no_tumor,
                    liver_level=liver_level,
                    liver_region=liver_region,
                    shell_region=shell_region,
                    tumor_shrink_mm=tumor_shrink_mm,
                )
            row.update(_result_fields(result))
            row["intensity_scale"] = round(float(result.intensity_scale), 6)
            row["intensity_reference"] = result.intensity_reference
            if result.has_patch:
                assert result.box is not None and result.image_patch is not None
                patch_aff = patch_affine(affine, result.box["start"])
                save_nifti(patches_dir / image_rel, result.image_patch.astype(np.float32), patch_aff)
                row["image"] = image_rel.as_posix()
                if result.label_patch is None:
                    (patches_dir / label_rel).unlink(missing_ok=True)  # a label patch of an earlier crop
                else:
                    save_nifti(patches_dir / label_rel, result.label_patch.astype(np.uint8), patch_aff)
                    row["label"] = label_rel.as_posix()
            else:
                for rel in (image_rel, label_rel):
                    (patches_dir / rel).unlink(missing_ok=True)
            if result.fits is False:
                log.warning(
                    "case %s: the largest tumour does not fit in a %s patch (it needs %s)",
                    case.case_id,
                    "×".join(map(str, patch_size)),
                    "×".join(map(str, result.needed_patch or ())),
                )
        except Exception as exc:  # one bad case must not stop the cohort; it is recorded instead
            row["status"] = f"{STATUS_ERROR}: {_one_line(exc)}"
            log.warning("case %s: %s", case.case_id, row["status"])
        rows.append(row)

    frame = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    text = frame.to_csv(index=False)
    changed = not manifest_path.exists() or manifest_path.read_text() != text
    if changed:
        write_csv(manifest_path, frame)

    counts = Counter(str(r["status"]).split(":")[0] for r in rows)
    summary = ", ".join(f"{status} {n}" for status, n in sorted(counts.items()))
    log.info(
        "crop: %d case(s) (%d unchanged from an earlier run): %s; manifest %s",
        len(rows),
        reused,
        summary or "none",
        manifest_path,
    )
    warning = fit_warning(rows, workspace.plans_file("json"), spacing, patch_size, Path(cases))
    if warning:
        log.warning("%s", warning)

    from neonet.report.figures import PATCHES, write_stage
    from neonet.report.figures.patch_grid import figure_name

    if changed or not workspace.figure(figure_name(workspace)).is_file():
        write_stage(workspace, PATCHES)  # reports/tlcr_patches[_<set>].png
    failed = {str(r["case_id"]): str(r["status"]) for r in rows if str(r["status"]).startswith(f"{STATUS_ERROR}:")}
    from neonet.run.wandb_run import log_dataset_run, patches_artifact

    # W&B lineage: the patches as the manifest lists them (failed cases too), made from every NeoSeg fold's masks
    seg_models = [str(workspace.best_checkpoint("seg", k)) for k in workspace.stage_folds("seg")] if source == "predicted" else []
    settings_sent = {"experiment": experiment, **settings, **({} if patches is None else {"patches": patches})}
    log_dataset_run(workspace, "crop", None, lambda: patches_artifact(workspace), seg_models, settings_sent)
    if failed:
        raise CropFailedError(manifest_path, failed, len(rows), Path(cases))
    if rows and not any(r["image"] for r in rows):
        raise NoPatchesError(manifest_path, counts, source, Path(cases))
    return manifest_path


def fit_warning(
    rows: list[dict[str, Any]],
    plans_path: Path,
    spacing: tuple[float, float, float],
    patch_size: tuple[int, int, int],
    cases: Path | None = None,
) -> str | None:
    """What to say when tumours do not fit the patch size: how many, and a patch size that fits 95 % of them.

    The suggestion is ``plans.json``'s at this spacing (``neonet plan`` of the manifest ``cases``) when
    it has one, else computed from the manifest rows' ``needed_patch_*`` (what each case's largest
    tumour needs); None when every tumour fits.
    """
    from neonet.data.plans import CROP_DIVISOR, FIT_SHARE, suggested_patch

    flags = [str(r.get("fits", "")) for r in rows]
    n_tumours, n_out = sum(f in ("True", "False") for f in flags), flags.count("False")
    if not n_out:
        return None
    shown = "×".join(str(int(p)) for p in patch_size)
    text = f"{n_out} of {n_tumours} tumours exceed {shown}"
    about = "each case's largest tumour, the one its patch is centred on: the manifest's fits and needed_patch_* columns"
    planned = suggested_patch(plans_path, spacing, cases)
    if planned is not None:
        patch, share = planned
        source = f"neonet plan, {plans_path}"
    else:
        keys = [f"needed_patch_{a}" for a in _AXES]
        needs = [tuple(int(float(r[k])) for k in keys) for r in rows if all(str(r.get(k, "")) not in ("", "nan") for k in keys)]
        if not needs:
            return f"{text} ({about}); `neonet plan --cases CASES --experiment E` suggests a patch size that holds 95 % of them"
        patch, n_fit = patch_for_share(needs, FIT_SHARE, CROP_DIVISOR)
        share = n_fit / len(needs)
        source = f"from these {len(needs)} patches; `neonet plan` plans for the whole cohort"
    fitted = "×".join(str(int(p)) for p in patch)
    held = f"{100 * share:.0f} %" if share is not None else f"at least {100 * FIT_SHARE:.0f} %"
    return (
        f"{text}; a {fitted} patch fits {held} ({source}): crop again with --patch_size {','.join(map(str, patch))} "
        f"--force ({about})"
    )


def load_image(
    image: str | os.PathLike, spacing: tuple[float, float, float], case_id: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Load an image without a mask in canonical form (RAS, resampled, in [0, 1]), as :func:`load_case` does.

    Raises:
        DataError: the file is missing or unreadable (the message names the file and the cause).
    """
    from neonet.data.transforms import load_canonical  # heavy import (MONAI, torchio): only when cropping

    load_nifti(image, case_id, "image")  # header only: a clear error for a file that is not NIfTI, too large, ...
    try:
        image_arr, _, affine = load_canonical(str(image), None, spacing)
    except Exception as exc:  # MONAI wraps the reader's error in "applying transform <...>"
        raise DataError(f"cannot load {image}: {_root_cause(exc)}") from exc
    return image_arr, affine


def _root_cause(exc: BaseException) -> str:
    root = exc
    while root.__cause__ is not None or root.__context__ is not None:
        root = root.__cause__ or root.__context__  # type: ignore[assignment]
    return f"{type(root).__name__}: {root}"


def load_case(
    image: str | os.PathLike,
    mask: str | os.PathLike,
    spacing: tuple[float, float, float],
    label_map: LabelMap,
    case_id: str | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Load a case in canonical form (RAS, resampled, image in [0, 1]) with its project-convention mask.

    Raises:
        DataError: a file is missing or unreadable (the message names the file and the cause).
    """
    from neonet.data.transforms import load_canonical  # heavy import (MONAI, torchio): only when cropping

    for path, kind in ((image, "image"), (mask, "mask")):
        load_nifti(path, case_id, kind)  # header only: a clear error for a file that is not NIfTI, too large, ...
    try:
        image_arr, mask_arr, affine = load_canonical(str(image), str(mask), spacing, label_map)
    except Exception as exc:  # MONAI wraps the reader's error in "applying transform <...>"
        raise DataError(f"cannot load {image} / {mask}: {_root_cause(exc)}") from exc
    if mask_arr is None or mask_arr.shape != image_arr.shape:
        raise DataError(f"{mask}: mask grid does not match the image {image} after resampling")
    return image_arr, mask_arr, affine
