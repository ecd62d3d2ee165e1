"""``neonet predict-case``: PNI prediction for one new MRI with an experiment's trained folds.

NeoSeg (mean softmax of the seg folds, post-processed as ``neonet predict`` does) → mask in the
input's space → TLCR with the experiment's crop settings on that mask (exactly as
``neonet crop --source predicted`` crops the out-of-fold masks) → each classifier fold on the patch
(PNI probability per fold and their mean) → Grad-CAM saliency mapped back into the input's space
→ an overlay PNG. NeoSeg, TLCR and the classifier folds are :meth:`neonet.predict.pipeline.Predictor.run`,
the path ``neonet evaluate`` takes too. Output folder (default ``<runs_dir>/<experiment>/predict_case/<image name>/``)::

    prediction.json       probabilities, tumour volume, crop box, provenance (written last)
    segmentation.nii.gz   uint8 mask (0 background, 1 liver, 2 tumour), input's shape and affine
    saliency.nii.gz       float32 Grad-CAM in [0, 1], input's shape and affine, 0 outside the crop
    patch_image.nii.gz    the classifier's input patch, patch_label.nii.gz its label patch
    overlay.png           slices through the tumour: image, liver/tumour contours, crop box, saliency

Without a tumour the JSON says ``"tumor_found": false`` with the reason, the mask and overlay are
still written, nothing is classified and the exit code is 0.
"""

from __future__ import annotations

import datetime as _dt
import logging
from pathlib import Path
from typing import Any, cast

import nibabel as nib
import numpy as np
import torch

from neonet import __version__
from neonet.data.cases import LIVER, TUMOR, safe_file_name
from neonet.data.nifti import load_nifti, save_nifti
from neonet.errors import NeonetError
from neonet.predict.pipeline import Patch, Predictor
from neonet.predict.source import Classifier, ModelSource, RadiomicsModel, RunsSource
from neonet.run.atomic import write_json
from neonet.workspace import Workspace, git_sha

log = logging.getLogger(__name__)

#: Files of one prediction folder (stale ones are removed before a new run writes its own).
OUTPUTS = {
    "json": "prediction.json",
    "segmentation": "segmentation.nii.gz",
    "saliency": "saliency.nii.gz",
    "patch_image": "patch_image.nii.gz",
    "patch_label": "patch_label.nii.gz",
    "overlay": "overlay.png",
}
#: Why a bundle's prediction has no saliency map.
NO_SALIENCY_FROM_TORCHSCRIPT = (
    "Grad-CAM needs the network's Python modules; a bundle holds TorchScript only "
    "(run predict-case with --experiment for a saliency map)"
)
#: Why the radiomics baseline's prediction has no saliency map.
NO_SALIENCY_FROM_RADIOMICS = "the radiomics baseline is a linear model on the patch's IBSI features: no network, no Grad-CAM map"
#: From this many tumour components on, the JSON warns that the segmentation looks fragmented.
FRAGMENTED = 5


