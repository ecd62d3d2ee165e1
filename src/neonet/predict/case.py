"""``neonet predict-case``: PNI prediction for one new MRI with an experiment's trained folds.

NeoSeg (mean softmax of the seg folds, post-processed as ``neonet predict`` does) → mask in the
input's space → TLCR with the experiment's crop settings on that mask (exactly as
``neonet crop --source predicted`` crops the out-of-fold masks) → each classifier fold on the patch
(PNI probability per fold and their mean) → Grad-CAM saliency mapped back into the input's space
→ an overlay PNG. Output folder (default ``<runs_dir>/<experiment>/predict_case/<image name>/``)::

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
import math
from pathlib import Path
from typing import Any, cast

import nibabel as nib
import numpy as np
import torch

from neonet import __version__
from neonet.data.cases import LIVER, TUMOR, LabelMap, safe_file_name
from neonet.data.nifti import load_nifti, read_array, save_nifti
from neonet.errors import DataError, NeonetError
from neonet.predict.source import ClsModel, CropSettings, ModelSource, RunsSource, SegModel
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
#: From this many tumour components on, the JSON warns that the segmentation looks fragmented.
FRAGMENTED = 5


def resolve_device(device: str) -> torch.device:
    """``auto`` → the first CUDA GPU if there is one, else the CPU; anything else as given to torch."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise NeonetError(f"--device {device!r}: {exc}") from exc


# ----------------------------------------------------------------------------- pipeline steps
def segment(image: Path, models: list[SegModel], out_dir: Path, device: torch.device) -> tuple[Path, float | None]:
    """Fold-ensemble NeoSeg mask of ``image`` written in its space (``segmentation.nii.gz``), and NeoSeg's confidence.

    The confidence is each fold's mean maximum softmax over the voxels its own argmax calls liver or
    tumour, averaged over the folds (None when no fold finds any), as the cohort fingerprint measures
    it on the out-of-fold masks (:mod:`neonet.predict.ood`).

    The volume is preprocessed as ``neonet predict`` does (:meth:`SegSettings.transform`); the folds'
    softmax maps are averaged and :meth:`~neonet.seg.SegMaskWriter.write_masks` takes the mean back to the
    scan's grid (linear interpolation), then the argmax and NeoSeg's post-processing there.
    """
    from monai.data import list_data_collate

    from neonet.seg import SegMaskWriter

    if not models:
        raise NeonetError("no NeoSeg folds to segment with")
    grids = {(tuple(m.settings.spacing), int(m.settings.divisible)) for m in models}
    if len(grids) > 1:
        raise NeonetError(
            f"the seg folds were trained on different grids (spacing, divisible) {sorted(grids)}; "
            "pick folds of one config with --folds"
        )
    min_voxels = {m.settings.min_tumor_voxels for m in models}
    if len(min_voxels) > 1:
        log.warning("seg folds differ in min_tumor_voxels %s; the ensemble uses %d", sorted(min_voxels), max(min_voxels))
    transform = models[0].settings.transform()
    name = OUTPUTS["segmentation"].removesuffix(".nii.gz")
    batch = list_data_collate([transform({"image": str(image), "case_id": name, "source": str(image)})])
    x = batch["image"].as_tensor().to(device)
    total = torch.zeros(())
    confidence: list[float] = []
    with torch.inference_mode():
        for m in models:
            log.info("NeoSeg fold %d on %s", m.fold, device)
            m.net.to(device)
            soft = torch.softmax(m.logits(x).float(), dim=1)
            top, arg = soft.max(dim=1)
            if (arg > 0).any():
                confidence.append(float(top[arg > 0].mean()))
            total = total + soft
            m.net.cpu()
        mean = (total / len(models)).cpu()
    path = SegMaskWriter().write_masks(mean, batch, transform, out_dir, max(min_voxels))[0]
    return path, float(np.mean(confidence)) if confidence else None


def write_given_mask(mask: Path, reference: nib.Nifti1Image, out_dir: Path) -> Path:
    """Copy a user's mask (0 background, 1 liver, 2 tumour, nothing else) as the segmentation."""
    img = load_nifti(mask, kind="mask")
    if img.shape[:3] != reference.shape[:3] or not np.allclose(img.affine, reference.affine, atol=1e-3):
        raise DataError(
            f"{mask}: the mask's grid {img.shape} does not match the image's {reference.shape} (shape and affine must agree)"
        )
    raw = np.rint(np.asarray(read_array(img, mask, kind="mask"), dtype=np.float64))
    unknown = sorted(set(np.unique(raw).tolist()) - {0.0, float(LIVER), float(TUMOR)})
    if unknown:
        raise DataError(f"{mask}: values {unknown[:10]} in the mask; give 0 background, {LIVER} liver, {TUMOR} tumour only")
    labels = raw.astype(np.uint8)
    return save_nifti(out_dir / OUTPUTS["segmentation"], labels.reshape(reference.shape[:3]), reference.affine)


