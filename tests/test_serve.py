"""taskzoo serve, in process (an ASGI test client): uploads, pairs and sentence lists, concurrent requests are
batched, and bad requests are refused with their status and message (tests/test_contract.py checks that every
task's /predict answers what predict returns)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn) is not installed")
import httpx
from fastapi.testclient import TestClient
from PIL import Image

import taskzoo
from taskzoo.data import load_image
from taskzoo.serving import create_app
from taskzoo.serving.codec import Limits
from taskzoo.testing import toy_dataset

# Options that keep each call quick and make it show more than the defaults (every box, all labels).
PARAMETERS = {"text-to-image": {"num_inference_steps": 2, "seed": 3}, "object-detection": {"threshold": 0.0},
              "text-classification": {"top_k": 2}, "image-classification": {"top_k": 3},
              "translation": {"max_new_tokens": 8}}


@pytest.fixture(scope="module")
def zoo_of(tiny_model_path):
    loaded = {}

    def get(task):
        if task not in loaded:
            loaded[task] = taskzoo.load(task, model=tiny_model_path(task), device="cpu")
        return loaded[task]
    return get


@pytest.fixture(scope="module")
def client_of(zoo_of):
    """client_of(task) -> a TestClient of a default server for the task, one per task and module."""
    clients = {}

    def get(task, **options):
        if task not in clients:
            clients[task] = TestClient(create_app(zoo_of(task), **options)).__enter__()
        return clients[task]
    yield get
    for client in clients.values():
        client.__exit__(None, None, None)


def png_base64(image) -> str:
    buffer = io.BytesIO()
    load_image(image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def image_of(text: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))))


def request_and_python_inputs(zoo, rows):
    """The toy rows' inputs as a request sends them (base64 for media) and as the Python API takes them."""
    sent, python = [], []
    for row in rows:
        value = zoo.input_of(row)
        if zoo.name == "automatic-speech-recognition":  # a WAV file path: its bytes are sent
            sent.append(base64.b64encode(Path(value).read_bytes()).decode())
            python.append(value)
        elif isinstance(value, Image.Image):  # PNG is lossless: the server decodes the very same pixels
            sent.append(png_base64(value))
            python.append(load_image(value))
        else:
            sent.append(list(value) if isinstance(value, tuple) else value)
            python.append(value)
    return sent, python


