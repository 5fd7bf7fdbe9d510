"""The shared Accelerate loop, exercised through the tiny text classifier: each documented option has its effect."""

import json

import pytest
import torch
from torch.utils.data import get_worker_info

import taskzoo
from taskzoo.errors import TrainingError
from taskzoo.testing import toy_dataset
from taskzoo.training import LengthGroupedSampler

QUIET = dict(progress=False, save_checkpoints=False, plot=False)


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
        fresh_classifier.finetune(toy[0], epochs=1, batch_size=16, progress=False, output_dir=str(tmp_path),
                                  overwrite=True)
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


def test_weight_decay_spares_biases_and_norm_weights(fresh_classifier, toy, monkeypatch):
    real = type(fresh_classifier).training_step

    def no_gradient(self, model, batch):  # every gradient is 0: only the weight decay moves a parameter
        output = real(self, model, batch)
        return {**output, "loss": output["loss"] * 0.0}

    monkeypatch.setattr(type(fresh_classifier), "training_step", no_gradient)
    before = {name: p.detach().clone() for name, p in fresh_classifier.model.named_parameters()}
    fresh_classifier.finetune(toy[0], max_steps=3, batch_size=8, learning_rate=0.1, weight_decay=0.5,
                              scheduler="constant", **QUIET)
    shrink = (1 - 0.1 * 0.5) ** 3  # AdamW's decoupled decay, three steps
    spared = decayed = 0
    for name, parameter in fresh_classifier.model.named_parameters():
        if name.endswith(".bias") or "LayerNorm" in name:
            torch.testing.assert_close(parameter, before[name], rtol=0, atol=0, msg=name)
            spared += 1
        else:
            torch.testing.assert_close(parameter, before[name] * shrink, rtol=1e-5, atol=1e-7, msg=name)
            decayed += 1
    assert spared > 5 and decayed > 5


@pytest.mark.parametrize("max_grad_norm, clipped", [(1.0, [1.0] * 4), (0.25, [0.25] * 4), (0, []), (None, [])])
def test_max_grad_norm_clips_each_step_and_zero_or_none_disables_it(fresh_classifier, toy, monkeypatch,
                                                                    max_grad_norm, clipped):
    from accelerate import Accelerator

    calls, real = [], Accelerator.clip_grad_norm_

    def recording(self, parameters, max_norm, *args, **kwargs):
        calls.append(max_norm)
        return real(self, parameters, max_norm, *args, **kwargs)

    monkeypatch.setattr(Accelerator, "clip_grad_norm_", recording)
    fresh_classifier.finetune(toy[0], max_steps=4, batch_size=8, max_grad_norm=max_grad_norm, **QUIET)
    assert calls == clipped


def test_metric_for_best_picks_the_best_step_by_that_metric(fresh_classifier, toy):
    result = fresh_classifier.finetune(toy[0], eval=toy[1], max_steps=8, eval_every=2, batch_size=8,
                                       learning_rate=3e-3, metric_for_best="macro_f1", **QUIET)
    scores = {r["step"]: r["eval_macro_f1"] for r in result.history if "eval_macro_f1" in r}
    assert result.metric == "macro_f1" and result.best_metric == max(scores.values())
    assert result.best_step == min(step for step, score in scores.items() if score == result.best_metric)
    with pytest.raises(TrainingError, match=r"metric_for_best='bleu' is not among the metrics \['accuracy', "
                                            r"'macro_f1'\]"):
        fresh_classifier.finetune(toy[0], eval=toy[1], max_steps=1, metric_for_best="bleu", **QUIET)


def test_warmup_ratio_shapes_the_learning_rate_in_the_log(fresh_classifier, toy):
    result = fresh_classifier.finetune(toy[0], max_steps=10, warmup_ratio=0.4, learning_rate=1e-3, batch_size=8,
                                       log_every=1, **QUIET)
    rates = [r["learning_rate"] for r in result.history if "learning_rate" in r]
    # 4 warm-up steps (0.4 of 10) up to 1e-3, then linearly down to 0 at step 10.
    assert rates == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 5e-4 * 5 / 3, 5e-4 * 4 / 3, 5e-4, 5e-4 * 2 / 3,
                                   5e-4 / 3, 0.0], abs=1e-9)
    steps = fresh_classifier.finetune(toy[0], max_steps=10, warmup_ratio=0.4, warmup_steps=2, learning_rate=1e-3,
                                      batch_size=8, log_every=1, **QUIET)
    assert [r["learning_rate"] for r in steps.history][:2] == pytest.approx([5e-4, 1e-3])  # warmup_steps wins


@pytest.mark.parametrize("eval_batch_size, sizes", [(7, [7, 7, 7, 7, 4]), (None, [8, 8, 8, 8])])
def test_eval_batch_size_sets_the_evaluation_batches(fresh_classifier, toy, monkeypatch, eval_batch_size, sizes):
    seen, real = [], type(fresh_classifier).eval_step

    def recording(self, model, batch):
        seen.append(len(batch["labels"]))
        return real(self, model, batch)

    monkeypatch.setattr(type(fresh_classifier), "eval_step", recording)
    fresh_classifier.finetune(toy[0], eval=toy[1], max_steps=1, batch_size=8, eval_batch_size=eval_batch_size,
                              **QUIET)
    assert seen == sizes  # 32 evaluation rows; the default is batch_size


