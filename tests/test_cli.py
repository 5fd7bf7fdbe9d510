"""The command line, run as a user runs it: in a subprocess. Where a test checks what a command does rather than
how its process starts and reports (console output, exit codes, import cost), it calls the function the installed
`taskzoo` command calls, taskzoo.cli.main, in this process: a process of its own spends seconds importing torch."""

import json
import subprocess
import sys

import pytest
from datasets import Dataset

from taskzoo.testing import toy_dataset


def taskzoo_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "taskzoo.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def taskzoo_main(*args, capsys) -> tuple[int, str, str]:
    """`taskzoo ARGS` through taskzoo.cli.main in this process: (exit code, stdout, stderr)."""
    from taskzoo.cli import main

    capsys.readouterr()
    try:
        code = main(list(map(str, args)))
    except SystemExit as exited:  # argparse's refusals
        code = exited.code
    out, err = capsys.readouterr()
    return code, out, err


def test_tasks_lists_names_aliases_and_pinned_revisions():
    from taskzoo.registry import TASKS

    result = taskzoo_cli("tasks")
    assert result.returncode == 0
    assert "text-classification" in result.stdout and "sentiment-analysis" in result.stdout
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert set(rows) == set(TASKS)
    for name, entry in TASKS.items():
        assert entry.default_model in rows[name]
        assert (entry.default_revision or "packaged") in rows[name]