def assert_same(answer, expected, where="output"):
    """A JSON answer against what predict returned: floats to 1e-5, PIL images as their base64 PNG."""
    if isinstance(expected, Image.Image):
        assert isinstance(answer, str), f"{where}: expected a base64 PNG, got {answer!r:.80}"
        assert np.array_equal(image_of(answer), np.asarray(expected)), f"{where}: the image differs"
    elif isinstance(expected, dict):
        assert isinstance(answer, dict) and sorted(answer) == sorted(expected), f"{where}: {answer} vs {expected}"
        for key in expected:
            assert_same(answer[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, (list, tuple)):
        assert isinstance(answer, list), f"{where}: {answer!r:.200} vs {expected!r:.200}"
        assert len(answer) == len(expected), f"{where}: {answer!r:.200} vs {expected!r:.200}"
        for i, (a, e) in enumerate(zip(answer, expected)):
            assert_same(a, e, f"{where}[{i}]")
    elif isinstance(expected, float):
        assert math.isclose(answer, expected, rel_tol=1e-5, abs_tol=1e-6), f"{where}: {answer} vs {expected}"
    else:
        assert answer == expected, f"{where}: {answer!r} vs {expected!r}"


# ------------------------------------------------------------------------------------- every task's route


@pytest.mark.parametrize("task", ["image-classification", "automatic-speech-recognition"])
def test_uploaded_files_are_predicted_like_base64(task, zoo_of, client_of):
    zoo, client = zoo_of(task), client_of(task)
    sent, python = request_and_python_inputs(zoo, toy_dataset(task, 2, seed=1))
    files = [("files", (f"input{i}", base64.b64decode(item))) for i, item in enumerate(sent)]
    parameters = PARAMETERS.get(task, {})
    answer = client.post("/predict", files=files, data={"parameters": json.dumps(parameters)})
    assert answer.status_code == 200, answer.text
    assert_same(answer.json(), zoo.predict(python, **parameters))
    one = client.post("/predict", files=files[:1])  # one file: one input, one output
    assert_same(one.json(), zoo.predict(python[0]))


def test_text_pairs_and_sentence_lists(zoo_of, client_of):
    classifier, similarity = zoo_of("text-classification"), zoo_of("sentence-similarity")
    pair = client_of("text-classification").post("/predict", json={"inputs": [["good film", "bad plot"]]})
    assert_same(pair.json(), classifier.predict([("good film", "bad plot")]))
    as_object = client_of("text-classification").post(
        "/predict", json={"inputs": {"text": "good film", "text_pair": "bad plot"}})
    assert_same(as_object.json(), classifier.predict({"text": "good film", "text_pair": "bad plot"}))
    # sentence-similarity takes no single sentence, so a two-string list is one pair.
    one_pair = client_of("sentence-similarity").post("/predict", json={"inputs": ["a cat", "a dog"]})
    assert_same(one_pair.json(), similarity.predict(("a cat", "a dog")))
    many = {"source_sentence": "the cat", "sentences": ["a dog", "the rain", "the cat"]}
    assert_same(client_of("sentence-similarity").post("/predict", json={"inputs": many}).json(),
                similarity.predict(many))


def test_health_info_docs_and_page(zoo_of, client_of):
    client, zoo = client_of("image-classification"), zoo_of("image-classification")
    assert client.get("/health").json() == {"status": "ok", "task": "image-classification"}
    info = client.get("/info").json()
    assert info["task"] == "image-classification" and info["model"] == str(zoo.source)
    assert info["labels"] == zoo.labels and info["input"] == "image"
    assert info["predict_options"]["top_k"] == 5 and "batch_size" not in info["predict_options"]
    docs = client.get("/docs")
    assert docs.status_code == 200 and "docs-assets/swagger-ui-bundle.js" in docs.text and "cdn" not in docs.text
    assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
    assert "/predict" in client.get("/openapi.json").json()["paths"]
    # The page reads OpenAPI 3.0 (Swagger UI 4 renders no 3.1 document): the same routes.
    assert 'url: "docs/openapi.json"' in docs.text or "url: 'docs/openapi.json'" in docs.text
    for_page = client.get("/docs/openapi.json").json()
    assert for_page["openapi"] == "3.0.3" and for_page["paths"] == client.get("/openapi.json").json()["paths"]
    page = client.get("/")
    assert page.status_code == 200 and "playground.js" in page.text
    for name in ("index.html", "playground.js", "playground.css"):  # nothing fetched from elsewhere
        text = (Path(taskzoo.serving.__file__).parent / "static" / name).read_text()
        assert "http://" not in text and "https://" not in text, name
        assert client.get(f"/static/{name}").status_code == 200


# ------------------------------------------------------------------------------------------------ batching


def post_concurrently(app, bodies: list[dict], headers=None) -> list[httpx.Response]:
    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://serve.test", timeout=60) as client:
            return await asyncio.gather(*(client.post("/predict", json=body, headers=headers) for body in bodies))
    return asyncio.run(main())


class CountingPredict:
    """Wraps a task's predict, recording the inputs of each call."""

    def __init__(self, zoo, monkeypatch, fail_on=None):
        self.calls, self.predict, self.fail_on = [], zoo.predict, fail_on
        monkeypatch.setattr(zoo, "predict", self)

    def __call__(self, inputs, **options):
        self.calls.append(list(inputs))
        if self.fail_on is not None and self.fail_on in inputs:
            raise RuntimeError(f"the model broke on {self.fail_on!r}")
        return self.predict(inputs, **options)


def test_concurrent_requests_share_predict_calls(zoo_of, monkeypatch):
    zoo = zoo_of("text-classification")
    texts = [f"{word} film {i}" for i, word in enumerate(["good", "bad", "lovely", "awful"] * 5)]
    expected = [zoo.predict(text) for text in texts]
    counter = CountingPredict(zoo, monkeypatch)
    app = create_app(zoo, max_batch_size=32, max_wait_ms=1000)
    answers = post_concurrently(app, [{"inputs": text} for text in texts])
    assert [a.status_code for a in answers] == [200] * len(texts)
    for answer, wanted in zip(answers, expected):
        assert_same(answer.json(), wanted)
    assert len(counter.calls) <= 2 and sum(map(len, counter.calls)) == len(texts)


def test_batches_hold_at_most_max_batch_size_inputs(zoo_of, monkeypatch):
    zoo = zoo_of("text-classification")
    counter = CountingPredict(zoo, monkeypatch)
    app = create_app(zoo, max_batch_size=4, max_wait_ms=200)
    answers = post_concurrently(app, [{"inputs": ["good film", "bad film"]} for _ in range(5)])
    assert [a.status_code for a in answers] == [200] * 5
    assert max(map(len, counter.calls)) <= 4 and len(counter.calls) >= 3
    assert sorted(map(len, counter.calls)) != [2] * 5  # requests were combined


def test_requests_with_different_parameters_are_not_mixed(zoo_of, monkeypatch):
    zoo = zoo_of("text-classification")
    counter = CountingPredict(zoo, monkeypatch)
    app = create_app(zoo, max_wait_ms=1000)
    bodies = [{"inputs": "good film", "parameters": {"top_k": 2}} if i % 2 else {"inputs": "bad film"}
              for i in range(6)]
    answers = post_concurrently(app, bodies)
    assert len(counter.calls) == 2
    for body, answer in zip(bodies, answers):
        assert_same(answer.json(), counter.predict(body["inputs"], **body.get("parameters", {})))


def test_a_bad_request_does_not_poison_its_batch(zoo_of, monkeypatch):
    zoo = zoo_of("text-classification")
    good = {"text": "good film", "text_pair": "great plot"}
    bad = {"txt": "no text field"}  # the same kind of input (an object), which predict refuses
    with pytest.raises(ValueError) as python_error:
        zoo.predict([bad])
    app = create_app(zoo, max_wait_ms=1000)
    answers = post_concurrently(app, [{"inputs": good}, {"inputs": good}, {"inputs": bad}, {"inputs": good}])
    assert [a.status_code for a in answers] == [200, 200, 400, 200]
    assert answers[2].json() == {"error": str(python_error.value)}
    for answer in (answers[0], answers[1], answers[3]):
        assert_same(answer.json(), zoo.predict(good))


def test_a_model_failure_is_a_500_and_the_server_goes_on(zoo_of, monkeypatch):
    zoo = zoo_of("text-classification")
    counter = CountingPredict(zoo, monkeypatch, fail_on="boom")
    app = create_app(zoo, max_wait_ms=500)
    answers = post_concurrently(app, [{"inputs": "good film"}, {"inputs": "boom"}, {"inputs": "bad film"}])
    assert [a.status_code for a in answers] == [200, 500, 200]
    assert answers[1].json() == {"error": "Prediction failed: RuntimeError: the model broke on 'boom'"}
    assert post_concurrently(app, [{"inputs": "fine"}])[0].status_code == 200
    assert len(counter.calls) == 5  # the failed batch, its three requests alone, then the last request


def test_a_slow_request_times_out_with_504(zoo_of, monkeypatch):
    import time

    zoo = zoo_of("text-classification")
    predict = zoo.predict
    monkeypatch.setattr(zoo, "predict", lambda inputs, **o: time.sleep(0.6) or predict(inputs, **o))
    app = create_app(zoo, max_wait_ms=0, limits=Limits(timeout_s=0.2))
    answer = post_concurrently(app, [{"inputs": "good film"}])[0]
    assert answer.status_code == 504
    assert answer.json() == {"error": "The prediction took longer than this server's limit of 0.2 s."}


# ------------------------------------------------------------------------------------------------ refusals


def refused(answer, status: int, *fragments: str) -> None:
    assert answer.status_code == status, answer.text
    assert list(answer.json()) == ["error"]
    for fragment in fragments:
        assert fragment in answer.json()["error"], answer.json()["error"]


def test_paths_and_urls_are_refused_where_media_is_expected(client_of, tmp_path):
    picture = tmp_path / "cat.png"
    Image.new("RGB", (8, 8)).save(picture)
    client = client_of("image-classification")
    refused(client.post("/predict", json={"inputs": str(picture)}), 400, "looks like a file path",
            "never opens its own files")
    refused(client.post("/predict", json={"inputs": ["cat.png"]}), 400, "inputs[0] looks like a file path")
    refused(client.post("/predict", json={"inputs": "http://127.0.0.1/cat.png"}), 400, "looks like a URL")
    refused(client.post("/predict", json={"inputs": "file:///etc/passwd"}), 400, "looks like a URL")
    refused(client_of("automatic-speech-recognition").post("/predict", json={"inputs": "/data/speech.wav"}),
            400, "looks like a file path")


def test_oversized_requests_get_413(zoo_of):
    image = png_base64(Image.new("RGB", (64, 64), "red"))
    small = TestClient(create_app(zoo_of("image-classification"), limits=Limits(
        max_body_bytes=4000, max_image_pixels=1000, max_inputs=2)))
    refused(small.post("/predict", json={"inputs": "A" * 5000}), 413, "limit of 4,000 bytes")
    chunked = small.post("/predict", content=iter([b'{"inputs": "', b"A" * 3000, b"A" * 3000, b'"}']))
    refused(chunked, 413, "limit of 4,000 bytes")  # no Content-Length: counted while reading
    refused(small.post("/predict", json={"inputs": image}), 413, "64x64 = 4,096 pixels", "limit of 1,000")
    refused(small.post("/predict", json={"inputs": ["x", "y", "z"]}), 413, "at most 2 inputs")
    painter = TestClient(create_app(zoo_of("text-to-image"), limits=Limits(max_image_pixels=64 * 64)))
    refused(painter.post("/predict", json={"inputs": "a red square", "parameters": {"height": 256}}), 413,
            "The image to generate is 32x256 = 8,192 pixels, over this server's limit of 4,096.")
    speech = Path(toy_dataset("automatic-speech-recognition", 1, seed=0)[0]["audio"]).read_bytes()
    short = TestClient(create_app(zoo_of("automatic-speech-recognition"), limits=Limits(max_audio_seconds=0.1)))
    refused(short.post("/predict", files=[("files", ("a.wav", speech))]), 413, "limit of 0.1 s")


def test_malformed_requests_get_400(client_of):
    client = client_of("text-classification")
    refused(client.post("/predict", content=b"{not json", headers={"content-type": "application/json"}),
            400, "not valid JSON")
    refused(client.post("/predict", json=["good film"]), 400, "must be a JSON object", "got a JSON array")
    refused(client.post("/predict", json={"text": "good film"}), 400, "Unknown field(s) ['text']")
    refused(client.post("/predict", json={"parameters": {}}), 400, "no 'inputs' field")
    refused(client.post("/predict", json={"inputs": []}), 400, "empty list")
    refused(client.post("/predict", json={"inputs": "x", "parameters": [1]}), 400, "must be a JSON object")
    refused(client.post("/predict", json={"inputs": "x", "parameters": {"batch_size": 64}}), 400,
            "may not set ['batch_size']")
    refused(client.post("/predict", content=b"good", headers={"content-type": "text/plain"}), 415,
            "not text/plain")
    refused(client.post("/predict", files=[("files", ("a.txt", b"good film"))]), 400, "takes text")
    refused(client.get("/nowhere"), 404, "Not Found")


def test_wrong_kinds_of_input_get_400_with_the_python_message(zoo_of, client_of):
    refused(client_of("text-classification").post("/predict", json={"inputs": 42}), 400,
            "inputs is a JSON number (42), not text: text-classification takes strings")
    refused(client_of("translation").post("/predict", json={"inputs": [["a", "b"]]}), 400,
            "inputs[0] is not a translation input")
    images = client_of("image-classification")
    refused(images.post("/predict", json={"inputs": {"image": "x"}}), 400, "takes images", "got a JSON object")
    refused(images.post("/predict", json={"inputs": "bm90IGFuIGltYWdl"}), 400, "corrupted or not an image")
    refused(images.post("/predict", files=[("files", ("a.png", b"not an image"))]), 400, "corrupted or not an image")
    refused(client_of("automatic-speech-recognition").post("/predict", files=[("files", ("a.wav", b"noise"))]),
            400, "could not be decoded")
    # Options are checked as the Python API checks them: the very message it gives.
    zoo, image = zoo_of("image-classification"), Image.new("RGB", (32, 32), "blue")
    with pytest.raises(ValueError) as python_error:
        zoo.predict(image, top_k=0)
    answer = images.post("/predict", json={"inputs": png_base64(image), "parameters": {"top_k": 0}})
    assert answer.status_code == 400 and answer.json() == {"error": str(python_error.value)}


def test_predict_options_are_refused_by_name_and_type_before_the_inputs_are_read(client_of):
    images = client_of("image-classification")
    # The option is checked first: the input (not base64) is never decoded.
    refused(images.post("/predict", json={"inputs": "not base64!", "parameters": {"topk": 2}}), 400,
            "predict() got an unknown option 'topk'. Did you mean 'top_k'? Options: mixed_precision, top_k.")
    refused(images.post("/predict", files=[("files", ("a.png", b"not an image"))],
                        data={"parameters": '{"top_k": "two"}'}), 400, "top_k must be a positive integer; got 'two'.")
    refused(client_of("text-classification").post("/predict", json={"inputs": "good", "parameters": {"top_k": 1.5}}),
            400, "top_k must be a positive integer; got 1.5.")
    refused(client_of("object-detection").post("/predict", json={"inputs": "x", "parameters": {"threshold": 2}}),
            400, "threshold must be a number in [0, 1]; got 2.")
    # translation passes other options on to generate(): a typo of a known name is still refused.
    translation = client_of("translation")
    refused(translation.post("/predict", json={"inputs": "the cat", "parameters": {"num_beam": 2}}), 400,
            "predict() got an unknown option 'num_beam'. Did you mean 'num_beams'?")
    refused(translation.post("/predict", json={"inputs": "the cat", "parameters": {"temperatur": 0.5}}), 400,
            "Did you mean 'temperature'?")
    answer = translation.post("/predict", json={"inputs": "the cat", "parameters": {"num_beams": 2,
                                                                                 "length_penalty": 1.0}})
    assert answer.status_code == 200 and "translation_text" in answer.json()


def test_a_model_without_a_trained_head_is_named_once_as_the_server_starts(tiny_model_path):
    from taskzoo.errors import TaskzooWarning

    zoo = taskzoo.load("text-classification", model=tiny_model_path("sentence-similarity"), device="cpu")
    with pytest.warns(TaskzooWarning, match="holds no trained head for this task .* fine-tune it first"):
        app = create_app(zoo)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TaskzooWarning)  # requests add none
        assert TestClient(app).post("/predict", json={"inputs": "good"}).status_code == 200
        assert zoo.predict("good")["label"]


