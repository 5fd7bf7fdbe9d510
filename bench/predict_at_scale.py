"""Benchmark: memory and speed of predict_to_jsonl as the data grows (a CSV of N rows, then 10 N).

Each size runs in a fresh process (peak memory cannot be reset within one), with the tiny text classifier
of the testing kit, so that reading and writing weigh as much as they can against the model. Prints, per
size, the CSV's size, the peak resident memory above the level after loading the model, and rows/s.

    python bench/predict_at_scale.py [--rows 20000] [--batch-size 32]
"""

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import PeakMemory, cpu_line

parser = argparse.ArgumentParser()
parser.add_argument("--rows", type=int, default=20000)
parser.add_argument("--batch-size", type=int, default=32)
parser.add_argument("--child", nargs=2, metavar=("ROWS", "FOLDER"), help=argparse.SUPPRESS)
args = parser.parse_args()


def one_size(rows: int, folder: Path) -> dict:
    import taskzoo
    from taskzoo.demo import quiet_libraries

    quiet_libraries()
    table = folder / f"rows-{rows}.csv"
    with open(table, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text"])
        for i in range(rows):  # 3 to 60 words
            writer.writerow([f"r{i}", f"a {'good' if i % 2 else 'dull'} film, number {i} " + "and more " * (i % 30)])
    zoo = taskzoo.load("text-classification", model=folder / "model", device="cpu")
    started = time.perf_counter()
    with PeakMemory() as memory:
        zoo.predict_to_jsonl(table, folder / f"out-{rows}.jsonl", batch_size=args.batch_size, progress=False)
    seconds = time.perf_counter() - started
    return {"rows": rows, "csv_mb": round(table.stat().st_size / 2**20, 1), "peak_mb_above_load":
            round(memory.megabytes, 1), "rows_per_s": round(rows / seconds)}


if args.child:
    print(json.dumps(one_size(int(args.child[0]), Path(args.child[1]))))
    sys.exit(0)

from taskzoo.testing import tiny_model  # noqa: E402

print(cpu_line(), flush=True)  # the figures below depend on it (bf16 and int8 above all)

folder = Path(tempfile.mkdtemp(prefix="bench-predict-at-scale-"))
tiny_model("text-classification", folder / "model")
for rows in (args.rows, 10 * args.rows):
    child = subprocess.run([sys.executable, __file__, "--child", str(rows), str(folder)], capture_output=True,
                           text=True, check=True)
    print(child.stdout.strip().splitlines()[-1])
