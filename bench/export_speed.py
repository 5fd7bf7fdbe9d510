"""Benchmark: taskzoo predict with the torch model (fp32) vs its ONNX Runtime exports (fp32 and int8).

One process, the same inputs and batch size on every side, each side's predict timed over all inputs, sides
in rotating order round after round (bench/common.rotations), medians of ``--rounds``; wall time (the
figure to publish, from a quiet machine) and this process's CPU time (what to compare on a busy one). Models:

- classifier: all-MiniLM-L6-v2 with a seeded, untrained 2-label head, ``--sentences`` mixed-length sentences (its
  scores sit near 0.5, where int8's small errors flip labels: tests/test_export_int8.py checks a fine-tuned one);
- similarity: the packaged all-MiniLM-L6-v2 sentence encoder, the same sentences as pairs (each encoded once);
- vit: ViT-Base/16 at 224 px, random weights (speed does not depend on them), ``--images`` photo-like JPEGs;
- wav2vec2: wav2vec2-Base CTC, random weights, ``--clips`` sentences spoken by espeak-ng (1 to 12 s).

Agreement with torch is printed beside each export: labels (or transcripts) identical, score differences.

    python bench/export_speed.py [--models classifier similarity vit wav2vec2] [--batch-size 32] [--rounds 5]
        [--sentences 300] [--images 32] [--clips 16] [--threads N]

Serving throughput with an export: python bench/serve_throughput.py --export int8 (or fp32).
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import taskzoo
from common import cpu_line, minilm_classifier, mixed_length_sentences, photo_files, rotations, spoken_clips
from taskzoo.demo import quiet_libraries


def timed(function) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - wall, time.process_time() - cpu


def sides_of(task: str, model, folder: Path) -> dict:
    """torch fp32 and the fp32 and int8 exports of ``model``, each loaded as taskzoo loads a model."""
    zoo = taskzoo.load(task, model=model, device="cpu")
    sides = {"torch fp32": zoo}
    for quantize in (None, "int8"):
        started = time.perf_counter()
        exported = zoo.export(folder / f"{task}-{quantize or 'fp32'}", quantize=quantize)
        print(f"  exported {task} {quantize or 'fp32'} in {time.perf_counter() - started:.0f} s", flush=True)
        sides[f"ONNX {quantize or 'fp32'}"] = taskzoo.load(task, model=exported)
    return sides


def compare(title: str, sides: dict, inputs: list, batch_size: int, rounds: int, agreement) -> None:
    """Warm each side up, time ``rounds`` rotating rounds, print medians, ratios to torch and agreement."""
    outputs = {name: zoo.predict(inputs, batch_size=batch_size, progress=False) for name, zoo in sides.items()}
    times = {name: [] for name in sides}
    for order in rotations(list(sides), rounds):
        for name in order:
            side = sides[name]
            times[name].append(timed(lambda zoo=side: zoo.predict(inputs, batch_size=batch_size, progress=False)))
    print(f"\n{title}, batch_size={batch_size}, {torch.get_num_threads()} thread(s), medians of {rounds} rounds")
    print(f"{'side':<11} | {'wall s':>7} | {'inputs/s':>8} | {'speed-up':>8} | {'CPU s':>7} | {'CPU speed-up':>12} | "
          "agreement with torch")
    base_wall, base_cpu = (statistics.median(t[i] for t in times["torch fp32"]) for i in (0, 1))
    for name, measured in times.items():
        wall, cpu = (statistics.median(t[i] for t in measured) for i in (0, 1))
        agree = "-" if name == "torch fp32" else agreement(outputs[name], outputs["torch fp32"])
        print(f"{name:<11} | {wall:>7.2f} | {len(inputs) / wall:>8.1f} | {base_wall / wall:>7.2f}x | {cpu:>7.2f} | "
              f"{base_cpu / cpu:>11.2f}x | {agree}", flush=True)


def labels_agree(ours, theirs) -> str:
    """Share of identical top labels; where they differ, how close torch's own top score was to a tie (a random
    or barely trained head scores near 1 / labels, where int8's small errors flip labels)."""
    ours, theirs = [o[0] if isinstance(o, list) else o for o in ours], [t[0] if isinstance(t, list) else t
                                                                        for t in theirs]
    differ = [b["score"] for a, b in zip(ours, theirs) if a["label"] != b["label"]]
    found = (f"{1 - len(differ) / len(theirs):.1%} labels identical, scores within "
             f"{max(abs(a['score'] - b['score']) for a, b in zip(ours, theirs)):.1e}")
    return found + (f"; torch's top score where they differ: at most {max(differ):.4f}" if differ else "")


