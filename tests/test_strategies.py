"""strategy="full" / "freeze" / "lora" on the text tasks (the same menu every transformers task offers)."""

import pytest
import torch
from datasets import ClassLabel, Dataset

import taskzoo
from taskzoo.strategies import count_parameters, is_peft, what_trains
from taskzoo.testing import toy_dataset


@pytest.fixture(scope="module")
def pretrained_body(trained_classifier, tmp_path_factory):
    """A classifier whose body has learned the toy words: what a pretrained checkpoint is for the toy data."""
    folder = tmp_path_factory.mktemp("pretrained")
    trained_classifier[0].save(folder)
    return folder


def relabelled(n, seed):
    """The toy data with other label names, so that fine-tuning must build and train a new head."""
    data = toy_dataset("text-classification", n, seed)
    return Dataset.from_dict({"text": data["text"], "label": data["label"]}).cast_column(
        "label", ClassLabel(names=["bad", "good"]))


def test_freeze_trains_the_head_only(pretrained_body):
    zoo = taskzoo.load("text-classification", model=pretrained_body, device="cpu")
    body_before = {k: v.clone() for k, v in zoo.model.bert.state_dict().items()}
    zoo.finetune(relabelled(256, 0), epochs=3, learning_rate=5e-2, batch_size=16, strategy="freeze",
                 progress=False, save_checkpoints=False, plot=False)
    assert zoo.labels == ["bad", "good"]
    trainable, total = count_parameters(zoo.model)
    assert trainable == sum(p.numel() for p in zoo.model.classifier.parameters()) < total / 100
    assert what_trains(zoo.model, "freeze") == (f"training {trainable:,} of {total:,} parameters "
                                                "(the head; the body is frozen)")
    for name, value in zoo.model.bert.state_dict().items():
        assert torch.equal(value, body_before[name]), name
    assert zoo.evaluate(relabelled(64, 1))["accuracy"] >= 0.9


def test_lora_trains_adapters_and_head_and_saves_merged_or_alone(pretrained_body, tmp_path):
    from transformers import AutoModelForSequenceClassification

    zoo = taskzoo.load("text-classification", model=pretrained_body, device="cpu")
    zoo.finetune(relabelled(256, 0), epochs=3, learning_rate=2e-2, batch_size=16, strategy="lora",
                 progress=False, save_checkpoints=False, plot=False)
    assert is_peft(zoo.model)
    trainable, total = count_parameters(zoo.model)
    assert trainable < total / 5
    assert zoo.evaluate(relabelled(64, 1))["accuracy"] >= 0.9
    texts = ["a lovely film", "an awful plot", "good"]
    expected = zoo.predict(texts)

    zoo.save(tmp_path / "merged")  # default: adapters merged into a plain model
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged")
    assert plain.config.id2label == {0: "bad", 1: "good"}
    merged = taskzoo.load("text-classification", model=tmp_path / "merged", device="cpu").predict(texts)
    for a, b in zip(merged, expected):
        assert a["label"] == b["label"] and a["score"] == pytest.approx(b["score"], abs=1e-5)

    zoo.training_options["save_merged"] = False
    zoo.save(tmp_path / "adapters")
    assert (tmp_path / "adapters" / "adapter_config.json").exists()
    assert (tmp_path / "adapters" / "adapter_model.safetensors").stat().st_size < \
        (tmp_path / "merged" / "model.safetensors").stat().st_size


def test_sentence_similarity_lora_and_freeze(tiny_model_path, tmp_path):
    from sentence_transformers import SentenceTransformer

    zoo = taskzoo.load("sentence-similarity", model=tiny_model_path("sentence-similarity"), device="cpu")
    with pytest.raises(ValueError, match="no head to train alone"):
        zoo.finetune(toy_dataset("sentence-similarity", 16), strategy="freeze")
    zoo.finetune(toy_dataset("sentence-similarity", 32), max_steps=2, strategy="lora", progress=False,
                 save_checkpoints=False, plot=False)
    trainable, total = count_parameters(zoo.model)
    assert 0 < trainable < total / 5
    zoo.save(tmp_path / "merged")
    reloaded = SentenceTransformer(str(tmp_path / "merged"), device="cpu")
    pair = ("rain snow", "storm wind")
    embeddings = reloaded.encode(list(pair), convert_to_tensor=True)
    assert zoo.predict(pair)["score"] == pytest.approx(
        torch.nn.functional.cosine_similarity(embeddings[:1], embeddings[1:]).item(), abs=1e-5)


def test_unknown_strategy(tiny_model_path):
    zoo = taskzoo.load("text-classification", model=tiny_model_path("text-classification"), device="cpu")
    with pytest.raises(ValueError, match="supports strategy 'full' or 'freeze' or 'lora'"):
        zoo.finetune(toy_dataset("text-classification", 16), strategy="prefix-tuning")


def rows_through(module: torch.nn.Module) -> list[int]:
    """The batch size of every forward pass through ``module`` from now on."""
    rows = []
    module.register_forward_hook(lambda _, args, kwargs, output: rows.append(output[0].shape[0]), with_kwargs=True)
    return rows


