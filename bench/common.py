"""Shared pieces of the benchmark scripts: inputs, timing, a MiniLM-based classifier."""

import random
import tempfile
import time
from pathlib import Path

WORDS = ("the a film plot story acting was really quite good bad great awful lovely boring dull superb and "
         "but it very not at all one of best worst i have ever seen this year music scenes actors director").split()


def mixed_length_sentences(n: int = 1000, seed: int = 0) -> list[str]:
    """Sentences of 3 to 120 words, most short, a few long: like real review or chat text."""
    rng = random.Random(seed)
    lengths = [min(120, max(3, int(rng.lognormvariate(2.7, 0.8)))) for _ in range(n)]
    return [" ".join(rng.choices(WORDS, k=length)) for length in lengths]


def minilm_classifier() -> Path:
    """all-MiniLM-L6-v2 with a (seeded, untrained) 2-label head, saved as a normal transformers folder."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from taskzoo.models import packaged_model_path

    source = packaged_model_path("all-MiniLM-L6-v2")
    folder = Path(tempfile.mkdtemp(prefix="bench-minilm-"))
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_pretrained(source, num_labels=2).save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return folder


def timed(function, repeat: int = 1):
    """(best seconds over `repeat` runs, last result)."""
    best, result = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - started)
    return best, result
