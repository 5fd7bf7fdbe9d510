"""Exports of the real all-MiniLM-L6-v2 keep its accuracy: as a classifier fine-tuned on the README's movie reviews
(fp32: labels identical and scores within 1e-4 of torch; int8: >= 97% of the labels of real sentences identical,
held-out accuracy within 2.5 points) and as a sentence encoder (int8 Spearman within 0.02 of torch's on real
sentence pairs with human-like scores, tests/data/sts_pairs.csv)."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime", reason="the export extra (onnx, onnxruntime, onnxscript) is not installed")

import taskzoo

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"


def readme_reviews(folder: Path) -> tuple[Path, Path]:
    """The README's train.csv (30 reviews) and dev.csv (12), written into ``folder`` from its shell block."""
    files = dict(re.findall(r"cat > (\w+\.csv) <<'EOF'\n(.*?)\nEOF", (ROOT / "README.md").read_text(), re.DOTALL))
    for name, text in files.items():
        (folder / name).write_text(text + "\n")
    return folder / "train.csv", folder / "dev.csv"


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


@pytest.fixture(scope="session")
def review_classifier(minilm_path, tmp_path_factory):
    """MiniLM fine-tuned on the README's reviews (as the README does), and its fp32 and int8 exports."""
    folder = tmp_path_factory.mktemp("reviews")
    train, dev = readme_reviews(folder)
    zoo = taskzoo.load("text-classification", model=minilm_path, device="cpu")
    zoo.finetune(str(train), eval=str(dev), epochs=3, learning_rate=1e-4, progress=False, save_checkpoints=False)
    exports = {quantize: taskzoo.load("text-classification", model=zoo.export(folder / f"onnx_{quantize}",
                                                                              quantize=quantize))
               for quantize in (None, "int8")}
    held_out = rows(dev) + rows(DATA / "reviews_heldout.csv")
    return zoo, exports, [row["text"] for row in rows(train)] + [row["text"] for row in held_out], held_out


def accuracy(zoo, held_out: list[dict]) -> float:
    predictions = zoo.predict([row["text"] for row in held_out])
    return sum(p["label"] == row["label"] for p, row in zip(predictions, held_out)) / len(held_out)


def test_fp32_export_of_the_review_classifier_equals_torch(review_classifier):
    zoo, exports, sentences, _ = review_classifier
    ours, theirs = exports[None].predict(sentences, top_k=2), zoo.predict(sentences, top_k=2)
    assert [[p["label"] for p in row] for row in ours] == [[p["label"] for p in row] for row in theirs]
    assert max(abs(a["score"] - b["score"]) for x, y in zip(ours, theirs) for a, b in zip(x, y)) < 1e-4


def test_int8_export_of_the_review_classifier_keeps_labels_and_accuracy(review_classifier):
    zoo, exports, sentences, held_out = review_classifier
    ours, theirs = exports["int8"].predict(sentences), zoo.predict(sentences)
    same = sum(a["label"] == b["label"] for a, b in zip(ours, theirs)) / len(sentences)
    assert same >= 0.97, f"int8 keeps {same:.1%} of {len(sentences)} labels"
    torch_accuracy, int8_accuracy = accuracy(zoo, held_out), accuracy(exports["int8"], held_out)
    assert torch_accuracy > 0.75  # it learned: the comparison below means something
    assert abs(int8_accuracy - torch_accuracy) <= 0.025, (int8_accuracy, torch_accuracy)


def test_sentence_similarity_exports_keep_spearman_on_real_pairs(minilm_path, tmp_path):
    zoo = taskzoo.load("sentence-similarity", model=minilm_path, device="cpu")
    pairs = rows(DATA / "sts_pairs.csv")
    data = [{**row, "score": float(row["score"])} for row in pairs]
    torch_scores = zoo.predict([(row["sentence1"], row["sentence2"]) for row in pairs])
    torch_spearman = zoo.evaluate(data)["spearman"]
    assert torch_spearman > 0.7  # the real model ranks these pairs much as people do
    for quantize, tolerance in ((None, 1e-4), ("int8", None)):
        exported = taskzoo.load("sentence-similarity", model=zoo.export(tmp_path / f"st_{quantize}", quantize=quantize))
        if tolerance:
            scores = exported.predict([(row["sentence1"], row["sentence2"]) for row in pairs])
            assert max(abs(a["score"] - b["score"]) for a, b in zip(scores, torch_scores)) < tolerance
        spearman = exported.evaluate(data)["spearman"]
        assert abs(spearman - torch_spearman) <= 0.02, (quantize, spearman, torch_spearman)
