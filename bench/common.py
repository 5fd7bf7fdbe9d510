"""Shared pieces of the benchmark scripts: inputs, timing, a MiniLM-based classifier, the roofline."""

import copy
import functools
import os
import random
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def cpu_line(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU the figures below it were measured on, in one line for the top of every benchmark's output:
    its model, the cores this process may use and the vector and matrix units that bf16 and int8 speed
    depend on, e.g. "CPU: AMD EPYC (2 cores), AVX2, no AVX-512, no AMX". Read from ``cpuinfo`` (Linux);
    elsewhere from platform and torch's view of the CPU."""
    import platform

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    model, flags = "", set()
    try:
        with open(cpuinfo) as lines:
            for line in lines:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and not model:
                    model = value.strip()
                elif key.strip() in ("flags", "Features") and not flags:  # x86, ARM
                    flags = set(value.split())
    except OSError:
        pass
    model = model or platform.processor() or platform.machine() or "unknown CPU"
    if not flags:
        import torch

        return f"CPU: {model} ({cores} cores), torch sees {torch.backends.cpu.get_cpu_capability()}"
    if "sse2" in flags or "avx" in flags:  # x86
        extras = [name for flag, name in (("avx512_bf16", "bf16"), ("avx512_vnni", "VNNI")) if flag in flags]
        amx = [name for flag, name in (("amx_bf16", "bf16"), ("amx_int8", "int8")) if flag in flags]
        units = ["AVX2" if "avx2" in flags else "no AVX2",
                 ("AVX-512" + (f" ({', '.join(extras)})" if extras else "")) if "avx512f" in flags else "no AVX-512",
                 f"AMX ({', '.join(amx)})" if amx else "no AMX"]
    else:  # ARM: the extensions bf16 and int8 matrix work use
        units = [flag.upper() for flag in ("sve", "sve2", "bf16", "i8mm") if flag in flags] or ["NEON only"]
    return f"CPU: {model} ({cores} cores), " + ", ".join(units)


WORDS = ("the a film plot story acting was really quite good bad great awful lovely boring dull superb and "
         "but it very not at all one of best worst i have ever seen this year music scenes actors director").split()


def mixed_length_sentences(n: int = 1000, seed: int = 0) -> list[str]:
    """Sentences of 3 to 120 words, most short, a few long: like real review or chat text."""
    rng = random.Random(seed)
    lengths = [min(120, max(3, int(rng.lognormvariate(2.7, 0.8)))) for _ in range(n)]
    return [" ".join(rng.choices(WORDS, k=length)) for length in lengths]


def photo_files(n: int, folder: Path, seed: int = 0) -> list[str]:
    """Smooth random colour fields of mixed sizes (200-1000 px), saved as JPEG: photo-like file sizes and
    decode costs."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        width, height = (int(v) for v in rng.integers(200, 1000, size=2))
        coarse = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
        path = folder / f"{i:04d}.jpg"
        Image.fromarray(coarse).resize((width, height), Image.BICUBIC).save(path, quality=90)
        paths.append(str(path))
    return paths


def spoken_clips(n: int, folder: Path, seed: int = 3, max_words: int = 35) -> list[tuple[str, str]]:
    """(wav path, transcript) of mixed-length sentences spoken by espeak-ng: about 1 to 12 s at 35 words."""
    clips = []
    for i, sentence in enumerate(mixed_length_sentences(n, seed=seed)):
        path, words = folder / f"{i:03d}.wav", " ".join(sentence.split()[:max_words])
        subprocess.run(["espeak-ng", "-s", "170", "-w", str(path), words], check=True)
        clips.append((str(path), words))
    return clips


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


def rotations(names: list, rounds: int):
    """`rounds` passes over `names`, each starting one further along, so that no side always runs first
    (or always right after the same neighbour) while the machine's state drifts."""
    for round_ in range(rounds):
        shift = round_ % len(names)
        yield names[shift:] + names[:shift]


# -------------------------------------------------------------------------------- fine-tuning throughput
def minimal_accelerate_loop(zoo, train_set, steps: int, batch_size: int, learning_rate: float,
                            precision: str = "no", sampler=None, seed: int = 42) -> float:
    """The loop an Accelerate user writes by hand (as Accelerate's examples/nlp_example.py), on a task's own
    collate and forward (``training_step``): AdamW without weight decay, a linear schedule, gradient
    clipping at 1.0, autocast in ``precision``. Without ``sampler`` it shuffles with Accelerate's seedable
    sampler seeded as taskzoo's loop seeds it, so that both see the same batches. Returns the mean training
    loss over the steps."""
    import torch
    from accelerate.utils import DataLoaderConfiguration, set_seed
    from torch.utils.data import DataLoader
    from transformers import get_scheduler

    from taskzoo.accelerators import new_accelerator

    accelerator = new_accelerator(mixed_precision=precision, dataloader_config=DataLoaderConfiguration(
        use_seedable_sampler=True, data_seed=seed))
    set_seed(seed)
    order = {"shuffle": True} if sampler is None else {"sampler": sampler}
    loader = DataLoader(train_set, batch_size=batch_size, collate_fn=zoo.collate, **order,
                        generator=torch.Generator().manual_seed(seed))
    trainable = [p for p in zoo.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=learning_rate, weight_decay=0.0)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=0, num_training_steps=steps)
    model, optimizer, loader, scheduler = accelerator.prepare(zoo.model, optimizer, loader, scheduler)
    model.train()
    loader.set_epoch(0)
    losses = []
    for batch in loader:
        with accelerator.autocast():
            loss = zoo.training_step(model, batch)["loss"]
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        losses.append(loss.detach())
        if len(losses) == steps:
            break
    return torch.stack(losses).float().mean().item()


