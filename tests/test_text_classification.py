import pytest
import torch
from datasets import Dataset

import taskzoo
from taskzoo.errors import DataError


def test_finetuning_lifts_accuracy_from_chance_to_at_least_0_9(trained_classifier):
    zoo, before, result, held_out = trained_classifier
    assert before["accuracy"] <= 0.65  # an untrained head is near chance on balanced data
    after = zoo.evaluate(held_out)
    assert after["accuracy"] >= 0.9
    assert set(after) == {"accuracy", "macro_f1"}
    assert result.best_metric >= 0.9 and result.metric == "accuracy"


def test_label_names_come_from_the_data(trained_classifier):
    zoo = trained_classifier[0]
    assert zoo.labels == ["negative", "positive"]
    prediction = zoo.predict("the film was really great and lovely")
    assert prediction["label"] == "positive" and 0.5 < prediction["score"] <= 1


def test_single_input_gives_one_output_and_a_list_gives_a_list(trained_classifier):
    zoo = trained_classifier[0]
    texts = ["awful boring plot", "a superb story", "good", "the acting was terrible and dull"]
    batched = zoo.predict(texts, batch_size=3)
    for text, from_batch in zip(texts, batched):  # length-sorted batching keeps input order
        alone = zoo.predict(text)
        assert alone["label"] == from_batch["label"]
        assert alone["score"] == pytest.approx(from_batch["score"], abs=1e-5)
    assert [p["label"] for p in batched] == ["negative", "positive", "positive", "negative"]
    top = zoo.predict("good", top_k=2)
    assert [p["label"] for p in top] == ["positive", "negative"]
    assert sum(p["score"] for p in top) == pytest.approx(1.0, abs=1e-5)


def test_text_pairs(trained_classifier):
    zoo = trained_classifier[0]
    one = zoo.predict(("good film", "great plot"))
    assert set(one) == {"label", "score"}
    assert zoo.predict([("a", "b"), {"text": "bad", "text_pair": "awful"}], batch_size=2)[1]["label"] == "negative"


def test_plain_transformers_loader_opens_the_saved_classifier(trained_classifier, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    trained_classifier[0].save(tmp_path / "saved")
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "saved")
    assert model.config.id2label == {0: "negative", 1: "positive"}
    classifier = pipeline("text-classification", model=model,
                          tokenizer=AutoTokenizer.from_pretrained(tmp_path / "saved"), device="cpu")
    assert classifier("great lovely film")[0]["label"] == "positive"


def test_unknown_label_at_evaluation_is_named(trained_classifier):
    zoo = trained_classifier[0]
    with pytest.raises(DataError, match=r"labels the model does not know: \['neutral'\].*negative"):
        zoo.evaluate([{"text": "fine", "label": "positive"}, {"text": "meh", "label": "neutral"}])


def test_integer_labels_and_column_mapping(tiny_model_path, tmp_path):
    rows = [{"review": f"good film {i}", "stars": 1} if i % 2 else {"review": f"bad film {i}", "stars": 0}
            for i in range(16)]
    path = tmp_path / "reviews.csv"
    Dataset.from_list(rows).to_csv(path)
    zoo = taskzoo.load("text-classification", model=tiny_model_path("text-classification"), device="cpu")
    zoo.finetune(str(path), columns={"review": "text", "stars": "label"}, max_steps=2, progress=False,
                 save_checkpoints=False, plot=False)
    assert zoo.labels == ["negative", "positive"]  # integer labels in range keep the model's names
    assert set(zoo.evaluate(str(path), columns={"review": "text", "stars": "label"})) == {"accuracy", "macro_f1"}


def test_minilm_backbone_without_a_head_gets_one_for_the_data_labels(minilm_path, tmp_path):
    zoo = taskzoo.load("text-classification", model="all-MiniLM-L6-v2", device="cpu")
    assert not zoo.head_trained
    rows = [{"text": text, "label": label} for text, label in
            [("I love it", "joy"), ("I hate it", "anger"), ("so scared", "fear")] * 2]
    zoo.finetune(rows, max_steps=1, batch_size=6, progress=False, save_checkpoints=False, plot=False)
    assert zoo.labels == ["anger", "fear", "joy"]
    assert {p["label"] for p in zoo.predict(["x", "y"], top_k=3)[0]} == {"anger", "fear", "joy"}


