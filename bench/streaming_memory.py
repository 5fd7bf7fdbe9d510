"""Benchmark: peak memory and throughput of fine-tuning on a stream, at 1x and 10x the rows.

The data is JSON lines files of review-like sentences (8 shards). Each side fine-tunes the tiny text
classifier for one pass over the rows, alone in a fresh process, and reports its peak resident memory above
the level after loading the model, and samples per second:

- ``stream``: ``load_dataset("json", data_files=..., streaming=True)``, max_steps = one pass;
- ``in-memory``: the same files as a list of dicts (what finetune() took before streams), for contrast, with
  length grouping off as a stream has none (grouping pads less, which is most of a throughput gap otherwise).

A stream's memory should stay flat from 1x to 10x; the in-memory side grows with the data.

    python bench/streaming_memory.py [--rows 10000] [--batch-size 64]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import PeakMemory, cpu_line, mixed_length_sentences

parser = argparse.ArgumentParser()
parser.add_argument("--rows", type=int, default=10_000)  # the 1x size; 10x is ten times that
parser.add_argument("--batch-size", type=int, default=64)
parser.add_argument("--side", choices=["stream", "in-memory"])  # internal: run one side in this process
parser.add_argument("--data")  # internal: the folder of JSON lines files
parser.add_argument("--model")  # internal: the tiny model's folder
args = parser.parse_args()
SHARDS = 8


def lines_of(file: str):
    with open(file) as handle:
        yield from handle


def write_data(folder: Path, rows: int) -> None:
    folder.mkdir(parents=True)
    texts = mixed_length_sentences(rows, seed=rows)
    for shard in range(SHARDS):
        with open(folder / f"part{shard}.jsonl", "w") as handle:
            for text in texts[shard::SHARDS]:
                label = "positive" if any(w in text.split() for w in ("good", "great", "lovely")) else "negative"
                handle.write(json.dumps({"text": text, "label": label}) + "\n")


def run_side() -> None:
    """One side, in this fresh process: prints its peak MiB, samples/s and rows."""
    import taskzoo
    from taskzoo.demo import quiet_libraries

    quiet_libraries()
    files = sorted(str(path) for path in Path(args.data).glob("*.jsonl"))
    rows = sum(1 for file in files for _ in lines_of(file))
    zoo = taskzoo.load("text-classification", model=args.model, device="cpu")
    with PeakMemory() as memory:
        if args.side == "stream":
            from datasets import load_dataset

            data = load_dataset("json", data_files=files, split="train", streaming=True)
        else:
            data = [json.loads(line) for file in files for line in lines_of(file)]
        started = time.perf_counter()
        zoo.finetune(data, max_steps=rows // args.batch_size, batch_size=args.batch_size, learning_rate=3e-3,
                     progress=False, save_checkpoints=False, plot=False, group_by_length=False)
        seconds = time.perf_counter() - started
    print(f"RESULT {json.dumps({'peak_mib': memory.megabytes, 'samples_per_second': rows / seconds, 'rows': rows})}")


def main() -> None:
    import torch

    from taskzoo.testing import tiny_model

    print(cpu_line(), flush=True)  # the figures below depend on it (bf16 and int8 above all)
    work = Path(tempfile.mkdtemp(prefix="bench-streaming-"))
    model = tiny_model("text-classification", work / "model")
    print(f"Fine-tuning the tiny text classifier for one pass, batch {args.batch_size}; torch threads "
          f"{torch.get_num_threads()}; each side alone in a fresh process")
    print(f"{'side':10} {'rows':>8} {'peak MiB':>9} {'samples/s':>10}")
    for scale in (1, 10):
        data = work / f"x{scale}"
        write_data(data, args.rows * scale)
        for side in ("stream", "in-memory"):
            # A low mmap threshold hands freed blocks back at once, so resident memory follows what is live.
            done = subprocess.run([sys.executable, __file__, "--side", side, "--data", str(data), "--model",
                                   str(model), "--batch-size", str(args.batch_size)], capture_output=True, text=True,
                                  env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})
            lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if done.returncode or not lines:
                raise RuntimeError(f"{side} at {scale}x failed:\n{done.stderr[-2000:]}")
            result = json.loads(lines[-1][len("RESULT "):])
            print(f"{side:10} {result['rows']:>8} {result['peak_mib']:9.1f} {result['samples_per_second']:10.0f}",
                  flush=True)


if __name__ == "__main__":
    run_side() if args.side else main()