def test_the_docs_page_document_is_openapi_3_0():
    from taskzoo.serving.app import openapi_3_0

    # What FastAPI and pydantic 2 write for optional, union, bounded and example fields (OpenAPI 3.1).
    body = {"type": "object", "properties": {
        "count": {"anyOf": [{"type": "integer"}, {"type": "null"}], "title": "Count"},
        "mode": {"type": ["string", "integer"]},
        "scale": {"type": "number", "exclusiveMinimum": 0.0, "examples": [2.0]},
        "kind": {"const": "a"},
        "properties": {"type": "string", "title": "a field named like a keyword"}}}
    original = {"openapi": "3.1.0", "paths": {"/echo": {"post": {"requestBody": {"content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/Body"}}}}}}},
        "components": {"schemas": {"Body": body}}}
    snapshot = json.dumps(original)
    converted = openapi_3_0(original)
    assert converted["openapi"] == "3.0.3" and converted["paths"] == original["paths"]
    fields = converted["components"]["schemas"]["Body"]["properties"]
    assert fields["count"] == {"type": "integer", "nullable": True, "title": "Count"}
    assert fields["mode"] == {"anyOf": [{"type": "string"}, {"type": "integer"}]}
    assert fields["scale"] == {"type": "number", "minimum": 0.0, "exclusiveMinimum": True, "example": 2.0}
    assert fields["kind"] == {"enum": ["a"]} and fields["properties"] == body["properties"]["properties"]
    assert json.dumps(original) == snapshot  # the app's own document is left as it was


def test_api_key(zoo_of):
    client = TestClient(create_app(zoo_of("text-classification"), api_key="s3cret"))
    body = {"inputs": "good film"}
    refused(client.post("/predict", json=body), 401, "needs an API key")
    refused(client.post("/predict", json=body, headers={"Authorization": "Bearer wrong"}), 401, "API key is wrong")
    refused(client.get("/info", headers={"X-API-Key": "s3cre"}), 401, "API key is wrong")
    assert client.post("/predict", json=body, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/info", headers={"X-API-Key": "s3cret"}).status_code == 200
    assert client.get("/health").status_code == 200 and client.get("/").status_code == 200


def test_settings_are_checked():
    with pytest.raises(ValueError, match="max_batch_size must be a positive integer; got 0"):
        from taskzoo.serving.request_batches import Batcher
        Batcher(lambda items, options: items, max_batch_size=0)
    with pytest.raises(ValueError, match="timeout_s must be a positive number; got -1"):
        Limits(timeout_s=-1)
