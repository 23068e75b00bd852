"""Real file-system faults for tests: a full disk (a small tmpfs) and a read-only folder.

Mounting needs root (or CAP_SYS_ADMIN); where it is not allowed the test is skipped with the
reason. A read-only folder without root is a ``chmod 0o555`` folder (root ignores permission
bits, so as root a read-only tmpfs is mounted instead)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def _mount(target: Path, options: str) -> None:
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "fastviz-test", str(target)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or 'mount failed'}): needs root")


def _umount(target: Path) -> None:
    subprocess.run(["umount", str(target)], check=True, capture_output=True)


@contextlib.contextmanager
def full_disk(folder: Path, size: str = "300k") -> Iterator[Path]:
    """A folder on a tmpfs of ``size`` bytes (it fills up quickly)."""
    if os.geteuid() != 0:
        pytest.skip("a small tmpfs (full disk) needs root to mount")
    folder.mkdir(parents=True, exist_ok=True)
    _mount(folder, f"size={size},mode=0777")
    try:
        yield folder
    finally:
        _umount(folder)


@contextlib.contextmanager
def read_only_folder(folder: Path) -> Iterator[Path]:
    """A folder nothing can be written to: a read-only tmpfs as root, else ``chmod 0o555``."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        _mount(folder, "ro,size=64k")
        try:
            yield folder
        finally:
            _umount(folder)
    else:
        folder.chmod(0o555)
        try:
            yield folder
        finally:
            folder.chmod(0o755)
