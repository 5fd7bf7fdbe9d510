"""Benchmark: taskzoo predict vs transformers.pipeline, automatic-speech-recognition with wav2vec2-Base CTC.

The registry's default architecture (facebook/wav2vec2-base-960h: group-normalised front end, no
attention mask) with seeded random weights and a 32-character vocabulary: the hub is out of reach here,
and speed does not depend on the weights. Inputs are mixed-length sentences (about 1 to 12 s) spoken by
espeak-ng, given to both sides as 16 kHz arrays (the pipeline decodes files with ffmpeg, which this
machine may lack). Prints each side's time, the ratios, peak memory, how far transcripts agree, and the
achieved GFLOP/s beside this machine's measured matmul peak in the same precision (bench/common.py).
The model's front end cannot mask padding, so taskzoo batches only clips of equal length together
(see audio_chunks.batches): its transcripts equal the pipeline's at batch size 1.

    python bench/predict_speech_recognition.py [--clips 24]
"""

import argparse
import tempfile
from pathlib import Path

import torch
from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC, Wav2Vec2Processor, pipeline

import taskzoo
from common import compare_with_pipeline, cpu_line, flops_per_input, spoken_clips
from taskzoo.audio import load_audio
from taskzoo.ctc import ctc_tokenizer
from taskzoo.demo import quiet_libraries
from taskzoo.metrics import character_error_rate

parser = argparse.ArgumentParser()
parser.add_argument("--clips", type=int, default=24)
args = parser.parse_args()
print(cpu_line(), flush=True)  # the figures below depend on it (bf16 and int8 above all)
quiet_libraries()

folder = Path(tempfile.mkdtemp(prefix="bench-wav2vec2-"))
clips = [load_audio(path, 16000) for path, _ in spoken_clips(args.clips, folder)]

tokenizer = ctc_tokenizer(list("abcdefghijklmnopqrstuvwxyz'"))
torch.manual_seed(0)
Wav2Vec2ForCTC(Wav2Vec2Config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)).save_pretrained(folder)
extractor = Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True, return_attention_mask=False)
Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(folder)

recogniser = pipeline("automatic-speech-recognition", model=str(folder), device="cpu")
zoo = taskzoo.load("automatic-speech-recognition", model=folder, device="cpu")


def agreement(ours, theirs) -> str:
    """Exact transcripts and the CER between the sides. The pipeline writes the [UNK] token out, which
    taskzoo leaves out of transcripts (a random model emits it often), so it is removed before comparing."""
    ours, theirs = [o["text"] for o in ours], [t["text"].replace("[UNK]", "") for t in theirs]
    equal = sum(a == b for a, b in zip(ours, theirs)) / len(theirs)
    return f"{equal:.1%} transcripts equal, CER between the sides {character_error_rate(ours, theirs):.4f}"


seconds = sum(map(len, clips)) / 16000
compare_with_pipeline(
    f"{len(clips)} clips, {seconds:.0f} s of speech, wav2vec2-Base CTC",
    lambda batch_size: recogniser([clip.copy() for clip in clips], batch_size=batch_size),
    lambda **options: zoo.predict(clips, batch_size=8, progress=False, **options),
    agreement, batch_sizes=(4, 8), repeat=3,
    flops_per_input=flops_per_input(zoo.model, [{"input_values": torch.from_numpy(clip)[None]} for clip in clips]),
    inputs=len(clips),
    variants=[("batch_size=8, fp32", {}), ("batch_size=8, bf16", {"mixed_precision": "bf16"}),
              ("batch_size=8, fp32, compile=True", {"compile": True}),
              ("batch_size=8, bf16, compile=True", {"mixed_precision": "bf16", "compile": True})])
