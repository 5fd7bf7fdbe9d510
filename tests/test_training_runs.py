"""Fine-tuning that users can trust: exact resume after a kill, several processes, early stopping."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import taskzoo
from taskzoo.errors import TrainingError
from taskzoo.testing import toy_dataset

SCRIPT = Path(__file__).parent / "scripts" / "finetune_tiny.py"


def weights(folder: Path) -> dict:
    return load_file(str(folder / "model.safetensors"))


@pytest.mark.slow  # three processes; in the default run: the in-process resume tests below and test_interrupt_resume.py
def test_resume_after_sigkill_gives_the_same_weights(tiny_model_path, tmp_path):
    model = tiny_model_path("text-classification")
    straight = subprocess.run([sys.executable, SCRIPT, model, tmp_path / "straight"], capture_output=True,
                              text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr

    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, SCRIPT, model, killed, "--step-seconds", "0.3"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (killed / "checkpoints" / "step-12").exists():  # past two checkpoints, before the end
        assert process.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "last").exists()  # it really died mid-run

    resumed = subprocess.run([sys.executable, SCRIPT, model, killed, "--resume"], capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    expected, got = weights(tmp_path / "straight" / "last"), weights(killed / "last")
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)
    steps = [r["step"] for r in map(json.loads, (killed / "log.jsonl").read_text().splitlines()) if "loss" in r]
    assert steps == list(range(2, 25, 2))  # the log continues where the checkpoint was, without repeats
    assert len(list((killed / "checkpoints").glob("step-*"))) == 2  # keep_checkpoints


@pytest.mark.slow  # the streaming two-process run below checks the same (identical ranks, each sample once)
def test_two_processes_end_identical_and_count_each_eval_sample_once(tiny_model_path, tmp_path):
    model = tiny_model_path("text-classification")
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29571",
         SCRIPT, model, tmp_path / "ddp", "--eval-size", "37", "--max-steps", "8"],
        capture_output=True, text=True, timeout=400, env=env)
    assert launched.returncode == 0, launched.stderr[-3000:]
    ranks = [json.loads((tmp_path / "ddp" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["checksum"] == pytest.approx(ranks[1]["checksum"], rel=1e-9)
    assert ranks[0]["final_metrics"] == ranks[1]["final_metrics"]
    # Evaluation over 37 samples split over 2 processes equals a single-process evaluation.
    zoo = taskzoo.load("text-classification", model=tmp_path / "ddp" / "last", device="cpu")
    assert zoo.evaluate(toy_dataset("text-classification", 37, seed=1)) == pytest.approx(ranks[0]["final_metrics"])
    # Only the main process wrote the log: one record per step, no duplicates.
    steps = [r["step"] for r in map(json.loads, (tmp_path / "ddp" / "log.jsonl").read_text().splitlines())
             if "loss" in r]
    assert steps == [2, 4, 6, 8]


def test_early_stopping_restores_the_best_model(tiny_model_path, tmp_path):
    zoo = taskzoo.load("text-classification", model=tiny_model_path("text-classification"), device="cpu")
    held_out = toy_dataset("text-classification", 32, seed=1)
    # A learning rate this high diverges after a few evaluations: early stopping must catch it.
    result = zoo.finetune(toy_dataset("text-classification", 256, seed=0), eval=held_out, epochs=20,
                          learning_rate=3e-3, batch_size=16, eval_every=4, early_stopping_patience=2,
                          early_stopping_min_delta=0.001, progress=False, output_dir=str(tmp_path))
    evaluations = [r for r in result.history if "eval_accuracy" in r]
    assert result.steps < 20 * 16  # stopped early
    assert len(evaluations) >= 3
    after_best = [r for r in evaluations if r["step"] > result.best_step]
    assert len(after_best) == 2  # exactly `patience` evaluations without improvement
    assert zoo.evaluate(held_out)["accuracy"] == pytest.approx(result.best_metric)  # best weights restored


def test_gradient_accumulation_matches_a_bigger_batch(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    from taskzoo.testing import TINY_BERT, save_word_tokenizer

    # No dropout: nothing in the model depends on how samples are grouped into batches.
    tokenizer = save_word_tokenizer(tmp_path / "m", ["good", "bad", "film", "the", "plot"])
    config = BertConfig(vocab_size=len(tokenizer), hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                        id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1},
                        **TINY_BERT)
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(tmp_path / "m")
    train = toy_dataset("text-classification", 8, seed=0)
    results = []
    for batch_size, accumulation in [(8, 1), (4, 2)]:
        zoo = taskzoo.load("text-classification", model=tmp_path / "m", device="cpu")
        zoo.finetune(train, max_steps=1, batch_size=batch_size, gradient_accumulation_steps=accumulation,
                     learning_rate=1e-2, progress=False, save_checkpoints=False, output_dir=str(tmp_path / "o"))
        results.append(zoo.model.state_dict())
    for name, value in results[0].items():
        torch.testing.assert_close(results[1][name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_output_dir_with_other_files_is_refused_unless_overwrite(tiny_model_path, tmp_path):
    (tmp_path / "thesis.tex").write_text("precious")
    zoo = taskzoo.load("text-classification", model=tiny_model_path("text-classification"), device="cpu")
    train = toy_dataset("text-classification", 16)
    with pytest.raises(TrainingError, match=r"thesis.tex.*overwrite=True"):
        zoo.finetune(train, max_steps=1, output_dir=str(tmp_path), progress=False)
    zoo.finetune(train, max_steps=1, output_dir=str(tmp_path), overwrite=True, progress=False)
    assert (tmp_path / "thesis.tex").read_text() == "precious" and (tmp_path / "last").is_dir()


def test_training_curves_png(tiny_model_path, tmp_path):
    pytest.importorskip("matplotlib")
    zoo = taskzoo.load("text-classification", model=tiny_model_path("text-classification"), device="cpu")
    zoo.finetune(toy_dataset("text-classification", 32), eval=toy_dataset("text-classification", 16, seed=1),
                 max_steps=4, eval_every=2, log_every=1, progress=False, output_dir=str(tmp_path))
    png = (tmp_path / "training_curves.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000


def test_a_failing_save_leaves_the_previous_checkpoint_and_the_data_untouched(tiny_model_path, tmp_path):
    import errno

    zoo = taskzoo.load("text-classification", model=tiny_model_path("text-classification"), device="cpu")
    train = tmp_path / "train.csv"
    toy_dataset("text-classification", 32).to_csv(train)
    before_data = train.read_bytes()
    zoo.finetune(str(train), max_steps=2, progress=False, output_dir=str(tmp_path / "run"))
    saved = weights(tmp_path / "run" / "last")
    real_save = type(zoo).save

    def disk_full(self, path):  # writes part of the model, then the disk fills up
        real_save(self, path)
        (Path(path) / "model.safetensors").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    zoo.save = disk_full.__get__(zoo)
    with pytest.raises(OSError, match="No space left"):
        zoo.finetune(str(train), max_steps=2, progress=False, output_dir=str(tmp_path / "run"), overwrite=True)
    for name, value in weights(tmp_path / "run" / "last").items():
        assert torch.equal(value, saved[name])
    assert train.read_bytes() == before_data
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]  # no staging debris


def test_a_failing_training_state_save_keeps_the_previous_checkpoint_and_resume_works(tiny_model_path, tmp_path,
                                                                                     monkeypatch):
    import errno

    from accelerate import Accelerator

    from taskzoo.checkpoints import checkpoint_folders

    model, train = tiny_model_path("text-classification"), toy_dataset("text-classification", 48)
    options = dict(max_steps=6, batch_size=8, learning_rate=3e-3, checkpoint_every=2, log_every=1, progress=False,
                   plot=False)
    taskzoo.load("text-classification", model=model, device="cpu").finetune(
        train, output_dir=str(tmp_path / "straight"), **options)

    real_save = Accelerator.save_state

    def disk_full_at_step_4(self, output_dir=None, **kwargs):  # writes the state, then the disk fills up
        real_save(self, output_dir, **kwargs)
        if "step-4" in str(output_dir):
            (Path(output_dir) / "model.safetensors").write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Accelerator, "save_state", disk_full_at_step_4)
    run = tmp_path / "run"
    with pytest.raises(OSError, match="No space left"):
        taskzoo.load("text-classification", model=model, device="cpu").finetune(train, output_dir=str(run),
                                                                                **options)
    monkeypatch.undo()
    assert [p.name for p in checkpoint_folders(run)] == ["step-2"]  # the half-written step 4 is not a checkpoint
    assert not (run / "checkpoints" / "step-4").exists()
    resumed = taskzoo.load("text-classification", model=model, device="cpu").finetune(
        train, output_dir=str(run), resume_from="latest", **options)
    assert resumed.steps == 6
    assert [r["step"] for r in resumed.history if "loss" in r] == [1, 2, 3, 4, 5, 6]  # from step 2, no repeats
    expected = weights(tmp_path / "straight" / "last")
    for name, value in weights(run / "last").items():
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-6, msg=name)
    assert [p.name for p in checkpoint_folders(run)] == ["step-4", "step-6"]
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]  # staging debris gone


def run_script(model, output_dir, *options, nproc: int = 1, env: dict | None = None, port: int = 29573):
    launcher = [sys.executable] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(port)]
    return subprocess.run([*launcher, SCRIPT, model, output_dir, *options], capture_output=True, text=True,
                          timeout=400, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


@pytest.mark.slow  # three processes; the same run interrupted in this process is the next test
def test_a_default_streaming_run_resumes_after_sigkill_with_the_same_weights(tiny_model_path, tmp_path):
    """No checkpoint_every: checkpoints come with the evaluations (steps 8, 16) and epoch ends (12); the kill
    lands 4 batches into the second pass, which the stream's saved position continues."""
    model, options = tiny_model_path("text-classification"), ["--stream", "--checkpoint-every", "default",
                                                              "--eval-size", "16"]
    straight = run_script(model, tmp_path / "straight", *options)
    assert straight.returncode == 0, straight.stderr[-3000:]

    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, SCRIPT, model, killed, *options, "--step-seconds", "0.3"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (killed / "checkpoints" / "step-16").exists():
        assert process.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "last").exists()  # it really died mid-run
    assert sorted(p.name for p in (killed / "checkpoints").glob("step-*")) == ["step-12", "step-16"]

    resumed = run_script(model, killed, *options, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected, got = weights(tmp_path / "straight" / "last"), weights(killed / "last")
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)


