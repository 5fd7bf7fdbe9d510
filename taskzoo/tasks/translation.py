"""translation: sequence-to-sequence models (AutoModelForSeq2SeqLM) such as Marian, T5, mBART, M2M100 and NLLB.

Predict translates texts -> ``{"translation_text"}`` with ``model.generate`` (transformers 5 removed the
translation pipeline). Batches are padded on the right: Marian's encoder numbers positions by index, so left
padding would change the output. Languages are load options: ``src_lang``/``tgt_lang`` are the model's codes
(mBART "en_XX", NLLB "eng_Latn", M2M100 "en"; they also pick a T5 prefix or a Marian ``>>xx<<`` token) and
``prefix`` is text put before every source. save() keeps them in ``taskzoo.json`` and the forced first target
token in ``generation_config.json``, so a reloaded model translates the same way.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

from datasets import Dataset

from taskzoo import data as data_utils, generation, metrics, strategies, streaming
from taskzoo.errors import DataError
from taskzoo.models import library_bars_hidden
from taskzoo.task import Task
from taskzoo.testing.translation import TOY_LEXICON, tiny_marian, toy_pairs

SETTINGS_FILE = "taskzoo.json"


class Translation(Task):
    name = "translation"
    primary_metric = "bleu"
    modality = "text"
    model_needs = "a text-to-text model with a tokenizer (Marian, T5, mBART, M2M100, NLLB, ...)"
    required_columns = ("source", "target")
    example_input = "Hello"
    default_batch_size = 16
    default_learning_rate = 5e-5
    supported_strategies = ("full", "lora")  # no "freeze": see apply_strategy
    finetune_options = {**Task.finetune_options,
                        "source_key": None, "target_key": None,  # keys of WMT-style `translation` dicts
                        "num_beams": None, "max_new_tokens": None}  # generation while evaluating
    renamed_options = {"source_lang": "source_key", "target_lang": "target_key"}
    demo_config = dict(train_size=1024, eval_size=64, epochs=3, learning_rate=1e-2, batch_size=32)

    def __init__(self, model, tokenizer, *, src_lang=None, tgt_lang=None, prefix=None, source_key=None,
                 target_key=None, **kwargs):
        super().__init__(model, tokenizer, **kwargs)
        tokenizer.padding_side = "right"  # see the module docstring
        self.training_options = dict(self.finetune_options)
        if self.multilingual:  # defaults: the tokenizer's own languages (a saved model keeps them there too)
            src_lang, tgt_lang = src_lang or tokenizer.src_lang, tgt_lang or tokenizer.tgt_lang
        self.source_key, self.target_key = source_key, target_key
        self.src_lang, self.tgt_lang, self.prefix_option = src_lang, tgt_lang, prefix
        # A missing language is refused when the model is used, so that predict(tgt_lang=...) can supply it.
        self.prefix, self.forced_bos_token_id, self.missing_language = self._languages(src_lang, tgt_lang, prefix)
        if self.multilingual:  # the tokenizer adds the codes to sources and (for training) targets
            tokenizer.src_lang, tokenizer.tgt_lang = src_lang, tgt_lang
            # Saved with the model, so that plain transformers' generate() also starts in the target language.
            self.model.generation_config.forced_bos_token_id = self.forced_bos_token_id

    @classmethod
    def from_pretrained(cls, path, device=None, trust_remote_code=False, src_lang=None, tgt_lang=None, prefix=None,
                        source_key=None, target_key=None, **model_kwargs):
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        languages = _languages(path, cls.renamed_options, dict(src_lang=src_lang, tgt_lang=tgt_lang, prefix=prefix,
                                                               source_key=source_key, target_key=target_key))
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model, info = AutoModelForSeq2SeqLM.from_pretrained(path, trust_remote_code=trust_remote_code,
                                                            output_loading_info=True, **model_kwargs)
        return cls(model, tokenizer, **languages, new_weights=info["missing_keys"], source=str(path), device=device)

    @library_bars_hidden()
    def save(self, path):
        if self.exported:  # an ONNX export: its folder, copied
            return super().save(path)
        path = Path(path)
        self.model_to_save().save_pretrained(path)
        self.processor.save_pretrained(path)
        (path / SETTINGS_FILE).write_text(json.dumps(self._settings(), indent=2) + "\n")
        return path

    def _settings(self) -> dict:
        return {"task": self.name, "src_lang": self.src_lang, "tgt_lang": self.tgt_lang, "prefix": self.prefix_option,
                "source_key": self.source_key, "target_key": self.target_key}

    def export_graphs(self):  # an encoder-decoder: see taskzoo/export/seq2seq_graphs.py
        from taskzoo.export.seq2seq_graphs import encoder_decoder_graphs

        batch = dict(self._tokenize(["A first sentence to trace the model with, longer than the second.", "Two."]))
        model = strategies.exportable(self.model, merged=True)  # LoRA adapters merged into the traced weights
        return encoder_decoder_graphs(model, batch, {name: {0: "batch", 1: "source"} for name in batch})

    def save_export_files(self, path):
        from taskzoo.export.seq2seq_runtime import save_encoder_decoder_files

        save_encoder_decoder_files(strategies.exportable(self.model, merged=True), self.processor, path,
                                   self._settings())

    @classmethod
    def from_exported(cls, path, sessions, trust_remote_code=False, **languages):
        from transformers import AutoTokenizer

        from taskzoo.export.seq2seq_runtime import encoder_decoder_model

        return cls(encoder_decoder_model(path, sessions, trust_remote_code),
                   AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code),
                   **_languages(path, cls.renamed_options, languages), source=str(path), device="cpu")

    def head_modules(self) -> list[str]:
        # None: lm_head shares its weights with the embeddings, so LoRA adapts the body's linear layers alone
        # rather than training a full, untied copy of a vocabulary-sized matrix.
        return []

    def apply_strategy(self, strategy: str) -> None:
        if strategy == "freeze":
            raise ValueError("translation supports strategy 'full' or 'lora': its head (lm_head) is tied to the "
                             "input embeddings, so strategy='freeze' would leave nothing to train.")
        super().apply_strategy(strategy)

    # ------------------------------------------------------------------------------------ languages
    @property
    def multilingual(self) -> bool:
        """mBART, M2M100, NLLB: language codes are tokens the tokenizer adds (the old pipeline's hook)."""
        return hasattr(self.processor, "_build_translation_inputs")

    def _language_id(self, code: str) -> int:
        tokenizer = self.processor
        # M2M100 maps "fr" to its token "__fr__"; the others use the code as the token.
        lookup = getattr(tokenizer, "lang_code_to_id", None) if hasattr(tokenizer, "get_lang_id") else None
        token_id = lookup.get(code) if lookup is not None else tokenizer.convert_tokens_to_ids(code)
        if token_id is None or token_id == tokenizer.unk_token_id:
            named = set(tokenizer.special_tokens_map.values())  # </s>, <pad>, ...: the other specials are codes
            known = list(getattr(tokenizer, "lang_code_to_id", None) or
                         [token for token in tokenizer.all_special_tokens if token not in named])
            raise ValueError(f"{code!r} is not a language code of {type(tokenizer).__name__}; "
                             f"codes look like {known[:8]}.")
        return token_id

    def _languages(self, src_lang, tgt_lang, prefix) -> tuple[str, int | None, str | None]:
        """The text put before each source, the forced first target token, and what is missing, if anything.
        An unknown language code raises at once."""
        forced_bos, where = None, "(a load or predict option)"
        if self.multilingual:
            if tgt_lang is None:
                return "", None, (f"{type(self.model).__name__} is multilingual: pass tgt_lang= {where}, e.g. "
                                  "'de_DE' for mBART-50, 'deu_Latn' for NLLB, 'de' for M2M100.")
            if src_lang is not None:
                self._language_id(src_lang)
            forced_bos = self._language_id(tgt_lang)
            if forced_bos == self.model.config.decoder_start_token_id:
                forced_bos = None  # mbart-large-en-ro style: the decoder already starts with the code
        if prefix is not None:
            return prefix, forced_bos, None
        codes = getattr(self.processor, "supported_language_codes", None)  # multi-target Marian: >>fr<<
        if codes:
            known = [code[2:-2] for code in codes]
            if tgt_lang is None:
                return "", None, f"This Marian model translates into several languages: pass tgt_lang= {where}."
            if tgt_lang not in known:
                raise ValueError(f"{tgt_lang!r} is not a target language of this model; it knows {known[:12]}.")
            return f">>{tgt_lang}<< ", forced_bos, None
        # T5 learnt its tasks behind prefixes ("translate English to German: "), kept in its config.
        tasks = getattr(self.model.config, "task_specific_params", None) or {}
        if f"translation_{src_lang}_to_{tgt_lang}" in tasks:
            return tasks[f"translation_{src_lang}_to_{tgt_lang}"].get("prefix") or "", forced_bos, None
        pairs = [key[12:].replace("_to_", "->") for key in tasks if key.startswith("translation_")]
        if pairs:
            return "", forced_bos, (f"This model translates behind a task prefix: pass src_lang= and tgt_lang= "
                                    f"{where} for one of {pairs}, or prefix= (prefix='' for none).")
        return "", forced_bos, None

    # ----------------------------------------------------------------------------------------- data
    def _data_languages(self) -> tuple[str | None, str | None]:
        options = self.training_options
        return (options.get("source_key") or self.source_key or self.src_lang,
                options.get("target_key") or self.target_key or self.tgt_lang)

    def load_data(self, data, role="eval", columns=None):
        """As Task.load_data, and WMT-style rows ``{"translation": {"de": ..., "en": ...}}`` become source/target."""
        dataset = data_utils.pick_split(data_utils.to_dataset(data, self.read_path), role)
        if dataset is None:
            return None
        dataset = data_utils.rename_columns(dataset, columns)
        present = data_utils.column_names(dataset)
        if "translation" in present and not {"source", "target"} & set(present):
            dataset = self._from_translation_dicts(dataset)
        data_utils.check_columns(dataset, self.required_columns, self.name, where=f"{role} data")
        return dataset

    def _from_translation_dicts(self, dataset):
        feature = (dataset.features or {}).get("translation")
        if feature is None:  # a stream that declares no features: its first row shows the languages
            feature = streaming.head(dataset, 1)[0]["translation"]
        languages = list(getattr(feature, "languages", None) or (feature if isinstance(feature, dict) else []))
        if not languages:
            raise DataError(f"Column 'translation' must hold dicts {{language: text}}; it holds {feature}.")
        source, target = self._data_languages()
        if source is None or target is None:
            raise DataError(f"Column 'translation' holds the languages {languages}: say which is the source and which "
                            "the target with source_key= and target_key= (load or finetune options).")
        for role, language in (("source", source), ("target", target)):
            if language not in languages:
                raise DataError(f"Column 'translation' has no {language!r} texts ({role} language); it holds "
                                f"{languages}. Pass source_key= and target_key= among those.")
        if streaming.is_stream(dataset):
            return dataset.map(lambda row: {"source": row["translation"][source], "target": row["translation"][target]},
                               remove_columns=["translation"])
        flat = dataset.flatten()  # a struct column -> one column per language, without a copy
        keep = {f"translation.{source}": "source", f"translation.{target}": "target"}
        drop = [name for name in flat.column_names if name.startswith("translation.") and name not in keep]
        return flat.remove_columns(drop).rename_columns(keep)

    def prepare(self, dataset, training: bool):
        if self.missing_language:
            raise ValueError(self.missing_language)
        for column in ("source", "target"):
            if getattr(dataset.features[column], "dtype", None) not in ("string", "large_string"):
                raise DataError(f"Column {column!r} must hold texts; it holds {dataset.features[column]}.")
            if missing := dataset.data.column(column).null_count:  # checked in Arrow, without reading the rows
                raise DataError(f"Column {column!r} has no text in row {dataset[column].index(None)} "
                                f"({missing} such rows).")
        return dataset

    @property
    def max_length(self) -> int:
        limits = [1024, self.processor.model_max_length, getattr(self.model.config, "max_position_embeddings", None)]
        return min(limit for limit in limits if limit)

    def _tokenize(self, texts: list[str] | None, **kwargs):
        batch = self.processor(texts, truncation=True, max_length=self.max_length, padding=True,
                               return_tensors="pt", **kwargs)
        if batch.encodings:  # fast tokenizers keep what truncation cut off
            self.count_truncated(sum(1 for encoding in batch.encodings if encoding.overflowing))
        return batch

    @functools.cached_property
    def _target_vocab(self) -> dict[str, int] | None:
        """The target vocabulary where the tokenizer keeps one apart from the source's (FSMT, as fairseq's WMT19
        en-ru models), else None."""
        tokenizer = self.processor
        size = getattr(tokenizer, "tgt_vocab_size", None)
        if size is None:
            return None
        vocab = {tokenizer.convert_ids_to_tokens(i): i for i in range(size)}
        return None if vocab == tokenizer.get_vocab() else vocab

    def _tokenize_targets(self, texts: list[str]):
        vocab = self._target_vocab
        if vocab is None:
            return self._tokenize(None, text_target=texts)
        # FSMT's tokenizer numbers every text in the source vocabulary: the target's pieces are numbered here in
        # the target vocabulary (fairseq's dictionaries share the special tokens' ids).
        tokenizer, rows = self.processor, []
        for text in texts:
            ids = [vocab.get(piece, tokenizer.unk_token_id) for piece in tokenizer.tokenize(text)]
            if len(ids) >= self.max_length:
                self.count_truncated(1)
            rows.append(tokenizer.build_inputs_with_special_tokens(ids[:self.max_length - 1]))
        return tokenizer.pad({"input_ids": rows}, return_tensors="pt")

    def collate(self, examples: list[dict]) -> dict:
        batch = dict(self._tokenize([self.prefix + row["source"] for row in examples]))
        references = [row["target"] for row in examples]
        targets = self._tokenize_targets(references)
        # Padding is masked out of the loss (-100) by the attention mask, which stays right even where pad == eos.
        batch["labels"] = targets["input_ids"].masked_fill(targets["attention_mask"] == 0, -100)
        # The decoder's inputs, made from the labels by the model's own rule, as DataCollatorForSeq2Seq does: FSMT
        # would make them from the source otherwise. (A copy: FSMT's rule overwrites the -100s in place.)
        prepare = getattr(self.model, "prepare_decoder_input_ids_from_labels", None)
        if prepare is not None:
            batch["decoder_input_ids"] = prepare(labels=batch["labels"].clone())
        batch["references"] = references  # the raw texts, for BLEU against the references as written
        return batch

    # ------------------------------------------------------------------------------------- training
    def training_step(self, model, batch):
        inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "decoder_input_ids", "labels")
                  if key in batch}
        output = model(**inputs)
        return {"loss": output.loss, "output": output.logits}

    def _generate(self, model, encoded, num_beams=None, max_new_tokens=None, forced_bos_token_id=None,
                  **generate_kwargs) -> list[str]:
        from accelerate.utils import extract_model_from_parallel

        model = extract_model_from_parallel(model)  # under DDP, generate() lives on the wrapped model
        options = dict(generate_kwargs)
        options.update({} if num_beams is None else {"num_beams": num_beams})
        options.update({} if forced_bos_token_id is None else {"forced_bos_token_id": forced_bos_token_id})
        device = next(model.parameters()).device
        # The length limit: max_new_tokens, else the checkpoint's, else the decoder's positions (never
        # generate's default of 20 tokens); outputs cut by it are counted for one warning per call.
        output = generation.generate(self, model, input_ids=encoded["input_ids"].to(device),
                                     attention_mask=encoded["attention_mask"].to(device),
                                     max_new_tokens=max_new_tokens, **options)
        # The decoder's start token and a forced language code are a prompt, not text. Cut them off: M2M100's
        # tokenizer (transformers 5) does not count its language codes as special, so decoding would keep them.
        forced = options.get("forced_bos_token_id", model.generation_config.forced_bos_token_id)
        return self.processor.batch_decode(output[:, 1 + (forced is not None):], skip_special_tokens=True)

    def eval_step(self, model, batch):
        options = self.training_options
        predictions = self._generate(model, batch, num_beams=options.get("num_beams"),
                                     max_new_tokens=options.get("max_new_tokens"),
                                     forced_bos_token_id=self.forced_bos_token_id)
        return predictions, list(batch["references"])

    def compute_metrics(self, predictions, references):
        return metrics.bleu_chrf(predictions, references)

    # -------------------------------------------------------------------------------------- predict
    def is_single(self, inputs) -> bool:
        return isinstance(inputs, str)

    def input_of(self, row):
        return row["source"] if "source" in row else row["translation"][self._data_languages()[0]]

    def input_length(self, item) -> int:
        return len(item) if isinstance(item, str) else 0

    def compile_target(self):
        return None  # generation: the decoder runs once per token with a growing cache

    def predict_batch(self, inputs, num_beams: int | None = None, max_new_tokens: int | None = None,
                      src_lang: str | None = None, tgt_lang: str | None = None, prefix: str | None = None,
                      **generate_kwargs):
        for item in inputs:
            if not isinstance(item, str):
                raise ValueError(f"translation takes texts; got {type(item).__name__}: {item!r:.80}")
        text_prefix, forced_bos, missing = self.prefix, self.forced_bos_token_id, self.missing_language
        if src_lang is not None or tgt_lang is not None or prefix is not None:  # languages for this call only
            text_prefix, forced_bos, missing = self._languages(src_lang or self.src_lang, tgt_lang or self.tgt_lang,
                                                               self.prefix_option if prefix is None else prefix)
        if missing:
            raise ValueError(missing)
        tokenizer, saved_src_lang = self.processor, getattr(self.processor, "src_lang", None)
        try:
            if self.multilingual and src_lang is not None:
                tokenizer.src_lang = src_lang
            encoded = self._tokenize([text_prefix + text for text in inputs])
        finally:
            if self.multilingual and src_lang is not None:
                tokenizer.src_lang = saved_src_lang
        texts = self._generate(self.model, encoded, num_beams=num_beams, max_new_tokens=max_new_tokens,
                               forced_bos_token_id=forced_bos, **generate_kwargs)
        return [{"translation_text": text} for text in texts]

    # ---------------------------------------------------------------------------------- testing kit
    TOY = TOY_LEXICON  # a made-up target language (taskzoo/testing/translation.py)

    @staticmethod
    def tiny_model(path: str | os.PathLike) -> Path:
        """A tiny random Marian (d_model 32, 2+2 layers) with a word-level tokenizer shared by both languages."""
        return tiny_marian(Path(path))

    @staticmethod
    def toy_dataset(n: int = 64, seed: int = 0) -> Dataset:
        """``source``/``target`` pairs such as "the red cat sees a dog" -> "le chat rouge voit un chien"."""
        return toy_pairs(n, seed)


def _languages(path, renamed_options: dict, given: dict) -> dict:
    """The language settings given (those not None: what the caller passes wins) over those saved in taskzoo.json
    (a folder saved under older names too)."""
    settings_file = Path(path) / SETTINGS_FILE
    saved = json.loads(settings_file.read_text()) if settings_file.exists() else {}
    saved = {renamed_options.get(key, key): value for key, value in saved.items()}
    keys = ("src_lang", "tgt_lang", "prefix", "source_key", "target_key")
    given = {key: value for key, value in given.items() if value is not None}
    return {**{key: saved.get(key) for key in keys}, **given}
