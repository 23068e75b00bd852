"""``fastviz audit`` killed for real (SIGKILL at random moments, SIGTERM, Ctrl-C) resumes to the
store an uninterrupted run writes, array for array; the command line's lines and exit codes."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

import fastviz as fv
from fastviz.audit.store import is_store
from test_audit_store import arrays

ARGS = ["--max-frames", "36", "--chunk", "3", "--batch", "4", "--methods", "grad_cam,visual_backprop",
        "--steps", "4", "--sanity-frames", "2", "-q"]
SETTINGS = dict(methods=["grad_cam", "visual_backprop"], max_frames=36, chunk=3, batch=4, steps=4, sanity_frames=2,
                progress=False)


def start(store: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "fastviz", "audit", *ARGS, *extra, "-o", str(store)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def chunks_done(store: Path) -> int:
    if not is_store(store):
        return -1
    try:
        return int(np.asarray(zarr.open_group(str(store), mode="r")["progress/done"][:]).sum())
    except Exception:  # noqa: BLE001 - read while another process writes: try again later
        return -1


def wait_for(condition, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "ref.zarr"
    fv.audit(path, model="pilotnet-carracing", **SETTINGS)
    return path


def test_sigkill_at_random_moments_then_resume_equals_an_uninterrupted_run(tmp_path, reference):
    store = tmp_path / "a.zarr"
    rng = random.Random(20181203)
    left_partial = 0
    history = []
    for _ in range(4):
        proc = start(store)
        try:
            # the first run is killed soon after it created the store, the others once they committed a
            # chunk of their own; then at a random moment within the next few chunks
            before = chunks_done(store)
            target = before + 1 if before >= 0 else 0
            wait_for(lambda: proc.poll() is not None or chunks_done(store) >= target)
            time.sleep(rng.uniform(0.0, 0.3))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=60)
        done = chunks_done(store)
        history.append((proc.returncode, done))
        if proc.returncode == -signal.SIGKILL and 0 < done < 12:
            left_partial += 1
        if proc.returncode == 0:
            break
    assert left_partial >= 2, history  # the kills landed in the middle of the work
    final = start(store)
    out, err = final.communicate(timeout=300)
    assert final.returncode == 0, err
    x, y = arrays(store), arrays(reference)
    assert sorted(x) == sorted(y)
    for key in x:
        np.testing.assert_array_equal(x[key], y[key], err_msg=key)
    g, ref = zarr.open_group(str(store), mode="r"), zarr.open_group(str(reference), mode="r")
    assert g.attrs["complete"] is True and g.attrs["sanity"] == ref.attrs["sanity"]
    assert not list(store.rglob("*.partial"))  # interrupted chunk writes cleaned up
    assert [p.name for p in tmp_path.iterdir()] == ["a.zarr"]  # no temporary store left beside it


@pytest.mark.parametrize("sig, code, words", [(signal.SIGTERM, 143, "stopped by SIGTERM"),
                                              (signal.SIGINT, 130, "interrupted")])
def test_sigterm_and_ctrl_c_keep_the_chunks_done_and_say_how_to_resume(tmp_path, sig, code, words):
    store = tmp_path / "a.zarr"
    proc = start(store)
    try:
        wait_for(lambda: proc.poll() is not None or chunks_done(store) >= 2)
    finally:
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    [line] = err.strip().splitlines()
    assert line.startswith(f"fastviz: {words}") and "chunks are done and kept" in line and "run the same command" in line
    done = chunks_done(store)
    assert done >= 2
    again = start(store)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert f"{36 - 3 * done} frames computed" in out


def test_cli_errors_are_one_line_with_exit_2(tmp_path):
    store = tmp_path / "a.zarr"
    proc = start(store, "--max-frames", "8")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "grad_cam" in out and "visual_backprop" in out and "sanity" in out
    cases = [
        (["--methods", "grad_cam"], "was started with other settings: methods differ"),
        (["--methods", "nope"], "unknown method 'nope'"),
        (["--steps", "0"], "must be >= 1"),
        ([str(tmp_path / "missing.mkv")], "input not found"),
    ]
    for extra, words in cases:
        proc = subprocess.run([sys.executable, "-m", "fastviz", "audit", *ARGS, "--max-frames", "8", *extra, "-o",
                               str(store)], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, (extra, proc.stderr)
        [line] = proc.stderr.strip().splitlines()
        assert line.startswith("fastviz: error: ") and words in line, line
