"""``neonet export``: an experiment's prediction models as one self-contained bundle (MONAI bundle layout).

The bundle holds the NeoSeg fold ensemble and the classifier fold ensemble as TorchScript
(``torch.jit.trace`` of each fold's network, in eval mode) and, as JSON, everything
``neonet predict-case`` reads besides them: preprocessing (orientation, spacing, intensity
normalisation, padding), sliding window, TLCR settings, each classifier fold's validation threshold,
and each model's source checkpoint with its SHA-256 (:class:`~neonet.workspace.BundlePaths` names the
files). ``neonet predict-case --bundle DIR scan.nii.gz`` then predicts without the runs folder, through
the same code as ``--experiment`` (:mod:`neonet.predict.source`).

Before the bundle is put in place, each TorchScript file is loaded back from it and compared with
its fold's network on a check input; the largest difference is recorded in ``metadata.json``
(``export_check``). The bundle is written to a temporary folder and renamed onto ``--out``: an
interrupted export leaves nothing, and ``--force`` replaces an earlier bundle only once the new one
is complete.
"""

from __future__ import annotations

import datetime as _dt
import logging
import warnings
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from neonet import __version__
from neonet.errors import NeonetError
from neonet.predict.bundle import FORMAT, FORMAT_VERSION, RADIOMICS, BundleSource, check_stage_name
from neonet.predict.source import ClsModel, CropSettings, RadiomicsModel, RunsSource, SegModel
from neonet.run.atomic import atomic_dir, read_json, write_json, write_text
from neonet.workspace import BundlePaths, Workspace, git_sha

log = logging.getLogger(__name__)

__all__ = ["export"]

#: Largest |difference| of a TorchScript network's outputs from its fold's network that export accepts.
TOLERANCE = 1e-4


def _package_version(name: str) -> str | None:
    try:
        return package_metadata.version(name)
    except package_metadata.PackageNotFoundError:
        return None


def _trace(net: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    """``torch.jit.trace`` of ``net`` in eval mode (the traced graph is checked by :func:`_check`)."""
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", DeprecationWarning
        )  # torch 2.13 deprecates torch.jit; TorchScript still needs no extra package
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks on fixed settings become constants
        with torch.no_grad():
            return torch.jit.trace(net.eval(), example, check_trace=False)


