"""Benchmark: `taskzoo serve` with dynamic batching vs a one-request-at-a-time server, same model.

Text-classification on all-MiniLM-L6-v2 with a seeded 2-label head (a real pretrained model, shipped in a
package), one mixed-length sentence per request. For 1, 8 and 32 concurrent clients it drives each server
on 127.0.0.1 (in turn, never both at once, --repeats times each; the best run counts) and prints requests/s,
p50/p99 latency, the server's CPU time per request, the mean number of inputs per batched call and the
roofline (the model's counted GFLOP per request times requests/s, against this machine's matmul peak with
the servers' threads), then checks that both servers answered every sentence alike.

    python bench/serve_throughput.py [--requests 256] [--clients 1 8 32] [--max-wait-ms 5] [--repeats 2] [--threads 1 2]
        [--export fp32|int8]

--export serves the same classifier exported to ONNX Runtime (docs/export.md) instead of the torch model.

The load comes from a separate process with a minimal client (raw HTTP/1.1 on keep-alive connections, one
per simulated client, on asyncio), so that the clients cost the server as little CPU as possible; on a small
machine they still share its cores. Both servers get the same client, the same code path (the one-at-a-time
server is the same server with --max-batch-size 1 --max-wait-ms 0) and the same torch threads; a table is
printed for each number of threads (by default 1 and 2).
"""

import argparse
import asyncio
import contextlib
import itertools
import json
import multiprocessing
import os
import re
import statistics
import time
import urllib.request
from urllib.parse import urlsplit

from common import cpu_line, flops_per_input, matmul_peak, minilm_classifier, mixed_length_sentences
from taskzoo.demo import quiet_libraries
from taskzoo.serving.process import ServerProcess

CONTENT_LENGTH = re.compile(rb"\r\ncontent-length: *(\d+)", re.I)


async def post(reader, writer, host: str, body: bytes) -> bytes:
    """One POST /predict on an open keep-alive connection; the response body (an error status raises)."""
    writer.write(b"POST /predict HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (host.encode(), len(body), body))
    head = await reader.readuntil(b"\r\n\r\n")
    payload = await reader.readexactly(int(CONTENT_LENGTH.search(head).group(1)))
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"{head.splitlines()[0].decode()}: {payload.decode()[:300]}")
    return payload


async def drive(url: str, clients: int, texts: list[str], parameters: dict) -> tuple[float, list[float], dict]:
    """Each client sends its share of the sentences one after another on its own connection, with the same
    predict ``parameters``; returns (seconds, latencies, outputs by sentence)."""
    address = urlsplit(url)

    def body(text: str) -> bytes:
        return json.dumps({"inputs": text, "parameters": parameters}).encode()

    latencies, outputs = [], {}
    connections = [await asyncio.open_connection(address.hostname, address.port) for _ in range(clients)]
    await post(*connections[0], address.netloc, body("warm up"))

    async def one_client(reader, writer, share: list[str]):
        for text in share:
            started = time.perf_counter()
            answer = await post(reader, writer, address.netloc, body(text))
            latencies.append(time.perf_counter() - started)
            outputs[text] = json.loads(answer)

    started = time.perf_counter()
    await asyncio.gather(*(one_client(*connections[i], texts[i::clients]) for i in range(clients)))
    seconds = time.perf_counter() - started
    for _, writer in connections:
        writer.close()
    return seconds, latencies, outputs


def load_process(url: str, clients: int, texts: list[str], parameters: dict):
    """Runs in the client process."""
    return asyncio.run(drive(url, clients, texts, parameters))


def cpu_seconds(pid: int) -> float:
    """CPU time a process has used (Linux /proc): what a request costs the server, however busy the machine."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def batching_counts(url: str) -> tuple[int, int]:
    """(predict calls, inputs predicted) so far, from the server's /info."""
    with urllib.request.urlopen(url + "/info") as answer:
        info = json.load(answer)
    return info["predict_calls"], info["inputs_predicted"]


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def measure(model, texts: list[str], threads: int, args, client_process) -> tuple[dict, dict]:
    """Both servers with ``threads`` torch threads each: {(server, clients): figures of its best run},
    {server: outputs}. Both are up at once, but driven in turn, run for run, so that a machine whose load
    changes treats both alike."""
    servers = {"batched": ("--max-batch-size", str(args.max_batch_size), "--max-wait-ms", str(args.max_wait_ms)),
               "one at a time": ("--max-batch-size", "1", "--max-wait-ms", "0")}
    results, answers = {}, {}
    parameters = {"mixed_precision": args.precision} if args.precision != "no" else {}
    with contextlib.ExitStack() as stack:
        running = {name: stack.enter_context(ServerProcess(
            "text-classification", model, *flags, "--timeout", "600", "--log-level", "warning",
            threads=threads or None)) for name, flags in servers.items()}
        for clients, _, (name, server) in itertools.product(args.clients, range(args.repeats), running.items()):
            before, (calls, inputs) = cpu_seconds(server.process.pid), batching_counts(server.url)
            seconds, latencies, outputs = client_process.apply(load_process, (server.url, clients, texts, parameters))
            cpu = (cpu_seconds(server.process.pid) - before) / (len(latencies) + 1)  # +1: the warm-up
            calls_after, inputs_after = batching_counts(server.url)
            figures = (len(latencies) / seconds, percentile(latencies, 50), percentile(latencies, 99), cpu,
                       (inputs_after - inputs) / (calls_after - calls))
            if (name, clients) not in results or figures[0] > results[name, clients][0]:
                results[name, clients] = figures
            answers.setdefault(name, {}).update(outputs)
    return results, answers


