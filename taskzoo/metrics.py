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


def bleu_chrf(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus-level sacreBLEU BLEU and chrF (0-100), one reference text per prediction."""
    try:
        import sacrebleu
    except ImportError as error:
        raise ImportError("BLEU and chrF need sacrebleu: pip install 'taskzoo[translation]'") from error

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references.")
    streams = [list(references)]
    return {"bleu": float(sacrebleu.corpus_bleu(list(predictions), streams).score),
            "chrf": float(sacrebleu.corpus_chrf(list(predictions), streams).score)}


def normalize_transcript(text: str) -> str:
    """Lowercase, punctuation (any Unicode punctuation, apostrophes included) removed, spaces collapsed.
    Transcripts that differ only in case or punctuation then score as equal."""
    import unicodedata

    text = "".join(c for c in text.lower() if not unicodedata.category(c).startswith("P"))
    return " ".join(text.split())


def word_error_rate(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus WER (jiwer): word substitutions + deletions + insertions over the reference word count."""
    import jiwer

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references.")
    return float(jiwer.wer(list(references), list(predictions))) if references else 0.0


def character_error_rate(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus CER (jiwer): the same edit count over characters (spaces included)."""
    import jiwer

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references.")
    return float(jiwer.cer(list(references), list(predictions))) if references else 0.0
