"""Benchmark: the demo's object-detection stop (ObjectDetection.demo_config: the testing kit's tiny RT-DETR on
toy rectangles) over several training seeds: held-out map_50 before and after, and the CPU seconds of each run.

    python bench/detection_seeds.py [--seeds 0 1 2 3 4 42] [--threads 1]
    ATEN_CPU_CAPABILITY=default python bench/detection_seeds.py --seeds 0   # torch's non-vector kernels

The demo itself trains with seed 42 (TrainingConfig's default). A recipe worth shipping clears map_50 0.5 with
a margin on every seed, thread count and kernel set: numerics differ between AVX2, AVX-512 and AMX machines.
CPU seconds (time.process_time) are comparable on a busy machine; wall seconds are not.
"""

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 42])
parser.add_argument("--threads", type=int, default=1, help="torch threads (the demo runs tasks on one)")
args = parser.parse_args()

import torch  # noqa: E402

torch.set_num_threads(args.threads)

import taskzoo  # noqa: E402
from common import cpu_line  # noqa: E402
from taskzoo import testing  # noqa: E402
from taskzoo.demo import quiet_libraries  # noqa: E402
from taskzoo.tasks.object_detection import ObjectDetection  # noqa: E402

quiet_libraries()
print(cpu_line(), flush=True)  # the figures below depend on it (kernels differ between AVX2, AVX-512 and AMX)
settings = dict(ObjectDetection.demo_config)
train_size, eval_size = settings.pop("train_size"), settings.pop("eval_size")
print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
      f"{torch.get_num_threads()} thread(s); {settings}")
rows = []
for seed in args.seeds:
    with tempfile.TemporaryDirectory(prefix="bench-detection-") as folder:
        started = time.process_time()
        zoo = taskzoo.load("object-detection", model=testing.tiny_model("object-detection", Path(folder) / "m"),
                           device="cpu")
        train = testing.toy_dataset("object-detection", train_size, seed=0)  # as `taskzoo demo` makes them
        held_out = testing.toy_dataset("object-detection", eval_size, seed=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            before = zoo.evaluate(held_out)["map_50"]
        result = zoo.finetune(train, eval=held_out, output_dir=str(Path(folder) / "run"), progress=False,
                              save_checkpoints=False, metric_for_best="map_50", seed=seed, **settings)
        row = {"seed": seed, "before": round(before, 3), "map_50": round(result.final_metrics["map_50"], 3),
               "map": round(result.final_metrics["map"], 3), "cpu_s": round(time.process_time() - started, 1)}
    rows.append(row)
    print(json.dumps(row), flush=True)
scores = [row["map_50"] for row in rows]
print(f"map_50 {min(scores):.3f} to {max(scores):.3f} over seeds {args.seeds}; CPU seconds per run (the first "
      f"includes warm-up): {[row['cpu_s'] for row in rows]}")
