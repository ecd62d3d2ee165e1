"""TLCR patches of an experiment: reading ``patches/manifest.csv`` and selecting a fold's rows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from neonet.errors import DataError, MissingUpstreamError
from neonet.workspace import Workspace

#: Label-patch values (TLCR output).
PATCH_BACKGROUND, PATCH_LIVER, PATCH_SHELL, PATCH_TUMOR = 0, 1, 2, 3

#: The columns every patch manifest starts with: TLCR's ``patches/manifest.csv`` and NeoGen's
#: ``synthetic/fold<k>/manifest.csv`` (the fields of :class:`PatchRecord`); each adds its own after them.
PATCH_COLUMNS = ("case_id", "patient_id", "pni", "image", "label")


class MissingLabelPatchError(DataError):
    """A step that needs a patch's label patch met a patch without one (``neonet crop --source none``)."""

    def __init__(self, case_id: str, manifest: Path | None, need: str) -> None:
        where = f"{manifest}: case {case_id}" if manifest is not None else f"case {case_id}"
        super().__init__(
            f"{where}: the patch has no label patch (the manifest's `label` is empty: `neonet crop --source none` "
            f"makes none), but {need} needs one. Crop with masks (`neonet crop --source manual` or "
            "`--source predicted`), or use these patches where no label is read: a classifier without a label "
            "channel (`--data.label_channel=false`, no `region_labels`)."
        )


@dataclass(frozen=True)
class PatchRecord:
    """One usable TLCR patch.

    Attributes:
        case_id: the case.
        patient_id: its patient.
        pni: the PNI label, None when unknown.
        image: the image patch.
        label: the label patch, None for a patch cut without a mask (``neonet crop --source none``).
        manifest: the manifest the record comes from (named in errors), None when not from a file.
    """

    case_id: str
    patient_id: str
    pni: int | None
    image: Path
    label: Path | None
    manifest: Path | None = None

    def label_path(self, need: str) -> Path:
        """The label patch, or :class:`MissingLabelPatchError` naming the case and ``need`` (what reads it)."""
        if self.label is None:
            raise MissingLabelPatchError(self.case_id, self.manifest, need)
        return self.label


def read_patch_manifest(ws: Workspace) -> pd.DataFrame:
    """The experiment's patch manifest; MissingUpstreamError (naming ``neonet crop``) if absent."""
    path = ws.patches_manifest
    if not path.is_file():
        patch_set = "" if ws.patches is None else f" --patches {ws.patches} (e.g. with --source manual)"
        raise MissingUpstreamError(
            "TLCR patches",
            path,
            f"neonet crop --cases <cases.csv> --experiment {ws.experiment} --runs_dir {ws.runs_dir}{patch_set}",
        )
    return pd.read_csv(path, dtype={"case_id": str, "patient_id": str, "image": str, "label": str})


def patch_records(ws: Workspace, case_ids: list[str] | tuple[str, ...], require_pni: bool = False) -> list[PatchRecord]:
    """Patches of the given cases (in that order), skipping cases that TLCR could not crop.

    A patch cut without a mask (``neonet crop --source none``) comes with ``label`` None; what needs
    the label patch asks for it with :meth:`PatchRecord.label_path`.

    Raises DataError when a requested case is absent from the manifest (patches older than the
    case manifest: re-run ``neonet crop``) or, with ``require_pni``, has no PNI label.
    """
    frame = read_patch_manifest(ws).set_index("case_id")
    base = ws.patches_manifest.parent
    missing = [c for c in case_ids if c not in frame.index]
    if missing:
        raise DataError(
            f"{ws.patches_manifest}: no row for case(s) {', '.join(missing[:10])}; re-run `neonet crop` for this experiment"
        )
    out: list[PatchRecord] = []
    for cid in case_ids:
        row = frame.loc[cid]
        if not isinstance(row.get("image"), str) or not row.get("image"):
            continue  # skipped or failed crop: its status column says why
        pni = row.get("pni")
        pni = None if pd.isna(pni) else int(pni)
        if require_pni and pni is None:
            raise DataError(f"{ws.patches_manifest}: case {cid} has no pni label")
        label = row.get("label")
        label_path = base / label if isinstance(label, str) and label else None
        patient = str(row.get("patient_id", cid))
        out.append(PatchRecord(cid, patient, pni, base / row["image"], label_path, ws.patches_manifest))
    return out