def _save(module: torch.jit.ScriptModule, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(module, str(path))


def _difference(a: Any, b: Any, x: Any) -> float:
    """Largest |difference| between two models' outputs on ``x`` (a window's logits, a patch's PNI logit, or a
    radiomics model's logits of feature rows)."""
    if isinstance(a, RadiomicsModel):
        return float(np.abs(a.saved.model.decision_function(x) - b.saved.model.decision_function(x)).max())
    with torch.no_grad():
        ya = a.predictor()(x) if isinstance(a, SegModel) else a.logit(x)
        yb = b.predictor()(x) if isinstance(b, SegModel) else b.logit(x)
        return float((ya.float() - yb.float()).abs().max())


def _seg_inputs(model: SegModel) -> tuple[torch.Tensor, torch.Tensor]:
    """A trace input and a check input of another shape (unless a sliding window fixes it)."""
    s, g = model.settings, torch.Generator().manual_seed(0)
    d = max(int(s.divisible), 1)
    trace_shape = s.roi_size or (2 * d, 2 * d, 2 * d)
    check_shape = s.roi_size or (3 * d, 2 * d, 4 * d)
    return torch.rand(1, 1, *trace_shape, generator=g), torch.rand(1, 1, *check_shape, generator=g)


def _cls_inputs(model: ClsModel, crop: CropSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """Two patches of the classifier's input size (random image, random labels 0–3 as the label channel)."""
    s, g = model.settings, torch.Generator().manual_seed(0)
    shape = tuple(max(p, q) for p, q in zip(crop.patch_size, s.pad_to or crop.patch_size))

    def patch() -> torch.Tensor:
        x = torch.rand(1, 1, *shape, generator=g)
        if s.label_channel:
            x = torch.cat([x, torch.randint(0, 4, (1, 1, *shape), generator=g).float()], dim=1)
        return x

    return patch(), patch()


def _radiomics_rows(model: RadiomicsModel) -> np.ndarray:
    """Check rows for a radiomics model: its training means plus standard-normal multiples of its training SDs."""
    saved = model.saved.model
    noise = np.random.default_rng(0).standard_normal((8, len(saved.features)))
    return np.asarray(saved.mean + noise * saved.sd, dtype=np.float64)


def _radiomics_section(paths: BundlePaths, classifier: str, models: list[RadiomicsModel]) -> dict[str, Any]:
    """``inference.json``'s classifier entry for radiomics folds: each ``model.json`` copied to
    ``models/<stage>_fold<k>.json``, the feature settings (regions, bins) and the thresholds."""
    settings = _one([{"regions": list(m.saved.regions), "bins": m.saved.bins} for m in models], classifier)
    entries = []
    for m in models:
        write_json(paths.model(classifier, m.fold, ".json"), read_json(Path(m.record["path"])))
        entry = _model_entry(paths, classifier, m.fold, m.record, ".json")
        entries.append({**entry, "val_threshold": m.threshold})
    return {"stage": classifier, "kind": RADIOMICS, "settings": settings, "models": entries}


def _one(values: list[Any], what: str) -> Any:
    if len({repr(v) for v in values}) > 1:
        raise NeonetError(
            f"the {what} folds were trained with different settings {values}; export folds of one config with --folds"
        )
    return values[0]


def _check_out(out: Path, force: bool) -> None:
    """Refuse an existing non-empty ``out`` unless ``force``, and never replace a folder that is not a bundle."""
    if out.exists() and not out.is_dir():
        raise NeonetError(f"--out {out} is a file; name a folder for the bundle")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not force:
        raise NeonetError(
            f"--out {out} exists and is not empty; nothing was written. Choose another --out, or replace the bundle "
            "there with --force (it is replaced only once the new one is complete)"
        )
    inference = BundlePaths(out).inference
    try:
        is_bundle = inference.is_file() and read_json(inference).get("format") == FORMAT
    except (NeonetError, AttributeError):
        is_bundle = False
    if not is_bundle:
        raise NeonetError(
            f"--out {out} is not empty and is not a neonet bundle (no {inference}); --force replaces only a bundle "
            "that `neonet export` wrote. Nothing was changed: choose another --out"
        )


def _model_entry(paths: BundlePaths, stage: str, fold: int, source_record: dict[str, Any], suffix: str = ".ts") -> dict[str, Any]:
    from neonet.run.atomic import sha256_file

    path = paths.model(stage, fold, suffix)
    return {
        "fold": int(fold),
        "file": paths.model_name(stage, fold, suffix),
        "sha256": sha256_file(path),
        "bytes": path.stat().st_size,
        "source_checkpoint": source_record,
    }


def _metadata(
    ws: Workspace, classifier: str, crop: CropSettings, bundle_version: str, description: str | None, check: dict[str, Any]
) -> dict[str, Any]:
    """``configs/metadata.json``: MONAI's bundle metadata fields plus neonet's provenance."""
    stages = "NeoSeg (liver/tumour segmentation) fold ensemble -> TLCR tumour-centred crop"
    if classifier != "none":
        stages += f" -> {classifier} PNI classifier fold ensemble"
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return {
        "version": bundle_version,
        "changelog": {bundle_version: f"exported from experiment {ws.experiment!r} by neonet {__version__}"},
        "description": description or f"Perineural invasion (PNI) from a 3D liver MRI: {stages}.",
        "task": "Perineural invasion prediction from 3D MRI (segmentation, crop, classification)",
        "authors": "exported by neonet export",
        "intended_use": "Research output from cross-validated models, not a diagnosis.",
        "monai_version": _package_version("monai"),
        "pytorch_version": torch.__version__,
        "numpy_version": np.__version__,
        "required_packages_version": {"neonet": __version__, "nibabel": _package_version("nibabel")},
        "neonet_version": __version__,
        "git_sha": git_sha(),
        "experiment": ws.experiment,
        "created": created,
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "modality": "MR",
                    "num_channels": 1,
                    "spatial_shape": ["*", "*", "*"],
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": False,
                    "channel_def": {
                        "0": "3D MRI as NIfTI, any orientation and spacing (resampled as configs/inference.json says)"
                    },
                }
            },
            "outputs": {
                "pni_probability": {
                    "type": "probabilities",
                    "format": "classification",
                    "num_channels": 1,
                    "spatial_shape": [1],
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": True,
                    "channel_def": {"0": "PNI+ (mean over the classifier folds, on the TLCR patch)"},
                },
                "segmentation": {
                    "type": "image",
                    "format": "labels",
                    "num_channels": 1,
                    "spatial_shape": ["*", "*", "*"],
                    "dtype": "uint8",
                    "value_range": [0, 2],
                    "is_patch_data": False,
                    "channel_def": {"0": "background", "1": "liver", "2": "tumour"},
                },
            },
            "patch_size": list(crop.patch_size),
        },
        "export_check": check,
    }


