"""Benchmark: taskzoo predict vs transformers.pipeline, automatic-speech-recognition with Whisper.

A Whisper model built from the whisper-tiny or whisper-base config (written out below: the hub is out of reach
here) with seeded random weights, which do not change the speed, and a tokenizer of the real vocabulary size
(51865: 50257 byte-level BPE tokens, the special tokens, 1501 timestamps). Inputs are espeak-ng sentences of about
1 to 12 s, all shorter than Whisper's 30 s window (no chunking on either side), given as 16 kHz arrays.

Equal work on both sides: random weights would generate garbage of random length, so the checkpoint's
``suppress_tokens`` hold the end token and every timestamp token (both sides read them from the same generation
config): every transcript runs to exactly ``--max-new-tokens`` text tokens on both sides, and generate never
re-decodes a window from a predicted timestamp. Both decode greedily: the pipeline's own default is beam search
with 5 beams (roughly 5x the decoder work and other transcripts), so it gets ``num_beams=1``, and its best batch
size is taken. Agreement is exact transcripts (greedy on both sides should give the same text).

Roofline: the FLOPs of one clip are counted on one real predict of it (see ``whisper_flops``), split into the
encoder and the decoder (which, with the end token suppressed, always makes ``--max-new-tokens`` steps).
``--profile`` prints instead where each side's time goes: feature extraction, the encoder, the decoder's layers,
its output layer and the rest (per-step bookkeeping, setup, text decoding), with each part's GFLOP/s.

``--uneven`` races taskzoo predict against the pipeline where transcripts end at different lengths (both decode
every row of a batch until its longest row ends): the same random model with its matrices drawn wide (std 1:
transcripts differ clip by clip) and its end token's embedding scaled by ``--end-scale`` (2.5: transcripts of a few
to ``--max-new-tokens`` tokens), timestamps suppressed, greedy on both sides at the same batch size. It counts CPU
time (``time.process_time``, one torch thread: comparable on a busy machine), the median of ``--rounds`` rounds in
rotating order per batch size, and checks that both give equal transcripts.

    python bench/predict_whisper.py [--size tiny|base] [--clips 16] [--max-new-tokens 32] [--profile]
    python bench/predict_whisper.py --uneven [--size tiny] [--clips 16] [--max-new-tokens 64] [--end-scale 2.5]
"""

import argparse
import copy
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from transformers import (
    pipeline,
)

import taskzoo
from common import (
    WHISPER_SIZES,
    compare_with_pipeline,
    cpu_line,
    matmul_peak,
    mixed_length_sentences,
    rotations,
    whisper_folder,
)
from taskzoo import speech_seq2seq
from taskzoo.audio import load_audio
from taskzoo.demo import quiet_libraries


