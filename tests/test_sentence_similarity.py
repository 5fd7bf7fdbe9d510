import math

import pytest
import torch

import taskzoo
from taskzoo.errors import DataError
from taskzoo.testing import toy_dataset

PAIRS = [("A man is playing a guitar.", "Someone plays an instrument."),
         ("A man is playing a guitar.", "The stock market fell sharply today."),
         ("Cats sleep a lot.", "Kittens nap for most of the day."),
         ("short", "a much longer sentence with many more words in it than the other one")]


def test_scores_equal_sentence_transformers_encode_and_cosine(minilm_path):
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(minilm_path), device="cpu")
    zoo = taskzoo.load("sentence-similarity", model="all-MiniLM-L6-v2", device="cpu")
    ours = zoo.predict(PAIRS, batch_size=3)
    for (a, b), result in zip(PAIRS, ours):
        embeddings = reference.encode([a, b], convert_to_tensor=True)
        expected = torch.nn.functional.cosine_similarity(embeddings[:1], embeddings[1:]).item()
        assert result["score"] == pytest.approx(expected, abs=1e-5)
    assert ours[0]["score"] > ours[1]["score"] + 0.3  # a real model, real semantics


def test_source_sentence_with_many_sentences(minilm_path):
    zoo = taskzoo.load("sentence-similarity", model="all-MiniLM-L6-v2", device="cpu")
    scores = zoo.predict({"source_sentence": "A man is playing a guitar.",
                          "sentences": ["Someone plays an instrument.", "The stock market fell sharply today."]})
    pairwise = zoo.predict(PAIRS[:2])
    assert scores == pytest.approx([p["score"] for p in pairwise], abs=1e-5)


def test_finetuning_raises_spearman(tiny_model_path, tmp_path):
    zoo = taskzoo.load("sentence-similarity", model=tiny_model_path("sentence-similarity"), device="cpu")
    held_out = toy_dataset("sentence-similarity", 64, seed=1)
    before = zoo.evaluate(held_out)
    zoo.finetune(toy_dataset("sentence-similarity", 256, seed=0), eval=held_out, epochs=3,
                 learning_rate=3e-3, batch_size=16, progress=False, output_dir=str(tmp_path / "run"))
    after = zoo.evaluate(held_out)
    assert set(after) == {"spearman", "pearson"}
    assert before["spearman"] < 0.4 and after["spearman"] >= 0.75
    again = taskzoo.load("sentence-similarity", model=tmp_path / "run" / "last", device="cpu")
    assert again.predict(("rain snow", "storm wind"))["score"] == pytest.approx(
        zoo.predict(("rain snow", "storm wind"))["score"], abs=1e-6)


def test_cosent_loss_learns_too(tiny_model_path):
    zoo = taskzoo.load("sentence-similarity", model=tiny_model_path("sentence-similarity"), device="cpu",
                       loss="cosent")
    zoo.finetune(toy_dataset("sentence-similarity", 256, seed=0), epochs=2, learning_rate=3e-3,
                 batch_size=16, progress=False, save_checkpoints=False, plot=False)
    assert zoo.evaluate(toy_dataset("sentence-similarity", 64, seed=1))["spearman"] >= 0.6


@pytest.mark.parametrize("loss", ["cosine", "cosent"])
def test_the_training_loss_is_the_papers_formula_on_the_cosines(tiny_model_path, loss):
    """Mean squared error of cosine against gold; CoSENT's log(1 + sum over gold_i > gold_j of
    exp(20 (cos_j - cos_i)))."""
    zoo = taskzoo.load("sentence-similarity", model=tiny_model_path("sentence-similarity"), device="cpu", loss=loss)
    rows = list(toy_dataset("sentence-similarity", 8, seed=3))
    batch = zoo.collate([{**row, "score": i / 8} for i, row in enumerate(rows)])
    step = zoo.training_step(zoo.model, batch)
    cosine, gold = step["output"], batch["score"]
    if loss == "cosine":
        expected = ((cosine - gold) ** 2).mean()
    else:
        ranked = (gold[:, None] > gold[None, :]) * torch.exp(20 * (cosine[None, :] - cosine[:, None]))
        expected = torch.log(1 + ranked.sum())
    assert step["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    step["loss"].backward()  # and it trains the encoder
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in zoo.model.parameters())


