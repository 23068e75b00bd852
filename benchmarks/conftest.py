"""Benchmarks share the tests' plain references (tests/references.py).

``--malloc tuned`` calls fastviz.scheduler.tune_cpu_allocator() before any benchmark runs, so
every implementation in the run (fastviz, the loop, Captum) works under the same allocator
settings; ``--malloc default`` (the default) leaves glibc's defaults.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def pytest_addoption(parser):
    parser.addoption("--malloc", choices=("default", "tuned"), default="default",
                     help="glibc malloc settings for the whole run (see fastviz.scheduler.tune_cpu_allocator)")


def pytest_configure(config):
    if config.getoption("--malloc") == "tuned":
        import fastviz

        if not fastviz.scheduler.tune_cpu_allocator():
            raise pytest.UsageError("--malloc tuned: this platform has no glibc mallopt")


@pytest.fixture(autouse=True)
def _record_allocator(request):
    yield
    bench = request.node.funcargs.get("benchmark")
    if bench is not None:
        bench.extra_info["malloc"] = request.config.getoption("--malloc")
