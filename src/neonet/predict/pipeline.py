"""One scan through an experiment's models: NeoSeg (or a given mask) → TLCR → each classifier's folds.

The one prediction path of ``neonet predict-case`` (:mod:`neonet.predict.case`, which adds Grad-CAM,
the overlay and ``prediction.json``) and ``neonet evaluate`` (:mod:`neonet.predict.cohort`, which scores
a cohort). :class:`Predictor` holds what every scan needs (the models, loaded once on first use, the
TLCR settings, the device); :meth:`Predictor.run` takes one scan:

1. NeoSeg: the folds' mean softmax, argmax and NeoSeg's post-processing, the mask written in the scan's
   space (:func:`segment`); or the user's mask, checked (:func:`write_given_mask`);
2. TLCR with the experiment's crop settings on that mask, exactly as ``neonet crop --source predicted``
   crops the out-of-fold masks (:func:`crop_from_mask`: same grid, liver-level rescaling, shell);
3. each classifier fold on the patch (:func:`fold_probabilities`): a network fed by its fold's
   evaluation transform, or the radiomics model on the patch's IBSI features computed as
   ``neonet radiomics`` computes them from a TLCR patch.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from neonet.data.cases import LIVER, TUMOR, LabelMap
from neonet.data.nifti import load_nifti, read_array, save_nifti
from neonet.errors import DataError, NeonetError
from neonet.predict.source import Classifier, CropSettings, ModelSource, RadiomicsModel, RunsSource, SegModel
from neonet.run.device import resolve_device
from neonet.seg.tlcr import TLCRResult
from neonet.workspace import Workspace

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- the steps
def segment(image: Path, models: list[SegModel], dest: Path, device: torch.device) -> tuple[Path, float | None]:
    """Fold-ensemble NeoSeg mask of ``image`` written in its space to ``dest``, and NeoSeg's confidence.

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
    batch = list_data_collate([transform({"image": str(image), "case_id": "mask", "source": str(image)})])
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
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".neoseg_") as scratch:
        SegMaskWriter().write_masks(mean, batch, transform, Path(scratch), max(min_voxels))[0].replace(dest)
    return dest, float(np.mean(confidence)) if confidence else None


def write_given_mask(mask: Path, reference: nib.Nifti1Image, dest: Path) -> Path:
    """Copy a user's mask (0 background, 1 liver, 2 tumour, nothing else) to ``dest`` as the segmentation."""
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
    return save_nifti(dest, labels.reshape(reference.shape[:3]), reference.affine)


@dataclass
class Crop:
    """TLCR of a scan on the canonical grid (as ``neonet crop``).

    Attributes:
        result: the crop (no patch without a tumour: ``no_tumor="skip"``).
        image: the scan on the canonical grid.
        mask: its mask on that grid.
        affine: the grid's affine.
    """

    result: TLCRResult
    image: np.ndarray
    mask: np.ndarray
    affine: np.ndarray

    def patch_affine(self) -> np.ndarray:
        """The patch's affine (the grid's, shifted to the crop box's start)."""
        from neonet.seg.tlcr import patch_affine

        assert self.result.box is not None
        return patch_affine(self.affine, self.result.box["start"])


def crop_from_mask(image: Path, mask: Path, crop: CropSettings) -> Crop:
    """TLCR of a scan on its mask with the experiment's crop settings (``neonet crop --source predicted``)."""
    from neonet.seg.crop import load_case
    from neonet.seg.tlcr import tlcr

    image_c, mask_c, affine_c = load_case(image, mask, crop.grid_spacing, LabelMap())
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
        tumor_shrink_mm=crop.tumor_shrink_mm,
    )
    return Crop(result, image_c, mask_c, affine_c)


@dataclass(frozen=True)
class Patch:
    """The classifier's input as written: the TLCR image and label patches and their affine."""

    image: Path
    label: Path
    affine: np.ndarray


def write_patch(crop: Crop, image: Path, label: Path) -> Patch | None:
    """Save the crop's image (float32) and label (uint8) patches as ``neonet crop`` does; None without a patch."""
    result = crop.result
    if not result.has_patch:
        return None
    assert result.image_patch is not None and result.label_patch is not None
    affine = crop.patch_affine()
    save_nifti(image, result.image_patch.astype(np.float32), affine)
    save_nifti(label, result.label_patch.astype(np.uint8), affine)
    return Patch(image, label, affine)


def fold_probabilities(patch: Patch, models: Sequence[Classifier], device: torch.device) -> dict[int, float]:
    """Each classifier fold's PNI probability for one TLCR patch.

    A network is fed by its fold's evaluation transform (:meth:`ClsSettings.transform`, as in its test
    step); a radiomics fold scores the patch's IBSI features (:func:`neonet.radiomics.features.patch_features`
    of the image and label patch, as ``neonet radiomics`` computes them; once per feature setting).
    """
    from neonet.radiomics.features import patch_features

    probs: dict[int, float] = {}
    features: dict[tuple[tuple[str, ...], int], dict[str, float]] = {}
    for m in models:
        if isinstance(m, RadiomicsModel):
            key = (m.saved.regions, m.saved.bins)
            if key not in features:
                features[key] = patch_features(patch.image.name, patch.image, patch.label, list(key[0]), key[1])
            probs[m.fold] = m.probability(features[key])
        else:
            x = m.settings.transform()({"image": str(patch.image), "region": str(patch.label)})["image"][None].to(device)
            net = m.net.to(device)
            with torch.no_grad():
                logit = float(m.logit(x).float()[0])
            net.cpu()
            probs[m.fold] = 1.0 / (1.0 + math.exp(-logit))
        log.info("classifier fold %d: PNI probability %.3f", m.fold, probs[m.fold])
    return probs


