"""Fine-tune the tiny text classifier with your own metrics; the tests launch it on two processes.

usage: finetune_with_metrics.py MODEL OUTPUT_DIR METRIC_SCRIPT

Every call of the counting metric appends a line to OUTPUT_DIR/metric_calls.jsonl: the rank that ran it and the
references it saw. Each rank writes what it ended with to OUTPUT_DIR/rankN.json.
"""

import json
import os
import sys

import taskzoo
from taskzoo.demo import quiet_libraries
from taskzoo.testing import toy_dataset

model, output_dir, metric_script = sys.argv[1:4]
rank = int(os.environ.get("RANK", 0))


def examples(predictions, references):
    with open(os.path.join(output_dir, "metric_calls.jsonl"), "a") as handle:
        handle.write(json.dumps({"rank": rank, "references": references}) + "\n")
    return len(predictions)


quiet_libraries()
zoo = taskzoo.load("text-classification", model=model, device="cpu")
result = zoo.finetune(toy_dataset("text-classification", 96, seed=0),
                      eval=toy_dataset("text-classification", 37, seed=1),
                      output_dir=output_dir, max_steps=8, batch_size=8, learning_rate=3e-3, eval_every=4,
                      metrics=[metric_script, examples], metric_for_best="hits", progress=False, plot=False)
with open(f"{output_dir}/rank{rank}.json", "w") as handle:
    json.dump({"final_metrics": result.final_metrics, "best_step": result.best_step}, handle)
