"""The radiomics classifier of one fold: impute, standardise, L2 logistic regression, strength chosen on validation.

:func:`fit_fold` sees only the fold's training rows and its inner-validation rows, by signature:

1. for each ``C`` of the grid, a scikit-learn pipeline (median imputation, standardisation, L2 logistic
   regression) is fitted on the **training** rows only: the medians, means and standard deviations are
   those of the training patients;
2. ``C`` is chosen on the **inner-validation** rows: the highest AUC, ties broken by the lower log-loss, then
   by the smaller ``C`` (the stronger regularisation);
3. the chosen pipeline is the fold's model, fitted on the training rows only (not refitted on training +
   validation): the validation rows then still give an honest Youden threshold, as for the deep classifiers,
   which also train on the training patients and select and threshold on the validation ones.

The test rows never enter :func:`fit_fold`; :func:`predict` scores them with the fitted pipeline.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import sklearn
from sklearn.exceptions import ConvergenceWarning
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from neonet.errors import DataError
from neonet.report.stats import auc, youden_threshold

#: The default grid of inverse L2 strengths (scikit-learn's ``C``).
C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0)


@dataclass
class FoldModel:
    """A fitted fold model and how it was chosen.

    Attributes:
        pipeline: imputer -> scaler -> logistic regression, fitted on the training rows.
        c: the chosen inverse L2 strength.
        threshold: the Youden threshold of the chosen model on the validation rows.
        selection: per ``C``: validation AUC and log-loss, training AUC.
        features: the feature columns, in the order of the coefficients.
    """

    pipeline: Pipeline
    c: float
    threshold: float
    selection: list[dict[str, float]]
    features: list[str]

    def record(self) -> dict[str, Any]:
        """The model as JSON: coefficients (per standardised feature and in original units), intercept,
        the training statistics of the imputer and scaler, the chosen ``C`` and the selection table."""
        imputer: SimpleImputer = self.pipeline.named_steps["impute"]
        scaler: StandardScaler = self.pipeline.named_steps["scale"]
        lr: LogisticRegression = self.pipeline.named_steps["logistic"]
        coef = lr.coef_.ravel()
        scale = np.asarray(scaler.scale_, dtype=float)
        return {
            "model": "L2 logistic regression on standardised IBSI features (scikit-learn)",
            "sklearn_version": sklearn.__version__,
            "C": self.c,
            "threshold_youden_val": self.threshold,
            "intercept": float(lr.intercept_[0]),
            "coefficients": {f: float(c) for f, c in zip(self.features, coef)},
            "coefficients_original_units": {f: float(c / s) for f, c, s in zip(self.features, coef, scale)},
            "train_median": {f: float(v) for f, v in zip(self.features, imputer.statistics_)},
            "train_mean": {f: float(v) for f, v in zip(self.features, scaler.mean_)},
            "train_sd": {f: float(v) for f, v in zip(self.features, scale)},
            "selection": self.selection,
        }


def _pipeline(c: float, class_weight: Literal["balanced"] | None, max_iter: int) -> Pipeline:
    return Pipeline(
        [
            ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
            ("scale", StandardScaler()),
            ("logistic", LogisticRegression(C=c, class_weight=class_weight, max_iter=max_iter)),
        ]
    )


def _check_labels(y: np.ndarray, part: str, fold: int) -> None:
    if not 0 < int(y.sum()) < len(y):
        raise DataError(
            f"fold {fold}: the {part} patients have one class only ({len(y)} case(s), {int(y.sum())} PNI+), so the "
            "radiomics model cannot be fitted and its strength cannot be chosen; use more cases or fewer folds."
        )


def fit_fold(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    features: Sequence[str],
    c_grid: Sequence[float] = C_GRID,
    class_weight: Literal["balanced"] | None = "balanced",
    max_iter: int = 5000,
    fold: int = 0,
) -> FoldModel:
    """Fit each ``C`` on the training rows, choose one on the validation rows (see the module docstring).

    Args:
        x_train: training features (rows: the fold's training patients' patches).
        y_train: their PNI labels (0/1).
        x_val: inner-validation features.
        y_val: their labels.
        features: the feature names (columns).
        c_grid: inverse L2 strengths to try.
        class_weight: ``balanced`` weighs PNI+ by negatives / positives of the training rows; None does not.
        max_iter: iterations of the L-BFGS solver.
        fold: the fold, for messages.

    Raises:
        DataError: training or validation rows hold one class only.
        ValueError: an empty or non-positive ``c_grid``.
    """
    if not c_grid or min(c_grid) <= 0:
        raise ValueError(f"c_grid must hold positive values, got {list(c_grid)}")
    y_train, y_val = np.asarray(y_train, dtype=int), np.asarray(y_val, dtype=int)
    _check_labels(y_train, "training", fold)
    _check_labels(y_val, "inner-validation", fold)
    candidates = []
    for c in sorted(float(v) for v in c_grid):
        pipe = _pipeline(c, class_weight, max_iter)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # recorded below instead
            pipe.fit(x_train, y_train)
        lr: LogisticRegression = pipe.named_steps["logistic"]
        p_val = pipe.predict_proba(x_val)[:, 1]
        row = {
            "C": c,
            "val_auc": auc(y_val, p_val),
            "val_log_loss": float(log_loss(y_val, p_val, labels=[0, 1])),
            "train_auc": auc(y_train, pipe.predict_proba(x_train)[:, 1]),
            "iterations": int(np.max(lr.n_iter_)),
            "converged": bool(np.max(lr.n_iter_) < max_iter),
        }
        candidates.append((row, pipe, p_val))
    # highest validation AUC, then lowest log-loss, then the smallest C (strongest regularisation)
    best_row, best_pipe, best_p = min(candidates, key=lambda t: (-t[0]["val_auc"], t[0]["val_log_loss"], t[0]["C"]))
    return FoldModel(
        pipeline=best_pipe,
        c=float(best_row["C"]),
        threshold=youden_threshold(y_val, best_p),
        selection=[row for row, _, _ in candidates],
        features=list(features),
    )


def predict(model: FoldModel, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(PNI+ probability, logit) of each row."""
    logit = np.asarray(model.pipeline.decision_function(x), dtype=float)
    prob = 1.0 / (1.0 + np.exp(-logit))
    return prob, logit
