"""Text architecture families for the testing kit beside the tasks' own BERT and Marian kits: ModernBERT (text
classification, and as a sentence-transformers encoder for sentence similarity: rotary positions, alternating
local and global attention, no token type ids) and T5 (translation: relative position buckets, a task prefix in
its config, a SentencePiece Unigram tokenizer).

Each builder saves a tiny random model for the task's toy data at ``path`` with the tokenizer kind its hub
checkpoints use; :mod:`taskzoo.testing.kit` lists them.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

# Sizes as transformers' ModernBERT model tests; a local window shorter than the toy sentences, so that both
# kinds of attention layer are exercised.
_TINY_MODERNBERT = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                        max_position_embeddings=128, local_attention=8, hidden_activation="gelu",
                        embedding_dropout=0.0, attention_dropout=0.0, mlp_dropout=0.0)


def _modernbert_tokenizer(path: Path, words: list[str]):
    """As answerdotai/ModernBERT-*: a PreTrainedTokenizerFast with [CLS] ... [SEP] and no token type ids; its
    vocabulary is the kit's word-piece one (the toy words whole, letters for any other word)."""
    from transformers import PreTrainedTokenizerFast

    from taskzoo.testing import save_word_tokenizer

    with tempfile.TemporaryDirectory() as folder:
        bert = save_word_tokenizer(folder, words)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bert.backend_tokenizer, cls_token="[CLS]", sep_token="[SEP]",
                                        pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]",
                                        model_input_names=["input_ids", "attention_mask"], model_max_length=128)
    tokenizer.save_pretrained(path)
    return tokenizer


def _modernbert_config(tokenizer, **options):
    from transformers import ModernBertConfig

    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in
           (("pad_token_id", "[PAD]"), ("cls_token_id", "[CLS]"), ("sep_token_id", "[SEP]"))}
    return ModernBertConfig(vocab_size=len(tokenizer), bos_token_id=ids["cls_token_id"],
                            eos_token_id=ids["sep_token_id"], **ids, **_TINY_MODERNBERT, **options)


def modernbert_classifier(path: Path) -> Path:
    """ModernBERT sequence classifier (CLS pooling, as answerdotai/ModernBERT-base) for the toy sentiment labels."""
    from transformers import ModernBertForSequenceClassification

    from taskzoo.tasks.text_classification import TextClassification as cls

    tokenizer = _modernbert_tokenizer(Path(path), cls.POSITIVE + cls.NEGATIVE + cls.FILLER)
    labels = ["negative", "positive"]
    torch.manual_seed(0)
    config = _modernbert_config(tokenizer, id2label=dict(enumerate(labels)),
                                label2id={label: i for i, label in enumerate(labels)})
    ModernBertForSequenceClassification(config).save_pretrained(path)
    return Path(path)


def modernbert_sentence_encoder(path: Path) -> Path:
    """A ModernBERT encoder with mean pooling saved as a sentence-transformers folder (as ModernBERT-based
    embedding models are) for the toy topics."""
    from sentence_transformers import SentenceTransformer, models
    from transformers import ModernBertModel

    from taskzoo.tasks.sentence_similarity import SentenceSimilarity as cls

    words = [word for topic in cls.TOPICS.values() for word in topic] + cls.FILLER
    with tempfile.TemporaryDirectory() as folder:
        tokenizer = _modernbert_tokenizer(Path(folder), words)
        torch.manual_seed(0)
        ModernBertModel(_modernbert_config(tokenizer)).save_pretrained(folder)
        encoder = models.Transformer(folder, max_seq_length=64)
        pooling = models.Pooling(encoder.get_embedding_dimension(), pooling_mode="mean")
        SentenceTransformer(modules=[encoder, pooling], device="cpu").save(str(path))
    return Path(path)


def t5_translator(path: Path) -> Path:
    """T5 (as google-t5/t5-small: relative attention buckets, tied embeddings, the prefix in
    ``task_specific_params``) over the toy English words and their toy translations, Unigram tokenizer."""
    from transformers import GenerationConfig, T5Config, T5ForConditionalGeneration

    from taskzoo.tasks.translation import Translation
    from taskzoo.testing.diffusion import t5_tokenizer

    lexicon = {word: translated for words in Translation.TOY.values() for word, translated in words.items()}
    tokenizer = t5_tokenizer(["translate", "English", "to", "Toy:", *lexicon, *lexicon.values()])
    tokenizer.model_max_length = 64
    torch.manual_seed(0)
    config = T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                      num_heads=4, relative_attention_num_buckets=8, dropout_rate=0.0,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      decoder_start_token_id=tokenizer.pad_token_id,
                      task_specific_params={"translation_en_to_xx": {"prefix": "translate English to Toy: "}})
    model = T5ForConditionalGeneration(config)
    model.generation_config = GenerationConfig(decoder_start_token_id=tokenizer.pad_token_id, max_length=24,
                                               eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id, num_beams=1)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return Path(path)
