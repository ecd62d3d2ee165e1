"""Reading a bundle written by ``neonet export``: the models of ``neonet predict-case --bundle DIR``.

A bundle follows MONAI's bundle layout (:class:`neonet.workspace.BundlePaths`). Loading it runs no
code from it other than TorchScript: the settings are JSON (``configs/inference.json``, read with
``json``), each network is a TorchScript file read with ``torch.jit.load`` after its SHA-256 was
checked against ``inference.json``; a radiomics classifier's folds are JSON models
(:class:`neonet.radiomics.saved.SavedModel`), checked the same way; nothing is unpickled and no class is
named by the bundle.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from neonet.errors import NeonetError
from neonet.predict.source import Classifier, ClsModel, ClsSettings, CropSettings, SegModel, SegSettings
from neonet.run.atomic import read_json, sha256_file
from neonet.workspace import BundlePaths

log = logging.getLogger(__name__)

__all__ = ["FORMAT", "FORMAT_VERSION", "RADIOMICS", "BundleSource", "check_stage_name", "load_torchscript"]

#: ``inference.json``'s ``format`` entry and the version of its layout this neonet reads and writes.
FORMAT = "neonet-bundle"
FORMAT_VERSION = 1
#: ``classifier.kind`` of a bundle whose classifier is the radiomics baseline (JSON models, not TorchScript).
RADIOMICS = "radiomics"
#: What to do with a bundle that cannot be used.
REEXPORT = "Export the bundle again from its experiment: neonet export --experiment E --out DIR --force"


def check_stage_name(stage: Any, where: str) -> str:
    """A stage folder name usable as a model file name (letters, digits, ``_ . -``; no path), or an error naming ``where``."""
    if not isinstance(stage, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", stage) or ".." in stage:
        raise NeonetError(f"{where}: {stage!r} is not a stage name (a plain folder name such as pattennet or resnet18)")
    return stage


def check_model_file(path: Path, sha256: str | None) -> None:
    """A bundle's model file exists and is the one ``inference.json`` records (its SHA-256), or a NeonetError."""
    if not path.is_file():
        raise NeonetError(f"{path}: this model file of the bundle is missing. {REEXPORT}")
    if sha256 is not None and (now := sha256_file(path)) != sha256:
        raise NeonetError(
            f"{path}: this model file is not the one the bundle's inference.json records (sha256 now {now[:12]}…, "
            f"recorded {sha256[:12]}…): it was damaged or replaced, so it is not loaded. {REEXPORT}"
        )


def load_torchscript(path: Path, sha256: str | None = None) -> torch.nn.Module:
    """A TorchScript network (CPU, eval mode), read with ``torch.jit.load`` after checking its SHA-256.

    Raises:
        NeonetError: the file is missing, is not the file ``sha256`` names, or is not TorchScript.
    """
    check_model_file(path, sha256)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates torch.jit; it still loads
            net = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError, OSError) as exc:
        raise NeonetError(
            f"{path}: cannot read this TorchScript file ({type(exc).__name__}: {str(exc)[:300]}). {REEXPORT}"
        ) from exc
    return net.eval()


