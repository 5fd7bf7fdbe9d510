"""The offline testing kit: a tiny random model and a learnable synthetic dataset for every task.

Each task keeps its own kit next to its code (``Task.tiny_model`` / ``Task.toy_dataset``), so that a
reader finds everything about a task in one file; this module dispatches to them and holds the pieces
several kits share. Tests, docs examples, recipes' smoke runs and ``taskzoo demo`` use these.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

from taskzoo.models import library_bars_hidden
from taskzoo.registry import get_task

# Config sizes follow transformers' own model tests: small enough to train in seconds on 2 cores.
TINY_BERT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                 max_position_embeddings=128, type_vocab_size=2)


@library_bars_hidden()
def tiny_model(task: str, path: str | os.PathLike, family: str | None = None, **options) -> Path:
    """Build a tiny random model for ``task`` and save it as a normal HF folder.

    Args:
        task: A task name or alias.
        path: The folder to write (made if missing).
        family: Another architecture than the kit's own (e.g. "detr", "modernbert" or "sdxl": each task's
            families are listed in :data:`taskzoo.testing.kit.KIT` and on its docs page). None: the kit's own.
        **options: Passed to the task's kit (``labels=[...]`` for image classification, say).

    Returns:
        ``path``, as a Path, which ``taskzoo.load(task, model=path)`` opens.

    Raises:
        ValueError: The task's kit has no model of that ``family``.
    """
    from taskzoo.testing.kit import families_of, find

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    task_class = get_task(task).load_class()
    if not families_of(task_class.name):  # a task of your own: its own kit
        return task_class.tiny_model(path, **options, **({"family": family} if family else {}))
    entry = find(task_class.name, family)
    if entry.build is not None:
        return entry.build(path)
    if "family" not in inspect.signature(task_class.tiny_model).parameters:
        return task_class.tiny_model(path, **options)
    return task_class.tiny_model(path, family=entry.name, **options)


@library_bars_hidden()
def toy_dataset(task: str, n: int = 64, seed: int = 0):
    """A learnable synthetic dataset for ``task``, in the task's columns.

    Args:
        task: A task name or alias.
        n: Rows.
        seed: Another seed, other rows (a held-out set).

    Returns:
        A ``datasets.Dataset`` of ``n`` rows.
    """
    return get_task(task).load_class().toy_dataset(n, seed)


# Pieces that spell any English word: letters, digits and punctuation, and every two-letter piece, each as
# a word start and as a continuation ("##"). WordPiece splits a word it does not know into its longest
# known pieces, so "charming" becomes "ch ##ar ##mi ##ng" instead of [UNK], and a tiny model can learn
# a user's own sentences; the kit's own words stay whole tokens, so the toy datasets learn as fast as ever.
_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_SINGLES = _LETTERS + "0123456789" + "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
_PIECES = [*_SINGLES, *(a + b for a in _LETTERS for b in _LETTERS)]


def save_word_tokenizer(path: str | os.PathLike, words: list[str]):
    """A BERT WordPiece tokenizer (lower-casing) saved at ``path``: the special tokens, ``words`` as whole
    tokens, then single characters and two-letter pieces that spell any other English word without [UNK]."""
    from transformers import BertTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    pieces = [*_PIECES, *("##" + piece for piece in _PIECES)]
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *dict.fromkeys([*words, *pieces])]
    # transformers 5 builds the tokenizer from a vocab dict (a vocab_file argument is ignored).
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(tokens)}, do_lower_case=True,
                                  model_max_length=128)
    tokenizer.save_pretrained(path)
    return tokenizer


def save_tiny_bert(path: str | os.PathLike, words: list[str], labels: list[str] | None = None) -> Path:
    """A tiny random BERT with the tokenizer of :func:`save_word_tokenizer`, saved at ``path``: a bare
    encoder, or with ``labels`` a sequence classifier (random head) for those label names."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    tokenizer = save_word_tokenizer(path, words)
    torch.manual_seed(0)
    # Built for the special tokens and ``words`` first, then grown by the spelling pieces' rows: the weights
    # that the toy data trains do not depend on how many pieces follow.
    config = BertConfig(vocab_size=5 + len(dict.fromkeys(words)), **TINY_BERT)
    if labels:
        config.id2label = dict(enumerate(labels))
        config.label2id = {label: i for i, label in enumerate(labels)}
        model = BertForSequenceClassification(config)
    else:
        model = BertModel(config)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model.save_pretrained(path)
    return Path(path)


def clip_tokenizer(words: list[str]):
    """A CLIP BPE tokenizer that keeps ``words`` whole: the letters, each word's left-to-right merges
    ("r e" -> "re", "re d</w>" -> "red</w>"), then the special tokens."""
    from transformers import CLIPTokenizer

    letters = "abcdefghijklmnopqrstuvwxyz0123456789"
    vocab = {token: i for i, token in enumerate([*letters, *(c + "</w>" for c in letters)])}
    merges = []
    for word in sorted(set(words)):
        merged, *rest = [*word[:-1], word[-1] + "</w>"]
        for symbol in rest:
            if (merged, symbol) not in merges:
                merges.append((merged, symbol))
            merged += symbol
            vocab.setdefault(merged, len(vocab))
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def draw_shapes(rng, size: int, shapes: list[tuple], mask=None):
    """A ``size`` px RGB image of a noisy grey background with ``shapes`` drawn at random places and sizes
    (10 to 24 px, scaled with ``size``). Each shape is ``(kind, rgb)`` or ``(kind, rgb, class_id)``, kind one
    of square, circle, triangle, cross; colours are jittered. Where ``mask`` (a PIL "L" image) is given,
    each shape is drawn there too, in its class_id. Later shapes cover earlier ones, in both.
    ``rng`` is a numpy Generator. Returns the image and the shapes' boxes (x0, y0, x1, y1, inclusive)."""
    import numpy as np
    from PIL import Image, ImageDraw

    grey = np.clip(rng.integers(60, 160) + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(grey, "RGB")
    boxes = []
    for kind, colour, *class_id in shapes:
        side = int(rng.integers(size * 10 // 32, size * 24 // 32 + 1))
        x, y = (int(v) for v in rng.integers(0, size - side + 1, 2))
        x1, y1 = x + side - 1, y + side - 1
        fill = tuple(int(np.clip(c + rng.integers(-25, 26), 0, 255)) for c in colour)
        targets = [(ImageDraw.Draw(image), fill)] + ([(ImageDraw.Draw(mask), class_id[0])] if mask is not None else [])
        for draw, paint in targets:
            if kind == "square":
                draw.rectangle((x, y, x1, y1), fill=paint)
            elif kind == "circle":
                draw.ellipse((x, y, x1, y1), fill=paint)
            elif kind == "triangle":
                draw.polygon([(x + side / 2, y), (x, y1), (x1, y1)], fill=paint)
            elif kind == "cross":  # two bars a third of the side wide
                third = max(1, side // 3)
                draw.rectangle((x, y + third, x1, y1 - third), fill=paint)
                draw.rectangle((x + third, y, x1 - third, y1), fill=paint)
            else:
                raise ValueError(f"Unknown shape {kind!r}.")
        boxes.append((x, y, x1, y1))
    return image, boxes