def test_a_streaming_run_interrupted_in_its_second_pass_resumes_to_the_same_weights(tiny_model_path, tmp_path):
    """The run above, in this process: a Ctrl-C instead of SIGKILL (4 batches into the second pass, after the
    checkpoints at the epoch end, 12, and the evaluation at 16); resumed, the stream continues from its saved
    position and the weights equal a straight run's."""
    from datasets import Dataset, load_dataset

    from taskzoo.checkpoints import checkpoint_folders
    from taskzoo.errors import TrainingInterrupted

    model, rows = tiny_model_path("text-classification"), toy_dataset("text-classification", 96, seed=0)
    names, files = rows.features["label"].names, [str(tmp_path / f"part{i}.jsonl") for i in range(4)]
    rows = Dataset.from_dict({"text": rows["text"], "label": [names[i] for i in rows["label"]]})
    for i, file in enumerate(files):  # four shards, read as a stream, as finetune_tiny.py --stream does
        rows.shard(4, i, contiguous=True).to_json(file)
    options = dict(eval=toy_dataset("text-classification", 16, seed=1), max_steps=24, batch_size=8,
                   learning_rate=3e-3, eval_every=8, log_every=2, progress=False, plot=False)

    def stream():
        return load_dataset("json", data_files=files, split="train", streaming=True)

    taskzoo.load("text-classification", model=model, device="cpu").finetune(
        stream(), output_dir=str(tmp_path / "straight"), **options)
    zoo, steps = taskzoo.load("text-classification", model=model, device="cpu"), []

    def ctrl_c(_):
        steps.append(None)
        if len(steps) == 21:
            raise KeyboardInterrupt

    zoo.on_optimizer_step = ctrl_c
    with pytest.raises(TrainingInterrupted, match="interrupted at step 20 of 24"):
        zoo.finetune(stream(), output_dir=str(tmp_path / "run"), **options)
    assert [p.name for p in checkpoint_folders(tmp_path / "run")] == ["step-12", "step-16"]
    resumed = taskzoo.load("text-classification", model=model, device="cpu").finetune(
        stream(), output_dir=str(tmp_path / "run"), resume_from="latest", **options)
    assert [r["step"] for r in resumed.history if "loss" in r] == list(range(2, 25, 2))  # from 16, no repeats
    expected = weights(tmp_path / "straight" / "last")
    for name, value in weights(tmp_path / "run" / "last").items():
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-6, msg=name)