@pytest.mark.parametrize("argv", [["tasks"], ["--help"], ["predict", "--help"]])
def test_tasks_and_help_import_nothing_heavy(argv):
    """`taskzoo tasks` and `--help` answer at once: torch, transformers and datasets are not imported."""
    code = ("import sys\nfrom taskzoo.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'transformers', 'datasets', 'accelerate') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    result = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout


def test_help_is_plain_text_with_the_tasks_and_two_examples(capsys):
    from taskzoo.cli import main
    from taskzoo.registry import TASKS

    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "``" not in text and ":func:" not in text and ":class:" not in text
    assert all(name in text for name in TASKS)
    examples = text[text.index("examples:"):].splitlines()[1:]
    assert sum(line.strip().startswith("taskzoo ") for line in examples) == 2


def test_every_task_argument_and_model_option_has_help():
    from taskzoo.cli import build_parser

    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    for name, command in commands.items():
        for action in command._actions:
            if action.dest in ("task", "model"):
                assert action.help and len(action.help) > 20, (name, action.dest)
    assert all(any(a.dest == "model" for a in commands[name]._actions) for name in ("predict", "finetune", "evaluate"))


def test_unknown_task_is_a_short_error_not_a_traceback():
    result = taskzoo_cli("predict", "text-clasification", "hello")
    assert result.returncode == 2
    assert "Did you mean 'text-classification'" in result.stderr and "Traceback" not in result.stderr


def test_finetune_evaluate_predict_round_trip(tiny_model_path, tmp_path, capsys):
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
    summary = json.loads(tuned.stdout)  # all of it: the run's own lines go to standard error
    assert summary["metric"] == "accuracy" and summary["best_metric"] >= 0.9
    # A line per evaluation (one per epoch); none of the libraries' own progress bars.
    evaluations = [line.split() for line in tuned.stderr.splitlines() if line.startswith("step ")]
    assert [int(line[1]) for line in evaluations] == [16, 32, 48]
    assert float(evaluations[-1][evaluations[-1].index("accuracy") + 1]) == pytest.approx(summary["best_metric"])
    assert "loss" in evaluations[-1]
    assert "Loading weights" not in tuned.stderr and "Writing model shards" not in tuned.stderr

    code, out, err = taskzoo_main("evaluate", "text-classification", "--model", tmp_path / "run" / "best",
                                  "--data", held_out, "--columns", "review=text", capsys=capsys)
    assert code == 0, err
    assert json.loads(out)["accuracy"] == pytest.approx(summary["best_metric"])

    (tmp_path / "inputs.txt").write_text("a great lovely film\nawful boring plot\n")
    code, _, err = taskzoo_main("predict", "text-classification", "--model", tmp_path / "run" / "best",
                                "--input-file", tmp_path / "inputs.txt", "--set", "top_k=2", "--output",
                                tmp_path / "out.jsonl", capsys=capsys)
    assert code == 0, err
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [line["output"][0]["label"] for line in lines] == ["positive", "negative"]
    assert lines[0]["input"] == "a great lovely film" and len(lines[0]["output"]) == 2


@pytest.mark.slow  # the default run parses all of finetune's and evaluate's stdout in the round-trip test
def test_finetune_and_evaluate_print_only_their_json_result_on_standard_output(tiny_model_path, tmp_path):
    """`taskzoo finetune ... > result.json` gives a JSON file: the progress bar, the run's log lines
    (checkpoints, the run's size) and the evaluation lines all go to standard error."""
    rows = toy_dataset("text-classification", 32)
    names = rows.features["label"].names
    data = tmp_path / "reviews.jsonl"
    Dataset.from_list([{"text": row["text"], "label": names[row["label"]]} for row in rows]).to_json(data)
    model = tiny_model_path("text-classification")
    tuned = taskzoo_cli("finetune", "text-classification", "--model", model, "--train", data, "--eval", data,
                        "--output-dir", tmp_path / "run", "--max-steps", 4, "--batch-size", 8,
                        "--set", "eval_every=2", "--set", "checkpoint_every=2")  # progress bar on: the default
    assert tuned.returncode == 0, tuned.stderr
    summary = json.loads(tuned.stdout)
    assert summary["steps"] == 4 and set(summary["final_metrics"]) >= {"accuracy", "macro_f1"}
    assert "Fine-tuning text-classification: 32 samples" in tuned.stderr
    assert "Checkpoint at step 2" in tuned.stderr and "text-classification: fine-tune" in tuned.stderr
    assert [line.split()[1] for line in tuned.stderr.splitlines() if line.startswith("step ")] == ["2", "4"]

    scored = taskzoo_cli("evaluate", "text-classification", "--model", tmp_path / "run" / "last", "--data", data)
    assert scored.returncode == 0, scored.stderr
    assert json.loads(scored.stdout) == pytest.approx(summary["final_metrics"], abs=1e-6)


def test_predict_pairs_as_json(tiny_model_path, capsys):
    code, out, err = taskzoo_main("predict", "sentence-similarity", "--model", tiny_model_path("sentence-similarity"),
                                  '["a cat", "a dog"]', capsys=capsys)
    assert code == 0, err
    assert -1 <= json.loads(out)["output"]["score"] <= 1


def test_demo_runs_offline_and_prints_the_table(tmp_path, monkeypatch, capsys):
    # Two quick tasks: the command, its table and its report folder. The tour of every task, in a process of its
    # own, is the slow test below; tests/test_demo.py checks the long tasks' learning on the demo's own settings.
    monkeypatch.chdir(tmp_path)
    code, out, err = taskzoo_main("demo", "text-classification", "sentence-similarity", capsys=capsys)
    assert code == 0, err
    assert_every_task_learned(out, ["text-classification", "sentence-similarity"])
    assert (tmp_path / "taskzoo-demo" / "index.html").is_file()


@pytest.mark.slow
def test_the_whole_tour_runs_offline(tmp_path):
    from taskzoo.registry import TASKS

    result = taskzoo_cli("demo", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert_every_task_learned(result.stdout, list(TASKS))


def assert_every_task_learned(output: str, names: list[str]) -> None:
    """Each task's row of the printed table (task, metric, arrow, before, after, seconds) shows it learned."""
    table = output[output.index("\ntask "):]
    rows = {line.split()[0]: line.split() for line in table.splitlines()[2:] if line.split()[:1] and
            line.split()[0] in names}
    assert sorted(rows) == sorted(names), table
    for name, row in rows.items():
        before, after = float(row[-3]), float(row[-2])
        lower_is_better = row[2] in ("↓", "(lower)")
        assert (after < before) if lower_is_better else (after > before), (name, row)


def test_predict_resume_skips_finished_inputs(tiny_model_path, tmp_path, capsys):
    # A killed process's torn file, resumed (tests/test_batch_predict.py kills a real one)
    model = tiny_model_path("text-classification")
    (tmp_path / "in.txt").write_text("".join(f"good film number {i}\n" for i in range(300)))
    code, _, err = taskzoo_main("predict", "text-classification", "--model", model, "--input-file",
                                tmp_path / "in.txt", "--output", tmp_path / "full.jsonl", capsys=capsys)
    assert code == 0, err
    lines = (tmp_path / "full.jsonl").read_text().splitlines()
    # An interrupted run: 260 results written, the last one torn in half by the kill.
    partial = tmp_path / "partial.jsonl"
    partial.write_text("\n".join(lines[:259]) + "\n" + lines[259][:20])
    code, _, err = taskzoo_main("predict", "text-classification", "--model", model, "--input-file",
                                tmp_path / "in.txt", "--output", partial, "--resume", capsys=capsys)
    assert code == 0, err
    assert "259 of 300 inputs already" in err
    assert partial.read_text().splitlines() == lines
    assert taskzoo_main("predict", "text-classification", "--model", model, "x", "--resume", capsys=capsys)[0] != 0


@pytest.fixture(scope="module")
def review_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("csv") / "reviews.csv"
    Dataset.from_list([{"review": "a lovely film", "label": "positive"},
                       {"review": "an awful plot", "label": "negative"}]).to_csv(path)
    return path


@pytest.mark.parametrize("argv, message", [
    (["predict", "text-classification", "--model", "{model}", "--input-file", "missing.txt"],
     "--input-file missing.txt: no such file"),
    (["predict", "text-classification", "--model", "{model}", "good", "--set", "topk=2"],
     "unknown --set option 'topk'. Did you mean 'top_k'? Options: batch_size, progress, mixed_precision, compile,"),
    (["predict", "text-classification", "--model", "{model}", "good", "--set", "top_k=two"],
     "top_k must be a positive integer; got 'two'."),
    (["predict", "image-classification", "--model", "{model}", "x.png", "--set", "top_k=0"],
     "top_k must be a positive integer; got 0."),
    (["predict", "object-detection", "--model", "{model}", "x.png", "--set", "threshold=high"],
     "threshold must be a number in [0, 1]; got 'high'."),
    (["predict", "translation", "--model", "{model}", "hello", "--set", "num_beam=2"],
     "unknown --set option 'num_beam'. Did you mean 'num_beams'?"),
    (["predict", "image-classification", "--model", "{text_model}", "x.png"],
     "holds a text model (BertForSequenceClassification); image-classification needs an image classification model"),
    (["finetune", "text-classification", "--model", "{model}", "--train", "{csv}", "--output-dir", "run",
      "--set", "epoch=2"], "unknown --set option 'epoch' for taskzoo finetune. Did you mean 'epochs'? Options:"),
    (["finetune", "text-classification", "--model", "{model}", "--train", "{csv}", "--output-dir", "run",
      "--columns", "review"], "--columns expects YOUR_COLUMN=TASK_COLUMN (e.g. --columns review=text); got 'review'"),
    (["evaluate", "text-classification", "--model", "{model}", "--data", "{csv}"],
     "no column 'text' (required: ['text', 'label']). Columns present: ['review', 'label']. "
     "Rename yours with --columns YOUR_COLUMN=text."),
    (["evaluate", "text-classification", "--model", "{model}", "--data", "{csv}", "--columns", "sentence=text"],
     "--columns maps ['sentence'] but the data has no such column."),
    (["evaluate", "text-classification", "--model", "{model}", "--data", "no-such-folder/"],
     "--data no-such-folder/: no such file or folder."),
    (["finetune", "text-classification", "--model", "{model}", "--train", "missing.csv", "--output-dir", "run"],
     "--train missing.csv: no such file or folder."),
    (["predict", "text-classification", "--model", "no-such-org/no-such-model", "good"],
     "To work offline, pass a local folder (--model PATH)"),
    (["predict", "text-classification", "--model", "{model}", "good", "--device", "gpu"],
     "--device gpu is not a device torch knows: use 'cpu', 'cuda', 'cuda:1'"),
    (["finetune", "text-classification", "--model", "{model}", "--train", "{csv}", "--output-dir", "run",
      "--device", "gpu"], "--device gpu is not a device torch knows"),
])
def test_user_errors_are_one_line_in_command_line_terms(argv, message, tiny_model_path, review_csv, tmp_path,
                                                       monkeypatch, capsys):
    from taskzoo.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, text_model = tiny_model_path(argv[1]), tiny_model_path("text-classification")
    assert main([arg.format(model=model, text_model=text_model, csv=review_csv) for arg in argv]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith(f"taskzoo {argv[0]}: error: "), error
    assert message in error
    assert "columns={" not in error and "model='" not in error


def test_evaluate_and_finetune_run_on_the_device_asked_for(tiny_model_path, review_csv, monkeypatch, capsys):
    """Accelerate decides their device once per process from its environment: --device sets it."""
    import os

    from taskzoo.cli import main

    monkeypatch.setenv("ACCELERATE_USE_CPU", "false")  # restored after the test, whatever the command sets
    model = tiny_model_path("text-classification")
    assert main(["evaluate", "text-classification", "--model", str(model), "--data", str(review_csv),
                 "--columns", "review=text", "--device", "cpu"]) == 0
    assert os.environ["ACCELERATE_USE_CPU"] == "true" and "accuracy" in json.loads(capsys.readouterr().out)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["evaluate", "text-classification", "--model", str(model), "--data", str(review_csv),
                 "--device", "cpu"]) == 2
    assert "under accelerate launch or torchrun each process gets its own: leave --device out" in \
        capsys.readouterr().err


def test_an_error_from_the_installed_command_has_no_traceback(tmp_path):
    result = taskzoo_cli("predict", "text-classification", "--model", tmp_path / "nowhere", "--input-file",
                         tmp_path / "missing.txt")
    assert result.returncode == 2
    assert result.stderr == f"taskzoo predict: error: --input-file {tmp_path / 'missing.txt'}: no such file.\n"


def test_tiny_model_command_writes_a_model_that_loads(tmp_path, capsys):
    import taskzoo
    from taskzoo.cli import main

    assert main(["tiny-model", "sentiment-analysis", str(tmp_path / "tiny")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "tiny")
    zoo = taskzoo.load("text-classification", model=tmp_path / "tiny", device="cpu")
    assert zoo.labels == ["negative", "positive"]
    assert main(["tiny-model", "no-such-task", str(tmp_path / "x")]) == 2
    assert "Unknown task 'no-such-task'" in capsys.readouterr().err
    assert main(["tiny-model", "segmentation", str(tmp_path / "upernet"), "--family", "upernet"]) == 0
    assert type(taskzoo.load("segmentation", model=tmp_path / "upernet").model).__name__ == \
        "UperNetForSemanticSegmentation"
    assert main(["tiny-model", "translation", str(tmp_path / "y"), "--family", "beit"]) == 2
    assert "translation has no tiny model of family 'beit'" in capsys.readouterr().err


def test_version():
    import taskzoo

    result = taskzoo_cli("--version")
    assert result.returncode == 0 and result.stdout == f"taskzoo {taskzoo.__version__}\n"


@pytest.mark.parametrize("argv, guess", [
    (["finetune", "text-classification", "--train", "t.csv", "--output-dir", "run", "--learning_rate", "1e-3"],
     "--learning_rate; did you mean --learning-rate?"),
    (["finetune", "text-classification", "--train", "t.csv", "--output-dir", "run", "--lr=1e-3"],
     "--lr; did you mean --learning-rate?"),
    (["finetune", "text-classification", "--train", "t.csv", "--output_dir", "run"],  # argparse: "required"
     "--output_dir; did you mean --output-dir?"),
    (["evaluate", "text-classification", "--data", "d.csv", "--bs", "4"], "--bs; did you mean --batch-size?"),
    (["predict", "text-classification", "--modle", "m", "good"], "--modle; did you mean --model?"),
    (["serve", "text-classification", "--prot", "80"], "--prot; did you mean --port?"),
    (["predict", "text-classification", "--frobnicate", "good"], "--frobnicate"),
])
def test_unknown_flag_shows_the_commands_usage_and_the_flag_it_likely_means(argv, guess, capsys):
    from taskzoo.cli import main

    with pytest.raises(SystemExit) as exited:
        main(argv)
    error = capsys.readouterr().err
    assert exited.value.code == 2
    assert error.startswith(f"usage: taskzoo {argv[0]} [-h]"), error  # the command's own usage, not taskzoo's
    assert error.endswith(f"taskzoo {argv[0]}: error: unrecognized argument {guess}\n"), error


def test_unknown_top_level_flag_and_abbreviations(capsys):
    from taskzoo.cli import build_parser, main

    with pytest.raises(SystemExit):
        main(["--versoin"])
    error = capsys.readouterr().err
    assert error.endswith("taskzoo: error: unrecognized argument --versoin; did you mean --version?\n")
    # argparse's unique abbreviations still work: --epoch is --epochs.
    args = build_parser().parse_args(["finetune", "text-classification", "--train", "t", "--output-dir", "r",
                                      "--epoch", "2"])
    assert args.epochs == 2.0


def test_untrained_head_is_one_warning_line_without_the_transformers_table(tiny_model_path):
    import os

    # The sentence-similarity tiny model is a BERT without a classification head, as all-MiniLM-L6-v2 is.
    result = subprocess.run(
        [sys.executable, "-m", "taskzoo.cli", "predict", "text-classification", "--model",
         tiny_model_path("sentence-similarity"), "good", "bad"], capture_output=True, text=True, timeout=300,
        env={**os.environ, "TRANSFORMERS_VERBOSITY": "warning"})  # a user's default (the tests quieten it)
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["input"] for line in result.stdout.splitlines()] == ["good", "bad"]
    assert result.stderr == (f"taskzoo predict: warning: text-classification: {tiny_model_path('sentence-similarity')} "
                             "holds no trained head for this task (classifier.bias, classifier.weight were newly "
                             "initialised), so its outputs are random: fine-tune it first.\n")
