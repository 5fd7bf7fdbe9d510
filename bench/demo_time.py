"""Benchmark: `taskzoo demo` as a user runs it (a subprocess in a fresh folder), its wall time, the time per
task from its table, and the longest stretch it printed nothing (progress bars count as output).

    python bench/demo_time.py [--runs 1] [TASK ...]

The goal is under 60 s for all eight tasks on a quiet 2-core machine. Figures from a busy machine are
not comparable: say how busy it was (the load average is printed). On two or more cores the tour runs
speech recognition and text-to-image in a second process beside the rest, torch on one thread in each (see
taskzoo/demo.py: ALONGSIDE); a task's seconds are then its own, and they add up to more than the wall time.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from common import cpu_line

parser = argparse.ArgumentParser()
parser.add_argument("tasks", nargs="*", help="only these tasks (default: all)")
parser.add_argument("--runs", type=int, default=1)
args = parser.parse_args()
taskzoo = shutil.which("taskzoo", path=os.path.dirname(sys.executable)) or shutil.which("taskzoo")
if taskzoo is None:
    sys.exit("the taskzoo command is not installed (pip install -e .)")


def run_once() -> tuple[float, tuple[float, str], dict[str, float], str]:
    """(wall seconds, (longest silence in seconds, what was printed before it), {task: seconds}, output) of
    one `taskzoo demo`."""
    with tempfile.TemporaryDirectory(prefix="bench-demo-") as folder:
        started = last = time.perf_counter()
        silences, chunks = [(0.0, "")], []
        process = subprocess.Popen([taskzoo, "demo", *args.tasks], cwd=folder, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})

        def read():  # progress bars end with \r, not \n: read what arrives, not lines
            nonlocal last
            while chunk := process.stdout.read1(4096):
                now = time.perf_counter()
                silences.append((now - last, b"".join(chunks[-3:]).decode(errors="replace")))
                last = now
                chunks.append(chunk)

        reader = threading.Thread(target=read)
        reader.start()
        process.wait()
        reader.join()
        wall = time.perf_counter() - started
    output = b"".join(chunks).decode(errors="replace")
    if process.returncode != 0:
        sys.exit(f"taskzoo demo failed ({process.returncode}):\n{output[-3000:]}")
    table = output[output.rindex("\ntask "):]
    seconds = {match[1]: float(match[2]) for match in re.finditer(r"^(\S+)\s.*?\s([\d.]+)\s*$", table, re.M)
               if match[1] != "task"}
    return wall, max(silences), seconds, output


print(cpu_line(), flush=True)  # the figures below depend on it
print(f"load average before: {' '.join(f'{v:.1f}' for v in os.getloadavg())} on {os.cpu_count()} cores; "
      f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
for number in range(args.runs):
    wall, silence, seconds, _ = run_once()
    before = silence[1].replace("\r", "\n").strip().splitlines()[-1:] or [""]
    print(f"run {number + 1}: {wall:.1f} s wall, longest silence {silence[0]:.1f} s, after: {before[0][:100]!r}")
    for task, value in seconds.items():
        print(f"  {task:30} {value:6.1f} s")
print(f"load average after: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