def scores_agree(ours, theirs) -> str:
    from scipy.stats import spearmanr

    ours, theirs = [o["score"] for o in ours], [t["score"] for t in theirs]
    return (f"scores within {max(abs(a - b) for a, b in zip(ours, theirs)):.1e}, "
            f"Spearman {spearmanr(ours, theirs).statistic:.4f} with torch's")


def transcripts_agree(ours, theirs) -> str:
    from taskzoo.metrics import character_error_rate

    ours, theirs = [o["text"] for o in ours], [t["text"] for t in theirs]
    same = sum(a == b for a, b in zip(ours, theirs)) / len(theirs)
    return f"{same:.1%} transcripts identical, CER between them {character_error_rate(ours, theirs):.4f}"


def vit_base(folder: Path) -> Path:
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

    names = [f"class_{i}" for i in range(10)]
    torch.manual_seed(0)
    ViTForImageClassification(ViTConfig(num_labels=10, id2label=dict(enumerate(names)),
                                         label2id={n: i for i, n in enumerate(names)})).save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 224, "width": 224}).save_pretrained(folder)
    return folder


def wav2vec2_base(folder: Path) -> Path:
    """The registry's default CTC architecture (facebook/wav2vec2-base-960h's config), random weights."""
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC, Wav2Vec2Processor

    from taskzoo.ctc import ctc_tokenizer

    tokenizer = ctc_tokenizer(list("abcdefghijklmnopqrstuvwxyz'"))
    torch.manual_seed(0)
    Wav2Vec2ForCTC(Wav2Vec2Config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)).save_pretrained(
        folder)
    extractor = Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True, return_attention_mask=False)
    Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["classifier", "similarity", "vit", "wav2vec2"],
                        choices=["classifier", "similarity", "vit", "wav2vec2"])
    parser.add_argument("--batch-size", type=int, default=32, help="for the sentences (images and clips: 8)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sentences", type=int, default=300)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--threads", type=int, help="torch and ONNX Runtime threads (default: torch's choice)")
    args = parser.parse_args()
    print(cpu_line(), flush=True)  # the figures below depend on it (int8 above all: VNNI, AMX)
    quiet_libraries()
    if args.threads:
        torch.set_num_threads(args.threads)  # sessions take as many threads as torch has
    folder = Path(tempfile.mkdtemp(prefix="bench-export-"))
    sentences = mixed_length_sentences(args.sentences)
    if "classifier" in args.models:
        compare(f"text-classification: {len(sentences)} mixed-length sentences, all-MiniLM-L6-v2 + 2-label head",
                sides_of("text-classification", minilm_classifier(), folder), sentences, args.batch_size,
                args.rounds, labels_agree)
    if "similarity" in args.models:
        pairs = list(zip(sentences[0::2], sentences[1::2]))
        compare(f"sentence-similarity: {len(pairs)} pairs of those sentences (each encoded once), all-MiniLM-L6-v2",
                sides_of("sentence-similarity", "all-MiniLM-L6-v2", folder), pairs, args.batch_size, args.rounds,
                scores_agree)
    if "vit" in args.models:
        images = photo_files(args.images, folder)
        compare(f"image-classification: {len(images)} JPEG images (200-1000 px), ViT-Base/16 224 px, random weights",
                sides_of("image-classification", vit_base(folder / "vit"), folder), images, 8, args.rounds,
                labels_agree)
    if "wav2vec2" in args.models:
        from taskzoo.audio import load_audio

        clips = [load_audio(path, 16000) for path, _ in spoken_clips(args.clips, folder)]
        compare(f"automatic-speech-recognition: {len(clips)} clips, {sum(map(len, clips)) / 16000:.0f} s of speech, "
                "wav2vec2-Base CTC, random weights", sides_of("automatic-speech-recognition",
                                                              wav2vec2_base(folder / "wav2vec2"), folder),
                clips, 8, args.rounds, transcripts_agree)


if __name__ == "__main__":
    main()