def training_rounds(sides: dict, fresh, steps: int, samples_per_run: int, runs: int = 3,
                    warmup_steps: int = 3, cpu_seconds: dict | None = None) -> tuple[dict, dict]:
    """Fine-tuning throughput of each side: ``sides[name](*fresh(), steps)`` trains a freshly loaded model
    (loaded outside the clock) and returns its mean training loss. Each side first runs ``warmup_steps``
    untimed, then ``runs`` rounds in rotating order. Returns ({name: samples/s of each run}, {name: loss});
    ``cpu_seconds``, when given, receives {name: this process's CPU seconds of each run} (every thread's:
    on a busy machine a steadier figure than wall time)."""
    for run in sides.values():
        run(*fresh(), warmup_steps)  # warm-up: lazy imports, kernel caches
    speeds, losses = {name: [] for name in sides}, {}
    cpu = {} if cpu_seconds is None else cpu_seconds
    cpu.update({name: [] for name in sides})
    for names in rotations(list(sides), runs):
        for name in names:
            loaded = fresh()
            started, cpu_started = time.perf_counter(), time.process_time()
            losses[name] = sides[name](*loaded, steps)
            speeds[name].append(samples_per_run / (time.perf_counter() - started))
            cpu[name].append(time.process_time() - cpu_started)
    return speeds, losses


def print_training_rows(speeds: dict, losses: dict, ours: str, cpu_seconds: dict | None = None,
                        memory: bool = True) -> None:
    """One line per side: median samples/s (every run's too), taskzoo's ratio to it, mean loss, peak memory
    (unless not ``memory``), and with ``cpu_seconds`` the median CPU seconds and taskzoo's ratio in those."""
    reference, width = statistics.median(speeds[ours]), max(map(len, speeds))
    for name, runs in speeds.items():
        speed = statistics.median(runs)
        cpu = ""
        if cpu_seconds:
            mine, theirs = statistics.median(cpu_seconds[ours]), statistics.median(cpu_seconds[name])
            cpu = (f"   CPU {theirs:.1f} s (runs {', '.join(f'{s:.1f}' for s in cpu_seconds[name])}), "
                   f"taskzoo / this in CPU time = {theirs / mine:.2f}")
        peak = f"   peak {side_peak_memory(name):6.0f} MiB" if memory else ""
        print(f"{name:{width}} {speed:8.1f} samples/s (runs {', '.join(f'{s:.1f}' for s in runs)})   "
              f"taskzoo / this = {reference / speed:.2f}   mean loss {losses[name]:.4f}{cpu}{peak}", flush=True)


# ------------------------------------------------------------------------------------------------- roofline
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def matmul_peak(precision: str = "fp32", size: int = 2048, repeat: int = 5) -> float:
    """This machine's measured matmul throughput in GFLOP/s for one precision ("fp32", "bf16", "fp16"):
    the best of `repeat` products of two size x size matrices, with torch's current threads. It is the
    physical limit a dense model's forward pass can approach, beside which each benchmark's speed is read."""
    import torch

    return _matmul_peak(precision, size, repeat, torch.get_num_threads())


@functools.cache
def _matmul_peak(precision: str, size: int, repeat: int, threads: int) -> float:
    import torch

    dtype = getattr(torch, DTYPES[precision])
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    torch.mm(a, b)  # first call: kernel selection, weight packing
    best = min(timed_once(lambda: torch.mm(a, b)) for _ in range(repeat))
    return 2 * size**3 / best / 1e9


