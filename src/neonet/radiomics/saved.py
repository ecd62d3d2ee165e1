"""A radiomics fold's model as ``neonet radiomics`` saved it (``model.json``), scoring new patches.

``model.json`` is plain JSON (:meth:`neonet.radiomics.model.FoldModel.record`): the training medians
(imputation), means and standard deviations (standardisation), the coefficients per standardised feature
and the intercept. :class:`SavedModel` rebuilds scikit-learn's decision function from them,
``intercept + sum_f coef_f * (x_f - mean_f) / sd_f`` with a missing ``x_f`` replaced by ``median_f``,
so reading a fold runs no code from the runs folder (nothing is unpickled).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from neonet.errors import NeonetError
from neonet.run.atomic import read_json, sha256_file
from neonet.workspace import Workspace

#: ``classifier.module`` of a radiomics fold's ``artifact.json`` (tells it from the deep classifiers' folds).
MODULE = "neonet.radiomics"


def is_radiomics_fold(artifact: Mapping[str, Any] | None) -> bool:
    """Whether a fold's ``artifact.json`` content records a radiomics fold (``classifier.module``)."""
    classifier = (artifact or {}).get("classifier")
    return isinstance(classifier, dict) and classifier.get("module") == MODULE


@dataclass(frozen=True)
class SavedModel:
    """A fold's imputer, scaler and logistic regression as arrays (one entry per feature, in ``features`` order).

    Attributes:
        features: the feature names.
        median: training medians (a missing value is replaced by its feature's).
        mean: training means of the standardisation.
        sd: training standard deviations of the standardisation (scikit-learn's ``scale_``).
        coef: coefficients per standardised feature.
        intercept: the intercept.
        threshold: the fold's inner-validation Youden threshold.
    """

    features: tuple[str, ...]
    median: np.ndarray
    mean: np.ndarray
    sd: np.ndarray
    coef: np.ndarray
    intercept: float
    threshold: float

    @classmethod
    def from_record(cls, record: Mapping[str, Any], source: Path | str) -> SavedModel:
        """The model of a ``model.json`` content; an error names ``source`` when an entry is missing or malformed."""
        try:
            coefficients = record["coefficients"]
            features = tuple(str(f) for f in coefficients)

            def column(key: str) -> np.ndarray:
                values = record[key]
                return np.array([float(values[f]) for f in features], dtype=np.float64)

            out = cls(
                features=features,
                median=column("train_median"),
                mean=column("train_mean"),
                sd=column("train_sd"),
                coef=column("coefficients"),
                intercept=float(record["intercept"]),
                threshold=float(record["threshold_youden_val"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise NeonetError(
                f"{source}: not a radiomics model written by `neonet radiomics` ({type(exc).__name__}: {exc}); "
                "re-compute the fold with `neonet radiomics --force`"
            ) from exc
        if not features or not np.all(np.isfinite(np.concatenate([out.mean, out.sd, out.coef, [out.intercept]]))):
            raise NeonetError(f"{source}: the radiomics model holds no features or non-finite values; re-compute it (--force)")
        return out

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        """Logits of the rows of ``x`` (columns in ``features`` order; NaN imputed with the training median)."""
        x = np.asarray(x, dtype=np.float64).reshape(-1, len(self.features))
        x = np.where(np.isnan(x), self.median, x)
        return np.asarray(((x - self.mean) / self.sd) @ self.coef + self.intercept, dtype=np.float64)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """PNI+ probability of each row."""
        return np.asarray(1.0 / (1.0 + np.exp(-self.decision_function(x))), dtype=np.float64)

    def row(self, features: Mapping[str, float], source: str) -> np.ndarray:
        """One patch's features (:func:`neonet.radiomics.features.patch_features`) as a row in ``features`` order.

        Raises:
            NeonetError: a feature the model uses was not computed (other regions than the fold's).
        """
        missing = [f for f in self.features if f not in features]
        if missing:
            raise NeonetError(f"{source}: the patch's features lack {missing[:5]} that the radiomics model uses")
        return np.array([[float(features[f]) for f in self.features]], dtype=np.float64)


@dataclass(frozen=True)
class SavedFold:
    """A radiomics fold ready to score patches: its model and how its features are computed.

    Attributes:
        fold: the fold k.
        model: the saved model.
        regions: label-patch regions the features describe (``tumour``, ``shell``).
        bins: intensity-histogram bins.
    """

    fold: int
    model: SavedModel
    regions: tuple[str, ...]
    bins: int


def load_fold(ws: Workspace, stage: str, fold: int) -> SavedFold:
    """A radiomics fold of the experiment from its ``model.json`` (checked against the SHA-256 its ``artifact.json``
    records) and ``artifact.json`` (settings: regions, bins).

    Raises:
        NeonetError: a file is missing, was changed since, or does not hold what ``neonet radiomics`` writes.
    """
    path = ws.radiomics_model(stage, fold)
    fix = f"re-compute it: neonet radiomics --config experiments/{ws.experiment}/radiomics.yaml --folds {fold} --force"
    if not path.is_file():
        raise NeonetError(f"{path}: the radiomics model of {stage} fold {fold} is missing; {fix}")
    artifact = ws.read_artifact(stage, fold) or {}
    recorded = (artifact.get("model") or {}).get("sha256") if isinstance(artifact.get("model"), dict) else None
    if recorded is not None and (now := sha256_file(path)) != recorded:
        raise NeonetError(
            f"{path}: this radiomics model is not the one its artifact.json records (sha256 now {now[:12]}…, recorded "
            f"{recorded[:12]}…): it was changed after `neonet radiomics` wrote it, so it is not used; {fix}"
        )
    model = SavedModel.from_record(read_json(path, remedy=fix), path)
    settings = artifact.get("settings") or {}
    try:
        regions = tuple(str(r) for r in settings["regions"])
        bins = int(settings["bins"])
    except (KeyError, TypeError, ValueError) as exc:
        raise NeonetError(f"{ws.artifact_path(stage, fold)}: no radiomics settings (regions, bins) ({exc}); {fix}") from exc
    return SavedFold(fold, model, regions, bins)
