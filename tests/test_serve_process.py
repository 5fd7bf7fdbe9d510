"""`taskzoo serve` as a real process: the command line, and a graceful stop on SIGTERM."""

from __future__ import annotations

import signal
import threading
import time

import pytest

pytest.importorskip("uvicorn", reason="the serve extra (fastapi, uvicorn) is not installed")
import httpx

import taskzoo
from taskzoo.cli import main
from taskzoo.serving.process import ServerProcess as Server


def test_sigterm_finishes_the_request_in_flight_and_exits_0(tiny_model_path):
    model = tiny_model_path("text-classification")
    expected = taskzoo.load("text-classification", model=model, device="cpu").predict("good film")
    # A long batching wait keeps the request in flight while SIGTERM arrives.
    server = Server("text-classification", model, "--max-wait-ms", "3000")
    answers = []
    client = threading.Thread(target=lambda: answers.append(
        httpx.post(server.url + "/predict", json={"inputs": "good film"}, timeout=60)))
    client.start()
    time.sleep(1.0)
    server.process.send_signal(signal.SIGTERM)
    code = server.stop(timeout=60)
    client.join(60)
    output = server.output()
    assert code == 0, output
    assert len(answers) == 1 and answers[0].status_code == 200, output
    assert answers[0].json()["label"] == expected["label"]
    assert abs(answers[0].json()["score"] - expected["score"]) < 1e-5
    assert "Traceback" not in output
    with pytest.raises(httpx.ConnectError):  # and it no longer listens
        httpx.get(server.url + "/health", timeout=5)


def test_cli_refuses_bad_settings_before_loading(capsys):
    assert main(["serve", "text-classification", "--model", "nowhere", "--max-batch-size", "0"]) == 2
    assert "--max-batch-size and --batch-size must be at least 1" in capsys.readouterr().err
    assert main(["serve", "text-classification", "--model", "nowhere", "--timeout", "0"]) == 2
    assert "timeout_s must be a positive number" in capsys.readouterr().err
    assert main(["serve", "text-classification", "--model", "nowhere", "--device", "gpu"]) == 2
    assert "--device gpu is not a device torch knows" in capsys.readouterr().err