# ----------------------------------------------------------------------------- the models, once
class CachedModels:
    """A model source whose folds are loaded once (for every scan of a batch or cohort).

    Args:
        source: where the models come from.
    """

    def __init__(self, source: ModelSource) -> None:
        self.source = source
        self._seg: dict[tuple[int, ...], list[SegModel]] = {}
        self._cls: dict[tuple[str, tuple[int, ...]], list[Classifier]] = {}

    def seg_models(self, folds: list[int]) -> list[SegModel]:
        """The NeoSeg folds, loaded on first use."""
        key = tuple(folds)
        if key not in self._seg:
            self._seg[key] = self.source.seg_models(folds)
        return self._seg[key]

    def cls_models(self, classifier: str, folds: list[int]) -> list[Classifier]:
        """The classifier folds, loaded on first use."""
        key = (classifier, tuple(folds))
        if key not in self._cls:
            self._cls[key] = self.source.cls_models(classifier, folds)
        return self._cls[key]


@dataclass
class ScanResult:
    """What the models said about one scan.

    Attributes:
        mask: the segmentation (0/1/2) in the scan's space.
        seg_confidence: NeoSeg's confidence (:func:`segment`; None for a given mask or no foreground).
        crop: the TLCR crop (None when the predictor has no crop settings: NeoSeg alone).
        patch: the patch files (None without a patch).
        probs: per classifier stage, each fold's PNI probability (empty without a patch).
    """

    mask: Path
    seg_confidence: float | None
    crop: Crop | None
    patch: Patch | None = None
    probs: dict[str, dict[int, float]] = field(default_factory=dict)


class Predictor:
    """Everything one scan's prediction needs besides the scan: the models (loaded once), settings, device.

    Args:
        source: where the models come from.
        classifiers: per classifier stage, the folds to ensemble (empty: stop after TLCR).
        seg_folds: NeoSeg folds (None when a mask replaces NeoSeg).
        crop: the TLCR settings (None: NeoSeg alone, no crop).
        saliency_layer: Grad-CAM layer (None: the default; read by ``predict-case``).
        device: where the networks run.
    """

    def __init__(
        self,
        source: ModelSource,
        classifiers: dict[str, list[int]],
        seg_folds: list[int] | None,
        crop: CropSettings | None,
        saliency_layer: str | None,
        device: torch.device,
    ) -> None:
        self.source, self.classifiers, self.crop = source, dict(classifiers), crop
        self.seg_folds, self.saliency_layer, self.device = seg_folds, saliency_layer, device
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
        """One classifier's predictor (``predict-case``): checks that the folds asked for are trained and reads the
        crop settings (errors before any scan is read)."""
        classifier = classifier or source.default_classifier
        seg_folds = None if mask is not None else source.seg_folds(folds)
        crop = source.crop_settings()
        classifiers = {} if classifier == "none" else {classifier: source.classifier_folds(classifier, folds)}
        return cls(source, classifiers, seg_folds, crop, saliency_layer, resolve_device(device))

    @property
    def classifier(self) -> str:
        """The classifier stage of a one-classifier predictor (``none`` without one)."""
        return next(iter(self.classifiers), "none")

    @property
    def cls_folds(self) -> list[int] | None:
        """The folds of :attr:`classifier` (None without one)."""
        return self.classifiers.get(self.classifier)

    @property
    def workspace(self) -> Workspace | None:
        """The experiment's workspace (None for a bundle: it holds no cohort)."""
        return self.source.ws if isinstance(self.source, RunsSource) else None

    def seg_models(self) -> list[SegModel]:
        """The NeoSeg folds (loaded once)."""
        return self.models.seg_models(self.seg_folds or [])

    def cls_models(self, stage: str) -> list[Classifier]:
        """A classifier's folds (loaded once)."""
        return self.models.cls_models(stage, self.classifiers[stage])

    def run(
        self,
        image: Path,
        mask: Path,
        patch: tuple[Path, Path],
        given_mask: Path | None = None,
        reference: nib.Nifti1Image | None = None,
    ) -> ScanResult:
        """One scan: segmentation written to ``mask``, TLCR, patches written to ``patch`` (image, label), every
        classifier's folds on the patch.

        Args:
            image: the scan.
            mask: where its segmentation is written (the scan's space).
            patch: where the image and label patches are written.
            given_mask: a mask to use instead of NeoSeg (checked: the scan's grid, values 0/1/2).
            reference: the scan as loaded (read when None and ``given_mask`` is given).
        """
        if given_mask is not None:
            ref = reference if reference is not None else load_nifti(image, kind="image")
            written, confidence = write_given_mask(Path(given_mask), ref, mask), None
        else:
            written, confidence = segment(image, self.seg_models(), mask, self.device)
        if self.crop is None:
            return ScanResult(written, confidence, None)
        crop = crop_from_mask(image, written, self.crop)
        out = ScanResult(written, confidence, crop, write_patch(crop, *patch))
        if out.patch is not None:
            out.probs = {s: fold_probabilities(out.patch, self.cls_models(s), self.device) for s in self.classifiers}
        return out