def test_zero_to_five_scores_are_normalised(tiny_model_path):
    zoo = taskzoo.load("sentence-similarity", model=tiny_model_path("sentence-similarity"), device="cpu")
    rows = [{"sentence1": "a cat", "sentence2": "a dog", "score": s} for s in (0.0, 2.5, 5.0)]
    prepared = zoo.prepare(zoo.load_data(rows), training=True)
    assert prepared["score"] == pytest.approx([0.0, 0.5, 1.0])


@pytest.mark.parametrize("bad, message", [(math.nan, "finite numbers; row 1"), (7.0, r"\[0, 1\] or \[0, 5\]"),
                                          (-1.0, r"from -1.0"), ("high", "mixes types.*high")])
def test_bad_scores_are_refused(tiny_model_path, bad, message):
    zoo = taskzoo.load("sentence-similarity", model=tiny_model_path("sentence-similarity"), device="cpu")
    rows = [{"sentence1": "a", "sentence2": "b", "score": 0.5}, {"sentence1": "a", "sentence2": "b", "score": bad}]
    with pytest.raises(DataError, match=message):
        zoo.evaluate(rows)


def test_bad_inputs_are_refused(tiny_model_path):
    zoo = taskzoo.load("sentence-similarity", model=tiny_model_path("sentence-similarity"), device="cpu")
    with pytest.raises(ValueError, match="source_sentence"):
        zoo.predict({"query": "x"})
    with pytest.raises(ValueError, match="a pair"):
        zoo.predict(["just one sentence"])


def test_out_of_memory_halves_the_batch_and_retries(tiny_model_path, monkeypatch):
    zoo = taskzoo.load("sentence-similarity", model=tiny_model_path("sentence-similarity"), device="cpu")
    pairs = [(f"the cat and dog {i}", f"rain and snow today {i}") for i in range(5)]  # 10 distinct sentences
    expected = zoo.predict(pairs, batch_size=8)
    real = type(zoo).predict_batch
    sizes = []

    def small_memory(self, features):  # a device that fits at most 3 sentences, none longer than 8 tokens
        rows, tokens = features["input_ids"].shape
        sizes.append(rows)
        if rows > 3 or tokens > 8:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real(self, features)

    monkeypatch.setattr(type(zoo), "predict_batch", small_memory)
    with pytest.warns(UserWarning, match="sentence-similarity: out of memory with a batch of 8; retrying as two "
                                         "batches of 4 and 4"):
        results = zoo.predict(pairs, batch_size=8)
    assert [r["score"] for r in results] == pytest.approx([r["score"] for r in expected], abs=1e-5)
    assert sizes[0] == 8 and max(s for s in sizes if s <= 3) <= 3
    assert sum(s for s in sizes if s <= 3) == 10  # every sentence encoded exactly once in the end
    sizes.clear()
    with pytest.raises(torch.OutOfMemoryError):  # a sentence that does not fit alone cannot be halved
        zoo.predict(("a long sentence about the cat and the dog", "rain"), batch_size=8)
    assert sizes == [2, 1]