def test_cached_features_train_and_evaluate_the_same_head_as_running_the_body(pretrained_body):
    results = []
    for cache in (True, False):
        zoo = taskzoo.load("text-classification", model=pretrained_body, device="cpu")
        torch.manual_seed(0)
        zoo.prepare_for_training(relabelled(64, 0))  # the new head, built here so that dropout can be...
        for module in zoo.model.modules():  # ...turned off: then the body's output is the same in both runs
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        body_rows = rows_through(zoo.model.bert)
        # Evaluated every 2 of the 12 steps.
        result = zoo.finetune(relabelled(64, 0), eval=relabelled(32, 1), epochs=3, learning_rate=5e-2,
                              eval_every=2, batch_size=16, strategy="freeze", cache_features=cache,
                              group_by_length=False, progress=False, save_checkpoints=False, plot=False)
        # The body reads the 64 training and 32 evaluation rows once to fill the cache; without one, the training
        # rows every epoch and the evaluation rows at each of the 6 evaluations.
        assert sum(body_rows) == (64 + 32 if cache else 3 * 64 + 6 * 32)
        evaluations = [record for record in result.history if "eval_accuracy" in record]
        assert len(evaluations) == 6
        results.append((zoo.model.classifier.weight.detach().clone(), evaluations, zoo.evaluate(relabelled(64, 1))))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-4, atol=1e-5)
    cached, uncached = results[0][1], results[1][1]
    for ours, theirs in zip(cached, uncached):
        assert ours["eval_accuracy"] == pytest.approx(theirs["eval_accuracy"])
        assert ours["eval_macro_f1"] == pytest.approx(theirs["eval_macro_f1"])
    assert results[0][2]["accuracy"] >= 0.9 and results[0][2] == pytest.approx(results[1][2])


@pytest.mark.parametrize("strategy", ["full", "lora"])
def test_no_feature_cache_when_the_body_trains(pretrained_body, strategy):
    zoo = taskzoo.load("text-classification", model=pretrained_body, device="cpu")
    zoo.prepare_for_training(relabelled(32, 0))
    body_rows = rows_through(zoo.model.bert)
    result = zoo.finetune(relabelled(32, 0), eval=relabelled(16, 1), epochs=2, batch_size=16, strategy=strategy,
                          cache_features=True, progress=False, save_checkpoints=False, plot=False)
    # The body changes every step, so it runs on every training and every evaluation row, epoch after epoch.
    assert sum(body_rows) == 2 * (32 + 16)
    assert len([record for record in result.history if "eval_accuracy" in record]) == 2


def test_feature_cache_is_built_anew_for_each_run(pretrained_body):
    """A cache from an earlier run never serves a later one: after the body trained, freeze sees the new body."""
    zoo = taskzoo.load("text-classification", model=pretrained_body, device="cpu")
    options = dict(eval=relabelled(32, 1), epochs=1, batch_size=16, learning_rate=5e-2, progress=False,
                   save_checkpoints=False, plot=False)
    zoo.finetune(relabelled(64, 0), strategy="freeze", **options)
    zoo.finetune(relabelled(64, 0), strategy="full", **{**options, "learning_rate": 1e-3})
    body_rows = rows_through(zoo.model.bert)
    scores = [zoo.finetune(relabelled(64, 0), strategy="freeze", cache_features=cache, seed=1, **options).history[-1]
              for cache in (True, False)]
    assert sum(body_rows) == (64 + 32) + (64 + 32)  # the cached run read the changed body once, then the other
    assert scores[0]["eval_accuracy"] == pytest.approx(scores[1]["eval_accuracy"])


def test_the_run_says_plainly_what_trains():
    model = torch.nn.Sequential(torch.nn.Linear(100, 10), torch.nn.Linear(10, 2))  # 1,010 + 22 parameters
    assert what_trains(model, "full") == "training all 1,032 parameters"
    model[0].requires_grad_(False)  # as a task that keeps a part frozen under "full" (a speech front end)
    assert what_trains(model, "full") == ("training 22 of 1,032 parameters (strategy 'full': this task keeps the "
                                          "others frozen)")


class Layout(torch.nn.Module):
    """A model laid out as a transformers model is: named children, some without parameters."""

    def __init__(self, prefix, *names):
        super().__init__()
        self.base_model_prefix = prefix
        for name in names:
            self.add_module(name, torch.nn.Dropout() if name == "dropout" else torch.nn.Linear(2, 2))


@pytest.mark.parametrize(("prefix", "names", "head"), [
    ("bert", ["bert", "dropout", "classifier"], ["classifier"]),  # the body is base_model_prefix's child
    ("", ["backbone", "decode_head", "auxiliary_head"], ["decode_head", "auxiliary_head"]),  # UperNet: no prefix
    ("clip", ["vision_model", "classifier"], ["classifier"]),  # the prefix names no child: a vision tower
    ("model", ["encoder", "ctc_head"], ["ctc_head"]),  # an encoder
    ("hgnetv2", ["embedder", "encoder", "fc"], ["fc"]),  # an encoder and its embeddings
])
def test_the_head_is_what_is_outside_the_pretrained_body(prefix, names, head):
    from taskzoo.strategies import head_modules

    assert head_modules(Layout(prefix, *names)) == head


@pytest.mark.parametrize("names", [["encoder", "decoder", "lm_head"], ["stem", "blocks", "fc"], ["backbone"]])
def test_a_head_that_cannot_be_told_is_refused_naming_the_modules(names):
    from taskzoo.strategies import head_modules

    with pytest.raises(ValueError, match=f"Cannot tell the head of Layout .*{', '.join(names)}.*strategy='full'"):
        head_modules(Layout("", *names))