def whisper_flops(zoo, clip, new_tokens: int) -> tuple[float, float]:
    """(encoder, decoder) FLOPs of one clip: one real greedy generate of it under torch's FLOP counter, on a copy
    with eager attention (the counter has no formula for CPU SDPA's kernel; eager attention is plain matmuls).
    Every clip costs the same: the encoder always reads a full 30 s window, and the decoder makes ``new_tokens``
    steps (its prompt, cross-attention keys and values on the first, one token and the 51865-row output layer on
    each)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = copy.deepcopy(zoo.model).eval()
    model.set_attn_implementation("eager")
    features = zoo._inputs([clip])["input_features"]
    options = speech_seq2seq.generate_options(zoo)
    with FlopCounterMode(display=False) as encoder, torch.inference_mode():
        model.model.encoder(features)
    with FlopCounterMode(display=False) as total:
        tokens = model.generate(features, **options, max_new_tokens=new_tokens, max_length=None)
    assert tokens.shape[1] == new_tokens, "the checkpoint should suppress the end token"
    return encoder.get_total_flops(), total.get_total_flops() - encoder.get_total_flops()


class PhaseTimer:
    """Wall time spent in feature extraction and in the encoder, decoder layers and output layer of one Whisper
    model (forward hooks, so both sides are timed at the same places); the rest of a run is everything else."""

    def __init__(self, model, feature_extractor):
        self.seconds, self.calls, self._started, self._handles = {}, {}, {}, []
        for name, module in (("encoder", model.model.encoder), ("decoder layers", model.model.decoder),
                             ("output layer", model.proj_out)):
            self._handles.append(module.register_forward_pre_hook(lambda *_, name=name: self._start(name)))
            self._handles.append(module.register_forward_hook(lambda *_, name=name: self._stop(name)))
        call = type(feature_extractor).__call__

        def timed(extractor, *args, **kwargs):
            self._start("features")
            try:
                return call(extractor, *args, **kwargs)
            finally:
                self._stop("features")

        self._restore = lambda: setattr(type(feature_extractor), "__call__", call)
        type(feature_extractor).__call__ = timed

    def _start(self, name):
        self._started[name] = time.perf_counter()

    def _stop(self, name):
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - self._started.pop(name)
        self.calls[name] = self.calls.get(name, 0) + 1

    def close(self):
        for handle in self._handles:
            handle.remove()
        self._restore()


def print_profile(name: str, run, model, feature_extractor, flops: tuple[float, float], clips: int,
                  rounds: int = 3) -> None:
    """One untimed run, then ``rounds`` runs with the phase timer: the median share of each phase in the wall time
    (shares hold up on a busy machine better than seconds do), and the encoder's and decoder's GFLOP/s in their
    fastest round against this machine's fp32 matmul peak."""
    run()
    shares, fastest, steps = {}, {}, 0
    for _ in range(rounds):
        timer = PhaseTimer(model, feature_extractor)
        try:
            started = time.perf_counter()
            run()
            total = time.perf_counter() - started
        finally:
            timer.close()
        parts = dict(timer.seconds)
        parts["rest"] = total - sum(parts.values())
        parts["decoder"] = parts["decoder layers"] + parts["output layer"]
        steps = timer.calls["decoder layers"]
        for part, seconds in {**parts, "total": total}.items():
            shares.setdefault(part, []).append(seconds / total)
            fastest[part] = min(fastest.get(part, seconds), seconds)
    share = {part: statistics.median(values) for part, values in shares.items()}
    print(f"{name}: fastest {fastest['total']:.2f} s, {steps} decoder steps; median shares: features "
          f"{share['features']:.0%}, encoder {share['encoder']:.0%}, decoder layers {share['decoder layers']:.0%}, "
          f"output layer {share['output layer']:.0%}, rest (per-step bookkeeping, setup, text) {share['rest']:.0%} "
          f"= {fastest['rest'] / steps * 1e3:.1f} ms per decoder step")
    for part, count in (("encoder", flops[0]), ("decoder", flops[1])):
        rate = count * clips / fastest[part] / 1e9
        print(f"  {part}: {rate:.1f} GFLOP/s, {rate / matmul_peak('fp32'):.1%} of the fp32 matmul peak", flush=True)


parser = argparse.ArgumentParser()
parser.add_argument("--size", choices=sorted(WHISPER_SIZES), default="tiny")
parser.add_argument("--clips", type=int, default=16)
parser.add_argument("--max-new-tokens", type=int, default=32)
parser.add_argument("--profile", action="store_true", help="where each side's time goes, instead of the race")
parser.add_argument("--uneven", action="store_true", help="transcripts of different lengths: CPU time, one thread")
parser.add_argument("--end-scale", type=float, default=2.5, help="--uneven: how much likelier the end token is")
parser.add_argument("--rounds", type=int, default=5, help="--uneven: timed rounds per side and batch size")
args = parser.parse_args()
print(cpu_line(), flush=True)  # the figures below depend on it (bf16 and int8 above all)
quiet_libraries()
if args.uneven:
    torch.set_num_threads(1)  # CPU time of one thread: comparable on a busy machine
    args.max_new_tokens = max(args.max_new_tokens, 64)

folder = whisper_folder(Path(tempfile.mkdtemp(prefix=f"bench-whisper-{args.size}-")), args.size)
clips = []
for i, sentence in enumerate(mixed_length_sentences(args.clips, seed=3)):
    path = folder / f"{i:03d}.wav"
    subprocess.run(["espeak-ng", "-s", "170", "-w", str(path), " ".join(sentence.split()[:35])], check=True)
    clips.append(load_audio(str(path), 16000))

greedy = dict(language="en", task="transcribe", max_new_tokens=args.max_new_tokens, num_beams=1)
recogniser = pipeline("automatic-speech-recognition", model=str(folder), device="cpu")
zoo = taskzoo.load("automatic-speech-recognition", model=folder, device="cpu", language="en")


def agreement(ours, theirs) -> str:
    equal = sum(a["text"] == b["text"].strip() for a, b in zip(ours, theirs)) / len(theirs)
    return f"{equal:.1%} transcripts equal"


seconds = sum(map(len, clips)) / 16000