def test_many_mixed_length_sentences_score_as_sentence_transformers(minilm_path, monkeypatch):
    """Batches sorted by token length (padding-free ones run without a mask) change no score, nor does the
    path for models without a transformers tokenizer (sorted by characters, tokenized by encode's preprocess)."""
    import random

    from sentence_transformers import SentenceTransformer

    rng = random.Random(0)
    words = "the a cat dog sat on mat very quite lovely awful storm rain football market guitar".split()
    sentences = [" ".join(rng.choices(words, k=rng.choice([2, 3, 3, 5, 8, 20, 40]))) for _ in range(60)]
    pairs = list(zip(sentences[:30], sentences[30:]))
    reference = SentenceTransformer(str(minilm_path), device="cpu")
    a, b = (reference.encode(side, batch_size=7, convert_to_tensor=True) for side in zip(*pairs))
    expected = torch.nn.functional.cosine_similarity(a, b)
    zoo = taskzoo.load("sentence-similarity", model="all-MiniLM-L6-v2", device="cpu")
    ours = torch.tensor([row["score"] for row in zoo.predict(pairs, batch_size=8)])
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
    many = zoo.predict({"source_sentence": sentences[0], "sentences": sentences[1:]}, batch_size=8)
    vectors = reference.encode(sentences, convert_to_tensor=True)
    torch.testing.assert_close(torch.tensor(many), torch.nn.functional.cosine_similarity(vectors[:1], vectors[1:]),
                               atol=1e-5, rtol=0)
    monkeypatch.setattr(type(zoo), "tokenized", lambda self, sentences: None)
    plain = torch.tensor([row["score"] for row in zoo.predict(pairs, batch_size=8)])
    torch.testing.assert_close(plain, expected, atol=1e-5, rtol=0)


def _forward_shapes(zoo, monkeypatch) -> list[tuple[int, int]]:
    """(rows, tokens) of each forward pass predict makes from now on."""
    real, shapes = type(zoo).predict_batch, []

    def recording(self, features):
        shapes.append(tuple(features["input_ids"].shape))
        return real(self, features)

    monkeypatch.setattr(type(zoo), "predict_batch", recording)
    return shapes


def test_default_batches_hold_a_token_budget_and_scores_stay_in_input_order(minilm_path, monkeypatch):
    import random

    from sentence_transformers import SentenceTransformer

    rng = random.Random(1)
    words = "the a cat dog sat on mat very quite lovely awful storm rain football market guitar".split()
    sentences = list(dict.fromkeys(" ".join(rng.choices(words, k=rng.choice([2, 3, 4, 6, 10, 30, 60])))
                                   for _ in range(200)))
    pairs = list(zip(sentences[::2], sentences[1::2]))
    reference = SentenceTransformer(str(minilm_path), device="cpu")
    a, b = (reference.encode(list(side), convert_to_tensor=True) for side in zip(*pairs))
    zoo = taskzoo.load("sentence-similarity", model="all-MiniLM-L6-v2", device="cpu")
    shapes = _forward_shapes(zoo, monkeypatch)
    ours = torch.tensor([row["score"] for row in zoo.predict(pairs, batch_tokens=256)])
    torch.testing.assert_close(ours, torch.nn.functional.cosine_similarity(a, b), atol=1e-6, rtol=0)
    assert all(rows * tokens <= 256 for rows, tokens in shapes)
    assert sum(rows for rows, _ in shapes) == 2 * len(pairs)
    assert max(rows for rows, _ in shapes) > 3 * min(rows for rows, _ in shapes)  # short ones in larger batches
    shapes.clear()
    by_default = zoo.predict(pairs)
    assert all(rows * tokens <= zoo.default_batch_tokens for rows, tokens in shapes)
    assert [row["score"] for row in by_default] == pytest.approx(ours.tolist(), abs=1e-6)


def test_an_explicit_batch_size_counts_sentences(tiny_model_path, monkeypatch):
    zoo = taskzoo.load("sentence-similarity", model=tiny_model_path("sentence-similarity"), device="cpu")
    pairs = [(f"the cat {'and dog ' * (i % 7)}{i}", f"rain {'snow ' * (i % 3)}today {i}") for i in range(20)]
    shapes = _forward_shapes(zoo, monkeypatch)
    zoo.predict(pairs, batch_size=6)
    assert [rows for rows, _ in shapes] == [6] * 6 + [4]  # 40 distinct sentences
    with pytest.raises(ValueError, match="batch_size .* or batch_tokens"):
        zoo.predict(pairs, batch_size=6, batch_tokens=512)
    with pytest.raises(ValueError, match="batch_tokens must be a positive integer; got 0"):
        zoo.predict(pairs, batch_tokens=0)
