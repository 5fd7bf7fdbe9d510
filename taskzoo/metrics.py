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


def top_k_accuracy(ranked: Sequence[Sequence[int]], references: Sequence[int], k: int = 5) -> float:
    """Share of samples whose reference is among their ``k`` best class ids (``ranked``: ids best first per
    sample, as many as the caller kept: an evaluation needs only the top k, not every class's score)."""
    hits = [reference in list(ids)[:k] for ids, reference in zip(ranked, references)]
    return float(np.mean(hits)) if hits else 0.0


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


def confusion_matrix(predictions, references, num_labels: int, ignore_index: int = 255) -> np.ndarray:
    """Pixel counts of a segmentation, ``num_labels`` x ``num_labels`` int64: rows are the reference class,
    columns the predicted one. Pixels whose reference is ``ignore_index`` are left out. Summing these over
    samples streams a whole dataset's scores in O(num_labels^2) memory."""
    predictions, references = np.asarray(predictions).ravel(), np.asarray(references).ravel()
    if predictions.shape != references.shape:
        raise ValueError(f"{predictions.size} predicted pixels but {references.size} reference pixels.")
    keep = references != ignore_index
    predictions, references = predictions[keep].astype(np.int64), references[keep].astype(np.int64)
    for values, what in ((predictions, "prediction"), (references, "reference")):
        if values.size and (values.min() < 0 or values.max() >= num_labels):
            bad = values[(values < 0) | (values >= num_labels)][0]
            raise ValueError(f"A {what} holds class {bad}, outside 0..{num_labels - 1} (ignore index {ignore_index}).")
    counts = np.bincount(references * num_labels + predictions, minlength=num_labels * num_labels)
    return counts.reshape(num_labels, num_labels)


def segmentation_scores(confusion: np.ndarray) -> dict:
    """mean_iou, mean_accuracy and overall_accuracy (floats in [0, 1]) from a confusion matrix, and
    per_class_iou (a list, NaN for a class absent from both references and predictions). Means are taken
    over the classes present, as in mmsegmentation and HF evaluate's mean_iou; no pixels give 0."""
    confusion = np.asarray(confusion, dtype=np.float64)
    hits, in_reference, in_prediction = np.diag(confusion), confusion.sum(1), confusion.sum(0)
    union = in_reference + in_prediction - hits
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, hits / union, np.nan)
        class_accuracy = np.where(in_reference > 0, hits / in_reference, np.nan)
    total = confusion.sum()
    return {"mean_iou": float(np.nanmean(iou)) if (union > 0).any() else 0.0,
            "mean_accuracy": float(np.nanmean(class_accuracy)) if (in_reference > 0).any() else 0.0,
            "overall_accuracy": float(hits.sum() / total) if total else 0.0,
            "per_class_iou": iou.tolist()}


COCO_STATS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large")  # COCOeval.stats[0:6]


def coco_map(predictions: Sequence[dict], references: Sequence[dict]) -> dict[str, float]:
    """COCO box mAP (pycocotools), one dict per image in each list:

    - predictions: ``{"boxes": [[xmin, ymin, xmax, ymax], ...], "scores": [...], "labels": [...]}``
    - references: ``{"boxes": [[xmin, ymin, xmax, ymax], ...], "labels": [...]}``

    Boxes are corners in pixels (any one frame per image, the same for both lists); labels any hashable.
    Image ids are the list positions, assigned here rather than carried by the samples, so that lists
    gathered from several processes score as one. AP@[.5:.95] is ``map``; a size range without any
    reference box reports -1, as pycocotools does.
    """
    import contextlib
    import io

    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as error:
        raise ImportError("COCO mAP needs pycocotools: pip install 'taskzoo[vision]'") from error

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references.")
    labels = sorted({label for item in [*predictions, *references] for label in item["labels"]}, key=str)
    category = {label: number for number, label in enumerate(labels, 1)}

    def annotations(items, scored):
        rows = []
        for image_id, item in enumerate(items, 1):
            scores = item["scores"] if scored else [1.0] * len(item["labels"])
            for (x0, y0, x1, y1), label, score in zip(item["boxes"], item["labels"], scores):
                width, height = float(x1) - float(x0), float(y1) - float(y0)
                # COCO boxes are [x, y, width, height]; ids start at 1 (pycocotools reads 0 as "unmatched").
                rows.append({"id": len(rows) + 1, "image_id": image_id, "category_id": category[label],
                             "bbox": [float(x0), float(y0), width, height], "area": width * height,
                             "score": float(score), "iscrowd": 0})
        return rows

    def dataset(rows):
        coco = COCO()
        coco.dataset = {"images": [{"id": i} for i in range(1, len(references) + 1)], "annotations": rows,
                        "categories": [{"id": i} for i in category.values()]}
        coco.createIndex()
        return coco

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints every step and a 12-line table
        evaluation = COCOeval(dataset(annotations(references, False)), dataset(annotations(predictions, True)),
                              iouType="bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    # Rounded: pycocotools' averages leave 0.9999999999999998 where every box is found.
    return {name: round(float(value), 10) for name, value in zip(COCO_STATS, evaluation.stats)}
