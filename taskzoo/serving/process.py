"""``taskzoo serve`` in a subprocess on a free loopback port, ready once /health answers: what the shutdown and
browser tests and the throughput benchmark run against."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServerProcess:
    """``with ServerProcess(task, model, *flags) as server:`` starts ``taskzoo serve`` and waits (at most
    ``start_timeout`` s) until /health answers; ``server.url`` is its address. Leaving stops it with SIGTERM."""

    def __init__(self, task: str, model, *flags: str, start_timeout: float = 120.0, threads: int | None = 1):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "taskzoo.cli", "serve", task, "--model", str(model),
                   "--port", str(self.port), *flags]
        # Its output goes to a file, not a pipe: a pipe nobody reads fills up and blocks the server.
        self.log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - read by output() after stop(); lives as long as this object
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, text=True,
                                        env={**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})})
        deadline = time.monotonic() + start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"taskzoo serve exited with {self.process.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"taskzoo serve did not answer /health within {start_timeout} s")

    def output(self) -> str:
        """What the server printed, once it has stopped."""
        if self.process.poll() is None:
            return ""
        self.log.seek(0)
        return self.log.read()

    def stop(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
