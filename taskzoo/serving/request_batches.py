"""Dynamic batching: concurrent requests gathered into one predict call, their outputs split back.

Requests queue up; the batcher takes the first, then whatever else is waiting or arrives within
``max_wait_ms``, until ``max_batch_size`` inputs are gathered. It waits only while there is company to wait
for: when the last batch held a single request (one client, or requests spaced out), the next one runs at once,
so that a lone client gets one-at-a-time latency; the first batch after start waits, and so does every batch
after one that had company. Requests are grouped by their key (their
parameters and kind of input: a call takes one set of options, and mixed kinds of input are refused), and each
group is one predict call, run in a single worker thread so that the event loop keeps answering while the model
works and the model runs one call at a time. When a group fails, each of its requests is run again on its own,
so that one bad request gets its own error and the others their outputs.

A gathered batch of mixed lengths is not run as one padded forward pass: :class:`LengthGroupedPredict` splits
it, by length, into the groups that cost least (each group is padded to its longest input, and each costs a
fixed amount more, which it learns from the server's own predict calls).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from taskzoo.predict_batches import plan_batches

logger = logging.getLogger("taskzoo.serve")


@dataclass
class Job:
    items: list  # predict inputs
    parameters: dict  # predict options
    key: str  # jobs with the same key may share a predict call
    future: asyncio.Future = field(repr=False)


class Batcher:
    """``await batcher.submit(items, parameters, key)`` -> ``predict(items, parameters)``, batched with other
    requests. ``predict(items, parameters)`` must return one output per item."""

    def __init__(self, predict: Callable[[list, dict], list], max_batch_size: int = 32, max_wait_ms: float = 5.0):
        if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 1:
            raise ValueError(f"max_batch_size must be a positive integer; got {max_batch_size!r}.")
        if isinstance(max_wait_ms, bool) or not isinstance(max_wait_ms, (int, float)) or max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be a number >= 0; got {max_wait_ms!r}.")
        self.predict, self.max_batch_size, self.max_wait = predict, max_batch_size, max_wait_ms / 1000
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="taskzoo-predict")
        self.queue: asyncio.Queue[Job] | None = None
        self.waiting: collections.deque[Job] = collections.deque()  # taken from the queue, not yet run
        self.worker: asyncio.Task | None = None
        self.last_batch_had_company = True  # the first request waits: others may arrive with it
        self.calls = 0  # predict calls made: what batching saves, shown by /info and counted by the tests
        self.inputs = 0  # inputs predicted: inputs / calls is the mean batch the server formed

    async def submit(self, items: list, parameters: dict, key: str) -> list:
        loop = asyncio.get_running_loop()
        # Started on first use, in the server's event loop (again if a test client brings a new loop).
        if self.worker is None or self.worker.done() or self.worker.get_loop() is not loop:
            self.queue, self.waiting = asyncio.Queue(), collections.deque()
            self.worker = loop.create_task(self._work())
        job = Job(items, parameters, key, loop.create_future())
        self.queue.put_nowait(job)
        return await job.future

    async def close(self) -> None:
        """Stop after the call in progress; requests still queued are answered with an error."""
        if self.worker is not None:
            self.worker.cancel()
            await asyncio.gather(self.worker, return_exceptions=True)
        pending = list(self.waiting)
        while self.queue is not None and not self.queue.empty():
            pending.append(self.queue.get_nowait())
        for job in pending:
            if not job.future.done():
                job.future.set_exception(RuntimeError("The server is shutting down."))
        self.executor.shutdown(wait=True)

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            groups: dict[str, list[Job]] = {}
            for job in batch:
                groups.setdefault(job.key, []).append(job)
            for jobs in groups.values():
                jobs = [job for job in jobs if not job.future.done()]  # a timed-out request needs no answer
                if not jobs:
                    continue
                results = await loop.run_in_executor(self.executor, self._run, jobs)
                for job, result in zip(jobs, results):
                    if job.future.done():
                        continue
                    if isinstance(result, BaseException):
                        job.future.set_exception(result)
                    else:
                        job.future.set_result(result)

    async def _gather(self) -> list[Job]:
        """The next batch: the first waiting job, then more until max_batch_size inputs or max_wait."""
        first = self.waiting.popleft() if self.waiting else await self.queue.get()
        while first.future.done():  # timed out while queued
            first = self.waiting.popleft() if self.waiting else await self.queue.get()
        batch, size = [first], len(first.items)
        # Alone last time: waiting would only add latency (a closed-loop client sends after its answer).
        wait = self.max_wait if self.last_batch_had_company else 0.0
        deadline = asyncio.get_running_loop().time() + wait
        while size < self.max_batch_size:
            if self.waiting:
                job = self.waiting.popleft()
            elif not self.queue.empty():
                job = self.queue.get_nowait()
            else:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                # Not wait_for(queue.get()): on Python < 3.12 it can drop an item that arrives as time runs out.
                getter = asyncio.ensure_future(self.queue.get())
                await asyncio.wait({getter}, timeout=remaining)
                if not getter.done():
                    getter.cancel()
                    await asyncio.gather(getter, return_exceptions=True)
                if getter.cancelled():
                    break
                job = getter.result()
            if job.future.done():  # its request timed out while queued: its work is dropped
                continue
            if size + len(job.items) > self.max_batch_size:
                self.waiting.appendleft(job)  # first in the next batch
                break
            batch.append(job)
            size += len(job.items)
        self.last_batch_had_company = len(batch) > 1
        return batch

    def _run(self, jobs: list[Job]) -> list:
        """In the worker thread: one predict call for the jobs, split back; on failure each job alone."""
        items = [item for job in jobs for item in job.items]
        self.calls, self.inputs = self.calls + 1, self.inputs + len(items)
        try:
            outputs = self.predict(items, jobs[0].parameters)
        except Exception as error:  # noqa: BLE001 - handed to the request(s) it belongs to
            if len(jobs) == 1:
                return [error]
            logger.info("a batch of %d requests failed (%s); running them one by one", len(jobs), error)
            return [self._run([job])[0] for job in jobs]
        results, start = [], 0
        for job in jobs:
            results.append(outputs[start:start + len(job.items)])
            start += len(job.items)
        return results


class LengthGroupedPredict:
    """``predict(items, parameters)`` for the batcher: the items split by length into the groups that cost
    least, one ``task.predict`` call (one padded batch) per group, outputs put back in order.

    A gathered batch spans the whole range of lengths (a 3-word and a 100-word sentence), and one padded batch
    would compute every input at the longest one's length: on a CPU that costs more than running them one by
    one. Each group costs ``fixed + size x its longest length``, ``fixed`` being what one more call costs (on a
    CPU mostly reading the weights once more). Both are fitted to the server's own calls (seconds against
    padded length); until there are enough of them, or where lengths do not vary (images), a batch is one call.
    """

    def __init__(self, task: Any, batch_size: int | None = None, history: int = 64):
        self.task, self.batch_size = task, task.check_batch_size(batch_size)
        self.timings: collections.deque[tuple[float, float]] = collections.deque(maxlen=history)
        self.warm = False  # the first call also pays one-time costs (lazy set-up, first kernels): not timed

    def __call__(self, items: list, parameters: dict) -> list:
        lengths = [self.task.input_length(item) for item in items]
        outputs: list = [None] * len(items)
        for group in plan_batches(lengths, max_rows=self.batch_size, batch_cost=self.fixed_cost()):
            started = time.perf_counter()
            results = self.task.predict([items[i] for i in group], batch_size=len(group), progress=False,
                                        **parameters)
            if self.warm:
                self.timings.append((len(group) * max(lengths[i] for i in group), time.perf_counter() - started))
            self.warm = True
            for i, result in zip(group, results):
                outputs[i] = result
        return outputs

    def fixed_cost(self) -> float | None:
        """What one more predict call costs, in units of padded length (least squares over the recent calls);
        None while that is unknown."""
        if len(self.timings) < 8:
            return None
        units, seconds = zip(*self.timings)
        mean_units, mean_seconds = sum(units) / len(units), sum(seconds) / len(seconds)
        spread = sum((u - mean_units) ** 2 for u in units)
        if spread == 0:
            return None
        per_unit = sum((u - mean_units) * (s - mean_seconds) for u, s in self.timings) / spread
        fixed = mean_seconds - per_unit * mean_units
        return fixed / per_unit if per_unit > 0 and fixed > 0 else None


def batch_key(task: Any, items: list, parameters: dict) -> str:
    """Requests may share a predict call when their options and their kinds of input are the same."""
    import json

    kinds = sorted({task.input_kind(item) for item in items})
    return json.dumps([parameters, kinds], sort_keys=True, default=repr)
