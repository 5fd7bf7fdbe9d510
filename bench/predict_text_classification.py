"""Benchmark: taskzoo predict vs transformers.pipeline, text-classification on a MiniLM classifier.

Same model (the packaged all-MiniLM-L6-v2 with a seeded 2-label head), same ~1,000 mixed-length
sentences, back to back in one process. Prints each side's time, the ratios, peak memory and how many
labels agree, and the
achieved GFLOP/s beside this machine's measured matmul peak in the same precision (bench/common.py).

    python bench/predict_text_classification.py [--sentences 1000]
"""

import argparse

from transformers import pipeline

import taskzoo
from common import compare_with_pipeline, cpu_line, flops_per_input, minilm_classifier, mixed_length_sentences
from taskzoo.demo import quiet_libraries

parser = argparse.ArgumentParser()
parser.add_argument("--sentences", type=int, default=1000)
args = parser.parse_args()
print(cpu_line(), flush=True)  # the figures below depend on it (bf16 and int8 above all)
quiet_libraries()

texts = mixed_length_sentences(args.sentences)
folder = minilm_classifier()
classifier = pipeline("text-classification", model=str(folder), device="cpu")
zoo = taskzoo.load("text-classification", model=folder, device="cpu")


def agreement(ours, theirs) -> str:
    equal = sum(a["label"] == b["label"] for a, b in zip(ours, theirs)) / len(theirs)
    difference = max(abs(a["score"] - b["score"]) for a, b in zip(ours, theirs))
    return f"{equal:.1%} labels equal, scores within {difference:.1e}"


# The model's own work per sentence: each alone, truncated as both sides truncate, no padding (so no
# attention mask, which the meta-device count could not inspect).
examples = [{key: value for key, value in classifier.tokenizer(text, truncation=True, return_tensors="pt").items()
             if key != "attention_mask"} for text in texts]

compare_with_pipeline(
    f"{len(texts)} mixed-length sentences, all-MiniLM-L6-v2 + 2-label head",
    lambda batch_size: classifier(texts, batch_size=batch_size),
    lambda **options: zoo.predict(texts, batch_size=64, progress=False, **options),
    agreement, batch_sizes=(8, 16, 32, 64),
    flops_per_input=flops_per_input(classifier.model, examples), inputs=len(texts),
    variants=[("batch_size=64, fp32", {}), ("batch_size=64, bf16", {"mixed_precision": "bf16"}),
              ("batch_size=64, fp32, compile=True", {"compile": True}),
              ("batch_size=64, bf16, compile=True", {"mixed_precision": "bf16", "compile": True})])
