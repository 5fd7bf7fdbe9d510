"""The translation task's testing kit: a made-up target language (every word maps to one word, and adjectives
follow their noun, as in French), a tiny random Marian for it, and toy sentence pairs."""

from __future__ import annotations

import random
from pathlib import Path

from datasets import Dataset

TOY_LEXICON = {"determiner": {"the": "le", "a": "un"},
               "adjective": {"red": "rouge", "big": "grand", "small": "petit", "blue": "bleu", "old": "vieux",
                             "new": "neuf", "green": "vert", "happy": "heureux"},
               "noun": {"cat": "chat", "dog": "chien", "house": "maison", "car": "auto", "bird": "oiseau",
                        "tree": "arbre", "man": "homme", "child": "enfant"},
               "verb": {"sees": "voit", "likes": "aime", "eats": "mange", "finds": "trouve"}}


def tiny_marian(path: Path) -> Path:
    """A tiny random Marian (d_model 32, 2+2 layers) with a word-level tokenizer shared by both languages."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import GenerationConfig, MarianConfig, MarianMTModel, PreTrainedTokenizerFast

    lexicon = {word: translated for words in TOY_LEXICON.values() for word, translated in words.items()}
    # Marian's conventions: </s> is id 0 and ends every sequence, no BOS, pad starts the decoder.
    words = dict.fromkeys(["</s>", "<unk>", "<pad>", *lexicon, *lexicon.values()])
    vocab = {word: i for i, word in enumerate(words)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A $B </s>",
                                                           special_tokens=[("</s>", 0)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", unk_token="<unk>",
                                        pad_token="<pad>", padding_side="right", model_max_length=64)
    torch.manual_seed(0)
    # Scaled embeddings as in the opus-mt checkpoints, and a larger initial spread than the default 0.02:
    # word embeddings then outweigh the sinusoidal positions from the start, and the toy data is learnt in
    # tens of steps instead of after a plateau of hundreds.
    config = MarianConfig(vocab_size=len(vocab), decoder_vocab_size=len(vocab), d_model=32, encoder_layers=2,
                          decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
                          encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64, dropout=0.0,
                          scale_embedding=True, init_std=0.1, pad_token_id=2, eos_token_id=0,
                          decoder_start_token_id=2, forced_eos_token_id=0)
    model = MarianMTModel(config)
    # A length that fits the toy sentences: an untrained model then stops early instead of at 256 tokens.
    model.generation_config = GenerationConfig(decoder_start_token_id=2, eos_token_id=0, pad_token_id=2,
                                               forced_eos_token_id=0, max_length=24, num_beams=1)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def toy_pairs(n: int = 64, seed: int = 0) -> Dataset:
    """``source``/``target`` pairs such as "the red cat sees a dog" -> "le chat rouge voit un chien"."""
    toy, rng = TOY_LEXICON, random.Random(seed)

    def pick(kind: str) -> tuple[str, str]:
        word = rng.choice(list(toy[kind]))
        return word, toy[kind][word]

    def noun_phrase() -> tuple[list[str], list[str]]:
        (determiner, le), (noun, chat) = pick("determiner"), pick("noun")
        if rng.random() < 0.3:
            return [determiner, noun], [le, chat]
        adjective, rouge = pick("adjective")
        return [determiner, adjective, noun], [le, chat, rouge]  # the reordering rule

    rows = []
    for _ in range(n):
        (subject, subject_t), (verb, verb_t), (obj, obj_t) = noun_phrase(), pick("verb"), noun_phrase()
        rows.append({"source": " ".join([*subject, verb, *obj]), "target": " ".join([*subject_t, verb_t, *obj_t])})
    return Dataset.from_list(rows)
