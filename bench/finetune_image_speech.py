"""Benchmark: fine-tuning samples/second of taskzoo's loop vs a minimal Accelerate loop, image and speech.

The text benchmark (finetune_speed.py) shows the loop's overhead on text; this one shows it where each
batch carries decoding work: JPEG files of mixed sizes (200-1000 px) decoded, resized and normalised in the
collate function, and espeak-ng wav files read with soundfile and resampled to 16 kHz. Both sides train the
same freshly loaded model (loaded outside the clock) with the task's own collate and forward, AdamW, a
linear schedule, gradient clipping and one seed; the minimal loop shuffles with Accelerate's seedable
sampler seeded as taskzoo seeds its own, so both see the same batches (their mean losses agree).

Models (seeded random weights; the hub is out of reach, speed does not depend on the weights):
image-classification on ViT-Ti/16 at 224 px (the DeiT-Tiny shape: hidden 192, 12 layers, 3 heads), 10 labels;
automatic-speech-recognition on a small wav2vec2 CTC model (Base's front end at half width, 256 channels;
4 transformer layers of hidden 256), its front end frozen on both sides (taskzoo's default for CTC).

Each side runs a few steps untimed (warm-up), then --runs rounds in rotating order; the median is reported.

    python bench/finetune_image_speech.py [--task image|speech|both] [--steps 8] [--runs 5]
"""

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from datasets import Dataset
from transformers import (
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessorPil,
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2ForCTC,
    Wav2Vec2Processor,
)

import taskzoo
from common import (
    MEMORY_OF,
    PeakMemory,
    cpu_line,
    minimal_accelerate_loop,
    photo_files,
    print_training_rows,
    spoken_clips,
    training_rounds,
)
from taskzoo.ctc import ctc_tokenizer
from taskzoo.demo import quiet_libraries

parser = argparse.ArgumentParser()
parser.add_argument("--task", default="both", choices=["image", "speech", "both"])
parser.add_argument("--steps", type=int, default=8)
parser.add_argument("--runs", type=int, default=5)  # timed rounds; the median is reported (3 left ±8% noise)
parser.add_argument("--warmup-steps", type=int, default=2)
parser.add_argument("--precision", default="no", choices=["no", "bf16"])
args = parser.parse_args()
print(cpu_line(), flush=True)  # the figures below depend on it (bf16 and int8 above all)
quiet_libraries()
SEED = 42


def image_setup(folder: Path, batch_size: int = 16):
    names = [f"class_{i}" for i in range(10)]
    torch.manual_seed(0)
    config = ViTConfig(hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768,
                       num_labels=10, id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 224, "width": 224}).save_pretrained(folder)
    images = photo_files(args.steps * batch_size, folder)
    data = Dataset.from_dict({"image": images, "label": [names[i % 10] for i in range(len(images))]})
    return "image-classification", data, batch_size, 5e-4, "ViT-Ti/16 224 px, JPEGs of 200-1000 px"


def speech_setup(folder: Path, batch_size: int = 8):
    clips = spoken_clips(args.steps * batch_size, folder, max_words=12)  # about 1 to 4 s
    tokenizer = ctc_tokenizer(list("abcdefghijklmnopqrstuvwxyz'"))
    torch.manual_seed(0)
    config = Wav2Vec2Config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, hidden_size=256,
                            num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
                            conv_dim=(256,) * 7, ctc_loss_reduction="mean")
    Wav2Vec2ForCTC(config).save_pretrained(folder)
    extractor = Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True, return_attention_mask=False)
    Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(folder)
    data = Dataset.from_dict({"audio": [path for path, _ in clips], "text": [text for _, text in clips]})
    return "automatic-speech-recognition", data, batch_size, 1e-4, "small wav2vec2 CTC, 1-4 s espeak-ng clips"


def benchmark(setup) -> None:
    folder = Path(tempfile.mkdtemp(prefix="bench-finetune-"))
    task, data, batch_size, learning_rate, what = setup(folder)

    def fresh():
        zoo = taskzoo.load(task, model=folder, device="cpu")
        torch.manual_seed(SEED)  # as finetune() seeds before adapting the model to the data
        zoo.prepare_for_training(data)
        if hasattr(zoo.model, "freeze_feature_encoder"):
            zoo.model.freeze_feature_encoder()  # as finetune() does for CTC models (the minimal loop's model too)
        return zoo, zoo.prepare(data, training=True)

    outside_loop = []  # per taskzoo run: (seconds of the whole call, seconds outside its step loop)

    def run_taskzoo(zoo, prepared, steps):  # given the raw data, as a user would
        started = time.perf_counter()
        result = zoo.finetune(data, max_steps=steps, batch_size=batch_size, learning_rate=learning_rate,
                              mixed_precision=args.precision, progress=False, save_checkpoints=False, plot=False,
                              log_every=steps, max_grad_norm=1.0, seed=SEED)
        whole = time.perf_counter() - started  # result.seconds: the step loop alone (first batch to last step)
        outside_loop.append((whole, whole - result.seconds))
        return result.history[-1]["loss"]  # the mean over all steps (one log line)

    def run_minimal(zoo, prepared, steps):
        return minimal_accelerate_loop(zoo, prepared, steps, batch_size, learning_rate, args.precision, seed=SEED)

    sides = {f"{task}: minimal Accelerate loop": run_minimal, f"{task}: taskzoo finetune": run_taskzoo}
    if os.environ.get(MEMORY_OF):  # this run measures one side's memory (see common.side_peak_memory)
        if os.environ[MEMORY_OF] in sides:
            loaded = fresh()
            with PeakMemory() as memory:
                sides[os.environ[MEMORY_OF]](*loaded, args.steps)
            print(f"peak MiB {memory.megabytes:.1f}")
        return
    speeds, losses = training_rounds(sides, fresh, args.steps, args.steps * batch_size, args.runs, args.warmup_steps)
    print(f"{task}, {what}: {args.steps} steps x batch {batch_size}, precision {args.precision}, "
          f"torch threads {torch.get_num_threads()}, median of {args.runs} rounds in rotating order")
    print_training_rows(speeds, losses, ours=f"{task}: taskzoo finetune")
    whole, outside = (statistics.median(values) for values in zip(*outside_loop[1:]))  # [0]: the warm-up
    print(f"taskzoo's time outside its step loop (data checks and preparation, set-up, finish): {outside:.3f} s "
          f"of {whole:.2f} s ({outside / whole:.1%}), median of its timed runs")


for name, setup in (("image", image_setup), ("speech", speech_setup)):
    if args.task in (name, "both"):
        benchmark(setup)