def test_integer_labels_beyond_the_head_get_a_new_head(tiny_model_path):
    zoo = taskzoo.load("text-classification", model=tiny_model_path("text-classification"), device="cpu")
    rows = [{"text": f"film {i}", "label": i % 3} for i in range(6)]
    zoo.finetune(rows, max_steps=1, progress=False, save_checkpoints=False, plot=False)
    assert zoo.labels == ["LABEL_0", "LABEL_1", "LABEL_2"]


def test_long_texts_are_truncated_with_one_warning_that_counts_them(trained_classifier):
    zoo = trained_classifier[0]
    texts = ["good " * 300, "bad " * 300, "good film"]
    with pytest.warns(UserWarning, match=r"2 input\(s\) were longer than the model's maximum") as caught:
        results = zoo.predict(texts, batch_size=1)
    assert len([w for w in caught if "truncated" in str(w.message)]) == 1
    assert [r["label"] for r in results] == ["positive", "negative", "positive"]


def test_the_truncation_warning_points_at_the_users_line(trained_classifier):
    from datasets import Dataset

    zoo = trained_classifier[0]
    with pytest.warns(UserWarning, match="truncated during predict") as caught:
        zoo.predict(["good " * 300])
    with pytest.warns(UserWarning, match="truncated during evaluate") as caught_too:
        zoo.evaluate(Dataset.from_dict({"text": ["good " * 300, "bad"], "label": ["positive", "negative"]}))
    truncated = [w for w in [*caught, *caught_too] if "truncated" in str(w.message)]
    assert len(truncated) == 2 and all(w.filename == __file__ for w in truncated)


def test_mixed_kinds_of_input_are_refused(trained_classifier):
    with pytest.raises(ValueError, match=r"mixes kinds of input: text \(first at position 0\), text pair"):
        trained_classifier[0].predict(["good", ("a", "b")])


@pytest.mark.parametrize("inputs, named", [(["good", 3], r"input 1 is a int \(3\)"), (7, r"input 0 is a int \(7\)"),
                                           ([("good", None), ("a", 2.5)], r"input 1 is a float \(2.5\)")])
def test_inputs_that_are_not_text_are_refused_by_position(trained_classifier, inputs, named):
    with pytest.raises(ValueError, match=named + r", not text"):
        trained_classifier[0].predict(inputs)


def test_out_of_memory_halves_the_batch_and_retries(trained_classifier, monkeypatch):
    zoo = trained_classifier[0]
    texts = [f"good film {i}" if i % 2 else f"awful plot {i}" for i in range(10)]
    expected = zoo.predict(texts, batch_size=8)
    real = type(zoo).predict_batch
    sizes = []

    def small_memory(self, inputs, **options):  # a device that fits at most 3 inputs at a time
        sizes.append(len(inputs))
        if len(inputs) > 3:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real(self, inputs, **options)

    monkeypatch.setattr(type(zoo), "predict_batch", small_memory)
    with pytest.warns(UserWarning, match="out of memory with a batch of 8"):
        results = zoo.predict(texts, batch_size=8)
    assert [r["label"] for r in results] == [r["label"] for r in expected]
    assert max(s for s in sizes if s <= 3) <= 3 and 8 in sizes


