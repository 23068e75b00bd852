"""Child Python processes for tests that need a real process (signals, kill -9, the console)."""

from __future__ import annotations

import select
import subprocess
import sys
import textwrap
from pathlib import Path

import fastviz.tempfiles

#: Prefix for a child's script: fastviz's modules import without running the package's
#: ``__init__`` (which imports torch), a few seconds less per child on a small machine. The
#: modules themselves are the real ones.
LIGHT_IMPORT = textwrap.dedent(
    f"""
    import sys, types
    _package = types.ModuleType("fastviz")
    _package.__path__ = [{str(Path(fastviz.tempfiles.__file__).parent)!r}]
    sys.modules["fastviz"] = _package
    """
)


def start(script: str, *args: str) -> subprocess.Popen:
    """Run ``script`` (after :data:`LIGHT_IMPORT`) in a child with text pipes."""
    return subprocess.Popen(
        [sys.executable, "-c", LIGHT_IMPORT + script, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def run(script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``script`` (after :data:`LIGHT_IMPORT`) to its end."""
    return subprocess.run(
        [sys.executable, "-c", LIGHT_IMPORT + script, *args], capture_output=True, text=True, timeout=timeout
    )


def first_line(proc: subprocess.Popen, timeout: float = 120) -> str:
    """The child's first line of stdout (the test fails if none comes within ``timeout`` s)."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        proc.kill()
        raise AssertionError(f"no output from the child in {timeout} s: {proc.stderr.read()}")
    line = proc.stdout.readline()
    assert line, proc.stderr.read()
    return line.strip()
