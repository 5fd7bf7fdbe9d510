"""bench/: every benchmark prints the CPU its figures were measured on (bf16 and int8 speed depend on it)."""

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
XEON = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8
"""
EPYC = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2\n"
GRAVITON = "processor\t: 0\nFeatures\t: fp asimd sve sve2 bf16 i8mm\nCPU implementer\t: 0x41\n"


@pytest.fixture(scope="module")
def common():
    spec = importlib.util.spec_from_file_location("bench_common", BENCH / "common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("cpuinfo,units", [
    (XEON, "Intel(R) Xeon(R) Platinum 8480+ ({cores} cores), AVX2, AVX-512 (bf16, VNNI), AMX (bf16, int8)"),
    (EPYC, "AMD EPYC ({cores} cores), AVX2, no AVX-512, no AMX"),
    (GRAVITON, "({cores} cores), SVE, SVE2, BF16, I8MM"),
])
def test_the_cpu_line_names_the_model_and_the_units_bf16_and_int8_use(common, tmp_path, cpuinfo, units):
    import os

    (tmp_path / "cpuinfo").write_text(cpuinfo)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    line = common.cpu_line(str(tmp_path / "cpuinfo"))
    assert line.startswith("CPU: ") and line.endswith(units.format(cores=cores)), line


def test_without_cpuinfo_torch_says_what_it_sees(common, tmp_path):
    import torch

    line = common.cpu_line(str(tmp_path / "missing"))
    assert line.startswith("CPU: ") and line.endswith(f"torch sees {torch.backends.cpu.get_cpu_capability()}")


def test_every_benchmark_prints_the_cpu_line():
    scripts = sorted(path.name for path in BENCH.glob("*.py") if path.name != "common.py")
    assert len(scripts) >= 10
    assert [name for name in scripts if "print(cpu_line()" not in (BENCH / name).read_text()] == []