def classify(
    patch: Path, models: list[ClsModel], device: torch.device, layer: str | None, label: Path | None = None
) -> tuple[dict[str, float], dict[str, float], np.ndarray | None, str]:
    """Each classifier fold on the patch: probabilities, validation thresholds, mean Grad-CAM, its layer.

    ``label`` is the patch's TLCR label patch, read by folds trained with ``label_channel``.

    The patch is loaded with the fold's evaluation transform (:meth:`ClsSettings.transform`), as in its
    test step. When Grad-CAM cannot reach its layer (or the network is TorchScript, from a bundle) the
    map is None and the last item says why.
    """
    from neonet.cls.saliency import SaliencyUnavailable, grad_cam

    probs, thresholds, maps, used = {}, {}, [], ""
    shape = cast(nib.Nifti1Image, nib.load(str(patch))).shape[:3]
    failed: str | None = None
    for m in models:
        x = m.settings.transform()({"image": str(patch), "region": str(label)})["image"][None].to(device)
        net = m.net.to(device)
        with torch.no_grad():
            logit = float(m.logit(x).float()[0])
        probs[str(m.fold)] = 1.0 / (1.0 + math.exp(-logit))
        thresholds[str(m.fold)] = float(m.threshold)
        log.info("classifier fold %d: PNI probability %.3f", m.fold, probs[str(m.fold)])
        if failed is None and not m.explainable:
            failed = NO_SALIENCY_FROM_TORCHSCRIPT
        if failed is None:
            try:
                heat, used = grad_cam(net, x, layer)
            except SaliencyUnavailable as exc:
                log.warning("fold %d: no saliency map: %s", m.fold, exc)
                failed = str(exc)
            else:  # undo ClsDataModule's symmetric pad_to padding, if any
                before = [(h - s) // 2 for h, s in zip(heat.shape, shape)]
                maps.append(heat[tuple(slice(b, b + s) for b, s in zip(before, shape))])
        net.cpu()
    if failed is not None:
        return probs, thresholds, None, failed
    return probs, thresholds, np.mean(maps, axis=0).astype(np.float32), used


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
            ...; with ``--bundle`` the bundle's classifier (the default); ``none`` stops after
            segmentation and TLCR (tumour volume and crop box only).
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


class CachedModels:
    """A model source whose folds are loaded once (for every scan of a batch).

    Args:
        source: where the models come from.
    """

    def __init__(self, source: ModelSource) -> None:
        self.source = source
        self._seg: dict[tuple[int, ...], list[SegModel]] = {}
        self._cls: dict[tuple[str, tuple[int, ...]], list[ClsModel]] = {}

    def seg_models(self, folds: list[int]) -> list[SegModel]:
        """The NeoSeg folds, loaded on first use."""
        key = tuple(folds)
        if key not in self._seg:
            self._seg[key] = self.source.seg_models(folds)
        return self._seg[key]

    def cls_models(self, classifier: str, folds: list[int]) -> list[ClsModel]:
        """The classifier folds, loaded on first use."""
        key = (classifier, tuple(folds))
        if key not in self._cls:
            self._cls[key] = self.source.cls_models(classifier, folds)
        return self._cls[key]


class Predictor:
    """Everything one scan's prediction needs besides the scan: the models (loaded once), settings, device.

    Args:
        source: where the models come from.
        classifier: the classifier stage (``none``: stop after TLCR).
        seg_folds: NeoSeg folds (None when a mask replaces NeoSeg).
        cls_folds: classifier folds (None with ``classifier`` ``none``).
        crop: the TLCR settings.
        saliency_layer: Grad-CAM layer (None: the default).
        device: where the networks run.
    """

    def __init__(
        self,
        source: ModelSource,
        classifier: str,
        seg_folds: list[int] | None,
        cls_folds: list[int] | None,
        crop: CropSettings,
        saliency_layer: str | None,
        device: torch.device,
    ) -> None:
        self.source, self.classifier, self.crop = source, classifier, crop
        self.seg_folds, self.cls_folds = seg_folds, cls_folds
        self.saliency_layer, self.device = saliency_layer, device
        self.models = CachedModels(source)

    @classmethod
    def create(
        cls,
        source: ModelSource,
        classifier: str | None,
        folds: list[int] | None,
        mask: Path | None,
        saliency_layer: str | None,
        device: str,
    ) -> Predictor:
        """Check that the folds asked for are trained and read the crop settings (errors before any scan is read)."""
        classifier = classifier or source.default_classifier
        seg_folds = None if mask is not None else source.seg_folds(folds)
        crop = source.crop_settings()
        cls_folds = None if classifier == "none" else source.classifier_folds(classifier, folds)
        return cls(source, classifier, seg_folds, cls_folds, crop, saliency_layer, resolve_device(device))

    @property
    def workspace(self) -> Workspace | None:
        """The experiment's workspace (None for a bundle: it holds no cohort)."""
        return self.source.ws if isinstance(self.source, RunsSource) else None


def predict_scan(
    predictor: Predictor, image: Path, out_dir: Path, mask: Path | None = None, case_id: str | None = None
) -> dict[str, Any]:
    """One scan through NeoSeg (or its ``mask``), TLCR and the classifier folds; writes ``out_dir`` and returns
    the content of ``prediction.json`` (see :func:`predict_case`). ``case_id`` is compared with the cohort's."""
    src = load_nifti(image, kind="image")
    source, classifier, crop, dev = predictor.source, predictor.classifier, predictor.crop, predictor.device
    seg_folds, cls_folds, saliency_layer = predictor.seg_folds, predictor.cls_folds, predictor.saliency_layer
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in OUTPUTS.values():  # never leave files of an earlier run beside this run's
        (out_dir / name).unlink(missing_ok=True)
    outputs: dict[str, str] = {}

    # 1. segmentation in the input's space
    seg_confidence: float | None = None
    if mask is not None:
        seg_path, seg_from = write_given_mask(Path(mask), src, out_dir), f"the given mask {mask}"
        seg_record: dict[str, Any] = {"source": "mask", "mask": str(mask)}
    else:
        seg_models = predictor.models.seg_models(seg_folds or [])
        seg_path, seg_confidence = segment(image, seg_models, out_dir, dev)
        seg_from = f"NeoSeg (fold{'s' if len(seg_models) > 1 else ''} {', '.join(str(m.fold) for m in seg_models)})"
        seg_record = {
            "source": "neoseg",
            "folds": seg_folds,
            "checkpoints": [m.record for m in seg_models],
            "confidence": seg_confidence,
        }
        del seg_models
    outputs["segmentation"] = str(seg_path)
    labels = np.asarray(cast(nib.Nifti1Image, nib.load(str(seg_path))).dataobj)
    liver_ml, tumor_ml = _volumes_ml(labels, src.affine)
    seg_record |= {"liver_volume_ml": round(liver_ml, 3), "tumor_volume_ml": round(tumor_ml, 3)}

    # 2. TLCR on the canonical grid, as `neonet crop --source predicted` does
    from neonet.seg.crop import load_case
    from neonet.seg.tlcr import patch_affine, tlcr

    image_c, mask_c, affine_c = load_case(image, seg_path, crop.grid_spacing, LabelMap())
    result = tlcr(
        image_c,
        mask_c,
        crop.spacing,
        patch_size=crop.patch_size,
        shell_mm=crop.shell_mm,
        no_tumor="skip",
        liver_level=crop.liver_level,
        liver_region=crop.liver_region,
        shell_region=crop.shell_region,
    )
    probs: dict[str, float] = {}
    thresholds: dict[str, float] = {}
    saliency_c: np.ndarray | None = None
    cls_record: dict[str, Any] | None = None
    saliency_record: dict[str, Any] | None = None
    box_input = None
    if result.has_patch:
        assert result.box is not None and result.image_patch is not None and result.label_patch is not None
        from neonet.cls.saliency import patch_bounds_in_image, patch_to_image

        p_affine = patch_affine(affine_c, result.box["start"])
        start, stop = patch_bounds_in_image(result.image_patch.shape, p_affine, src.shape, src.affine)
        box_input = {"start": list(start), "stop": list(stop)}
        patch_path = save_nifti(out_dir / OUTPUTS["patch_image"], result.image_patch.astype(np.float32), p_affine)
        save_nifti(out_dir / OUTPUTS["patch_label"], result.label_patch.astype(np.uint8), p_affine)
        outputs |= {"patch_image": str(patch_path), "patch_label": str(out_dir / OUTPUTS["patch_label"])}
        if cls_folds is not None:
            # 3. classifier folds + Grad-CAM
            cls_models = predictor.models.cls_models(classifier, cls_folds)
            probs, thresholds, heat, layer = classify(
                patch_path, cls_models, dev, saliency_layer, label=out_dir / OUTPUTS["patch_label"]
            )
            cls_record = {"stage": classifier, "folds": cls_folds, "checkpoints": [m.record for m in cls_models]}
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
    record["out_of_distribution"] = ood_record(predictor, image, seg_path, seg_confidence)
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
