"""Interrupting fine-tuning never loses work: the interrupt says where the last checkpoint is and how to resume,
a new run into an output_dir that holds an earlier run is refused (never deleting its checkpoints) until it
resumes it or starts over with overwrite, and predict --output never replaces a file without being told to."""

import json
import shlex
import signal
import subprocess
import sys
import time

import pytest

import taskzoo
from taskzoo.checkpoints import checkpoint_folders
from taskzoo.errors import ExistingRunError, TrainingInterrupted
from taskzoo.testing import toy_dataset

OPTIONS = dict(max_steps=12, batch_size=8, learning_rate=3e-3, checkpoint_every=3, log_every=1, progress=False,
               plot=False)


def interrupted_zoo(model, at_step: int):
    """The tiny classifier, whose fine-tuning is interrupted (as by Ctrl-C) during optimizer step ``at_step``."""
    zoo = taskzoo.load("text-classification", model=model, device="cpu")
    steps = []

    def ctrl_c(_):
        steps.append(None)
        if len(steps) == at_step:
            raise KeyboardInterrupt

    zoo.on_optimizer_step = ctrl_c
    return zoo


def loss_steps(run) -> list[int]:
    return [r["step"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "loss" in r]


def test_an_interrupted_run_is_refused_until_resumed_or_overwritten(tiny_model_path, tmp_path):
    model, train, run = tiny_model_path("text-classification"), toy_dataset("text-classification", 48), tmp_path / "run"
    with pytest.raises(TrainingInterrupted) as interrupted:
        interrupted_zoo(model, at_step=8).finetune(train, output_dir=str(run), **OPTIONS)
    assert isinstance(interrupted.value, KeyboardInterrupt)  # `except Exception` never swallows it
    message = str(interrupted.value)
    assert f"interrupted at step 7 of 12. Its last checkpoint is {run / 'checkpoints' / 'step-6'} (step 6)" in message
    assert "resume_from='latest'" in message and repr(str(run)) in message
    assert not (run / "last").exists()

    zoo = taskzoo.load("text-classification", model=model, device="cpu")
    with pytest.raises(ExistingRunError, match=r"unfinished run: its last checkpoint is .*step-6 \(step 6 of 12\)\. "
                                               r"Resume it with resume_from='latest', or start over"):
        zoo.finetune(train, output_dir=str(run), **OPTIONS)
    assert [p.name for p in checkpoint_folders(run)] == ["step-3", "step-6"]  # the refused run deleted nothing

    held_out = toy_dataset("text-classification", 8, seed=1)  # evaluated at the end: best/ is written too
    resumed = zoo.finetune(train, eval=held_out, output_dir=str(run), resume_from="latest", **OPTIONS)
    assert resumed.steps == 12 and (run / "best").is_dir()
    assert loss_steps(run) == list(range(1, 13))  # continued from step 6, no step twice
    assert json.loads((run / "taskzoo_run.json").read_text())["status"] == "finished"

    # A finished run is not replaced without a word either.
    with pytest.raises(ExistingRunError, match=r"holds a finished run of 12 steps .*overwrite=True"):
        zoo.finetune(train, output_dir=str(run), **OPTIONS)
    with pytest.raises(ValueError, match="pass one"):
        zoo.finetune(train, output_dir=str(run), resume_from="latest", overwrite=True, **OPTIONS)
    again = taskzoo.load("text-classification", model=model, device="cpu").finetune(
        train, output_dir=str(run), overwrite=True, **{**OPTIONS, "max_steps": 4})
    assert again.steps == 4 and loss_steps(run) == [1, 2, 3, 4]  # started over
    assert [p.name for p in checkpoint_folders(run)] == ["step-3"]  # the earlier run's (step-9, step-12) are gone
    assert not (run / "best").exists()  # the earlier run's best model: this run (no evaluation) wrote none


def test_an_interrupt_before_the_first_checkpoint_says_so_and_the_same_call_starts_over(tiny_model_path, tmp_path):
    model, train, run = tiny_model_path("text-classification"), toy_dataset("text-classification", 48), tmp_path / "run"
    with pytest.raises(TrainingInterrupted, match=r"interrupted at step 1 of 12, before its first checkpoint: "
                                                  r"nothing to resume .*the same call starts over"):
        interrupted_zoo(model, at_step=2).finetune(train, output_dir=str(run), **OPTIONS)
    result = taskzoo.load("text-classification", model=model, device="cpu").finetune(
        train, output_dir=str(run), **OPTIONS)  # nothing was kept that a new run would replace
    assert result.steps == 12 and loss_steps(run)[0] == 1


# ----------------------------------------------------------------------------------------- command line
def cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "taskzoo.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, **kwargs)


def cli_here(*args):
    """`taskzoo ARGS` through taskzoo.cli.main, the function the installed command calls, in this process (a
    process of its own spends seconds importing torch): an object with returncode and stderr, as cli() gives."""
    import contextlib
    import io
    import types

    from taskzoo.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(list(map(str, args)))
        except SystemExit as exited:  # argparse's refusals
            code = exited.code
    return types.SimpleNamespace(returncode=code, stderr=err.getvalue())


def test_the_command_line_refuses_an_unfinished_run_with_the_two_commands(tiny_model_path, tmp_path):
    model, train, run = tiny_model_path("text-classification"), toy_dataset("text-classification", 48), tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        interrupted_zoo(model, at_step=5).finetune(train, output_dir=str(run), **OPTIONS)
    train.to_csv(tmp_path / "train.csv")
    command = ["finetune", "text-classification", "--model", model, "--train", tmp_path / "train.csv",
               "--output-dir", run, "--max-steps", "12", "--set", "checkpoint_every=3"]
    refused = cli_here(*command)
    assert refused.returncode == 2
    line = shlex.join(["taskzoo", *map(str, command)])
    assert refused.stderr == (f"taskzoo finetune: error: --output-dir {run} holds an unfinished run: its last "
                              f"checkpoint is {run / 'checkpoints' / 'step-3'} (step 3 of 12). Resume it, or start "
                              f"over (deleting its checkpoints):\n  {line} --resume\n  {line} --overwrite\n")
    assert [p.name for p in checkpoint_folders(run)] == ["step-3"]
    both = cli_here(*command, "--resume", "--overwrite")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr


@pytest.mark.slow  # four fine-tuning processes: about a minute on a busy 2-core machine
def test_ctrl_c_then_rerun_refused_then_resume_and_overwrite(tiny_model_path, tmp_path):
    toy_dataset("text-classification", 256).to_csv(tmp_path / "train.csv")
    run = tmp_path / "run"
    command = ["finetune", "text-classification", "--model", tiny_model_path("text-classification"), "--train",
               tmp_path / "train.csv", "--output-dir", run, "--max-steps", "300", "--batch-size", "8",
               "--set", "checkpoint_every=5", "--set", "log_every=1"]
    process = subprocess.Popen([sys.executable, "-m", "taskzoo.cli", *map(str, command)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not checkpoint_folders(run):  # Ctrl-C once the first checkpoint is there
        assert process.poll() is None and time.time() < deadline, "the run ended before it could be interrupted"
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130
    found = checkpoint_folders(run)
    step = int(found[-1].name.split("-")[1])
    line = shlex.join(["taskzoo", *map(str, command)])
    # The message starts on a line of its own, after the progress bar, and ends with the command that resumes.
    assert "\ntaskzoo finetune: interrupted at step " in stderr
    assert stderr.endswith(f"Its last checkpoint is {found[-1]} (step {step}); resume from it with:\n"
                           f"  {line} --resume\n")

    refused = cli(*command)
    assert refused.returncode == 2 and f"{line} --resume\n  {line} --overwrite" in refused.stderr
    assert checkpoint_folders(run)[-1] == found[-1]  # still there

    resumed = cli(*shlex.split(f"{line} --resume")[1:])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads(resumed.stdout.splitlines()[-1])["steps"] == 300
    assert loss_steps(run) == list(range(1, 301))  # from the checkpoint on, each step once

    again = cli(*command, "--max-steps", "5", "--overwrite")
    assert again.returncode == 0, again.stderr[-2000:]
    assert loss_steps(run) == [1, 2, 3, 4, 5] and [p.name for p in checkpoint_folders(run)] == ["step-5"]


def test_predict_refuses_to_replace_an_output_file_unless_told(tiny_model_path, tmp_path):
    model, output = tiny_model_path("text-classification"), tmp_path / "preds.jsonl"
    output.write_text("precious\n")
    refused = cli("predict", "text-classification", "--model", model, "a good film", "--output", output)
    assert refused.returncode == 2
    assert refused.stderr == (f"taskzoo predict: error: --output {output} already exists: pass --resume to continue "
                              "it, or --overwrite to replace it.\n")
    assert output.read_text() == "precious\n"
    replaced = cli_here("predict", "text-classification", "--model", model, "a good film", "--output", output,
                        "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert [json.loads(line)["input"] for line in output.read_text().splitlines()] == ["a good film"]