def test_tiny_model_learns_sentences_whose_words_it_has_never_seen(tiny_model_path):
    """The kit's tokenizer spells unknown words with letters and two-letter pieces instead of [UNK], so
    the tiny model learns a user's own sentences: here reviews built from words outside its vocabulary,
    scored on held-out sentences (new combinations of those words)."""
    import random

    positive = ["loved", "enjoyed", "brilliant", "charming", "delightful", "beautiful", "fantastic", "moving"]
    negative = ["hated", "waste", "tedious", "stupid", "annoying", "disappointing", "worst", "pointless"]
    filler = ["this", "movie", "show", "honestly", "our", "whole", "friends", "thought", "seemed", "ending",
              "music", "cast", "truly", "overall"]

    def reviews(n, seed):
        rng = random.Random(seed)
        rows = []
        for i in range(n):
            label = ("negative", "positive")[i % 2]
            words = rng.sample(filler, rng.randint(3, 6)) + [rng.choice(positive if i % 2 else negative)]
            rng.shuffle(words)
            rows.append({"text": " ".join(words).capitalize() + ".", "label": label})
        return rows

    zoo = taskzoo.load("text-classification", model=tiny_model_path("text-classification"), device="cpu")
    vocabulary = zoo.processor.get_vocab()
    assert not vocabulary.keys() & {*positive, *negative, *filler}  # whole words the model never saw
    assert zoo.processor.unk_token_id not in zoo.processor("Honestly, a charming movie!")["input_ids"]
    train, held_out = reviews(128, seed=0), reviews(64, seed=1)
    assert not {row["text"] for row in train} & {row["text"] for row in held_out}
    assert zoo.evaluate(held_out)["accuracy"] <= 0.65
    zoo.finetune(train, epochs=8, learning_rate=3e-3, batch_size=16, progress=False, save_checkpoints=False, plot=False)
    assert zoo.evaluate(held_out)["accuracy"] >= 0.85


@pytest.mark.parametrize("problem_type,num_labels", [("regression", 1), ("multi_label_classification", 2),
                                                     (None, 1)])
def test_scores_follow_the_heads_problem_type_as_the_pipeline_does(tiny_model_path, tmp_path, problem_type,
                                                                     num_labels):
    """A regression head reports its raw value, a multi-label head (or one of a single output) sigmoids: the
    label and score transformers' pipeline gives."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    source = tiny_model_path("text-classification")
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=num_labels, problem_type=problem_type,
                                                               ignore_mismatched_sizes=True)
    model.save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(source).save_pretrained(tmp_path)
    zoo = taskzoo.load("text-classification", model=tmp_path, device="cpu")
    reference = pipeline("text-classification", model=str(tmp_path), device="cpu")
    texts = ["good film", "the plot was really dull and boring", "a"]
    ours = zoo.predict(texts, batch_size=2)
    for mine, theirs in zip(ours, reference(texts)):
        assert mine["label"] == theirs["label"] and mine["score"] == pytest.approx(theirs["score"], abs=1e-5)
    if problem_type == "regression":  # the raw output, not squashed into (0, 1)
        logits = model.eval()(**AutoTokenizer.from_pretrained(source)(texts[:1], return_tensors="pt")).logits
        assert ours[0]["score"] == pytest.approx(logits.item(), abs=1e-5)


def test_training_batches_are_grouped_by_token_count(trained_classifier):
    zoo = trained_classifier[0]
    texts = ["good", "the film was really quite good and the plot was lovely", "a superb story", "dull"]
    pairs = ["bad", "it", "the acting was terrible", "a plot"]
    assert zoo.train_lengths(Dataset.from_dict({"text": texts})) == \
        [len(zoo.processor(text)["input_ids"]) for text in texts]
    assert zoo.train_lengths(Dataset.from_dict({"text": texts, "text_pair": pairs})) == \
        [len(zoo.processor(text, pair)["input_ids"]) for text, pair in zip(texts, pairs)]
    longest = zoo.max_length
    assert zoo.train_lengths(Dataset.from_dict({"text": ["good " * 2 * longest]})) == [longest]  # as collate truncates


def test_a_missing_training_text_is_named_before_training(tiny_model_path):
    zoo = taskzoo.load("text-classification", model=tiny_model_path("text-classification"), device="cpu")
    data = Dataset.from_dict({"text": ["good", None, "bad"], "label": ["positive", "negative", "negative"]})
    with pytest.raises(DataError, match="expects strings; got NoneType: None"):
        zoo.finetune(data, max_steps=1, batch_size=2, progress=False, save_checkpoints=False, plot=False)
