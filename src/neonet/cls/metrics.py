"""Epoch-level binary classification metrics with torchmetrics (DDP-safe score collection).

Scores are collected per split with ``torchmetrics.aggregation.CatMetric`` (synchronised across
ranks), so every metric is computed once per epoch on all of the split's cases: AUROC and average
precision (threshold-free), and accuracy, sensitivity, specificity and F1 at a given threshold on
the probability (0.5, and the Youden threshold chosen on the inner validation split).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torchmetrics.aggregation import CatMetric
from torchmetrics.functional.classification import (
    binary_accuracy,
    binary_auroc,
    binary_average_precision,
    binary_f1_score,
    binary_recall,
    binary_specificity,
)

from neonet.report.stats import youden_threshold

__all__ = ["ScoreCollector", "threshold_metrics", "youden"]


class ScoreCollector(nn.Module):
    """Collects logits and 0/1 labels of one split over an epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.logits = CatMetric(nan_strategy="error")
        self.labels = CatMetric(nan_strategy="error")

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch (both of shape (B,))."""
        self.logits.update(logits.detach().float().reshape(-1))
        self.labels.update(labels.detach().float().reshape(-1))

    def compute(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(logits, labels) of the epoch, or None when nothing was collected."""
        if not self.logits.update_called:
            return None
        return self.logits.compute().reshape(-1), self.labels.compute().reshape(-1).round().long()

    def reset(self) -> None:
        """Forget the epoch's scores."""
        self.logits.reset()
        self.labels.reset()


def threshold_metrics(probs: torch.Tensor, labels: torch.Tensor, threshold: float) -> dict[str, float]:
    """Accuracy, sensitivity, specificity and F1 of ``probs >= threshold``."""
    t = float(threshold)
    return {
        "accuracy": float(binary_accuracy(probs, labels, threshold=t)),
        "sensitivity": float(binary_recall(probs, labels, threshold=t)),
        "specificity": float(binary_specificity(probs, labels, threshold=t)),
        "f1": float(binary_f1_score(probs, labels, threshold=t)),
    }


def ranking_metrics(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """AUROC and average precision (NaN when only one class is present)."""
    n_pos = int(labels.sum())
    if n_pos == 0 or n_pos == labels.numel():
        return {"auc": math.nan, "ap": math.nan}
    return {"auc": float(binary_auroc(probs, labels)), "ap": float(binary_average_precision(probs, labels))}


def youden(probs: torch.Tensor, labels: torch.Tensor, default: float = 0.5) -> float:
    """Youden threshold on the probabilities (``default`` when only one class is present)."""
    n_pos = int(labels.sum())
    if n_pos == 0 or n_pos == labels.numel():
        return default
    return youden_threshold(labels.cpu().numpy(), probs.double().cpu().numpy())


def split_metrics(logits: torch.Tensor, labels: torch.Tensor, threshold: float) -> dict[str, float]:
    """All metrics of a split: ranking metrics, and thresholded ones at ``threshold`` (``_youden``) and 0.5 (``_05``)."""
    probs = torch.sigmoid(logits.float())
    out = ranking_metrics(probs, labels)
    out.update({f"{k}_youden": v for k, v in threshold_metrics(probs, labels, threshold).items()})
    out.update({f"{k}_05": v for k, v in threshold_metrics(probs, labels, 0.5).items()})
    out["threshold_youden"] = float(threshold)
    out["prevalence"] = float(labels.float().mean())
    return out
