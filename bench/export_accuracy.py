"""Accuracy of ONNX exports against torch on the real all-MiniLM-L6-v2 (the figures in docs/export.md).

- Classifier: MiniLM fine-tuned on the README's 30 movie reviews (its dev.csv for evaluation, as the README
  does), then torch, fp32 export and int8 export on the 30 training reviews + 84 held-out real reviews
  (README's dev.csv + tests/data/reviews_heldout.csv): labels identical to torch, largest score difference,
  held-out accuracy of each; one fine-tuning run per seed, and a summary of int8 over them.
- Sentence similarity: the packaged encoder on 52 real sentence pairs with human-like 0-5 scores
  (tests/data/sts_pairs.csv): Spearman correlation of each side, largest score difference.

Timing-free: any machine gives the same figures, up to the fine-tuning's run-to-run differences.

    python bench/export_accuracy.py [--seeds 0 1 2 3 4]
"""

import argparse
import csv
import re
import tempfile
from pathlib import Path

import taskzoo
from common import cpu_line
from taskzoo.demo import quiet_libraries

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def readme_reviews(folder: Path) -> tuple[Path, Path]:
    """The README's train.csv and dev.csv, from its shell block (the files its example writes)."""
    files = dict(re.findall(r"cat > (\w+\.csv) <<'EOF'\n(.*?)\nEOF", (ROOT / "README.md").read_text(), re.DOTALL))
    for name, text in files.items():
        (folder / name).write_text(text + "\n")
    return folder / "train.csv", folder / "dev.csv"


def classifier(folder: Path, seed: int) -> dict:
    """One fine-tuning run (seed ``seed``) and its two exports; prints their table, returns the int8 row."""
    folder.mkdir()
    train, dev = readme_reviews(folder)
    zoo = taskzoo.load("text-classification", model="all-MiniLM-L6-v2", device="cpu")
    zoo.finetune(str(train), eval=str(dev), epochs=3, learning_rate=1e-4, progress=False, save_checkpoints=False,
                 seed=seed)
    held_out = rows(dev) + rows(DATA / "reviews_heldout.csv")
    sentences = [row["text"] for row in rows(train) + held_out]
    sides = {"torch fp32": zoo, **{f"ONNX {q or 'fp32'}": taskzoo.load("text-classification", model=zoo.export(
        folder / f"onnx-{q}", quantize=q)) for q in (None, "int8")}}
    reference = zoo.predict(sentences)
    print(f"\nMiniLM fine-tuned on the README's 30 reviews (seed {seed}); {len(sentences)} real reviews, "
          f"{len(held_out)} held out")
    print(f"{'side':<11} | labels identical to torch | largest score difference | held-out accuracy")
    measured = {}
    for name, side in sides.items():
        predicted = side.predict(sentences)
        same = sum(a["label"] == b["label"] for a, b in zip(predicted, reference))
        difference = max(abs(a["score"] - b["score"]) for a, b in zip(predicted, reference))
        correct = sum(p["label"] == row["label"] for p, row in zip(predicted[-len(held_out):], held_out))
        measured[name] = {"same": same, "of": len(sentences), "difference": difference,
                          "accuracy": correct / len(held_out)}
        print(f"{name:<11} | {same / len(sentences):>25.1%} | {difference:>24.1e} | {correct / len(held_out):.3f}")
    int8 = measured["ONNX int8"]
    return {**int8, "accuracy_change": int8["accuracy"] - measured["torch fp32"]["accuracy"]}


def summary(runs: dict[int, dict]) -> None:
    identical = ", ".join(f"{run['same']}/{run['of']}" for run in runs.values())
    lowest = min(run["same"] / run["of"] for run in runs.values())
    changes = ", ".join(f"{run['accuracy_change']:+.3f}" for run in runs.values())
    print(f"\nint8 over {len(runs)} fine-tuning runs (seeds {', '.join(map(str, runs))}):")
    print(f"  labels identical to torch: {identical} (lowest {lowest:.1%})")
    print(f"  largest score difference: {max(run['difference'] for run in runs.values()):.1e}")
    print(f"  held-out accuracy minus torch's: {changes}")


def similarity(folder: Path) -> None:
    pairs = rows(DATA / "sts_pairs.csv")
    data = [{**row, "score": float(row["score"])} for row in pairs]
    zoo = taskzoo.load("sentence-similarity", model="all-MiniLM-L6-v2", device="cpu")
    sides = {"torch fp32": zoo, **{f"ONNX {q or 'fp32'}": taskzoo.load("sentence-similarity", model=zoo.export(
        folder / f"st-{q}", quantize=q)) for q in (None, "int8")}}
    inputs = [(row["sentence1"], row["sentence2"]) for row in pairs]
    reference = zoo.predict(inputs)
    print(f"\nall-MiniLM-L6-v2 sentence similarity, {len(pairs)} real pairs with human-like scores")
    print(f"{'side':<11} | Spearman | largest score difference from torch")
    for name, side in sides.items():
        difference = max(abs(a["score"] - b["score"]) for a, b in zip(side.predict(inputs), reference))
        print(f"{name:<11} | {side.evaluate(data)['spearman']:>8.4f} | {difference:.1e}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                        help="one fine-tuning run (and its exports) per seed")
    args = parser.parse_args()
    quiet_libraries()
    print(cpu_line(), flush=True)  # accuracy barely depends on it, int8 kernels do a little
    folder = Path(tempfile.mkdtemp(prefix="bench-export-accuracy-"))
    similarity(folder)
    summary({seed: classifier(folder / f"seed{seed}", seed) for seed in args.seeds})


if __name__ == "__main__":
    main()