class BundleSource:
    """The models and settings of a bundle (``neonet export``): a :class:`~neonet.predict.source.ModelSource`.

    Args:
        root: the bundle's folder.

    Raises:
        NeonetError: the folder is not a bundle, or its ``inference.json`` is unreadable or of another format.
    """

    def __init__(self, root: str | Path) -> None:
        self.paths = BundlePaths(root)
        path = self.paths.inference
        if not self.paths.root.is_dir():
            raise NeonetError(f"bundle {self.paths.root} not found (a folder written by `neonet export`)")
        if not path.is_file():
            raise NeonetError(
                f"{self.paths.root} is not a neonet bundle: {path} is missing. Write one with "
                "`neonet export --experiment E --out DIR`"
            )
        data = read_json(path, remedy=REEXPORT)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise NeonetError(f'{path}: not the inference config of a neonet bundle (no "format": "{FORMAT}"). {REEXPORT}')
        if data.get("format_version") != FORMAT_VERSION:
            raise NeonetError(
                f"{path}: bundle format version {data.get('format_version')!r}; this neonet reads version {FORMAT_VERSION}. "
                f"Use the neonet version named in configs/metadata.json, or: {REEXPORT}"
            )
        self.config = data
        classifier = data.get("classifier")
        where = f"{path}: classifier.stage"
        self.default_classifier = check_stage_name(classifier.get("stage"), where) if isinstance(classifier, dict) else "none"

    def _section(self, name: str) -> dict[str, Any]:
        section = self.config.get(name)
        if not isinstance(section, dict) or not isinstance(section.get("models"), list):
            raise NeonetError(f"{self.paths.inference}: no {name} models in this bundle. {REEXPORT}")
        for entry in section["models"]:
            if not isinstance(entry, dict) or not isinstance(entry.get("fold"), int) or not isinstance(entry.get("sha256"), str):
                raise NeonetError(
                    f"{self.paths.inference}: a {name} model entry lacks its fold or sha256 ({entry!r:.200}). {REEXPORT}"
                )
        return section

    def _folds(self, section: str, folds: list[int] | None, stage: str) -> list[int]:
        have = [int(m["fold"]) for m in self._section(section)["models"]]
        if folds is None:
            return have
        if not folds:
            raise NeonetError("--folds is empty: name at least one fold")
        missing = [k for k in folds if k not in have]
        if missing:
            raise NeonetError(
                f"{self.paths.root}: the bundle holds {stage} folds {have}, not {missing}. Leave out --folds to use "
                f"all of them, or export the bundle again with those folds trained"
            )
        return list(folds)

    def seg_folds(self, folds: list[int] | None) -> list[int]:
        """The NeoSeg folds of the bundle asked for (all when None)."""
        return self._folds("segmentation", folds, "seg")

    def classifier_folds(self, classifier: str, folds: list[int] | None) -> list[int]:
        """The classifier folds asked for; the classifier must be the bundle's."""
        if classifier != self.default_classifier:
            raise NeonetError(
                f"{self.paths.root}: the bundle holds the {self.default_classifier!r} classifier, not {classifier!r}. "
                f"Use --classifier {self.default_classifier} (the default with --bundle) or --classifier none, or export "
                f"a bundle with --classifier {classifier}"
            )
        return self._folds("classifier", folds, classifier)

    def crop_settings(self) -> CropSettings:
        """The TLCR settings the bundle's classifier was trained with."""
        crop = self.config.get("crop")
        if not isinstance(crop, dict):
            raise NeonetError(f'{self.paths.inference}: no TLCR ("crop") settings in this bundle. {REEXPORT}')
        return CropSettings.from_json(crop, self.paths.inference, REEXPORT)

    def _files(self, section: str, stage: str, folds: list[int], suffix: str) -> list[tuple[dict[str, Any], Path]]:
        """Each fold's entry and model file, the file checked against its SHA-256."""
        by_fold = {int(m["fold"]): m for m in self._section(section)["models"]}
        out = []
        for k in folds:
            entry = by_fold[k]
            expected = self.paths.model_name(stage, k, suffix)
            if entry.get("file") != expected:  # the file is found from (stage, fold), never from a path in the JSON
                raise NeonetError(
                    f"{self.paths.inference}: {stage} fold {k} names file {entry.get('file')!r}, not {expected!r}. {REEXPORT}"
                )
            path = self.paths.model(stage, k, suffix)
            check_model_file(path, entry["sha256"])
            out.append((entry, path))
        return out

    def _entries(self, section: str, stage: str, folds: list[int]) -> list[tuple[dict[str, Any], torch.nn.Module]]:
        return [(entry, load_torchscript(path)) for entry, path in self._files(section, stage, folds, ".ts")]

    def _record(self, entry: dict[str, Any], stage: str, suffix: str = ".ts") -> dict[str, Any]:
        return {
            "path": str(self.paths.model(stage, int(entry["fold"]), suffix)),
            "sha256": entry["sha256"],
            "source_checkpoint": entry.get("source_checkpoint"),
        }

    def seg_models(self, folds: list[int]) -> list[SegModel]:
        """The NeoSeg folds' TorchScript networks with their settings."""
        section = self._section("segmentation")
        settings = SegSettings.from_json(section.get("settings") or {}, self.paths.inference, REEXPORT)
        return [
            SegModel(int(e["fold"]), net, settings, self._record(e, "seg"))
            for e, net in self._entries("segmentation", "seg", folds)
        ]

    def cls_models(self, classifier: str, folds: list[int]) -> list[Classifier]:
        """The classifier folds' TorchScript networks with their settings and thresholds (no Grad-CAM), or a radiomics
        classifier's JSON models."""
        section = self._section("classifier")
        if section.get("kind") == RADIOMICS:
            return self._radiomics_models(section, classifier, folds)
        settings = ClsSettings.from_json(section.get("settings") or {}, self.paths.inference, REEXPORT)
        out: list[Classifier] = []
        for entry, net in self._entries("classifier", classifier, folds):
            try:
                threshold = float(entry["val_threshold"])
            except (KeyError, TypeError, ValueError) as exc:
                raise NeonetError(
                    f"{self.paths.inference}: {classifier} fold {entry['fold']} has no val_threshold. {REEXPORT}"
                ) from exc
            out.append(ClsModel(int(entry["fold"]), net, settings, threshold, self._record(entry, classifier), explainable=False))
        return out

    def _radiomics_models(self, section: dict[str, Any], classifier: str, folds: list[int]) -> list[Classifier]:
        """The radiomics folds: each ``models/<stage>_fold<k>.json`` read as plain JSON after its SHA-256 check."""
        from neonet.predict.source import RadiomicsModel
        from neonet.radiomics.saved import SavedFold, SavedModel

        settings = section.get("settings") or {}
        try:
            regions, bins = tuple(str(r) for r in settings["regions"]), int(settings["bins"])
        except (KeyError, TypeError, ValueError) as exc:
            raise NeonetError(f"{self.paths.inference}: no radiomics settings (regions, bins) ({exc}). {REEXPORT}") from exc
        out: list[Classifier] = []
        for entry, path in self._files("classifier", classifier, folds, ".json"):
            model = SavedModel.from_record(read_json(path, remedy=REEXPORT), path)
            k = int(entry["fold"])
            out.append(RadiomicsModel(k, SavedFold(k, model, regions, bins), self._record(entry, classifier, ".json")))
        return out

    def default_out(self, name: str) -> Path:
        """``predict_case/<name>/`` in the working directory (the bundle is never written to)."""
        return BundlePaths.default_predictions(name)

    def describe(self) -> dict[str, Any]:
        """The bundle and the experiment it was exported from."""
        return {"bundle": str(self.paths.root), "experiment": self.config.get("experiment"), "runs_dir": None}
