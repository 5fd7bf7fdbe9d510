"""Property tests (hypothesis) on the data loaders and the metrics."""

import string

from datasets import Dataset
from hypothesis import given, settings, strategies as st

from taskzoo import data, metrics

words = st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=8)
sentences = st.lists(words, min_size=1, max_size=12).map(" ".join)
corpora = st.lists(sentences, min_size=1, max_size=8)


@given(corpora)
@settings(max_examples=40, deadline=None)
def test_wer_and_cer_of_identical_transcripts_are_zero(texts):
    assert metrics.word_error_rate(texts, texts) == 0.0
    assert metrics.character_error_rate(texts, texts) == 0.0


@given(corpora, corpora)
@settings(max_examples=40, deadline=None)
def test_wer_is_never_negative_and_normalising_never_hurts_case_only_differences(predicted, reference):
    predicted = (predicted * len(reference))[: len(reference)]
    assert metrics.word_error_rate(predicted, reference) >= 0.0
    shouted = [text.upper() + "!" for text in reference]
    normalised = [metrics.normalize_transcript(text) for text in shouted]
    assert metrics.word_error_rate(normalised, reference) == 0.0


@given(st.lists(st.lists(words, min_size=4, max_size=12).map(" ".join), min_size=1, max_size=8))
@settings(max_examples=40, deadline=None)
def test_bleu_of_identical_corpora_is_100(texts):
    scores = metrics.bleu_chrf(texts, texts)
    assert abs(scores["bleu"] - 100.0) < 1e-6 and abs(scores["chrf"] - 100.0) < 1e-6


@given(st.lists(st.fixed_dictionaries({"a": sentences, "b": st.integers(0, 9), "c": st.floats(0, 1)}),
                min_size=1, max_size=30),
       st.permutations(["text", "label", "score"]))
@settings(max_examples=40, deadline=None)
def test_column_mapping_never_drops_rows_or_values(rows, names):
    mapping = dict(zip(["a", "b", "c"], names))
    renamed = data.rename_columns(Dataset.from_list(rows), mapping)
    assert len(renamed) == len(rows)
    assert sorted(renamed.column_names) == sorted(names)
    for original, new in mapping.items():
        assert renamed[new] == [row[original] for row in rows]


@given(st.lists(st.sampled_from(["cat", "dog", "bird"]), min_size=1, max_size=40))
@settings(max_examples=40, deadline=None)
def test_label_encoding_round_trips(labels):
    names = sorted(set(labels))
    encoded = data.encode_labels(Dataset.from_dict({"label": labels}), "label",
                                 {name: i for i, name in enumerate(names)})
    assert [names[i] for i in encoded["label"]] == labels


masks = st.integers(1, 12).flatmap(lambda side: st.lists(st.lists(st.integers(0, 3), min_size=side, max_size=side),
                                                           min_size=side, max_size=side))


@given(masks, masks)
@settings(max_examples=60, deadline=None)
def test_mean_iou_is_in_0_1_and_1_for_a_perfect_mask(reference, predicted):
    import numpy as np

    reference = np.array(reference)
    predicted = np.resize(np.array(predicted), reference.shape)
    perfect = metrics.segmentation_scores(metrics.confusion_matrix(reference, reference, num_labels=4))
    assert perfect["mean_iou"] == 1.0 and perfect["overall_accuracy"] == 1.0
    scores = metrics.segmentation_scores(metrics.confusion_matrix(predicted, reference, num_labels=4))
    for name in ("mean_iou", "mean_accuracy", "overall_accuracy"):
        assert 0.0 <= scores[name] <= 1.0


boxes = st.lists(st.tuples(st.integers(0, 80), st.integers(0, 80), st.integers(2, 40), st.integers(2, 40),
                           st.sampled_from(["red", "blue"])), min_size=1, max_size=6)


@given(st.lists(boxes, min_size=1, max_size=4))
@settings(max_examples=30, deadline=None)
def test_map_of_perfect_boxes_is_1(images):
    references = [{"boxes": [[x, y, x + w, y + h] for x, y, w, h, _ in objects],
                   "labels": [label for *_, label in objects]} for objects in images]
    predictions = [{**reference, "scores": [0.9] * len(reference["labels"])} for reference in references]
    assert metrics.coco_map(predictions, references)["map"] == 1.0