def timed_once(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def flops_per_input(model, examples: list[dict]) -> float:
    """Mean FLOPs of one forward pass of `model` over each example alone (a dict of batch-1 tensors, no
    padding): the work the model needs per input, whatever batching a side uses (padding shows up as a
    lower share of the peak). Counted by torch.utils.flop_counter on a meta-device copy of the model, so no
    arithmetic runs; on CPU tensors the counter misses the fused attention kernel (SDPA). Examples of one
    shape are counted once."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    meta = copy.deepcopy(model).to("meta").eval()
    by_shape: dict[tuple, int] = {}
    total = 0
    for example in examples:
        shape = tuple((key, tuple(value.shape)) for key, value in sorted(example.items()))
        if shape not in by_shape:
            with FlopCounterMode(display=False) as counter, torch.no_grad():
                meta(**{key: value.to("meta") for key, value in example.items()})
            by_shape[shape] = counter.get_total_flops()
        total += by_shape[shape]
    return total / len(examples)


def precision_of(options: dict) -> str:
    """The precision a taskzoo predict variant computes in, from its keyword arguments."""
    return {"no": "fp32"}.get(options.get("mixed_precision", "no"), options.get("mixed_precision"))


# ------------------------------------------------------------------------------ predict vs a pipeline
MEMORY_OF = "TASKZOO_BENCH_MEMORY_OF"  # set: this process measures the peak memory of that one side


def compare_with_pipeline(title: str, run_pipeline, run_taskzoo, agreement, batch_sizes=(8, 16, 32, 64),
                          variants=(), repeat: int = 3, baseline: str = "transformers.pipeline",
                          default_batch_size: int = 1, flops_per_input: float | None = None,
                          inputs: int | None = None, run_pipeline_bf16=None) -> None:
    """Time the baseline at its default batch size and at its best of ``batch_sizes``, in fp32 and (when a
    variant runs in bf16) in bf16, then taskzoo predict in each variant; print one table.

    ``run_pipeline(batch_size)`` and ``run_taskzoo(**options)`` return outputs; ``agreement(ours, theirs)``
    says how far taskzoo's outputs agree with the fp32 baseline's at its default batch size, as a short
    string. ``variants`` are (name, predict() keyword arguments); a variant's precision is read from its
    ``mixed_precision`` option and it is compared with the baseline in that same precision.
    ``run_pipeline_bf16(batch_size)`` runs the baseline in bf16; by default it is ``run_pipeline`` under
    CPU bf16 autocast, as taskzoo's ``mixed_precision="bf16"`` runs.

    Every side runs once untimed first (kernel caches; a compiled variant compiles then). The baseline's
    batch sizes are each warmed up and timed once to find its best; then the reported sides run ``repeat``
    rounds, each round in a rotated order, and each side's median is reported.

    Roofline (optional): with ``flops_per_input`` (the model's FLOPs for one input, see
    :func:`flops_per_input`) and ``inputs`` (how many inputs one run predicts), each row also shows the
    achieved GFLOP/s and its share of this machine's matmul peak in that row's precision
    (:func:`matmul_peak`). Peak memory is measured afterwards, each side alone in a fresh run of the same
    script (see :func:`side_peak_memory`).
    """
    import torch

    def bf16_pipeline(batch_size):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return run_pipeline(batch_size)

    run_in = {"fp32": run_pipeline}
    if any(precision_of(options) == "bf16" for _, options in variants):
        run_in["bf16"] = run_pipeline_bf16 or bf16_pipeline
    sides = {f"pipeline:{size}:{precision}": (lambda size=size, run=run: run(size))
             for precision, run in run_in.items() for size in (default_batch_size, *batch_sizes)}
    sides.update({f"taskzoo:{name}": (lambda options=options: run_taskzoo(**options)) for name, options in variants})
    if os.environ.get(MEMORY_OF):
        side = os.environ[MEMORY_OF]
        sides[side]()  # warm-up: first-call costs (kernel caches, lazy imports, compiling) are not predict's
        with PeakMemory() as memory:
            sides[side]()
        print(f"peak MiB {memory.megabytes:.1f}")
        return

    # The baseline's best batch size, per precision: each size warmed up, then timed once.
    best_size = {}
    for precision in run_in:
        sweep = {}
        for size in dict.fromkeys((default_batch_size, *batch_sizes)):
            sides[f"pipeline:{size}:{precision}"]()
            sweep[size] = timed_once(sides[f"pipeline:{size}:{precision}"])
        best_size[precision] = min(sweep, key=sweep.get)
    for name, _ in variants:
        sides[f"taskzoo:{name}"]()  # warm-up (and compiling)
    reported = list(dict.fromkeys([f"pipeline:{size}:{precision}" for precision in run_in
                                   for size in (default_batch_size, best_size[precision])]
                                  + [f"taskzoo:{name}" for name, _ in variants]))
    seconds = {side: [] for side in reported}
    outputs = {}
    for order in rotations(reported, repeat):
        for side in order:
            started = time.perf_counter()
            outputs[side] = sides[side]()
            seconds[side].append(time.perf_counter() - started)
    median = {side: statistics.median(times) for side, times in seconds.items()}
    reference = outputs[f"pipeline:{default_batch_size}:fp32"]

    rows = []
    for precision in run_in:
        for size, which in ((default_batch_size, "its default"), (best_size[precision], "its best")):
            rows.append((f"pipeline:{size}:{precision}", f"{baseline}, {precision}, batch_size={size} ({which})",
                         precision, ""))
    rows += [(f"taskzoo:{name}", f"taskzoo predict, {name}", precision_of(options),
              agreement(outputs[f"taskzoo:{name}"], reference)) for name, options in variants]

    print(f"{title}; torch threads {torch.get_num_threads()}; median of {repeat} rounds in rotating order; "
          f"ratios against the {baseline} in the same precision")
    if flops_per_input:
        peaks = ", ".join(f"{p} {matmul_peak(p):.0f}" for p in dict.fromkeys(row[2] for row in rows))
        print(f"roofline: {flops_per_input / 1e9:.2f} GFLOP per input (model FLOPs, no padding) x {inputs} inputs; "
              f"measured matmul peak GFLOP/s: {peaks}")
    width = max(len(row[1]) for row in rows)
    print(f"{'side':{width}} {'seconds':>8} {'vs default':>10} {'vs best':>8} {'GFLOP/s':>8} {'of peak':>7} "
          f"{'peak MiB':>9}  agreement with the fp32 {baseline} at batch_size={default_batch_size}")
    for side, name, precision, agree in rows:
        base = precision if precision in run_in else "fp32"
        default = median[f"pipeline:{default_batch_size}:{base}"]
        best = median[f"pipeline:{best_size[base]}:{base}"]
        rate = flops_per_input * inputs / median[side] / 1e9 if flops_per_input else float("nan")
        share = rate / matmul_peak(precision) if flops_per_input else float("nan")
        print(f"{name:{width}} {median[side]:8.2f} {default / median[side]:9.2f}x {best / median[side]:7.2f}x "
              f"{rate:8.1f} {share:7.1%} {side_peak_memory(side):9.0f}  {agree}", flush=True)


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


# openai/whisper-tiny and openai/whisper-base; the rest are WhisperConfig's defaults (80 mel bins, ...)
WHISPER_SIZES = {
    "tiny": dict(d_model=384, encoder_layers=4, decoder_layers=4, encoder_attention_heads=6,
                 decoder_attention_heads=6, encoder_ffn_dim=1536, decoder_ffn_dim=1536),
    "base": dict(d_model=512, encoder_layers=6, decoder_layers=6, encoder_attention_heads=8,
                 decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048),
}


def whisper_folder(folder: Path, size: str) -> Path:
    """A random Whisper of that size with a 51865-token multilingual tokenizer, saved as a normal HF folder."""
    import random

    import torch
    from tokenizers import pre_tokenizers
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
    )
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    from taskzoo.testing.speech import whisper_tokenizer

    rng = random.Random(0)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab, tokens, merges = {c: i for i, c in enumerate(alphabet)}, list(alphabet), []
    while len(vocab) < 50257:  # byte-level merges of random pieces: decodes any id, as GPT-2's vocabulary does
        a, b = rng.choice(tokens), rng.choice(alphabet)
        if a + b not in vocab and len(a) < 8:
            vocab[a + b] = len(vocab)
            tokens.append(a + b)
            merges.append((a, b))
    languages = [f"<|{code}|>" for code in list(LANGUAGES)[:99]]  # whisper-tiny/base know 99 languages
    special = ["<|startoftranscript|>", *languages, "<|translate|>", "<|transcribe|>", "<|startoflm|>",
               "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]
    tokenizer, ids = whisper_tokenizer(vocab, merges, special)
    end, start, no_timestamps = ids["<|endoftext|>"], ids["<|startoftranscript|>"], ids["<|notimestamps|>"]
    config = WhisperConfig(vocab_size=51865, num_mel_bins=80, max_source_positions=1500, max_target_positions=448,
                           pad_token_id=end, bos_token_id=end, eos_token_id=end, decoder_start_token_id=start,
                           **WHISPER_SIZES[size])
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=start, bos_token_id=end, eos_token_id=end, pad_token_id=end,
        no_timestamps_token_id=no_timestamps, prev_sot_token_id=ids["<|startofprev|>"],
        lang_to_id={t: ids[t] for t in languages}, is_multilingual=True, max_initial_timestamp_index=50,
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        begin_suppress_tokens=[end], max_length=448,
        suppress_tokens=[end, *range(no_timestamps + 1, 51865)])  # no timestamps, no early end: equal work per row
    model.save_pretrained(folder)
    WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tokenizer).save_pretrained(
        folder)
    return folder
