"""Shared pieces of the benchmark scripts: inputs, timing, a MiniLM-based classifier."""

import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import threading
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


def resident_bytes() -> int:
    """This process's resident memory now (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * resource.getpagesize()
    except OSError:
        return 0


class PeakMemory:
    """Peak resident memory above the starting level while the block runs, sampled every millisecond
    (ru_maxrss cannot be reset, so it cannot tell two sides apart within one process)."""

    def __enter__(self):
        self.start = self.peak = resident_bytes()
        self._running = True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while self._running:
            self.peak = max(self.peak, resident_bytes())
            time.sleep(0.001)

    def __exit__(self, *exc):
        self._running = False
        self._thread.join()
        self.peak = max(self.peak, resident_bytes())

    @property
    def megabytes(self) -> float:
        return (self.peak - self.start) / 2**20


def timed(function, repeat: int = 1):
    """(best seconds over `repeat` runs, last result)."""
    best, result = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - started)
    return best, result


MEMORY_OF = "TASKZOO_BENCH_MEMORY_OF"  # set: this process measures the peak memory of that one side


def compare_with_pipeline(title: str, run_pipeline, run_taskzoo, agreement, batch_sizes=(8, 16, 32, 64),
                          variants=(), repeat: int = 2, baseline: str = "transformers.pipeline",
                          default_batch_size: int = 1) -> None:
    """Time the baseline (a transformers pipeline) at its default batch size and at its best of
    ``batch_sizes``, then taskzoo predict in each variant (a name and predict() keyword arguments); print
    one table.

    ``run_pipeline(batch_size)`` and ``run_taskzoo(**options)`` return outputs; ``agreement(ours, theirs)``
    says how far taskzoo's outputs agree with the baseline's at its default batch size, as a short string.
    Each taskzoo variant runs once untimed first (a compiled model compiles then). Peak memory is measured
    afterwards, each side alone in a fresh run of the same script (see :func:`side_peak_memory`).
    """
    import torch

    sides = {f"pipeline:{default_batch_size}": lambda: run_pipeline(default_batch_size)}
    sides.update({f"pipeline:{size}": (lambda size=size: run_pipeline(size)) for size in batch_sizes})
    sides.update({f"taskzoo:{name}": (lambda options=options: run_taskzoo(**options)) for name, options in variants})
    if os.environ.get(MEMORY_OF):
        side = os.environ[MEMORY_OF]
        sides[side]()  # warm-up: first-call costs (kernel caches, lazy imports, compiling) are not predict's
        with PeakMemory() as memory:
            sides[side]()
        print(f"peak MiB {memory.megabytes:.1f}")
        return

    run_pipeline(default_batch_size)  # warm-up
    default_seconds, reference = timed(lambda: run_pipeline(default_batch_size), repeat=repeat)
    best_size, best_seconds = default_batch_size, default_seconds  # batching may not help at all
    for batch_size in batch_sizes:
        seconds = timed(lambda: run_pipeline(batch_size), repeat=repeat)[0]
        if seconds < best_seconds:
            best_size, best_seconds = batch_size, seconds
    rows = [(f"pipeline:{default_batch_size}", f"{baseline}, batch_size={default_batch_size} (its default)",
             default_seconds, ""),
            (f"pipeline:{best_size}", f"{baseline}, batch_size={best_size} (its best)", best_seconds, "")]
    for name, options in variants:
        run_taskzoo(**options)
        seconds, ours = timed(lambda: run_taskzoo(**options), repeat=repeat)
        rows.append((f"taskzoo:{name}", f"taskzoo predict, {name}", seconds, agreement(ours, reference)))

    print(f"{title}; torch threads {torch.get_num_threads()}")
    width = max(len(row[1]) for row in rows)
    print(f"{'side':{width}} {'seconds':>8} {'vs default':>10} {'vs best':>8} {'peak MiB':>9}  "
          f"agreement with {baseline}")
    for side, name, seconds, agree in rows:
        print(f"{name:{width}} {seconds:8.2f} {default_seconds / seconds:9.2f}x {best_seconds / seconds:7.2f}x "
              f"{side_peak_memory(side):9.0f}  {agree}", flush=True)


def side_peak_memory(side: str) -> float:
    """Peak resident memory (MiB) above the level after loading, of one side run alone in a fresh process.

    Within one process the sides cannot be told apart: memory the first side frees stays with the
    allocator and the next side reuses it unseen. The fresh process also returns freed blocks to the
    system at once (a low mmap threshold), so that resident memory follows what is live.
    """
    environment = {**os.environ, MEMORY_OF: side, "MALLOC_MMAP_THRESHOLD_": "65536"}
    finished = subprocess.run([sys.executable, *sys.argv], env=environment, capture_output=True, text=True)
    found = re.findall(r"peak MiB ([0-9.]+)", finished.stdout)
    if finished.returncode or not found:
        raise RuntimeError(f"measuring the memory of {side} failed:\n{finished.stderr[-2000:]}")
    return float(found[-1])
