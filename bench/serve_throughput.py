"""Benchmark: `taskzoo serve` with dynamic batching vs a one-request-at-a-time server, same model.

Text-classification on all-MiniLM-L6-v2 with a seeded 2-label head (a real pretrained model, shipped in a
package), one mixed-length sentence per request. For 1, 8 and 32 concurrent clients it drives each server
(one after the other, never both at once) on 127.0.0.1 and prints requests/s and p50/p99 latency, then checks
that both servers answered every sentence alike.

    python bench/serve_throughput.py [--requests 256] [--clients 1 8 32] [--max-wait-ms 5]

The clients run in this process, on the same cores as the server: on a small machine they take a share of
the CPU from it (both sides alike), so the figures are lower bounds of what the server alone can do. The
server's CPU time per request (from /proc) is printed too: on a machine shared with other work it is a
steadier measure of what batching saves than requests/s.
"""

import argparse
import asyncio
import os
import statistics
import time

import httpx

from common import minilm_classifier, mixed_length_sentences
from taskzoo.serving.process import ServerProcess

parser = argparse.ArgumentParser()
parser.add_argument("--requests", type=int, default=256, help="requests per run (each client sends its share)")
parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
parser.add_argument("--max-batch-size", type=int, default=32)
parser.add_argument("--max-wait-ms", type=float, default=5.0)
parser.add_argument("--threads", type=int, default=1, help="torch threads of each server (0: all cores)")
args = parser.parse_args()

texts = mixed_length_sentences(args.requests, seed=1)
model = minilm_classifier()


async def drive(url: str, clients: int) -> tuple[float, list[float], dict]:
    """Each client sends its share of the sentences one after another; returns (seconds, latencies, outputs)."""
    latencies, outputs = [], {}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        async def one_client(share: list[str]):
            for text in share:
                started = time.perf_counter()
                answer = await client.post("/predict", json={"inputs": text})
                latencies.append(time.perf_counter() - started)
                answer.raise_for_status()
                outputs[text] = answer.json()

        await client.post("/predict", json={"inputs": "warm up"})
        started = time.perf_counter()
        await asyncio.gather(*(one_client(texts[i::clients]) for i in range(clients)))
        return time.perf_counter() - started, latencies, outputs


def cpu_seconds(pid: int) -> float:
    """CPU time a process has used (Linux /proc): what a request costs the server, however busy the machine."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


servers = {"batched": ("--max-batch-size", str(args.max_batch_size), "--max-wait-ms", str(args.max_wait_ms)),
           "one at a time": ("--max-batch-size", "1", "--max-wait-ms", "0")}
results, answers = {}, {}
for name, flags in servers.items():
    with ServerProcess("text-classification", model, *flags, "--timeout", "600", "--log-level", "warning",
                       threads=args.threads or None) as server:
        for clients in args.clients:
            before = cpu_seconds(server.process.pid)
            seconds, latencies, outputs = asyncio.run(drive(server.url, clients))
            cpu = (cpu_seconds(server.process.pid) - before) / (len(latencies) + 1)  # +1: the warm-up request
            results[name, clients] = (len(latencies) / seconds, percentile(latencies, 50), percentile(latencies, 99),
                                      cpu)
            answers.setdefault(name, {}).update(outputs)

print(f"\n{args.requests} requests of one sentence each, all-MiniLM-L6-v2 + 2-label head, {args.threads or 'all'} "
      f"torch thread(s); batched server: --max-batch-size {args.max_batch_size} --max-wait-ms {args.max_wait_ms:g}")
print(f"{'clients':>7} | {'server':<13} | {'requests/s':>10} | {'p50 ms':>8} | {'p99 ms':>8} | speed-up | "
      "server CPU ms/request")
for clients in args.clients:
    baseline = results["one at a time", clients][0]
    for name in servers:
        rate, p50, p99, cpu = results[name, clients]
        print(f"{clients:>7} | {name:<13} | {rate:>10.1f} | {p50 * 1000:>8.1f} | {p99 * 1000:>8.1f} | "
              f"{rate / baseline:>7.2f}x | {cpu * 1000:.1f}")

batched, single = answers["batched"], answers["one at a time"]
same_labels = sum(batched[t]["label"] == single[t]["label"] for t in texts)
difference = max(abs(batched[t]["score"] - single[t]["score"]) for t in texts)
print(f"\noutputs: {same_labels}/{len(texts)} labels identical, scores within {difference:.1e} "
      "(batching pads shorter sentences; the attention mask hides the padding)")
