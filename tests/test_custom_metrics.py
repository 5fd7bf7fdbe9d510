"""Your own metrics: callables and local `evaluate` scripts next to the task's, in evaluate(), finetune(),
under two processes, as metric_for_best, when they fail, and from the command line."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import taskzoo
from taskzoo.cli import main as cli_main
from taskzoo.custom_metrics import MetricError, greater_is_better
from taskzoo.testing import toy_dataset

SCRIPT = Path(__file__).parent / "scripts" / "finetune_with_metrics.py"

# A local evaluate metric script per input form; evaluate.load(path) loads it offline.
SCRIPTS = {
    "labels": ('{"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}', """
        correct = [p == r for p, r in zip(predictions, references)]
        return {"hits": float(np.mean(correct)), "predicted_ones": float(np.mean(np.asarray(predictions) == 1))}"""),
    "texts": ('{"predictions": datasets.Value("string"), "references": datasets.Value("string")}', """
        return {"exact": float(np.mean([p == r for p, r in zip(predictions, references)])),
                "reference_words": float(np.mean([len(r.split()) for r in references])),
                "predicted_chars": float(np.mean([len(p) for p in predictions]))}"""),
    "boxes": ("""{"predictions": datasets.List({"label": datasets.Value("string"), "score": datasets.Value("float64"),
                                             "box": {k: datasets.Value("float64") for k in CORNERS}}),
               "references": datasets.List({"label": datasets.Value("string"),
                                            "box": {k: datasets.Value("float64") for k in CORNERS}})}""", """
        return {"objects": float(np.mean([len(r) for r in references])),
                "red_share": float(np.mean([o["label"] == "red" for r in references for o in r])),
                "found": float(np.mean([len(p) for p in predictions])),
                "widest": max(o["box"]["xmax"] - o["box"]["xmin"] for r in references for o in r)}"""),
    "masks": ('{"predictions": datasets.Sequence(datasets.Sequence(datasets.Value("int64"))), '
              '"references": datasets.Sequence(datasets.Sequence(datasets.Value("int64")))}', """
        right = total = 0
        for prediction, reference in zip(predictions, references):
            prediction, reference = np.asarray(prediction), np.asarray(reference)
            counted = reference != 255
            right, total = right + (prediction == reference)[counted].sum(), total + counted.sum()
        return {"pixel_accuracy": float(right / total)}"""),
}


def write_metric(folder: Path, form: str, name: str = "my_metric") -> Path:
    """A metric script ``folder/name.py`` whose _compute is the ``form`` body from SCRIPTS."""
    features, body = SCRIPTS[form]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(f"""\
        import datasets
        import evaluate
        import numpy as np

        CORNERS = ("xmin", "ymin", "xmax", "ymax")


        class MyMetric(evaluate.Metric):
            def _info(self):
                return evaluate.MetricInfo(description="a test metric", citation="", inputs_description="",
                                           features=datasets.Features({features}))

            def _compute(self, predictions, references):
        """) + textwrap.indent(textwrap.dedent(body).strip("\n"), " " * 8) + "\n")
    return path


def as_callable(form: str):
    """The same computation as the script's, as a plain function."""
    namespace = {"np": np}
    exec("def same(predictions, references):\n" + textwrap.indent(textwrap.dedent(SCRIPTS[form][1]).strip("\n"),
                                                                  "    "), namespace)
    return namespace["same"]


def toy(task: str, n: int, seed: int = 1):
    return toy_dataset(task, n, seed=seed)


@pytest.mark.parametrize("task, form", [("text-classification", "labels"), ("translation", "texts"),
                                        ("object-detection", "boxes"), ("image-segmentation", "masks")])
def test_a_local_evaluate_script_gives_what_the_same_callable_gives(task, form, tiny_model_path, tmp_path):
    import evaluate

    module = evaluate.load(str(write_metric(tmp_path / "metric", form)))
    zoo = taskzoo.load(task, model=tiny_model_path(task), device="cpu")
    data = toy(task, 6)
    scores = zoo.evaluate(data, metrics={"script": module, "function": as_callable(form)})
    own = {key.split("_", 1)[1] for key in scores if key.startswith("script_")}
    assert own and own == {key.split("_", 1)[1] for key in scores if key.startswith("function_")}
    for key in own:
        assert scores[f"script_{key}"] == pytest.approx(scores[f"function_{key}"], rel=1e-6), key
    assert zoo.primary_metric in scores  # the task's metrics are still there
    # What the metrics received is the data in its natural form, each example once.
    if form == "labels":
        assert scores["script_hits"] == pytest.approx(scores["accuracy"])
    elif form == "texts":
        assert scores["script_reference_words"] == pytest.approx(np.mean([len(t.split()) for t in data["target"]]))
    elif form == "boxes":
        assert scores["script_objects"] == pytest.approx(np.mean([len(o["bbox"]) for o in data["objects"]]))
        assert scores["script_widest"] == pytest.approx(max(b[2] for o in data["objects"] for b in o["bbox"]))
        assert scores["script_found"] == zoo.model.config.num_queries  # threshold 0: every query
    else:
        assert scores["script_pixel_accuracy"] == pytest.approx(scores["overall_accuracy"])


