"""The server's batching and start-up: batches split into length groups of least cost (the plan itself is
tested in test_predict_batches.py), timed-out requests dropped from the queue, text inputs checked item by item, and
/health answering 503 while the model loads."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn) is not installed")
from fastapi.testclient import TestClient

import taskzoo
from taskzoo.cli import main
from taskzoo.serving import create_app
from taskzoo.serving.app import LoadingApp
from taskzoo.serving.process import free_port
from taskzoo.serving.request_batches import Batcher, LengthGroupedPredict


@pytest.fixture(scope="module")
def classifier(tiny_model_path):
    return taskzoo.load("text-classification", model=tiny_model_path("text-classification"), device="cpu")


def test_the_fixed_cost_is_learned_from_the_calls(classifier):
    grouped = LengthGroupedPredict(classifier)
    assert grouped.fixed_cost() is None  # nothing measured yet
    for units in range(100, 1700, 100):  # seconds = 20 ms per call + 0.1 ms per unit of padded length
        grouped.timings.append((units, 0.020 + 0.0001 * units))
    assert grouped.fixed_cost() == pytest.approx(200.0)
    grouped.timings.clear()
    grouped.timings.extend([(0, 0.01)] * 10)  # no spread in length (images): unknown
    assert grouped.fixed_cost() is None


def test_mixed_lengths_run_in_groups_with_the_outputs_in_order(classifier, monkeypatch):
    texts = ["good " * 60, "bad film", "lovely " * 55, "awful plot", "fine", "dull " * 40, "great acting"]
    expected = [classifier.predict(text) for text in texts]
    grouped = LengthGroupedPredict(classifier)
    grouped.timings.extend((units, 0.005 + 0.00001 * units) for units in range(10, 1000, 90))  # fixed: 500 chars
    calls = []
    predict = classifier.predict
    monkeypatch.setattr(classifier, "predict",
                        lambda items, **options: calls.append(items) or predict(items, **options))
    outputs = grouped(texts, {})
    # One call would pad all seven to 385 characters; two calls, the long three and the short four, cost less.
    assert [sorted(map(len, call)) for call in calls] == [[200, 300, 385], [4, 8, 10, 12]]
    for output, wanted in zip(outputs, expected):
        assert output["label"] == wanted["label"] and output["score"] == pytest.approx(wanted["score"], abs=1e-5)


def test_a_request_that_timed_out_in_the_queue_is_not_predicted():
    calls = []

    def slow_predict(items, parameters):
        calls.append(list(items))
        time.sleep(0.4)
        return items

    async def scenario():
        batcher = Batcher(slow_predict, max_batch_size=2, max_wait_ms=0)
        first = asyncio.ensure_future(batcher.submit(["a"], {}, "key"))
        await asyncio.sleep(0.1)  # "a" is being predicted
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(batcher.submit(["b"], {}, "key"), 0.1)
        later = [asyncio.ensure_future(batcher.submit([item], {}, "key")) for item in ("c", "d")]
        results = [await first, *[await job for job in later]]
        await batcher.close()
        return results

    assert asyncio.run(scenario()) == [["a"], ["c"], ["d"]]
    assert calls == [["a"], ["c", "d"]]  # "b" neither ran nor took a place in the next batch


def test_the_batcher_waits_for_company_only_after_a_batch_that_had_some():
    calls = []

    def record(items, parameters):
        calls.append(list(items))
        return items

    async def scenario():
        loop = asyncio.get_running_loop()
        batcher = Batcher(record, max_batch_size=8, max_wait_ms=600)
        await batcher.submit(["a"], {}, "key")  # the first request waits for company; none comes
        started = loop.time()
        await batcher.submit(["b"], {}, "key")  # alone last time: runs at once
        lone_seconds = loop.time() - started
        await asyncio.gather(*(batcher.submit([item], {}, "key") for item in "cde"))  # queued together
        first = asyncio.ensure_future(batcher.submit(["f"], {}, "key"))  # company last time: waits...
        await asyncio.sleep(0.2)
        await asyncio.gather(first, batcher.submit(["g"], {}, "key"))  # ...for this one
        await batcher.close()
        return lone_seconds

    lone_seconds = asyncio.run(scenario())
    assert calls == [["a"], ["b"], ["c", "d", "e"], ["f", "g"]]
    assert lone_seconds < 0.3  # not the 0.6 s wait


@pytest.mark.parametrize("inputs,where", [
    (["good film", 3], "inputs[1] is a JSON number (3)"),
    ({"text": "good", "text_pair": True}, "inputs.text_pair is a JSON boolean (true)"),
    ([["good", "film"], ["bad", 7.5]], "inputs[1][1] is a JSON number (7.5)")])
def test_a_number_among_texts_is_refused_by_its_place(classifier, inputs, where):
    answer = TestClient(create_app(classifier)).post("/predict", json={"inputs": inputs})
    assert answer.status_code == 400
    assert answer.json()["error"].startswith(f"{where}, not text: text-classification takes strings")


def test_health_answers_503_until_the_model_has_loaded(classifier):
    loaded, failures = threading.Event(), []
    app = LoadingApp(lambda: loaded.wait(30) and classifier, create_app)
    app.start(on_failure=lambda: failures.append(app.error))
    with TestClient(app) as client:
        health = client.get("/health")
        assert health.status_code == 503 and health.headers["retry-after"] == "5"
        assert health.json() == {"status": "loading", "error": "The model is still loading; try again in a moment."}
        assert client.post("/predict", json={"inputs": "good film"}).status_code == 503
        loaded.set()
        deadline = time.monotonic() + 15
        while client.get("/health").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/health").json() == {"status": "ok", "task": "text-classification"}
        answer = client.post("/predict", json={"inputs": "good film"})
        assert answer.status_code == 200 and answer.json()["label"] == classifier.predict("good film")["label"]
    assert failures == []


def test_a_model_that_fails_to_load_stops_the_server(tmp_path, capsys):
    missing = tmp_path / "no-model"
    assert main(["serve", "text-classification", "--model", str(missing), "--port", str(free_port())]) == 2
    assert f"Model folder '{missing}' does not exist" in capsys.readouterr().err
