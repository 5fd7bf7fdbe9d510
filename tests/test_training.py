"""The shared Accelerate loop, exercised through the tiny text classifier."""

import json

import pytest
import torch

import taskzoo
from taskzoo.errors import TrainingError
from taskzoo.testing import toy_dataset


@pytest.fixture
def fresh_classifier(tiny_model_path):
    return taskzoo.load("text-classification", model=tiny_model_path("text-classification"), device="cpu")


@pytest.fixture(scope="module")
def toy():
    return toy_dataset("text-classification", 64, seed=0), toy_dataset("text-classification", 32, seed=1)


def test_checkpoints_log_and_history(fresh_classifier, toy, tmp_path):
    train, held_out = toy
    result = fresh_classifier.finetune(train, eval=held_out, output_dir=str(tmp_path), epochs=2, batch_size=16,
                                       learning_rate=3e-3, log_every=2, progress=False)
    assert (tmp_path / "best" / "config.json").exists() and (tmp_path / "last" / "config.json").exists()
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert records == result.history
    losses = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval_accuracy" in r]
    assert [r["step"] for r in losses] == [2, 4, 6, 8] and all("learning_rate" in r for r in losses)
    assert [r["step"] for r in evals] == [4, 8]  # once per epoch
    assert result.best_metric == max(r["eval_accuracy"] for r in evals)
    best = taskzoo.load("text-classification", model=tmp_path / "best", device="cpu")
    assert best.evaluate(held_out)["accuracy"] == pytest.approx(result.best_metric)
    assert not list(tmp_path.glob(".*"))  # no staging folders left behind


def test_max_steps_and_eval_every_steps(fresh_classifier, toy, tmp_path):
    train, held_out = toy
    result = fresh_classifier.finetune(train, eval=held_out, max_steps=5, eval_every=2, batch_size=8,
                                       progress=False, save_checkpoints=False, output_dir=str(tmp_path))
    assert result.steps == 5
    assert [r["step"] for r in result.history if "eval_accuracy" in r] == [2, 4, 5]  # and the final model


@pytest.mark.parametrize("scheduler", ["linear", "cosine", "constant"])
def test_schedulers_with_warmup(fresh_classifier, toy, scheduler):
    result = fresh_classifier.finetune(toy[0], max_steps=6, warmup_steps=2, scheduler=scheduler, batch_size=8,
                                       learning_rate=1e-3, log_every=1, progress=False, save_checkpoints=False)
    rates = [r["learning_rate"] for r in result.history if "learning_rate" in r]
    assert rates[0] == pytest.approx(5e-4)  # half-way through warm-up
    assert rates[1] == pytest.approx(1e-3)
    if scheduler == "constant":
        assert rates[-1] == pytest.approx(1e-3)
    else:
        assert rates[-1] == pytest.approx(0.0, abs=1e-9)


def test_gradient_accumulation_counts_optimizer_steps(fresh_classifier, toy):
    result = fresh_classifier.finetune(toy[0], epochs=1, batch_size=8, gradient_accumulation_steps=2,
                                       progress=False, save_checkpoints=False)
    assert result.steps == 4  # 64 samples / 8 per batch / 2 batches per step


def test_bf16_on_cpu_learns_like_fp32(tiny_model_path, toy):
    train = toy_dataset("text-classification", 256, seed=0)
    zoo = taskzoo.load("text-classification", model=tiny_model_path("text-classification"), device="cpu")
    zoo.finetune(train, epochs=3, batch_size=16, learning_rate=3e-3, mixed_precision="bf16", progress=False,
                 save_checkpoints=False)
    assert zoo.evaluate(toy[1])["accuracy"] >= 0.9
    assert next(zoo.model.parameters()).dtype == torch.float32  # master weights stay fp32


def test_nan_loss_stops_with_the_step_and_keeps_the_checkpoint(fresh_classifier, toy, tmp_path):
    result = fresh_classifier.finetune(toy[0], eval=toy[1], epochs=1, batch_size=16, progress=False,
                                       output_dir=str(tmp_path))
    saved = (tmp_path / "last" / "model.safetensors").read_bytes()
    with torch.no_grad():
        for parameter in fresh_classifier.model.classifier.parameters():
            parameter.fill_(float("nan"))
    with pytest.raises(TrainingError, match="loss became nan at step 1"):
        fresh_classifier.finetune(toy[0], epochs=1, batch_size=16, progress=False, output_dir=str(tmp_path))
    assert (tmp_path / "last" / "model.safetensors").read_bytes() == saved
    assert result.steps == 4


def test_bad_options_are_refused(fresh_classifier, toy):
    with pytest.raises(TypeError, match="unknown option 'learnig_rate'. Did you mean 'learning_rate'"):
        fresh_classifier.finetune(toy[0], learnig_rate=1e-3)
    with pytest.raises(ValueError, match="scheduler must be one of"):
        fresh_classifier.finetune(toy[0], scheduler="exponential")
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        fresh_classifier.finetune(toy[0], batch_size=0)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="fp16.*needs a CUDA GPU"):
            fresh_classifier.finetune(toy[0], mixed_precision="fp16")
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        fresh_classifier.predict(["a"], batch_size=0)


def test_tensorboard_receives_the_logged_losses_and_metrics(fresh_classifier, toy, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = fresh_classifier.finetune(toy[0], eval=toy[1], max_steps=3, log_every=1, eval_every=2,
                                       log_with="tensorboard", progress=False, output_dir=str(tmp_path),
                                       save_checkpoints=False)
    board = EventAccumulator(str(tmp_path / "taskzoo"))  # accelerate's run name (its hparams sit in a subfolder)
    board.Reload()
    for name in ("loss", "learning_rate", "eval_accuracy"):
        logged = [(r["step"], r[name]) for r in result.history if name in r]
        scalars = [(event.step, event.value) for event in board.Scalars(name)]
        assert [step for step, _ in scalars] == [step for step, _ in logged], name
        assert [value for _, value in scalars] == pytest.approx([value for _, value in logged], rel=1e-6), name
    assert [step for step, _ in logged] == [2, 3]  # eval_accuracy: every 2 steps and at the end
