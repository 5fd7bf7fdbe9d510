"""Streamed data (datasets.IterableDataset): a stream learns like the same data in memory, and bad rows are
refused as they are read (tests/test_contract.py checks that every task fine-tunes and evaluates on a stream)."""

import json

import pytest
from datasets import Dataset, load_dataset

import taskzoo
from taskzoo.errors import DataError, TrainingError
from taskzoo.testing import toy_dataset


def stream_of(dataset, shards: int = 2):
    return dataset.to_iterable_dataset(num_shards=shards)


@pytest.mark.parametrize("task, steps, metric, floor", [
    ("text-classification", 48, "accuracy", 0.9),
    ("image-classification", 64, "accuracy", 0.6),
])
def test_a_stream_learns_like_the_same_data_in_memory(task, steps, metric, floor, tiny_model_path):
    train, held_out = toy_dataset(task, 256, seed=0), toy_dataset(task, 64, seed=1)
    options = dict(max_steps=steps, learning_rate=3e-3, batch_size=16, progress=False, save_checkpoints=False)
    scores = {}
    for kind, data in (("memory", train), ("stream", stream_of(train, shards=4).shuffle(seed=0, buffer_size=64))):
        zoo = taskzoo.load(task, model=tiny_model_path(task), device="cpu")
        before = zoo.evaluate(held_out)[metric]
        zoo.finetune(data, **options)
        scores[kind] = zoo.evaluate(held_out)[metric]
    assert before < 0.6 and scores["memory"] >= floor
    assert scores["stream"] >= floor and scores["stream"] == pytest.approx(scores["memory"], abs=0.15)


def test_json_files_streamed_with_renamed_columns_and_string_labels(tiny_model_path, tmp_path):
    rows = toy_dataset("text-classification", 256)
    names = rows.features["label"].names
    for i in range(2):
        Dataset.from_dict({"review": rows["text"][i::2], "stars": [names[x] for x in rows["label"][i::2]]}) \
            .to_json(tmp_path / f"part{i}.jsonl")
    stream = load_dataset("json", data_files=[str(tmp_path / f"part{i}.jsonl") for i in range(2)], split="train",
                          streaming=True)
    zoo = taskzoo.load("text-classification", model=tiny_model_path("text-classification"), device="cpu")
    columns = {"review": "text", "stars": "label"}
    zoo.finetune(stream.shuffle(seed=0, buffer_size=256), columns=columns, max_steps=48, batch_size=16,
                 learning_rate=3e-3, progress=False, save_checkpoints=False, plot=False)
    scores = zoo.evaluate(stream, columns=columns)
    assert scores["accuracy"] > 0.8 and scores == zoo.evaluate(rows)  # every row scored once, labels mapped by name


def test_a_stream_without_max_steps_is_refused(tiny_model_path):
    zoo = taskzoo.load("text-classification", model=tiny_model_path("text-classification"), device="cpu")
    with pytest.raises(TrainingError, match="stream.*max_steps"):
        zoo.finetune(stream_of(toy_dataset("text-classification", 8)), epochs=1, progress=False)


def test_a_label_outside_the_models_is_refused_naming_it_and_its_rows(tiny_model_path):
    rows = [{"text": "good film", "label": "positive"}] * 300 + [{"text": "meh", "label": "neutral"}]
    stream = Dataset.from_list(rows).to_iterable_dataset()
    zoo = taskzoo.load("text-classification", model=tiny_model_path("text-classification"), device="cpu")
    with pytest.raises(DataError, match=r"rows 256-300 .*'neutral'.*\['negative', 'positive'\]"):
        zoo.evaluate(stream)


def test_a_stream_takes_its_label_names_from_labels(tiny_model_path):
    stream = stream_of(toy_dataset("text-classification", 16))  # a ClassLabel: negative, positive
    zoo = taskzoo.load("text-classification", model=tiny_model_path("text-classification"), device="cpu")
    zoo.head_trained = False  # as a backbone without a classification head
    strings = Dataset.from_list([{"text": "good", "label": "positive"}, {"text": "bad", "label": "negative"}])
    with pytest.raises(DataError, match=r"labels=\[\.\.\.\]"):
        zoo.finetune(strings.to_iterable_dataset(), max_steps=1, progress=False, save_checkpoints=False, plot=False)
    zoo.finetune(strings.to_iterable_dataset(), labels=["positive", "negative"], max_steps=1, progress=False,
                 save_checkpoints=False, plot=False)
    assert zoo.labels == ["positive", "negative"]
    zoo.finetune(stream, max_steps=1, progress=False, save_checkpoints=False, plot=False)  # the ClassLabel's names
    assert zoo.labels == ["negative", "positive"]


def test_sentence_similarity_stream_keeps_one_score_scale(tiny_model_path):
    zoo = taskzoo.load("sentence-similarity", model=tiny_model_path("sentence-similarity"), device="cpu")
    data = toy_dataset("sentence-similarity", 16)
    on_five = data.map(lambda row: {"score": row["score"] * 5})
    assert zoo.evaluate(stream_of(on_five)) == pytest.approx(zoo.evaluate(data))
    late = Dataset.from_list([dict(data[0], score=0.5)] * 1000 + [dict(data[0], score=4.0)])
    with pytest.raises(DataError, match=r"\[0, 1\].*4\.0"):
        zoo.evaluate(late.to_iterable_dataset())


def test_checkpoints_are_written_by_default_and_resume_latest_finds_them(tiny_model_path, tmp_path):
    zoo = taskzoo.load("text-classification", model=tiny_model_path("text-classification"), device="cpu")
    train, held_out = toy_dataset("text-classification", 32), toy_dataset("text-classification", 8, seed=1)
    zoo.finetune(train, eval=held_out, max_steps=10, batch_size=8, eval_every=3, progress=False,
                 output_dir=str(tmp_path / "run"))
    # Evaluations at 3, 6, 9 (and at the end, 10: no checkpoint, last/ holds it) and epoch ends at 4, 8.
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-8", "step-9"]
    state = json.loads((tmp_path / "run" / "checkpoints" / "step-9" / "taskzoo_state.json").read_text())
    assert state["step"] == 9 and state["epoch"] == 2 and state["batches_in_epoch"] == 1
    resumed = zoo.finetune(train, eval=held_out, max_steps=12, batch_size=8, eval_every=3, progress=False,
                           output_dir=str(tmp_path / "run"), resume_from="latest")
    assert [r["step"] for r in resumed.history if "eval_accuracy" in r] == [3, 6, 9, 12]
    for name, off in (("off", {"checkpoint_every": None}), ("off2", {"save_checkpoints": False})):
        zoo.finetune(train, eval=held_out, max_steps=4, eval_every=2, progress=False,
                     output_dir=str(tmp_path / name), **off)
        assert not (tmp_path / name / "checkpoints").exists()
