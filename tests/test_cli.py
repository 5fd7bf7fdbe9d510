"""The command line, run as a user runs it: in a subprocess."""

import json
import subprocess
import sys

import pytest
from datasets import Dataset

from taskzoo.testing import toy_dataset


def taskzoo_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "taskzoo.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def test_tasks_lists_names_and_aliases():
    result = taskzoo_cli("tasks")
    assert result.returncode == 0
    assert "text-classification" in result.stdout and "sentiment-analysis" in result.stdout


def test_unknown_task_is_a_short_error_not_a_traceback():
    result = taskzoo_cli("predict", "text-clasification", "hello")
    assert result.returncode == 2
    assert "Did you mean 'text-classification'" in result.stderr and "Traceback" not in result.stderr


def test_finetune_evaluate_predict_round_trip(tiny_model_path, tmp_path):
    train, held_out = tmp_path / "train.csv", tmp_path / "eval.jsonl"
    for path, size, seed in [(train, 256, 0), (held_out, 32, 1)]:
        rows = toy_dataset("text-classification", size, seed=seed)
        names = rows.features["label"].names  # written as strings, as a user's CSV would hold them
        rows = Dataset.from_list([{"review": row["text"], "label": names[row["label"]]} for row in rows])
        rows.to_csv(path) if path.suffix == ".csv" else rows.to_json(path)
    tuned = taskzoo_cli("finetune", "text-classification", "--model", tiny_model_path("text-classification"),
                        "--train", train, "--eval", held_out, "--output-dir", tmp_path / "run",
                        "--columns", "review=text", "--epochs", 3, "--learning-rate", 3e-3,
                        "--batch-size", 16, "--set", "progress=false")
    assert tuned.returncode == 0, tuned.stderr
    summary = json.loads(tuned.stdout.strip().splitlines()[-1])
    assert summary["metric"] == "accuracy" and summary["best_metric"] >= 0.9

    scored = taskzoo_cli("evaluate", "text-classification", "--model", tmp_path / "run" / "best",
                         "--data", held_out, "--columns", "review=text")
    assert scored.returncode == 0, scored.stderr
    assert json.loads(scored.stdout)["accuracy"] == pytest.approx(summary["best_metric"])

    (tmp_path / "inputs.txt").write_text("a great lovely film\nawful boring plot\n")
    predicted = taskzoo_cli("predict", "text-classification", "--model", tmp_path / "run" / "best",
                            "--input-file", tmp_path / "inputs.txt", "--set", "top_k=2", "--output",
                            tmp_path / "out.jsonl")
    assert predicted.returncode == 0, predicted.stderr
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [line["output"][0]["label"] for line in lines] == ["positive", "negative"]
    assert lines[0]["input"] == "a great lovely film" and len(lines[0]["output"]) == 2


def test_predict_pairs_as_json(tiny_model_path):
    result = taskzoo_cli("predict", "sentence-similarity", "--model", tiny_model_path("sentence-similarity"),
                         '["a cat", "a dog"]')
    assert result.returncode == 0, result.stderr
    assert -1 <= json.loads(result.stdout)["output"]["score"] <= 1


def test_missing_column_error_from_the_cli(tiny_model_path, tmp_path):
    Dataset.from_list([{"review": "x", "label": 0}]).to_csv(tmp_path / "d.csv")
    result = taskzoo_cli("evaluate", "text-classification", "--model", tiny_model_path("text-classification"),
                         "--data", tmp_path / "d.csv")
    assert result.returncode == 2
    assert "no column 'text'" in result.stderr and "['review', 'label']" in result.stderr


def test_demo_runs_offline_and_prints_the_table(tmp_path):
    result = taskzoo_cli("demo", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    table = result.stdout[result.stdout.index("task "):]
    for name in ("text-classification", "sentence-similarity"):
        row = next(line.split() for line in table.splitlines() if line.startswith(name))
        assert float(row[-2]) > float(row[-3])  # the metric improved after fine-tuning (before, after, seconds)


def test_predict_resume_skips_finished_inputs(tiny_model_path, tmp_path):
    model = tiny_model_path("text-classification")
    (tmp_path / "in.txt").write_text("".join(f"good film number {i}\n" for i in range(300)))
    full = taskzoo_cli("predict", "text-classification", "--model", model, "--input-file", tmp_path / "in.txt",
                       "--output", tmp_path / "full.jsonl")
    assert full.returncode == 0, full.stderr
    lines = (tmp_path / "full.jsonl").read_text().splitlines()
    # An interrupted run: 260 results written, the last one torn in half by the kill.
    partial = tmp_path / "partial.jsonl"
    partial.write_text("\n".join(lines[:259]) + "\n" + lines[259][:20])
    resumed = taskzoo_cli("predict", "text-classification", "--model", model, "--input-file",
                          tmp_path / "in.txt", "--output", partial, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "259 of 300 inputs already" in resumed.stderr
    assert partial.read_text().splitlines() == lines
    assert taskzoo_cli("predict", "text-classification", "--model", model, "x", "--resume").returncode != 0