def model_flops_per_request(model, texts: list[str]) -> float:
    """The model's own work per request: each sentence alone, truncated as predict truncates, unpadded."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    examples = [{key: value for key, value in tokenizer(text, truncation=True, return_tensors="pt").items()
                 if key != "attention_mask"} for text in texts]
    return flops_per_input(AutoModelForSequenceClassification.from_pretrained(model), examples)


def peak_at(threads: int, precision: str) -> float:
    """The matmul peak with as many torch threads as each server has (0: all cores)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads or os.cpu_count())
    try:
        return matmul_peak({"no": "fp32"}.get(precision, precision))
    finally:
        torch.set_num_threads(before)


def report(results: dict, answers: dict, texts: list[str], threads: int, flops: float, args) -> None:
    model = f"all-MiniLM-L6-v2 + 2-label head{f' (ONNX {args.export} export)' if args.export else ''}"
    print(f"\n{args.requests} requests of one sentence each, {model}, {threads or 'all'} torch thread(s) per "
          f"server, mixed_precision={args.precision}; "
          f"batched server: --max-batch-size {args.max_batch_size} --max-wait-ms {args.max_wait_ms:g}")
    print(f"{'clients':>7} | {'server':<13} | {'requests/s':>10} | {'p50 ms':>8} | {'p99 ms':>8} | speed-up | "
          "server CPU ms/request | inputs/call | model GFLOP/s | of the matmul peak")
    peak = peak_at(threads, args.precision)
    for clients in args.clients:
        baseline = results["one at a time", clients][0]
        for name in ("batched", "one at a time"):
            rate, p50, p99, cpu, per_call = results[name, clients]
            achieved = rate * flops / 1e9  # the model's own work per request, not counting padding
            print(f"{clients:>7} | {name:<13} | {rate:>10.1f} | {p50 * 1000:>8.1f} | {p99 * 1000:>8.1f} | "
                  f"{rate / baseline:>7.2f}x | {cpu * 1000:>21.1f} | {per_call:>11.1f} | {achieved:>13.1f} | "
                  f"{achieved / peak:.0%} of {peak:.0f}")
    batched, single = answers["batched"], answers["one at a time"]
    same_labels = sum(batched[t]["label"] == single[t]["label"] for t in texts)
    difference = max(abs(batched[t]["score"] - single[t]["score"]) for t in texts)
    print(f"outputs: {same_labels}/{len(texts)} labels identical, scores within {difference:.1e} "
          "(batching pads shorter sentences; the attention mask hides the padding)")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=256, help="requests per run (each client sends its share)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each server, in turn; the best is shown")
    parser.add_argument("--precision", default="no", choices=["no", "bf16"],
                        help="predict's mixed_precision, sent by every request to both servers")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                        help="torch threads of each server, one table per value (0: all cores)")
    parser.add_argument("--export", choices=["fp32", "int8"],
                        help="serve the classifier's ONNX export (fp32 or int8) instead of the torch model")
    args = parser.parse_args()
    if args.export and args.precision != "no":
        parser.error("--precision is for the torch model; an ONNX export runs as it was exported")
    quiet_libraries()  # the untrained head's load table is noise here
    print(cpu_line(), flush=True)  # the figures below depend on it (bf16 and int8 above all)

    texts = mixed_length_sentences(args.requests, seed=1)
    model = minilm_classifier()
    flops = model_flops_per_request(model, texts)
    if args.export:
        import taskzoo

        zoo = taskzoo.load("text-classification", model=model, device="cpu")
        model = zoo.export(f"{model}-onnx-{args.export}", quantize={"fp32": None}.get(args.export, args.export))
    print(f"the model's work: {flops / 1e9:.2f} GFLOP per request on average (counted, each sentence alone)")
    with multiprocessing.get_context("spawn").Pool(1) as client_process:
        for threads in args.threads:
            report(*measure(model, texts, threads, args, client_process), texts, threads, flops, args)


if __name__ == "__main__":
    main()
