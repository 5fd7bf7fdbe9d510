"""sentence-similarity: sentence-transformers models, scored by the cosine of the two embeddings.

Predict takes a pair ``(a, b)`` -> ``{"score"}``, or ``{"source_sentence", "sentences"}`` -> a list of
scores. Scores equal sentence-transformers' own ``encode`` + cosine. Fine-tuning regresses the cosine
onto gold scores (CosineSimilarityLoss), or ranks pairs with CoSENT (``loss="cosent"``).
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import random
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from datasets import Dataset
from tqdm.auto import tqdm

from taskzoo import metrics, strategies, streaming
from taskzoo.errors import DataError, ExportError
from taskzoo.models import library_bars_hidden, model_inputs
from taskzoo.predict_batches import PreparedBatches, halving_on_oom, plan_batches
from taskzoo.predict_options import check_options
from taskzoo.task import Task

LOSSES = ("cosine", "cosent")


class SentenceSimilarity(Task):
    name = "sentence-similarity"
    primary_metric = "spearman"
    modality = "text"
    model_needs = "a sentence-transformers model, or a text encoder with a tokenizer"
    required_columns = ("sentence1", "sentence2", "score")
    example_input = ["A man eats.", "Someone is eating."]
    playground_form = {"fields": [  # a sentence against several: one score each
        {"id": "source", "type": "text", "label": "Sentence", "value": "A man is eating food.",
         "to": "inputs.source_sentence"},
        {"id": "sentences", "type": "lines", "label": "Compare with (one sentence per line)",
         "value": "A man is eating a meal.\nA cat sleeps.", "to": "inputs.sentences"}], "output": "scores"}
    default_batch_size = 64  # sentences per forward pass (training, evaluation, predict without a tokenizer)
    default_batch_tokens = 4096  # predict: padded tokens per forward pass, unless batch_size is given
    # What one more forward pass costs, in tokens: a pass reads all the weights (~90 MB for MiniLM, some ms on
    # a CPU), as much as computing ~50 tokens there. An accelerator runs small batches for the same cost as
    # large ones, so there fewer, fuller batches win.
    cpu_batch_cost_tokens = 48
    default_learning_rate = 2e-5

    def __init__(self, model, *, loss: str = "cosine", **kwargs):
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}; got {loss!r}.")
        super().__init__(model, None, **kwargs)
        self.loss = loss

    @classmethod
    def from_pretrained(cls, path, device=None, trust_remote_code=False, loss="cosine"):
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(path), device=str(device) if device else None,
                                    trust_remote_code=trust_remote_code)
        task = cls(model, loss=loss, source=str(path), device=device or model.device)
        # A plain transformers folder (a text classifier, a BERT): sentence-transformers mean-pools its encoder,
        # whose embeddings were not trained for similarity.
        task.head_trained = (Path(path) / "modules.json").exists()
        return task

    def untrained_message(self) -> str:
        _, architecture = model_inputs(self.source)
        return (f"sentence-similarity: {self.source} holds {'a ' + architecture if architecture else 'a model'}, not "
                "a sentence-transformers model (it has no modules.json): its sentences are embedded by mean pooling "
                "over an encoder that was not trained for similarity, so its scores mean little: fine-tune it first.")

    @library_bars_hidden()
    def save(self, path):
        if self.exported:
            return super().save(path)
        self.model_to_save().save(str(path))
        return Path(path)

    # --------------------------------------------------------------------------------------- export
    def export_graphs(self):
        """One graph: token ids -> the sentence embedding, every module (transformer, pooling, normalising, ...)
        inside it, as ``encode`` runs them."""
        from taskzoo.export import Graph
        from taskzoo.export.optimizing import fusions_for

        model = self.model_to_save()
        transformer = model[0].auto_model if hasattr(model[0], "auto_model") else None
        if transformer is None or not callable(getattr(model.tokenizer, "pad", None)):
            raise ExportError("sentence-similarity exports models whose first module is a transformers model with "
                              f"its tokenizer; {type(model[0]).__name__} is not.")
        features = self.model.preprocess(["A first sentence to trace the model with.", "A second one."])
        inputs = {key: value for key, value in features.items() if isinstance(value, torch.Tensor)}
        axes = {0: "batch", 1: "sequence"}
        return [Graph("model", _SentenceEmbedding(model, self._feature_extras), inputs, ["sentence_embedding"],
                      dict.fromkeys(inputs, axes), **fusions_for(transformer.config))]

    def save_export_files(self, path):
        self.model.tokenizer.save_pretrained(path)
        self.model[0].auto_model.config.save_pretrained(path)  # (and a folder with a config.json is a model)
        (Path(path) / "taskzoo.json").write_text(json.dumps({"max_seq_length": self.model.max_seq_length}))

    @classmethod
    def from_exported(cls, path, sessions, trust_remote_code=False, loss="cosine"):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        settings = json.loads((Path(path) / "taskzoo.json").read_text())
        model = _ExportedSentenceEncoder(sessions["model"], tokenizer, settings["max_seq_length"])
        return cls(model, loss=loss, source=str(path), device="cpu")

    # ----------------------------------------------------------------------------------------- data
    def prepared(self, stream, training: bool):
        """A stream as prepare below, on the fly: its first 1000 rows say whether scores run to 1 or to 5 (a 0-5
        set shows values above 1 early); a later score outside that range is refused, naming it."""
        if not streaming.is_stream(stream):
            return super().prepared(stream, training)
        first = [s for s in streaming.head(stream, 1000)["score"] if isinstance(s, (int, float))]
        top = 5.0 if max(first, default=0) > 1 else 1.0

        def check(row: dict) -> dict:
            score = row["score"]
            if not isinstance(score, (int, float)) or isinstance(score, bool) or not 0 <= score <= top:
                raise DataError(f"Column 'score' must hold numbers in [0, {top:g}] (the range the stream's first "
                                f"rows show); a row has {score!r}.")
            return {"score": score / top}
        return stream.map(check)

    def prepare(self, dataset, training: bool):
        """Check the gold scores and bring them to [0, 1] (STS-B style 0-5 scores are divided by 5)."""
        scores = dataset["score"]
        bad = [(i, s) for i, s in enumerate(scores)
               if not isinstance(s, (int, float)) or isinstance(s, bool) or not math.isfinite(s)]
        if bad:
            row, value = bad[0]
            raise DataError(f"Column 'score' must hold finite numbers; row {row} has {value!r} "
                            f"({len(bad)} such rows).")
        low, high = min(scores), max(scores)
        if low < 0 or high > 5:
            raise DataError(f"Column 'score' must lie in [0, 1] or [0, 5]; found values from {low} to {high}.")
        if high > 1:
            dataset = dataset.map(lambda row: {"score": row["score"] / 5.0}, desc="Scaling scores 0-5 to 0-1")
        return dataset

    # --------------------------------------------------------------------------------- strategies
    # No head to freeze: the embedding is the output. LoRA adapts the transformer inside module 0.
    supported_strategies = ("full", "lora")

    def apply_strategy(self, strategy: str) -> None:
        if strategy not in self.supported_strategies:
            raise ValueError(f"sentence-similarity supports strategy 'full' or 'lora' (it has no head to "
                             f"train alone); got {strategy!r}.")
        options, encoder = self.training_options, self.model[0]
        encoder.model = strategies.apply(encoder.model, strategy, head=[], rank=options["lora_rank"],
                                         alpha=options["lora_alpha"], dropout=options["lora_dropout"])

    def model_to_save(self):
        encoder = self.model[0]
        if not (strategies.is_peft(encoder.model) and self.training_options.get("save_merged", True)):
            return self.model
        merged = copy.deepcopy(self.model)
        merged[0].model = merged[0].model.merge_and_unload()
        return merged

    def collate(self, examples: list[dict]) -> dict:
        return {"a": self.model.preprocess([row["sentence1"] for row in examples]),
                "b": self.model.preprocess([row["sentence2"] for row in examples]),
                "score": torch.tensor([float(row["score"]) for row in examples])}

    # ------------------------------------------------------------------------------------- training
    def training_step(self, model, batch):
        """sentence-transformers' CosineSimilarityLoss (the cosine regressed onto the gold score) or CoSENTLoss
        (``loss="cosent"``), on the embeddings of the model as the training loop wraps it."""
        from sentence_transformers.losses import CoSENTLoss, CosineSimilarityLoss

        embeddings = [model(batch["a"])["sentence_embedding"], model(batch["b"])["sentence_embedding"]]
        loss = (CoSENTLoss if self.loss == "cosent" else CosineSimilarityLoss)(self.model)
        return {"loss": loss.compute_loss_from_embeddings(embeddings, batch["score"].float()),
                "output": F.cosine_similarity(*embeddings).float()}

    def eval_step(self, model, batch):
        cosine = F.cosine_similarity(model(batch["a"])["sentence_embedding"],
                                     model(batch["b"])["sentence_embedding"])
        return cosine.float().tolist(), batch["score"].tolist()

    def compute_metrics(self, predictions, references):
        return metrics.correlations(predictions, references)

    # -------------------------------------------------------------------------------------- predict
    def is_single(self, inputs) -> bool:
        return isinstance(inputs, Mapping) or (
            isinstance(inputs, tuple) and len(inputs) == 2 and all(isinstance(x, str) for x in inputs))

    def input_of(self, row):
        return (row["sentence1"], row["sentence2"])

    @staticmethod
    def _sentences(item) -> list[str]:
        if isinstance(item, Mapping):
            if "source_sentence" not in item or "sentences" not in item:
                raise ValueError("A dict input needs 'source_sentence' and 'sentences'; "
                                 f"got keys {sorted(item)}.")
            sentences = [item["source_sentence"], *item["sentences"]]
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            sentences = list(item)
        else:
            raise ValueError("sentence-similarity takes a pair (sentence_a, sentence_b) or "
                             f"{{'source_sentence': ..., 'sentences': [...]}}; got {item!r:.80}")
        if not all(isinstance(sentence, str) for sentence in sentences):
            raise ValueError(f"Sentences must be strings; got {sentences!r:.80}")
        return sentences

    def tokenized(self, sentences: list[str]) -> list[dict] | None:
        """Each sentence's tokens, from one call of the fast tokenizer for them all, truncated as ``encode``
        truncates and not yet padded (each batch is padded to its own longest: :meth:`preprocess_batch`). None
        where the model's tokenizer is not a transformers one (a StaticEmbedding model, say)."""
        tokenizer = self.model.tokenizer
        if not callable(getattr(tokenizer, "pad", None)):
            return None
        encoded = tokenizer(sentences, truncation=True, max_length=self.model.max_seq_length)
        keys = [key for key in encoded if key != "overflow_to_sample_mapping"]
        return [{key: encoded[key][i] for key in keys} for i in range(len(sentences))]

    def preprocess_batch(self, items: list) -> dict:
        """Tokenized sentences padded into a batch, with what sentence-transformers' ``preprocess`` adds
        beside the tensors ("modality"); plain sentences (no transformers tokenizer) by ``preprocess`` itself."""
        if isinstance(items[0], str):
            return self.model.preprocess(items)
        features = dict(self.model.tokenizer.pad(items, return_tensors="pt"))
        return {**self._feature_extras, **features}

    @functools.cached_property
    def _feature_extras(self) -> dict:
        return {key: value for key, value in self.model.preprocess(["a"]).items()
                if not isinstance(value, torch.Tensor)}

    def predict_batch(self, features: dict) -> torch.Tensor:
        """One embedding per sentence: the sentence-transformers modules (transformer, pooling, normalising, ...)
        run as ``encode`` runs them."""
        features = {key: value.to(self.device) if isinstance(value, torch.Tensor) else value
                    for key, value in features.items()}
        return self.model(features)["sentence_embedding"]

    def _batches(self, lengths: list[int], counted_in_tokens: bool, batch_size, batch_tokens) -> list[list[int]]:
        """predict's batches of sentence indices, longest first: up to ``batch_tokens`` padded tokens each, or
        ``batch_size`` sentences each where that is given or where lengths are not counted in tokens."""
        if batch_size is None and counted_in_tokens:
            budget = batch_tokens or self.default_batch_tokens
            return plan_batches(lengths, max_tokens=budget,
                                batch_cost=self.cpu_batch_cost_tokens if self.device.type == "cpu" else budget)
        return plan_batches(lengths, max_rows=self.check_batch_size(batch_size))

    def compile_target(self):
        """The transformers model inside sentence-transformers' first module: predict_batch calls it."""
        encoder = self.model[0]
        name = next((name for name, child in encoder.named_children() if hasattr(child, "config")), None)
        return (encoder, name) if name else None

    def predict(self, inputs, batch_size=None, progress=None, mixed_precision="no", compile=False,
                num_workers=0, batch_tokens=None, **options):
        """Scores pairs, or a source sentence against many. Each distinct sentence is encoded once. All are
        tokenized in one call and sorted by their length in tokens, so that a batch holds sentences of (nearly)
        one length: little padding, and none at all lets attention run without a mask. By default a batch holds
        up to ``batch_tokens`` padded tokens (default 4096): many short sentences or a few long ones, ending
        where the length changes when that saves more padding than a batch costs. ``batch_size`` instead fixes
        the number of sentences per batch. A batch that runs out of device memory is halved, as in every task.
        ``num_workers=N`` pads the next batches in N processes (tokenizing is done before, at once)."""
        check_options(self, {**options, "num_workers": num_workers})  # any in options is unknown: refused
        self.warn_if_untrained()
        if batch_size is not None:
            self.check_batch_size(batch_size)
            if batch_tokens is not None:
                raise ValueError("Give batch_size (sentences per batch) or batch_tokens (padded tokens per batch), "
                                 "not both.")
        if batch_tokens is not None and (not isinstance(batch_tokens, int) or isinstance(batch_tokens, bool)
                                         or batch_tokens < 1):
            raise ValueError(f"batch_tokens must be a positive integer; got {batch_tokens!r}.")
        single = self.is_single(inputs)
        items = [inputs] if single else list(inputs)
        groups = [self._sentences(item) for item in items]
        unique = list(dict.fromkeys(sentence for group in groups for sentence in group))
        if not unique:
            return []
        tokens = self.tokenized(unique)
        lengths = [len(row["input_ids"]) for row in tokens] if tokens else [len(sentence) for sentence in unique]
        batches = self._batches(lengths, bool(tokens), batch_size, batch_tokens)
        prepared = PreparedBatches(self, tokens or unique, batches, {}, num_workers=num_workers)
        embeddings = None
        bar = tqdm(total=len(unique), desc=f"{self.name}: encode", unit="sentence",
                   disable=not (progress if progress is not None else len(batches) > 10))
        self.model.eval()
        with torch.no_grad(), self.autocast(mixed_precision), self.compiled(compile):  # see Task.predict
            for indices, encoded in halving_on_oom(self, prepared, self.predict_batch):
                if embeddings is None:
                    embeddings = torch.empty(len(unique), encoded.shape[-1], device=encoded.device)
                embeddings[indices] = encoded.float()
                bar.update(len(indices))
        bar.close()
        # Every comparison at once: the first sentence of each group against each of the others.
        index = {sentence: i for i, sentence in enumerate(unique)}
        first = [index[group[0]] for group in groups for _ in group[1:]]
        others = [index[sentence] for group in groups for sentence in group[1:]]
        scores = iter(F.cosine_similarity(embeddings[first], embeddings[others]).tolist())
        results = []
        for item, group in zip(items, groups):
            item_scores = [next(scores) for _ in group[1:]]
            results.append(item_scores if isinstance(item, Mapping) else {"score": item_scores[0]})
        return results[0] if single else results

    # ---------------------------------------------------------------------------------- testing kit
    TOPICS = {
        "animals": ["cat", "dog", "horse", "bird", "fish", "cow"],
        "food": ["bread", "cheese", "apple", "soup", "rice", "cake"],
        "weather": ["rain", "snow", "wind", "sun", "storm", "cloud"],
        "sport": ["football", "tennis", "golf", "swim", "race", "ball"],
    }
    FILLER = ["the", "a", "is", "we", "saw", "some", "today", "and", "very", "of"]

    @staticmethod
    def tiny_model(path: str | os.PathLike) -> Path:
        """A tiny BERT encoder with mean pooling, saved as a sentence-transformers folder."""
        from sentence_transformers import SentenceTransformer, models

        from taskzoo.testing import save_tiny_bert

        cls = SentenceSimilarity
        words = [word for topic in cls.TOPICS.values() for word in topic] + cls.FILLER
        with tempfile.TemporaryDirectory() as bert:
            save_tiny_bert(bert, words)
            encoder = models.Transformer(bert, max_seq_length=64)
            pooling = models.Pooling(encoder.get_embedding_dimension(), pooling_mode="mean")
            SentenceTransformer(modules=[encoder, pooling], device="cpu").save(str(path))
        return Path(path)

    @staticmethod
    def toy_dataset(n: int = 64, seed: int = 0) -> Dataset:
        """Pairs of sentences about topics; score 1.0 for the same topic, 0.0 for different ones."""
        cls, rng = SentenceSimilarity, random.Random(seed)
        topics = list(cls.TOPICS)

        def sentence(topic: str) -> str:
            words = rng.sample(cls.TOPICS[topic], 2) + rng.sample(cls.FILLER, rng.randint(2, 4))
            rng.shuffle(words)
            return " ".join(words)

        rows = []
        for i in range(n):
            first = rng.choice(topics)
            second = first if i % 2 == 0 else rng.choice([t for t in topics if t != first])
            rows.append({"sentence1": sentence(first), "sentence2": sentence(second),
                         "score": 1.0 if first == second else 0.0})
        return Dataset.from_list(rows)


class _SentenceEmbedding(torch.nn.Module):
    """A sentence-transformers model as the export traces it: keyword tensors in, the sentence embedding out."""

    def __init__(self, model, extras: dict):
        super().__init__()
        self.model, self.extras = model, extras

    def forward(self, **features):
        return {"sentence_embedding": self.model({**self.extras, **features})["sentence_embedding"]}


class _ExportedSentenceEncoder(torch.nn.Module):
    """The exported graph in the sentence-transformers model's place: what predict, evaluate and the collate use
    of it (``tokenizer``, ``max_seq_length``, ``preprocess``, ``model(features)["sentence_embedding"]``)."""

    def __init__(self, session, tokenizer, max_seq_length: int):
        from taskzoo.export import ExportedModel

        super().__init__()
        self.graph, self.tokenizer, self.max_seq_length = ExportedModel(session), tokenizer, max_seq_length

    def preprocess(self, sentences: list[str]) -> dict:
        return dict(self.tokenizer(sentences, padding=True, truncation="longest_first", max_length=self.max_seq_length,
                                   return_tensors="pt"))

    def forward(self, features: dict) -> dict:
        return {"sentence_embedding": self.graph(**features).sentence_embedding}