def test_image_classification_gets_the_best_class_id(tiny_model_path):
    zoo = taskzoo.load("image-classification", model=tiny_model_path("image-classification"), device="cpu")
    seen = {}

    def record(predictions, references):
        seen.update(predictions=predictions, references=references)
        return {"agree": float(np.mean(np.asarray(predictions) == np.asarray(references)))}

    data = toy("image-classification", 6)
    scores = zoo.evaluate(data, metrics=[record])
    assert scores["agree"] == pytest.approx(scores["accuracy"])
    best = [zoo.labels.index(out[0]["label"]) for out in zoo.predict(list(data["image"]))]
    assert seen["predictions"] == best and seen["references"] == list(data["label"])


def test_text_to_image_metrics_get_the_rendered_images_and_their_prompts(tiny_model_path):
    zoo = taskzoo.load("text-to-image", model=tiny_model_path("text-to-image"), device="cpu",
                       clip_inference_steps=2)
    data = toy("text-to-image", 3)
    seen = {}

    def record(images, prompts):
        seen.update(images=images, prompts=prompts)
        return {"brightness": float(np.mean([np.asarray(image).mean() for image in images]))}

    scores = zoo.evaluate(data, metrics=[record])
    assert seen["prompts"] == list(data["text"])
    assert [image.size for image in seen["images"]] == [(zoo.resolution, zoo.resolution)] * 3
    assert 0 < scores["brightness"] < 255 and "eval_loss" in scores


def test_results_are_named_and_checked(trained_classifier):
    zoo, _, _, held_out = trained_classifier

    seen = {}

    def mean_prediction(predictions, references):
        seen["predictions"] = predictions
        return np.float32(np.mean(predictions))  # a single number: named after the function

    def with_extras(predictions, references):
        return {"count": len(predictions), "per_sample": list(predictions), "note": "text"}

    with pytest.warns(UserWarning, match=r"left out \['per_sample', 'note'\]"):
        scores = zoo.evaluate(held_out, metrics=[mean_prediction, with_extras])
    assert scores["mean_prediction"] == pytest.approx(np.mean(seen["predictions"]))
    assert scores["count"] == len(held_out) and "per_sample" not in scores and "note" not in scores

    def clashing(predictions, references):
        return {"accuracy": 0.125}

    with pytest.raises(MetricError, match=r"clashing.*\['accuracy'\].*already reports") as caught:
        zoo.evaluate(held_out, metrics=[clashing])
    assert caught.value.metrics == zoo.evaluate(held_out)  # the task's own scores ride along, not overwritten
    assert zoo.evaluate(held_out, metrics={"mine": clashing})["mine_accuracy"] == 0.125


def test_bad_metrics_are_refused_before_any_work(trained_classifier, tmp_path):
    zoo, _, _, held_out = trained_classifier
    with pytest.raises(TypeError, match="A metric must be a callable"):
        zoo.evaluate(held_out, metrics=[42])
    with pytest.raises(ValueError, match="no such metric script"):
        zoo.evaluate(held_out, metrics=[str(tmp_path / "missing.py")])
    with pytest.raises(ValueError, match="greater_is_better"):
        zoo.finetune(held_out, greater_is_better="yes")


def test_a_failing_metric_raises_in_evaluate_naming_it(trained_classifier):
    zoo, _, _, held_out = trained_classifier

    def broken_f1(predictions, references):
        raise ZeroDivisionError("no positives")

    with pytest.raises(MetricError, match=r"broken_f1: ZeroDivisionError: no positives") as caught:
        zoo.evaluate(held_out, metrics=[broken_f1])
    assert set(caught.value.metrics) == {"accuracy", "macro_f1"}


def test_a_failing_metric_is_logged_and_fine_tuning_completes(tiny_model_path, tmp_path, capsys):
    zoo = taskzoo.load("text-classification", model=tiny_model_path("text-classification"), device="cpu")

    def flaky(predictions, references):
        raise ValueError("the reference file is locked")

    result = zoo.finetune(toy("text-classification", 64, 0), eval=toy("text-classification", 16), max_steps=4,
                          eval_every=2, batch_size=16, learning_rate=3e-3, output_dir=tmp_path / "run",
                          metrics=[flaky], metric_for_best="flaky_score", progress=False, plot=False)
    assert result.steps == 4 and "accuracy" in result.final_metrics
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    evaluations = [r for r in records if "eval_accuracy" in r]
    assert [r["step"] for r in evaluations] == [2, 4]
    assert all(r["metric_errors"] == "flaky: ValueError: the reference file is locked" for r in evaluations)
    printed = capsys.readouterr()
    assert "flaky: ValueError: the reference file is locked" in printed.out + printed.err
    assert result.best_step is None and not (tmp_path / "run" / "best").exists()  # nothing to pick the best by
    assert (tmp_path / "run" / "last").exists()


