"""Where ``neonet predict-case`` gets its models and settings: an experiment's runs folder or a bundle.

The prediction pipeline (:mod:`neonet.predict.case`) is one piece of code; it asks a *model source*
for the NeoSeg folds, the TLCR settings and the classifier folds, each as a network plus the plain
settings that say how to feed it:

- :class:`RunsSource` rebuilds each trained fold of ``<runs_dir>/<experiment>/`` from its
  ``config.yaml`` and ``best.ckpt`` (:func:`neonet.run.reload.load_trained_fold`) and reads the
  settings off the fold's module and DataModule;
- :class:`neonet.predict.bundle.BundleSource` reads the same settings from a bundle's JSON and the
  networks from its TorchScript files (``neonet export`` writes a bundle from a :class:`RunsSource`).

Both hand over :class:`SegModel` / :class:`ClsModel`, whose inference (:meth:`SegModel.logits`,
:meth:`ClsModel.logit`) and preprocessing (:class:`SegSettings`, :class:`ClsSettings`) are shared, so a
bundle predicts exactly what its experiment predicts. The radiomics baseline (``neonet radiomics``) is a
:class:`RadiomicsModel`: a linear model on the patch's IBSI features, read from its ``model.json``
(:mod:`neonet.radiomics.saved`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import torch
from monai import transforms as mt
from torch import nn

from neonet.data.transforms import INTENSITY_PERCENTILES, ORIENTATION
from neonet.errors import MissingUpstreamError, NeonetError
from neonet.predict.ensemble import train_command, trained_folds
from neonet.radiomics.saved import SavedFold
from neonet.workspace import Workspace

__all__ = [
    "Classifier",
    "ClsModel",
    "ClsSettings",
    "CropSettings",
    "ModelSource",
    "RadiomicsModel",
    "RunsSource",
    "SegModel",
    "SegSettings",
    "settings_error",
]


def settings_error(source: Path | str, what: str, exc: BaseException | str, fix: str) -> NeonetError:
    """The error for unreadable settings: names the file, the entry, the problem and ``fix``."""
    detail = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    return NeonetError(f"{source}: the {what} settings cannot be read ({detail}). {fix}")


def _ints(values: Any) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


def _floats(values: Any) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


# ----------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class SegSettings:
    """How a NeoSeg fold is fed and read out (what ``neonet predict`` does with the fold).

    Attributes:
        spacing: voxel spacing (mm) of the canonical grid the network sees.
        divisible: each axis is zero-padded to a multiple of this.
        roi_size: sliding-window size; None runs the whole volume as one window.
        sw_batch_size: windows per forward pass.
        overlap: sliding-window overlap.
        min_tumor_voxels: tumour components smaller than this are removed.
        channels_last: the network runs on ``channels_last_3d`` input.
        orientation: the canonical orientation (fixed by this neonet version).
        intensity_percentiles: percentiles mapped to [0, 1], clipped (fixed by this neonet version).
    """

    spacing: tuple[float, ...]
    divisible: int
    roi_size: tuple[int, ...] | None
    sw_batch_size: int
    overlap: float
    min_tumor_voxels: int
    channels_last: bool
    orientation: str = ORIENTATION
    intensity_percentiles: tuple[float, ...] = INTENSITY_PERCENTILES

    def transform(self) -> mt.Compose:
        """The preprocessing of a new scan (:func:`neonet.seg.datamodule.seg_preprocessing`, no label)."""
        from neonet.seg.datamodule import seg_preprocessing

        return seg_preprocessing(self.spacing, self.divisible, with_label=False)

    def to_json(self) -> dict[str, Any]:
        """The settings as plain JSON values."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: Path | str, fix: str) -> SegSettings:
        """Settings written by :meth:`to_json`; anything else is an error naming ``source`` and ``fix``.

        The orientation and intensity normalisation are steps of this neonet version's code: a bundle
        that states others was made for another version and is refused.
        """
        try:
            out = cls(
                spacing=_floats(data["spacing"]),
                divisible=int(data["divisible"]),
                roi_size=None if data.get("roi_size") is None else _ints(data["roi_size"]),
                sw_batch_size=int(data["sw_batch_size"]),
                overlap=float(data["overlap"]),
                min_tumor_voxels=int(data["min_tumor_voxels"]),
                channels_last=bool(data["channels_last"]),
                orientation=str(data.get("orientation", ORIENTATION)),
                intensity_percentiles=_floats(data.get("intensity_percentiles", INTENSITY_PERCENTILES)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise settings_error(source, "segmentation", exc, fix) from exc
        if len(out.spacing) != 3 or out.divisible < 1 or (out.roi_size is not None and len(out.roi_size) != 3):
            raise settings_error(
                source, "segmentation", f"spacing {out.spacing}, divisible {out.divisible}, roi {out.roi_size}", fix
            )
        ours = (ORIENTATION, INTENSITY_PERCENTILES)
        if (out.orientation, out.intensity_percentiles) != ours:
            raise settings_error(
                source,
                "segmentation",
                f"orientation {out.orientation}, intensity percentiles {list(out.intensity_percentiles)}; this neonet "
                f"version preprocesses with {ours[0]} and {list(ours[1])}",
                fix,
            )
        return out


@dataclass(frozen=True)
class ClsSettings:
    """How a classifier fold is fed (its DataModule's evaluation transform).

    Attributes:
        label_channel: the TLCR label patch is the input's last channel.
        pad_to: patches are zero-padded to at least this size; None keeps them as cropped.
    """

    label_channel: bool
    pad_to: tuple[int, ...] | None

    def transform(self) -> mt.Compose:
        """The patch's evaluation transform (:func:`neonet.cls.datamodule.patch_transform`)."""
        from neonet.cls.datamodule import patch_transform

        return patch_transform(self.label_channel, self.pad_to)

    def to_json(self) -> dict[str, Any]:
        """The settings as plain JSON values."""
        return {"label_channel": self.label_channel, "pad_to": None if self.pad_to is None else list(self.pad_to)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: Path | str, fix: str) -> ClsSettings:
        """Settings written by :meth:`to_json`; anything else is an error naming ``source`` and ``fix``."""
        try:
            return cls(bool(data["label_channel"]), None if data.get("pad_to") is None else _ints(data["pad_to"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise settings_error(source, "classifier", exc, fix) from exc


@dataclass(frozen=True)
class CropSettings:
    """The experiment's TLCR settings (those of ``neonet crop`` that made the training patches).

    Attributes:
        spacing: crop grid spacing (mm).
        patch_size: patch size (voxels).
        shell_mm: peritumoral shell width.
        liver_level: median liver intensity after rescaling, or None (no rescaling).
        liver_region: where that median is taken (``volume`` or ``patch``).
        shell_region: ``all`` or ``liver`` (see ``neonet crop``).
        tumor_shrink_mm: erosion of the mask's tumour before the label patch (see ``neonet crop``).
        source: the masks the training patches were cropped from (``predicted`` or ``manual``).
        config: the file these settings were read from.
    """

    spacing: tuple[float, ...]
    patch_size: tuple[int, ...]
    shell_mm: float
    liver_level: float | None
    liver_region: str
    shell_region: str
    source: str | None
    tumor_shrink_mm: float = 0.0
    config: str = field(default="", compare=False)

    @property
    def grid_spacing(self) -> tuple[float, float, float]:
        """``spacing`` as the 3-tuple the crop functions take."""
        x, y, z = self.spacing
        return (x, y, z)

    def to_json(self) -> dict[str, Any]:
        """The settings as plain JSON values (without ``config``: where they are read from is the reader's)."""
        out = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        out.pop("config")
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: Path | str, fix: str) -> CropSettings:
        """Settings of a ``crop_config.json`` or a bundle; anything else is an error naming ``source`` and ``fix``."""
        try:
            out = cls(
                spacing=_floats(data["spacing"]),
                patch_size=_ints(data["patch_size"]),
                shell_mm=float(data["shell_mm"]),
                liver_level=None if data.get("liver_level") is None else float(data["liver_level"]),
                liver_region=str(data.get("liver_region") or "volume"),
                shell_region=str(data.get("shell_region") or "all"),
                source=None if data.get("source") is None else str(data["source"]),
                tumor_shrink_mm=float(data.get("tumor_shrink_mm") or 0.0),
                config=str(source),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise settings_error(source, "TLCR", exc, fix) from exc
        if len(out.spacing) != 3 or len(out.patch_size) != 3:
            raise settings_error(source, "TLCR", f"spacing {out.spacing}, patch size {out.patch_size}", fix)
        return out


# ----------------------------------------------------------------------------- models
@dataclass
class SegModel:
    """One NeoSeg fold ready to predict.

    Attributes:
        fold: the fold k.
        net: the network (an ``nn.Module`` or its TorchScript copy): (B, 1, X, Y, Z) → (B, 3, X, Y, Z) logits.
        settings: how it is fed.
        record: provenance for ``prediction.json`` (file, SHA-256, source checkpoint).
    """

    fold: int
    net: nn.Module
    settings: SegSettings
    record: dict[str, Any]

    def predictor(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The network on one window, in the memory format it was trained with."""
        if not self.settings.channels_last:
            return cast(Callable[[torch.Tensor], torch.Tensor], self.net)
        return lambda x: self.net(x.contiguous(memory_format=torch.channels_last_3d))

    def logits(self, image: torch.Tensor) -> torch.Tensor:
        """Sliding-window logits of a preprocessed volume (:func:`neonet.seg.module.sliding_window_logits`)."""
        from neonet.seg.module import sliding_window_logits

        s = self.settings
        return sliding_window_logits(self.predictor(), image, s.roi_size, s.sw_batch_size, s.overlap)


@dataclass
class ClsModel:
    """One classifier fold ready to predict.

    Attributes:
        fold: the fold k.
        net: the network (an ``nn.Module`` or its TorchScript copy): (B, C, X, Y, Z) → B PNI logits.
        settings: how it is fed.
        threshold: the fold's validation (Youden) threshold.
        record: provenance for ``prediction.json`` (file, SHA-256, source checkpoint).
        explainable: Grad-CAM can hook the network's layers (False for TorchScript).
    """

    fold: int
    net: nn.Module
    settings: ClsSettings
    threshold: float
    record: dict[str, Any]
    explainable: bool = True

    def logit(self, x: torch.Tensor) -> torch.Tensor:
        """PNI logits (B,) of a batch of patches, as :meth:`neonet.cls.ClassifierModule.forward` computes them."""
        return self.net(x).reshape(x.shape[0])


@dataclass
class RadiomicsModel:
    """One radiomics fold ready to predict: its linear model on the TLCR patch's IBSI features.

    Attributes:
        fold: the fold k.
        saved: the model and the feature settings (regions, bins) of its ``model.json`` / ``artifact.json``.
        record: provenance for ``prediction.json`` (``model.json``'s path and SHA-256).
        explainable: always False (no network: no Grad-CAM map).
    """

    fold: int
    saved: SavedFold
    record: dict[str, Any]
    explainable: bool = False

    @property
    def threshold(self) -> float:
        """The fold's validation (Youden) threshold."""
        return self.saved.model.threshold

    def probability(self, features: Mapping[str, float]) -> float:
        """PNI probability of a patch from its features (:func:`neonet.radiomics.features.patch_features`)."""
        row = self.saved.model.row(features, f"radiomics fold {self.fold} ({self.record.get('path')})")
        return float(self.saved.model.predict_proba(row)[0])


#: A classifier fold: a network on the patch, or the radiomics model on its features.
Classifier = ClsModel | RadiomicsModel


class ModelSource(Protocol):
    """What ``neonet predict-case`` needs from wherever its models come from."""

    #: classifier used when ``--classifier`` is not given.
    default_classifier: str

    def seg_folds(self, folds: list[int] | None) -> list[int]:
        """The NeoSeg folds to ensemble (all when None); an error names what is missing."""
        ...

    def classifier_folds(self, classifier: str, folds: list[int] | None) -> list[int]:
        """The classifier folds to ensemble (all when None); an error names what is missing."""
        ...

    def crop_settings(self) -> CropSettings:
        """The TLCR settings of the training patches."""
        ...

    def seg_models(self, folds: list[int]) -> list[SegModel]:
        """The NeoSeg folds, loaded (CPU, eval mode)."""
        ...

    def cls_models(self, classifier: str, folds: list[int]) -> list[Classifier]:
        """The classifier folds, loaded (CPU, eval mode)."""
        ...

    def default_out(self, name: str) -> Path:
        """The default output folder of the prediction of image ``name``."""
        ...

    def describe(self) -> dict[str, Any]:
        """Where the models come from, for ``prediction.json``."""
        ...


# ----------------------------------------------------------------------------- the runs folder
def seg_settings_of(module: Any, data: Any) -> SegSettings:
    """The settings of a rebuilt NeoSeg fold (:class:`~neonet.seg.SegModule` + :class:`~neonet.seg.SegDataModule`)."""
    hp = module.hparams
    return SegSettings(
        spacing=_floats(data.spacing),
        divisible=int(data.divisible),
        roi_size=None if module.roi_size is None else _ints(module.roi_size),
        sw_batch_size=int(hp.sw_batch_size),
        overlap=float(hp.overlap),
        min_tumor_voxels=int(hp.min_tumor_voxels),
        channels_last=bool(module.channels_last),
    )


def cls_settings_of(data: Any) -> ClsSettings:
    """The settings of a rebuilt classifier fold's :class:`~neonet.cls.ClsDataModule`."""
    return ClsSettings(bool(data.label_channel), None if data.pad_to is None else _ints(data.pad_to))


class RunsSource:
    """The trained folds of one experiment in a runs folder.

    Args:
        ws: the experiment's workspace.

    Raises:
        NeonetError: the experiment's folder does not exist (names the experiments that do).
    """

    default_classifier = "pattennet"

    def __init__(self, ws: Workspace) -> None:
        if not ws.root.is_dir():
            runs = ws.runs_dir
            known = sorted(p.name for p in runs.glob("*") if p.is_dir()) if runs.is_dir() else []
            raise NeonetError(f"experiment {ws.experiment!r} not found at {ws.root} (experiments in {runs}: {known or 'none'})")
        self.ws = ws

    def seg_folds(self, folds: list[int] | None) -> list[int]:
        """Every finished NeoSeg fold asked for (:func:`~neonet.predict.ensemble.trained_folds`)."""
        return trained_folds(self.ws, "seg", folds)

    def classifier_folds(self, classifier: str, folds: list[int] | None) -> list[int]:
        """Every finished fold of the classifier stage asked for."""
        return trained_folds(self.ws, classifier, folds, hint="\nor stop after segmentation and TLCR: --classifier none")

    def crop_settings(self) -> CropSettings:
        """The settings of ``neonet crop`` (``patches/crop_config.json``)."""
        from neonet.seg.crop import crop_record

        path = self.ws.crop_config
        record = crop_record(self.ws)
        if record is None:
            raise MissingUpstreamError("the experiment's TLCR settings", path, train_command(self.ws, "crop", verb="crop"))
        return CropSettings.from_json(
            record.settings, path, f"Make the patches again:\n    {train_command(self.ws, 'crop', verb='crop')}"
        )

    def seg_models(self, folds: list[int]) -> list[SegModel]:
        """Each NeoSeg fold rebuilt with ``best.ckpt`` loaded strictly."""
        from neonet.run.reload import load_trained_fold

        out = []
        for k in folds:
            fold = load_trained_fold(self.ws, "seg", k)
            module = cast(Any, fold.module)
            record = self.ws.checkpoint_record(fold.checkpoint)
            out.append(SegModel(fold.fold, module.net, seg_settings_of(module, fold.data), record))
        return out

    def cls_models(self, classifier: str, folds: list[int]) -> list[Classifier]:
        """Each classifier fold rebuilt with ``best.ckpt`` loaded strictly (a radiomics fold: its ``model.json``).

        Raises:
            NeonetError: the stage is a diagnostic control (manual-mask patches, constant image).
        """
        from neonet.cls.datamodule import ClsDataModule
        from neonet.radiomics.saved import is_radiomics_fold, load_fold
        from neonet.run.reload import load_trained_fold

        out: list[Classifier] = []
        for k in folds:
            if is_radiomics_fold(self.ws.read_artifact(classifier, k)):
                record = self.ws.checkpoint_record(self.ws.radiomics_model(classifier, k))
                out.append(RadiomicsModel(k, load_fold(self.ws, classifier, k), record))
                continue
            fold = load_trained_fold(self.ws, classifier, k)
            control = fold.data.control() if isinstance(fold.data, ClsDataModule) else {}
            if control:  # trained on manual-mask patches or a constant image: it does not score a new scan's patch
                raise NeonetError(
                    f"{self.ws.config_path(classifier, k)}: stage {classifier} is a diagnostic control "
                    f"({', '.join(f'{key}: {value}' for key, value in control.items())}), not a model for prediction "
                    "(docs/controls.md); predict with its main stage, e.g. --classifier "
                    f"{classifier.rsplit('_', 1)[0]}"
                )
            module = cast(Any, fold.module)
            record = self.ws.checkpoint_record(fold.checkpoint)
            out.append(ClsModel(fold.fold, module.net, cls_settings_of(fold.data), float(module.val_threshold), record))
        return out

    def default_out(self, name: str) -> Path:
        """``<runs_dir>/<experiment>/predict_case/<name>/``."""
        return self.ws.predict_case_dir(name)

    def describe(self) -> dict[str, Any]:
        """The experiment and its runs folder."""
        return {"experiment": self.ws.experiment, "runs_dir": str(self.ws.runs_dir)}