def test_num_workers_collates_in_worker_processes(fresh_classifier, toy, monkeypatch):
    collate, step, workers = type(fresh_classifier).collate, type(fresh_classifier).training_step, []

    def collate_where(self, examples):  # runs in a DataLoader worker when num_workers > 0
        info = get_worker_info()
        return {**collate(self, examples), "worker": -1 if info is None else info.id}

    def training_step(self, model, batch):
        workers.append(batch.pop("worker"))
        return step(self, model, batch)

    monkeypatch.setattr(type(fresh_classifier), "collate", collate_where)
    monkeypatch.setattr(type(fresh_classifier), "training_step", training_step)
    fresh_classifier.finetune(toy[0], max_steps=4, batch_size=8, num_workers=2, **QUIET)
    assert sorted(set(workers)) == [0, 1]
    workers.clear()
    fresh_classifier.finetune(toy[0], max_steps=2, batch_size=8, **QUIET)
    assert workers == [-1, -1]  # the default, 0: in this process


def test_length_grouped_sampler_covers_every_row_once_in_similar_length_batches():
    lengths = torch.randint(1, 200, (1003,), generator=torch.Generator().manual_seed(0)).tolist()
    size = 8
    sampler = LengthGroupedSampler(lengths, size, seed=3)
    order = list(sampler)
    assert sorted(order) == list(range(1003)) and len(sampler) == 1003
    batches = [order[i:i + size] for i in range(0, len(order), size)]
    assert len(batches[-1]) == 3 and all(len(b) == size for b in batches[:-1])  # the short batch is last

    def padding(batches):  # pad tokens a batch of these rows needs
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    shuffled = torch.randperm(1003, generator=torch.Generator().manual_seed(3)).tolist()
    assert padding(batches) < padding([shuffled[i:i + size] for i in range(0, 1003, size)]) / 10
    # Random beyond the length grouping: the batches are not simply sorted by length.
    firsts = [lengths[b[0]] for b in batches[:-1]]
    assert firsts != sorted(firsts) and firsts != sorted(firsts, reverse=True)


def test_length_grouped_sampler_order_depends_on_seed_and_epoch_alone():
    lengths = list(range(1, 101))
    first = LengthGroupedSampler(lengths, 4, seed=1)
    torch.manual_seed(123)  # the global RNG plays no part
    order = list(first)
    torch.manual_seed(456)
    assert list(LengthGroupedSampler(lengths, 4, seed=1)) == order == list(first)
    assert list(LengthGroupedSampler(lengths, 4, seed=2)) != order
    first.set_epoch(1)
    next_epoch = list(first)
    assert next_epoch != order and sorted(next_epoch) == sorted(order)
    again = LengthGroupedSampler(lengths, 4, seed=1)
    again.set_epoch(1)
    assert list(again) == next_epoch  # a resumed run sees the same epoch order


def test_on_cpu_the_optimizer_is_torchs_fused_adamw_and_steps_as_the_per_tensor_one(tiny_model_path, toy, monkeypatch):
    from taskzoo import training

    made = []

    class RecordedAdamW(torch.optim.AdamW):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(torch.optim, "AdamW", RecordedAdamW)

    def run():
        zoo = taskzoo.load("text-classification", model=tiny_model_path("text-classification"), device="cpu")
        result = zoo.finetune(toy[0], max_steps=6, batch_size=8, learning_rate=1e-3, weight_decay=0.01,
                              log_every=1, **QUIET)
        return [r["loss"] for r in result.history if "loss" in r], zoo.model.state_dict()

    fused_losses, fused_weights = run()
    assert [group["fused"] for group in made[-1].param_groups] == [True, True]
    monkeypatch.setattr(training, "_fused_adamw", lambda model, accelerator: None)  # torch's choice: per tensor
    losses, weights = run()
    assert not any(group["fused"] for group in made[-1].param_groups)
    assert fused_losses == pytest.approx(losses, abs=1e-5) and len(losses) == 6
    assert max((fused_weights[name] - weights[name]).abs().max().item() for name in weights) < 1e-5


def test_when_the_final_model_is_the_best_last_links_to_its_files(fresh_classifier, toy, tmp_path):
    train, held_out = toy  # evaluated once, at the end: the final model is the best one
    fresh_classifier.finetune(train, eval=held_out, output_dir=str(tmp_path), max_steps=3, eval_every=100,
                              batch_size=8, progress=False, plot=False)
    best, last = tmp_path / "best", tmp_path / "last"
    names = sorted(path.name for path in best.iterdir())
    assert "model.safetensors" in names and sorted(path.name for path in last.iterdir()) == names
    assert all((best / name).stat().st_ino == (last / name).stat().st_ino for name in names)  # written once
    text = "the film was really great and lovely"
    assert taskzoo.load("text-classification", model=last, device="cpu").predict(text) == \
        fresh_classifier.predict(text)
    assert not list(tmp_path.glob(".*"))  # no staging folders left behind