def checksum(model) -> float:
    return sum(float(p.detach().double().sum()) for p in model.parameters())


@pytest.mark.parametrize("name, greater, expected", [("agreement", None, 1), ("agreement_error", None, 0),
                                                     ("agreement", False, 0)])
def test_metric_for_best_on_your_metric_picks_its_best_checkpoint(name, greater, expected, tiny_model_path,
                                                                   tmp_path):
    zoo = taskzoo.load("text-classification", model=tiny_model_path("text-classification"), device="cpu")
    values, weights = iter([0.2, 0.9, 0.5]), []

    def scripted(predictions, references):  # a fixed series of values; the model as it was at each one
        weights.append(checksum(zoo.model))
        return {name: next(values)}

    result = zoo.finetune(toy("text-classification", 48, 0), eval=toy("text-classification", 8), max_steps=3,
                          eval_every=1, batch_size=16, learning_rate=3e-3, output_dir=tmp_path / "run",
                          metrics=[scripted], metric_for_best=name, greater_is_better=greater,
                          progress=False, plot=False)
    assert result.best_step == expected + 1 and result.best_metric == [0.2, 0.9, 0.5][expected]
    best = taskzoo.load("text-classification", model=tmp_path / "run" / "best", device="cpu")
    assert checksum(best.model) == pytest.approx(weights[expected], rel=1e-6)
    assert checksum(best.model) != pytest.approx(weights[2], rel=1e-6)  # not simply the last model


def test_greater_is_better_from_names():
    assert not greater_is_better("wer_domain") and not greater_is_better("eval_loss")
    assert not greater_is_better("score", "ter")  # sacrebleu TER reports "score": its module's name tells
    assert greater_is_better("f1_cat") and greater_is_better("center_accuracy") and greater_is_better("clip_score")


@pytest.mark.slow  # two processes; the default run covers the gathered evaluation with a streamed two-process run
def test_two_processes_score_your_metric_once_over_every_example(tiny_model_path, tmp_path):
    write_metric(tmp_path / "metric", "labels")
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29583",
         SCRIPT, tiny_model_path("text-classification"), tmp_path / "ddp", tmp_path / "metric" / "my_metric.py"],
        capture_output=True, text=True, timeout=400, env=env)
    assert launched.returncode == 0, launched.stderr[-3000:]
    calls = [json.loads(line) for line in (tmp_path / "ddp" / "metric_calls.jsonl").read_text().splitlines()]
    # Two evaluations (steps 4 and 8), each scored once, on rank 0, over all 37 examples, each example once.
    assert [call["rank"] for call in calls] == [0, 0]
    assert all(call["references"] == list(toy("text-classification", 37)["label"]) for call in calls)
    ranks = [json.loads((tmp_path / "ddp" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["final_metrics"] == ranks[1]["final_metrics"]  # broadcast: every rank has the same scores
    assert ranks[0]["final_metrics"]["examples"] == 37
    assert ranks[0]["final_metrics"]["hits"] == pytest.approx(ranks[0]["final_metrics"]["accuracy"])
    assert ranks[0]["best_step"] == ranks[1]["best_step"]


def test_cli_metric_flag(tiny_model_path, tmp_path, capsys):
    script = write_metric(tmp_path / "metric", "labels")
    data = tmp_path / "data.jsonl"
    toy("text-classification", 12).to_json(data)
    model = str(tiny_model_path("text-classification"))
    assert cli_main(["evaluate", "text-classification", "--model", model, "--data", str(data),
                     "--metric", str(script)]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["hits"] == pytest.approx(scores["accuracy"])
    assert cli_main(["finetune", "text-classification", "--model", model, "--train", str(data), "--eval", str(data),
                     "--output-dir", str(tmp_path / "run"), "--max-steps", "2", "--metric", str(script),
                     "--set", "metric_for_best=hits", "--set", "progress=false"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["metric"] == "hits" and summary["best_metric"] == summary["final_metrics"]["hits"]
    assert cli_main(["evaluate", "text-classification", "--model", model, "--data", str(data),
                     "--metric", str(tmp_path / "nowhere" / "metric.py")]) == 2
    assert "no such metric script" in capsys.readouterr().err