def _readme(ws: Workspace, classifier: str) -> str:
    return (
        f"# neonet bundle: experiment `{ws.experiment}`\n\n"
        "Written by `neonet export`. Predict one scan without the runs folder:\n\n"
        "```bash\nneonet predict-case --bundle THIS_FOLDER scan.nii.gz [--out DIR] [--classifier none] [--device cuda]\n```\n\n"
        f"- `configs/metadata.json`: version, inputs and outputs, neonet version and git commit, export check;\n"
        f"- `configs/inference.json`: preprocessing, sliding window, TLCR settings, the {classifier} folds' "
        "validation thresholds, and each model file's SHA-256 with the checkpoint it was exported from;\n"
        "- `models/*.ts`: each fold's network as TorchScript (loaded with `torch.jit.load` only); a radiomics "
        "classifier's folds are `models/*.json` (coefficients and training statistics, read as plain JSON).\n\n"
        "The probability is research output from cross-validated models, not a diagnosis.\n"
    )


def export(
    out: Path,
    experiment: str = "demo",
    runs_dir: Path = Path("runs"),
    classifier: str = "pattennet",
    folds: list[int] | None = None,
    force: bool = False,
    version: str = "1.0.0",
    description: str | None = None,
) -> dict[str, Any]:
    """Write an experiment's NeoSeg and classifier fold ensembles as a self-contained bundle.

    Usage: ``neonet export --experiment E --out DIR [--classifier pattennet] [--force]``; then
    ``neonet predict-case --bundle DIR scan.nii.gz`` predicts without the runs folder. The bundle
    follows MONAI's bundle layout: ``configs/metadata.json``, ``configs/inference.json`` (preprocessing,
    sliding window, TLCR, thresholds, source checkpoints with SHA-256), ``models/<stage>_fold<k>.ts``
    (TorchScript) and ``docs/README.md``. Loading it runs nothing but TorchScript and JSON.

    Args:
        out: the bundle's folder; must not exist or be empty, unless ``--force``.
        experiment: experiment whose trained folds are exported (folder below ``runs_dir``).
        runs_dir: folder holding all experiments.
        classifier: classifier stage folder (``pattennet``, ``pattennet_syn``, ``resnet18``, ``radiomics``: its
            folds' ``model.json`` as JSON models, ...), or
            ``none`` for segmentation and TLCR only.
        folds: folds to export, for NeoSeg and the classifier (default: all folds of the experiment;
            each must have finished training).
        force: replace an earlier bundle at ``out`` (only a folder that holds a neonet bundle; it is
            replaced once the new bundle is complete).
        version: the bundle's version (``metadata.json``).
        description: the bundle's description (default: its stages in words).

    Returns:
        The content of ``configs/metadata.json``.
    """
    out = Path(out)
    if classifier != "none":
        check_stage_name(classifier, "--classifier")
    _check_out(out, force)
    ws = Workspace(runs_dir, experiment)
    source = RunsSource(ws)
    seg_folds = source.seg_folds(folds)
    crop = source.crop_settings()
    cls_folds = None if classifier == "none" else source.classifier_folds(classifier, folds)

    with atomic_dir(out, replace=force) as tmp:
        paths = BundlePaths(tmp)
        pairs: list[tuple[str, Any, Any]] = []  # (stage, model, check input) for the check below
        seg_models = source.seg_models(seg_folds)
        seg_settings = _one([m.settings for m in seg_models], "seg")
        seg_entries = []
        for m in seg_models:
            example, probe = _seg_inputs(m)
            log.info("tracing seg fold %d", m.fold)
            _save(_trace(m.net, example), paths.model("seg", m.fold))
            seg_entries.append(_model_entry(paths, "seg", m.fold, m.record))
            pairs.append(("seg", m, probe))
        config: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "experiment": experiment,
            "segmentation": {"settings": seg_settings.to_json(), "models": seg_entries},
            "crop": crop.to_json(),
            "classifier": None,
        }
        all_cls = [] if cls_folds is None else source.cls_models(classifier, cls_folds)
        radiomics = [m for m in all_cls if isinstance(m, RadiomicsModel)]
        if radiomics:
            config["classifier"] = _radiomics_section(paths, classifier, radiomics)
            pairs += [(classifier, m, _radiomics_rows(m)) for m in radiomics]
        elif cls_folds is not None:
            cls_models = [m for m in all_cls if isinstance(m, ClsModel)]
            cls_settings = _one([m.settings for m in cls_models], classifier)
            entries = []
            for c in cls_models:
                example, probe = _cls_inputs(c, crop)
                log.info("tracing %s fold %d", classifier, c.fold)
                _save(_trace(c.net, example), paths.model(classifier, c.fold))
                entries.append({**_model_entry(paths, classifier, c.fold, c.record), "val_threshold": c.threshold})
                pairs.append((classifier, c, probe))
            config["classifier"] = {"stage": classifier, "settings": cls_settings.to_json(), "models": entries}
        write_json(paths.inference, config)

        # load the bundle back as predict-case will, and compare each network with its fold's
        bundle = BundleSource(tmp)
        loaded: dict[tuple[str, int], Any] = {("seg", m.fold): m for m in bundle.seg_models(seg_folds)}
        if cls_folds is not None:
            loaded |= {(classifier, c.fold): c for c in bundle.cls_models(classifier, cls_folds)}
        diffs = {f"{stage}_fold{m.fold}": _difference(m, loaded[stage, m.fold], x) for stage, m, x in pairs}
        worst = max(diffs, key=lambda k: diffs[k])
        if diffs[worst] > TOLERANCE:
            raise NeonetError(
                f"the TorchScript copy of {worst} differs from the trained network by {diffs[worst]:.2e} (> {TOLERANCE}) "
                "on a check input; its network cannot be traced faithfully (e.g. shape-dependent Python code: set the "
                "seg model's roi_size for a fixed sliding window). Nothing was written"
            )
        check = {
            "max_abs_output_difference": diffs,
            "tolerance": TOLERANCE,
            "method": "torch.jit.trace in eval mode; outputs of the loaded file against the trained network on a check input"
            + ("; radiomics: logits of the bundle's JSON model against the experiment's on 8 check rows" if radiomics else ""),
        }
        metadata = _metadata(ws, classifier, crop, version, description, check)
        metadata["models_bytes"] = sum(p.stat().st_size for p in paths.models_dir.iterdir() if p.suffix in (".ts", ".json"))
        write_json(paths.metadata, metadata)
        write_text(paths.readme, _readme(ws, classifier))

    n_cls = 0 if cls_folds is None else len(cls_folds)
    print(
        f"wrote bundle {out} (models {metadata['models_bytes'] / 1e6:.2f} MB): {len(seg_folds)} NeoSeg fold(s)"
        + (f", {n_cls} {classifier} fold(s)" if n_cls else "")
        + f"; TorchScript matches the trained networks within {diffs[worst]:.1e}"
    )
    print(f"predict with: neonet predict-case --bundle {out} scan.nii.gz")
    return metadata