def saliency(patch: Patch, models: list[Classifier], device: torch.device, layer: str | None) -> tuple[np.ndarray | None, str]:
    """Mean Grad-CAM of the classifier folds on the patch (each fold's map scaled to [0, 1]) and its layer.

    The patch is loaded with each fold's evaluation transform (:meth:`ClsSettings.transform`), as in its
    test step. When Grad-CAM cannot reach its layer (or the network is TorchScript, from a bundle, or the
    classifier is the radiomics model) the map is None and the second item says why.
    """
    from neonet.cls.saliency import SaliencyUnavailable, grad_cam

    shape = cast(nib.Nifti1Image, nib.load(str(patch.image))).shape[:3]
    maps, used = [], ""
    for m in models:
        if isinstance(m, RadiomicsModel):
            return None, NO_SALIENCY_FROM_RADIOMICS
        if not m.explainable:
            return None, NO_SALIENCY_FROM_TORCHSCRIPT
        x = m.settings.transform()({"image": str(patch.image), "region": str(patch.label)})["image"][None].to(device)
        net = m.net.to(device)
        try:
            heat, used = grad_cam(net, x, layer)
        except SaliencyUnavailable as exc:
            log.warning("fold %d: no saliency map: %s", m.fold, exc)
            return None, str(exc)
        finally:
            net.cpu()
        before = [(h - s) // 2 for h, s in zip(heat.shape, shape)]  # undo ClsDataModule's symmetric pad_to padding, if any
        maps.append(heat[tuple(slice(b, b + s) for b, s in zip(before, shape))])
    return np.mean(maps, axis=0).astype(np.float32), used


def image_name(path: Path) -> str:
    """File name without ``.nii.gz`` / ``.nii`` (or another suffix; a DICOM folder keeps its whole name), made
    one safe folder name (the default output folder's):
    characters other than letters, digits, ``.``, ``_`` and ``-`` become ``_`` (as for case ids), so
    ``...nii.gz`` or ``.nii`` cannot name the parent folder or ``predict_case`` itself."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    else:
        name = name if Path(path).is_dir() else Path(name).stem  # a DICOM series folder keeps its whole name
    return safe_file_name(name, default="image")


def _volumes_ml(labels: np.ndarray, affine: np.ndarray) -> tuple[float, float]:
    voxel_ml = abs(float(np.linalg.det(np.asarray(affine)[:3, :3]))) / 1000.0
    return float((labels == LIVER).sum() + (labels == TUMOR).sum()) * voxel_ml, float((labels == TUMOR).sum()) * voxel_ml


def _message(result: Any, seg_from: str, liver_ml: float, probs: dict[str, float], classifier: str) -> str:
    if result.n_tumors == 0:
        what = "no liver and no tumour" if result.status == "no_liver_no_tumor" else f"no tumour (liver {liver_ml:.0f} ml)"
        if seg_from.startswith("the given mask"):
            return f"NO TUMOUR FOUND: {seg_from} has {what}, so no PNI prediction was made."
        return (
            f"NO TUMOUR FOUND: {seg_from} found {what} in this scan, so no PNI prediction was made. "
            "Check that it is a contrast-enhanced liver MRI like the training cohort, or give a mask with --mask."
        )
    text = f"tumour found: {result.n_tumors} component(s), largest {result.tumor_volume_ml:.1f} ml"
    if not probs:
        return text + f"; no classifier run (--classifier {classifier})"
    return text + f"; PNI probability {np.mean(list(probs.values())):.3f} (mean of {len(probs)} {classifier} fold(s))"


def _warnings(result: Any) -> list[str]:
    out = []
    if result.fits is False:
        out.append(f"the largest tumour does not fit entirely in the {'x'.join(map(str, result.patch_size))} patch")
    if result.n_tumors >= FRAGMENTED:
        out.append(
            f"{result.n_tumors} separate tumour components: the segmentation may be unreliable on this scan "
            "(check overlay.png and segmentation.nii.gz)"
        )
    return out


# ----------------------------------------------------------------------------- the verb
def model_source(experiment: str, runs_dir: Path, bundle: Path | None) -> ModelSource:
    """Where the models come from: the bundle when one is given, else the experiment's runs folder."""
    if bundle is not None:
        from neonet.predict.bundle import BundleSource

        return BundleSource(bundle)
    return RunsSource(Workspace(runs_dir, experiment))


def predict_case(
    image: Path,
    experiment: str = "demo",
    runs_dir: Path = Path("runs"),
    out: Path | None = None,
    classifier: str | None = None,
    folds: list[int] | None = None,
    mask: Path | None = None,
    saliency_layer: str | None = None,
    device: str = "auto",
    bundle: Path | None = None,
) -> dict[str, Any]:
    """Predict PNI for one new MRI: NeoSeg → TLCR → classifier fold ensemble, with Grad-CAM.

    Usage: ``neonet predict-case IMAGE [options]`` (or ``--image IMAGE``).

    Uses the experiment's trained folds (or those of a bundle written by ``neonet export``): every
    NeoSeg fold (mean softmax), the crop settings of ``neonet crop`` and every fold of the classifier
    (PNI probability per fold and their mean). Writes ``prediction.json``, ``segmentation.nii.gz`` and
    ``saliency.nii.gz`` (both in the input's shape and affine), the patch and ``overlay.png``; prints
    the result and the JSON path. Without a tumour it says so (``"tumor_found": false``), writes the
    mask and overlay and exits with 0.

    Given a folder of scans or a CSV of them (column ``image``, optional ``case_id``), predicts each scan
    into ``<out>/<case>/`` with the models loaded once and writes ``<out>/summary.csv`` (one row per
    scan: probability, tumour, volumes, cohort match, warnings, folder, error); a scan that fails is a
    row with its error, the others go on, and the command ends with an error naming the failures.

    A scan that is a case of the experiment's cohort (same content, or same case id) is said to be
    one, with its out-of-fold probability (the fold that held it out) beside the ensemble's.

    Args:
        image: the MRI volume (NIfTI, NRRD, MetaImage or a DICOM series folder; any orientation and
            spacing), or a folder of such scans, or a CSV listing them (column ``image``, optional ``case_id``).
        experiment: experiment whose trained folds are used (folder below ``runs_dir``).
        runs_dir: folder holding all experiments.
        out: output folder (default ``<runs_dir>/<experiment>/predict_case/<image name>/``; with
            ``--bundle``, ``predict_case/<image name>/`` in the working directory); for a folder or CSV of
            scans, the folder of their folders and ``summary.csv`` (default ``.../predict_case/``).
        classifier: classifier stage folder: ``pattennet`` (default), ``pattennet_syn``, ``resnet18``,
            ``radiomics`` (the radiomics baseline's folds: no saliency map), ...; with ``--bundle`` the
            bundle's classifier (the default); ``none`` stops after segmentation and TLCR (tumour volume
            and crop box only).
        folds: folds to ensemble, for NeoSeg and the classifier (default: all folds of the
            experiment, or of the bundle; each must have finished training).
        mask: a mask in the image's space (0 background, 1 liver, 2 tumour) to use instead of
            NeoSeg, e.g. a corrected segmentation.
        saliency_layer: Grad-CAM layer, a module name of the classifier network (default: the last
            Dual Attention Block of PattenNet, the last Conv3d of a baseline); not available with
            ``--bundle`` (TorchScript networks).
        device: ``auto`` (a GPU if there is one), ``cpu``, ``cuda``, ``cuda:1``, ...
        bundle: a bundle folder written by ``neonet export``, used instead of ``--experiment`` and
            ``--runs_dir`` (no runs folder needed).

    Returns:
        The content of ``prediction.json`` (for a batch: the path of ``summary.csv`` and its rows).
    """
    from neonet.predict.batch import is_batch_input, predict_batch

    image = Path(image)
    if is_batch_input(image):
        if mask is not None:
            raise NeonetError(f"--mask is for one scan; {image} holds several (give each scan's mask in a run of its own)")
        source = model_source(experiment, Path(runs_dir), None if bundle is None else Path(bundle))
        return predict_batch(
            image, Predictor.create(source, classifier, folds, None, saliency_layer, device), None if out is None else Path(out)
        )
    load_nifti(image, kind="image")  # header checks first: size limit, voxel size, 3D (a trailing singleton axis dropped)
    source = model_source(experiment, Path(runs_dir), None if bundle is None else Path(bundle))
    predictor = Predictor.create(source, classifier, folds, mask, saliency_layer, device)
    out_dir = Path(out) if out is not None else source.default_out(image_name(image))
    return predict_scan(predictor, image, out_dir, mask=None if mask is None else Path(mask))


def predict_scan(
    predictor: Predictor, image: Path, out_dir: Path, mask: Path | None = None, case_id: str | None = None
) -> dict[str, Any]:
    """One scan through NeoSeg (or its ``mask``), TLCR and the classifier folds; writes ``out_dir`` and returns
    the content of ``prediction.json`` (see :func:`predict_case`). ``case_id`` is compared with the cohort's."""
    src = load_nifti(image, kind="image")
    source, classifier, crop = predictor.source, predictor.classifier, predictor.crop
    assert crop is not None  # Predictor.create reads the crop settings
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in OUTPUTS.values():  # never leave files of an earlier run beside this run's
        (out_dir / name).unlink(missing_ok=True)

    # 1.-3. segmentation in the input's space, TLCR as `neonet crop --source predicted`, the classifier folds
    patch_files = (out_dir / OUTPUTS["patch_image"], out_dir / OUTPUTS["patch_label"])
    scan = predictor.run(image, out_dir / OUTPUTS["segmentation"], patch_files, given_mask=mask, reference=src)
    assert scan.crop is not None
    seg_path, result = scan.mask, scan.crop.result
    image_c, mask_c, affine_c = scan.crop.image, scan.crop.mask, scan.crop.affine
    outputs: dict[str, str] = {"segmentation": str(seg_path)}
    if mask is not None:
        seg_from = f"the given mask {mask}"
        seg_record: dict[str, Any] = {"source": "mask", "mask": str(mask)}
    else:
        seg_models = predictor.seg_models()
        seg_from = f"NeoSeg (fold{'s' if len(seg_models) > 1 else ''} {', '.join(str(m.fold) for m in seg_models)})"
        seg_record = {
            "source": "neoseg",
            "folds": predictor.seg_folds,
            "checkpoints": [m.record for m in seg_models],
            "confidence": scan.seg_confidence,
        }
    labels = np.asarray(cast(nib.Nifti1Image, nib.load(str(seg_path))).dataobj)
    liver_ml, tumor_ml = _volumes_ml(labels, src.affine)
    seg_record |= {"liver_volume_ml": round(liver_ml, 3), "tumor_volume_ml": round(tumor_ml, 3)}

    probs: dict[str, float] = {}
    thresholds: dict[str, float] = {}
    saliency_c: np.ndarray | None = None
    cls_record: dict[str, Any] | None = None
    saliency_record: dict[str, Any] | None = None
    box_input = None
    if scan.patch is not None:
        from neonet.cls.saliency import patch_bounds_in_image, patch_to_image

        assert result.image_patch is not None
        p_affine = scan.patch.affine
        start, stop = patch_bounds_in_image(result.image_patch.shape, p_affine, src.shape, src.affine)
        box_input = {"start": list(start), "stop": list(stop)}
        outputs |= {"patch_image": str(scan.patch.image), "patch_label": str(scan.patch.label)}
        if predictor.cls_folds is not None:
            # Grad-CAM of the classifier folds
            cls_models = predictor.cls_models(classifier)
            probs = {str(k): p for k, p in scan.probs[classifier].items()}
            thresholds = {str(m.fold): float(m.threshold) for m in cls_models}
            heat, layer = saliency(scan.patch, cls_models, predictor.device, predictor.saliency_layer)
            cls_record = {"stage": classifier, "folds": predictor.cls_folds, "checkpoints": [m.record for m in cls_models]}
            if heat is None:
                saliency_record = {"error": layer}
            else:
                sal = patch_to_image(heat, p_affine, src.shape, src.affine)
                outputs["saliency"] = str(save_nifti(out_dir / OUTPUTS["saliency"], sal, src.affine))
                saliency_c = patch_to_image(heat, p_affine, image_c.shape, affine_c)
                saliency_record = {
                    "method": "Grad-CAM (monai.visualize.GradCAM) of the PNI+ logit",
                    "layer": layer,
                    "scaling": "each fold's map divided by its maximum, then averaged over the folds",
                }
            del cls_models

    # 4. overlay, then the JSON (last: its presence means the folder is complete)
    from neonet.predict.overlay import write_overlay

    message = _message(result, seg_from, liver_ml, probs, classifier)
    mean = float(np.mean(list(probs.values()))) if probs else None
    title = f"{image_name(image)}: " + (f"PNI probability {mean:.2f}" if mean is not None else message.split(":")[0])
    outputs["overlay"] = str(
        write_overlay(out_dir / OUTPUTS["overlay"], image_c, mask_c, crop.spacing, result.box, saliency_c, title)
    )
    box = (
        None if result.box is None else {k: [int(v) for v in result.box[k]] for k in ("start", "stop", "pad_before", "pad_after")}
    )
    record: dict[str, Any] = {
        "image": str(image.resolve()),
        **source.describe(),
        "tumor_found": bool(result.n_tumors > 0),
        "message": message,
        "pni_probability": mean,
        "pni_probability_per_fold": probs,
        "val_threshold_per_fold": thresholds,
        "n_tumors": int(result.n_tumors),
        "tumor_volume_ml": round(float(result.tumor_volume_ml), 3),
        "tumor_volume_total_ml": round(float(result.tumor_volume_total_ml), 3),
        "crop_box": box,
        "crop_box_input_voxels": box_input,
        "warnings": _warnings(result),
        "cohort": None,
        "crop": {
            "status": result.status,
            "grid": "canonical RAS grid at the crop spacing (as neonet crop)",
            "grid_affine": affine_c.tolist(),
            "grid_shape": list(image_c.shape),
            "centroid_voxel": None if result.centroid is None else [round(c, 3) for c in result.centroid],
            "fits": result.fits,
            "spacing": list(crop.spacing),
            "patch_size": list(crop.patch_size),
            "shell_mm": crop.shell_mm,
            "liver_level": crop.liver_level,
            "intensity_scale": round(float(result.intensity_scale), 6),
            "intensity_reference": result.intensity_reference,
            "settings": crop.config,
            "training_patches_from": crop.source,
        },
        "segmentation": seg_record,
        "classifier": cls_record,
        "saliency": saliency_record,
        "outputs": outputs,
        "neonet_version": __version__,
        "git_sha": git_sha(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    record["cohort"] = cohort_record(predictor, image, case_id or image_name(image), mean)
    record["out_of_distribution"] = ood_record(predictor, image, seg_path, scan.seg_confidence)
    for flag in (record["out_of_distribution"] or {}).get("flags", []):
        record["warnings"].append(f"outside the training cohort: {flag['message']}")
    if record["cohort"] is not None:
        record["warnings"].insert(0, record["cohort"]["message"])
    json_path = write_json(out_dir / OUTPUTS["json"], record)
    print(message)
    for warning in record["warnings"]:
        print(f"warning: {warning}")
    print(f"wrote {json_path}")
    return record


def ood_record(predictor: Predictor, image: Path, seg_path: Path, confidence: float | None) -> dict[str, Any] | None:
    """The scan's measures and the flags of those outside the experiment's cohort fingerprint
    (:mod:`neonet.predict.ood`); None for a bundle (no cohort)."""
    from neonet.predict import ood

    ws = predictor.workspace
    if ws is None:
        return None
    try:
        fingerprint = ood.load(ws, predictor.models, predictor.device)
    except NeonetError as exc:
        log.warning("no comparison with the training cohort: %s", exc)
        return {"error": str(exc), "flags": []}
    scan = ood.measure(image_name(image), image, seg_path, confidence)
    return {"fingerprint": str(ws.cohort_fingerprint), "measured": scan, "flags": ood.flags(fingerprint, scan)}


def cohort_record(predictor: Predictor, image: Path, case_id: str, ensemble: float | None) -> dict[str, Any] | None:
    """When the scan is a case of the experiment's cohort (:mod:`neonet.predict.membership`): which case, how it
    matched, its out-of-fold probability and the ensemble folds that trained on it; else None."""
    from neonet.predict.membership import cohort_matches, out_of_fold_prediction

    ws = predictor.workspace
    if ws is None:
        return None
    match = cohort_matches(ws, [case_id], [image])[0]
    if match is None:
        return None
    oof = None if predictor.cls_folds is None else out_of_fold_prediction(ws, predictor.classifier, match.case_id)
    seen = sorted(set(predictor.cls_folds or []) & set(match.trained_on))
    text = f"this scan is case {match.case_id} of experiment {ws.experiment}'s cohort (matched by {' and '.join(match.by)})"
    if match.content_differs:
        text = (
            f"this scan is named like case {match.case_id} of experiment {ws.experiment}'s cohort but its content differs "
            "from that case's scan (another scan of the patient, or a reused name? rename it if it is a new patient)"
        )
    if ensemble is not None and seen:
        text += f"; the ensemble's probability {ensemble:.3f} includes fold(s) {', '.join(map(str, seen))} that trained on it"
    if oof is not None:
        text += f"; its out-of-fold probability (fold {oof['fold']}, which held it out) is {oof['probability']:.3f}"
    elif predictor.cls_folds is not None:
        text += f"; no out-of-fold prediction of {predictor.classifier} for it (run `neonet cv` to test every fold)"
    return {
        **match.to_json(),
        "ensemble_folds_trained_on_it": seen,
        "out_of_fold": oof,
        "message": text,
    }


def predict_case_main(argv: list[str]) -> int:
    """Command line of ``neonet predict-case``: ``IMAGE`` may come first, without ``--image``."""
    from jsonargparse import auto_cli

    args = list(argv)
    if args and not args[0].startswith("-"):
        args = ["--image", args[0], *args[1:]]
    auto_cli(predict_case, args=args, as_positional=False, prog="neonet predict-case")
    return 0
