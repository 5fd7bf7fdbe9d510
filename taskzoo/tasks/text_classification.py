"""text-classification (alias sentiment-analysis): AutoModelForSequenceClassification.

Inputs are texts or text pairs (a ``(text, text_pair)`` tuple or a ``{"text", "text_pair"}`` dict).
Fine-tuning from a backbone without a classification head (all-MiniLM-L6-v2, say) builds a head for
the label set found in the training data, and the label names are kept in the saved config.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from datasets import ClassLabel, Dataset, Features, Value

from taskzoo import data as data_utils, heads, metrics, strategies
from taskzoo.errors import DataError
from taskzoo.task import Task


class TextClassification(Task):
    name = "text-classification"
    primary_metric = "accuracy"
    modality = "text"
    model_needs = "a text model with a tokenizer (BERT, RoBERTa, DistilBERT, a sentence-transformers backbone, ...)"
    required_columns = ("text", "label")
    example_input = "I loved it"
    playground_form = {"fields": [  # inputs.0 and inputs.1: a text and its optional pair
        {"id": "text", "type": "textarea", "label": "Text", "value": "I really loved this film", "to": "inputs.0"},
        {"id": "text-pair", "type": "textarea", "label": "Second text (optional, for pairs)", "optional": True,
         "to": "inputs.1"},
        {"id": "top-k", "type": "number", "label": "Top labels", "value": 5, "to": "parameters.top_k"}],
        "output": "labels"}
    default_batch_size = 32
    # Label names for the head (their order gives the ids); needed for a stream, which cannot be scanned.
    finetune_options = {**Task.finetune_options, "labels": None}

    # With a frozen body, the classifier's input can be cached (strategy="freeze"): a one-module head.
    cached_head = property(lambda self: strategies.single_head(self.model))

    @classmethod
    def from_pretrained(cls, path, device=None, trust_remote_code=False, **model_kwargs):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model, info = AutoModelForSequenceClassification.from_pretrained(
            path, trust_remote_code=trust_remote_code, output_loading_info=True, **model_kwargs)
        return cls(model, tokenizer, new_weights=info["missing_keys"], source=str(path), device=device)

    @classmethod
    def from_exported(cls, path, sessions, trust_remote_code=False):
        from transformers import AutoTokenizer

        from taskzoo.export import exported_model

        model = exported_model(path, sessions, trust_remote_code)
        return cls(model, AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code), source=str(path),
                   device="cpu")

    def export_graphs(self):
        """One graph: token ids (and mask, and segment ids for pairs) -> logits; the head stays fp32 in int8."""
        from taskzoo.export import Graph
        from taskzoo.export.optimizing import fusions_for

        model = strategies.exportable(self.model)  # adapters merged: one plain graph
        batch = self._tokenize(["A first sentence to trace the model with.", "A second one."],
                               ["Its pair.", "And the second pair, longer."])  # pairs: segment ids too, if any
        axes = {0: "batch", 1: "sequence"}
        return [Graph("model", model, dict(batch), ["logits"], dict.fromkeys(batch, axes),
                      keep_fp32=("classifier", "pooler"), **fusions_for(model.config))]

    @property
    def labels(self) -> list[str]:
        return heads.model_labels(self.model)

    @property
    def max_length(self) -> int:
        limits = [512, self.processor.model_max_length,
                  getattr(self.model.config, "max_position_embeddings", 512)]
        return min(limit for limit in limits if limit)

    # ----------------------------------------------------------------------------------------- data
    def prepare_for_training(self, dataset) -> None:
        from transformers import AutoModelForSequenceClassification

        names = heads.names_for_training(dataset, "label", self.labels, self.head_trained,
                                         self.training_options.get("labels"))
        if names is not None:  # a new label set, or a checkpoint without a head: a fresh head
            self.model = heads.with_new_head(self.model, AutoModelForSequenceClassification, names).to(self.device)
            self.head_trained = True

    def train_lengths(self, dataset) -> list[int]:
        # Token counts, the length a batch pads to (characters are a loose stand-in: on mixed-length sentences
        # batches grouped by them need 5% more token slots). Tokenising costs ~0.1 ms a row, once per run.
        texts = dataset["text"]
        pairs = dataset["text_pair"] if "text_pair" in dataset.column_names else None
        lengths = []
        for start in range(0, len(texts), 1000):  # in chunks, so that only their token ids are held at once
            chunk, chunk_pairs = texts[start:start + 1000], pairs[start:start + 1000] if pairs else None
            self._check_texts(chunk, chunk_pairs)
            encoded = self.processor(chunk, chunk_pairs, truncation=True, max_length=self.max_length,
                                     return_attention_mask=False, return_token_type_ids=False)
            lengths += [len(ids) for ids in encoded["input_ids"]]
        return lengths

    def prepare(self, dataset, training: bool):
        label2id = {name: i for i, name in enumerate(self.labels)}
        return data_utils.encode_labels(dataset, "label", label2id)

    @staticmethod
    def _check_texts(texts: list, pairs: list | None) -> None:
        for text in [*texts, *(pairs or [])]:
            if not isinstance(text, str):
                raise DataError(f"text-classification expects strings; got {type(text).__name__}: {text!r:.80}")

    def _tokenize(self, texts: list, pairs: list | None):
        self._check_texts(texts, pairs)
        batch = self.processor(texts, pairs, truncation=True, padding=True, max_length=self.max_length,
                               return_tensors="pt")
        if batch.encodings:  # fast tokenizers keep what truncation cut off
            self.count_truncated(sum(1 for encoding in batch.encodings if encoding.overflowing))
        return batch

    def collate(self, examples: list[dict]) -> dict:
        pairs = [row["text_pair"] for row in examples] if "text_pair" in examples[0] else None
        batch = self._tokenize([row["text"] for row in examples], pairs)
        batch["labels"] = torch.tensor([row["label"] for row in examples])
        return dict(batch)

    # ------------------------------------------------------------------------------------- training
    def training_step(self, model, batch):
        output = model(**batch)
        return {"loss": output.loss, "output": output.logits}

    def eval_step(self, model, batch):
        inputs = {key: value for key, value in batch.items() if key != "labels"}
        logits = model(**inputs).logits
        return logits.argmax(-1).tolist(), batch["labels"].tolist()

    def compute_metrics(self, predictions, references):
        return {"accuracy": metrics.accuracy(predictions, references),
                "macro_f1": metrics.macro_f1(predictions, references)}

    # -------------------------------------------------------------------------------------- predict
    def is_single(self, inputs) -> bool:
        # Anything not iterable (a stray number) is one input too, so that check_inputs names it.
        return isinstance(inputs, (str, Mapping)) or not isinstance(inputs, Iterable) or (
            isinstance(inputs, tuple) and len(inputs) == 2 and all(isinstance(x, str) for x in inputs))

    def input_kind(self, item) -> str:
        if isinstance(item, str):
            return "text"
        if isinstance(item, Mapping) or (isinstance(item, tuple) and len(item) == 2):
            return "text pair"
        return type(item).__name__

    def check_inputs(self, items: list) -> None:
        # Checked here, naming the item, rather than failing deep in the tokenizer ("'int' has no len()").
        for position, item in enumerate(items):
            for part in self._split_pair(item) if self.input_kind(item) == "text pair" else (item,):
                if part is not None and not isinstance(part, str):
                    raise ValueError(f"{self.name}: input {position} is a {type(part).__name__} ({part!r:.40}), "
                                     "not text: give strings, or (text, text_pair) pairs.")
        super().check_inputs(items)

    @staticmethod
    def _split_pair(item):
        if isinstance(item, Mapping):
            return item.get("text"), item.get("text_pair")
        if isinstance(item, tuple):
            return item
        return item, None

    def input_of(self, row):
        return (row["text"], row["text_pair"]) if row.get("text_pair") is not None else row["text"]

    def input_length(self, item) -> int:
        text, pair = self._split_pair(item)
        return len(text or "") + len(pair or "")

    def predict_batch(self, inputs, top_k: int | None = None):
        texts, pairs = zip(*(self._split_pair(item) for item in inputs))
        has_pairs = pairs[0] is not None  # check_inputs() made sure that all inputs are of one kind
        batch = self._tokenize(list(texts), list(pairs) if has_pairs else None).to(self.device)
        logits = self.model(**batch).logits.float()
        scores = heads.scores_from_logits(logits, self.model.config)
        labels = self.labels
        results = []
        for row in scores.tolist():
            ranked = sorted(range(len(row)), key=row.__getitem__, reverse=True)[: top_k or 1]
            predictions = [{"label": labels[i], "score": row[i]} for i in ranked]
            results.append(predictions if top_k else predictions[0])
        return results

    # ---------------------------------------------------------------------------------- testing kit
    POSITIVE = ["good", "great", "lovely", "excellent", "happy", "superb", "fine", "wonderful"]
    NEGATIVE = ["bad", "awful", "terrible", "poor", "sad", "horrible", "dull", "boring"]
    FILLER = ["the", "film", "was", "really", "quite", "a", "plot", "and", "story", "acting", "very", "it"]

    @staticmethod
    def tiny_model(path: str | os.PathLike) -> Path:
        """A tiny BERT classifier for the toy labels, its head random (all-MiniLM-L6-v2 covers the
        backbone-without-head case in the tests)."""
        from taskzoo.testing import save_tiny_bert

        cls = TextClassification
        return save_tiny_bert(path, cls.POSITIVE + cls.NEGATIVE + cls.FILLER, labels=["negative", "positive"])

    @staticmethod
    def toy_dataset(n: int = 64, seed: int = 0) -> Dataset:
        """Sentences of filler words with one or two sentiment words; label "positive"/"negative"."""
        cls, rng = TextClassification, random.Random(seed)
        texts, labels = [], []
        for i in range(n):
            label = ("negative", "positive")[i % 2]
            cues = cls.POSITIVE if label == "positive" else cls.NEGATIVE
            words = rng.choices(cls.FILLER, k=rng.randint(3, 8)) + rng.choices(cues, k=rng.randint(1, 2))
            rng.shuffle(words)
            texts.append(" ".join(words))
            labels.append(label)
        features = Features({"text": Value("string"), "label": ClassLabel(names=["negative", "positive"])})
        return Dataset.from_dict({"text": texts, "label": labels}, features=features)
