"""Small pure metric functions. No ``evaluate.load()``: hub metric scripts fail offline, so metrics are
computed with maintained libraries (scikit-learn, scipy, sacrebleu, jiwer, pycocotools)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def accuracy(predictions: Sequence[int], references: Sequence[int]) -> float:
    predictions, references = np.asarray(predictions), np.asarray(references)
    return float((predictions == references).mean()) if len(references) else 0.0


def macro_f1(predictions: Sequence[int], references: Sequence[int]) -> float:
    """F1 averaged over the classes present in either predictions or references."""
    from sklearn.metrics import f1_score

    return float(f1_score(references, predictions, average="macro", zero_division=0))


def top_k_accuracy(scores: np.ndarray, references: Sequence[int], k: int = 5) -> float:
    """Share of samples whose reference is among the ``k`` highest scores (scores: samples x classes)."""
    top = np.argsort(-np.asarray(scores), axis=1)[:, :k]
    return float((top == np.asarray(references)[:, None]).any(axis=1).mean())


def correlations(predictions: Sequence[float], references: Sequence[float]) -> dict[str, float]:
    """Spearman and Pearson correlation; NaN (constant input) is reported as 0."""
    from scipy.stats import pearsonr, spearmanr

    predictions, references = np.asarray(predictions, float), np.asarray(references, float)
    if len(predictions) < 2 or predictions.std() == 0 or references.std() == 0:
        return {"spearman": 0.0, "pearson": 0.0}
    return {"spearman": float(spearmanr(predictions, references)[0]),
            "pearson": float(pearsonr(predictions, references)[0])}