def test_two_processes_stream_their_own_shards_and_end_identical(tiny_model_path, tmp_path):
    model = tiny_model_path("text-classification")
    launched = run_script(model, tmp_path / "ddp", "--stream", "--record", "--checkpoint-every", "default",
                          "--eval-size", "37", "--max-steps", "9", nproc=2, env={"ACCELERATE_USE_CPU": "1"})
    assert launched.returncode == 0, launched.stderr[-3000:]
    ranks = [json.loads((tmp_path / "ddp" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["checksum"] == pytest.approx(ranks[1]["checksum"], rel=1e-9)
    # Each process reads 2 of the 4 files (48 rows, 6 batches a pass); the first pass sees every row once.
    seen = [json.loads((tmp_path / "ddp" / f"seen{r}.json").read_text()) for r in (0, 1)]
    assert [len(batches) for batches in seen] == [9, 9]
    first_pass = [row for batches in seen for batch in batches[:6] for row in batch]
    assert sorted(first_pass) == list(range(96))
    assert not set(sum(seen[0], [])) & set(sum(seen[1], []))  # no row is read by both
    # Evaluation over 37 streamed samples split over 2 processes equals a single-process evaluation.
    zoo = taskzoo.load("text-classification", model=tmp_path / "ddp" / "last", device="cpu")
    assert zoo.evaluate(toy_dataset("text-classification", 37, seed=1)) == pytest.approx(ranks[0]["final_metrics"])
    # The checkpoint at the epoch end (6) and evaluation (8) holds each process's stream position; only the
    # main process wrote the log.
    assert sorted(p.name for p in (tmp_path / "ddp" / "checkpoints" / "step-8").glob("stream_*")) == \
        ["stream_0.json", "stream_1.json"]
    steps = [r["step"] for r in map(json.loads, (tmp_path / "ddp" / "log.jsonl").read_text().splitlines())
             if "loss" in r]
    assert steps == [2, 4, 6, 8, 9]


@pytest.mark.slow  # two processes; new_accelerator's refusal is tested in this process below
def test_processes_launched_without_a_distributed_accelerator_are_refused(tiny_model_path, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29575",
         SCRIPT, tiny_model_path("text-classification"), tmp_path / "run", "--max-steps", "2"],
        capture_output=True, text=True, timeout=400, env={**env, "OMP_NUM_THREADS": "1"})
    assert launched.returncode != 0
    assert "LaunchError: 2 processes were launched" in launched.stderr and "ACCELERATE_USE_CPU=1" in launched.stderr
    assert not (tmp_path / "run" / "last").exists()


def test_new_accelerator_refuses_a_world_it_cannot_see(monkeypatch):
    from taskzoo.accelerators import new_accelerator
    from taskzoo.errors import LaunchError

    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(LaunchError, match=r"WORLD_SIZE=4.*accelerate launch"):
        new_accelerator()