def uneven_lengths(zoo, end_scale: float) -> None:
    """Make transcripts end at different lengths: wide random matrices (each clip its own tokens), a longer end
    token embedding (tied to the output layer: likelier as the next token), timestamp tokens suppressed."""
    config = zoo.model.generation_config
    config.suppress_tokens = list(range(config.no_timestamps_token_id + 1, zoo.model.config.vocab_size))
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in zoo.model.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0, 1.0)
        zoo.model.model.decoder.embed_tokens.weight[config.eos_token_id] *= end_scale


def race_uneven(zoo, clips, batch_sizes=(8, 16)) -> None:
    """taskzoo predict against the pipeline, greedy at the same batch size: CPU seconds per run over all clips."""
    end = zoo.model.generation_config.eos_token_id
    features = zoo._inputs(clips)
    with torch.inference_mode():
        tokens = zoo.model.generate(**features, language="en", task="transcribe", max_new_tokens=args.max_new_tokens,
                                    max_length=None)
    lengths = (tokens != end).sum(1).tolist()
    print(cpu_line())
    print(f"{len(clips)} clips, whisper-{args.size} (random wide weights, end token x{args.end_scale}); transcript "
          f"lengths in tokens: {sorted(lengths)}")
    recogniser.model = zoo.model  # the same weights on both sides
    for size in batch_sizes:
        rows = [lengths[start:start + size] for start in range(0, len(lengths), size)]
        idle = sum(len(r) * max(r) - sum(r) for r in rows) / sum(len(r) * max(r) for r in rows)
        run = {"taskzoo predict": lambda size=size: zoo.predict(clips, batch_size=size, progress=False,
                                                                max_new_tokens=args.max_new_tokens),
               "pipeline": lambda size=size: recogniser([clip.copy() for clip in clips], batch_size=size,
                                                        generate_kwargs=greedy)}
        outputs = {name: function() for name, function in run.items()}  # warm-up
        cpu = {name: [] for name in run}
        for order in rotations(list(run), args.rounds):
            for name in order:
                started = time.process_time()
                outputs[name] = run[name]()
                cpu[name].append(time.process_time() - started)
        median = {name: statistics.median(values) for name, values in cpu.items()}
        print(f"batch_size={size}: taskzoo predict {median['taskzoo predict']:.2f} CPU s, pipeline "
              f"{median['pipeline']:.2f} CPU s (median of {args.rounds}): "
              f"{median['pipeline'] / median['taskzoo predict']:.2f}x; "
              f"{agreement(outputs['taskzoo predict'], outputs['pipeline'])}; {idle:.0%} of the decoder row-steps are "
              "rows that already ended", flush=True)


if args.uneven:
    uneven_lengths(zoo, args.end_scale)
    race_uneven(zoo, clips)
    raise SystemExit
encoder_flops, decoder_flops = whisper_flops(zoo, clips[0], args.max_new_tokens)
print(f"FLOPs per clip: encoder {encoder_flops / 1e9:.2f} GFLOP, decoder {decoder_flops / 1e9:.2f} GFLOP "
      f"({args.max_new_tokens} steps)", flush=True)
if args.profile:
    flops = (encoder_flops, decoder_flops)
    print(f"fp32 matmul peak {matmul_peak('fp32'):.0f} GFLOP/s, torch threads {torch.get_num_threads()}")
    print_profile("pipeline, batch_size=4", lambda: recogniser([clip.copy() for clip in clips], batch_size=4,
                                                               generate_kwargs=greedy),
                  recogniser.model, recogniser.feature_extractor, flops, len(clips))
    print_profile("taskzoo predict", lambda: zoo.predict(clips, batch_size=16, progress=False,
                                                         max_new_tokens=args.max_new_tokens),
                  zoo.model, zoo.feature_extractor, flops, len(clips))
    raise SystemExit
compare_with_pipeline(
    f"{len(clips)} clips, {seconds:.0f} s of speech, whisper-{args.size} (random weights), greedy, "
    f"{args.max_new_tokens} new tokens each",
    lambda batch_size: recogniser([clip.copy() for clip in clips], batch_size=batch_size, generate_kwargs=greedy),
    lambda **options: zoo.predict(clips, batch_size=16, progress=False, max_new_tokens=args.max_new_tokens,
                                  **options),
    agreement, batch_sizes=(4, 8, 16), repeat=1, flops_per_input=encoder_flops + decoder_flops, inputs=len(clips),
    # No bf16 variant: the pipeline cannot run under bf16 autocast (its feature extractor's STFT comes out bf16 and
    # fails), so there is no like-for-like baseline; the target is fp32.
    variants=[("batch_size=16, fp32", {})])
