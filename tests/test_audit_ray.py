"""The audit on a Ray cluster (fastviz/audit/distributed.py): a local Ray of 2 CPUs started by the
tests; the store equals the single-process audit's, array for array, also after a worker is
SIGKILLed mid-chunk, with an input that fails part-way, and when one engine resumes the other's
store. Ray is in the ``test`` extra; CI (``FASTVIZ_REQUIRE_RAY=1``) fails rather than skips
without it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

import fastviz as fv
from fastviz import cli
from fastviz.errors import InputError

from test_audit_store import arrays
from videofiles import write_ffv1

METHODS = ("grad_cam", "visual_backprop")
SMALL = dict(methods=METHODS, max_frames=24, chunk=4, batch=3, steps=4, sanity_frames=2, progress=False)


@pytest.fixture(scope="module")
def ray():
    try:
        import ray
    except ImportError:
        if os.environ.get("FASTVIZ_REQUIRE_RAY") == "1":
            pytest.fail("FASTVIZ_REQUIRE_RAY=1 but ray is not installed (pip install -e '.[test]')")
        pytest.skip("ray is not installed (pip install 'fastviz[dist]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


#: A single-process audit in a fresh process with one thread, as each Ray CPU worker has (a
#: convolution's float32 result can change in its last bits with the thread count, and a test
#: process that ran other tests first need not compute as a fresh one does).
LOCAL = """
import json, sys, warnings
import fastviz as fv
args = json.loads(sys.argv[1])
stop = args.pop("stop_after_frames")

class Stop(Exception):
    pass

def on_chunk(chunk, frames_done):
    if stop is not None and frames_done >= stop:
        raise Stop
warnings.simplefilter("ignore")
try:
    fv.audit(args.pop("path"), args.pop("inputs"), on_chunk=on_chunk, **args)
except Stop:
    sys.exit(3)
"""


def local_audit(path: Path, inputs=None, stop_after_frames: int | None = None, **settings) -> int:
    """Run the single-process audit in a fresh process with one thread; its exit status (3: stopped)."""
    args = {**SMALL, **settings, "path": str(path), "inputs": None if inputs is None else [str(i) for i in inputs],
            "stop_after_frames": stop_after_frames}
    args["methods"] = list(args["methods"])
    proc = subprocess.run([sys.executable, "-c", LOCAL, json.dumps(args)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode in (0, 3), proc.stderr
    return proc.returncode


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("local") / "local.zarr"
    assert local_audit(path) == 0
    return path


def same_store(a: Path, b: Path) -> None:
    x, y = arrays(a), arrays(b)
    assert sorted(x) == sorted(y)
    for name in x:
        np.testing.assert_array_equal(x[name], y[name], err_msg=name)
    ga, gb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    for key in ("spec", "sanity", "sources", "model", "complete"):
        assert ga.attrs[key] == gb.attrs[key], key
    assert gb["progress/done"][:].all() and np.isfinite(gb["progress/seconds"][:]).all()


def test_a_ray_audit_equals_the_single_process_audit(tmp_path, ray, reference):
    path = tmp_path / "ray.zarr"
    result = fv.audit(path, engine="ray", **SMALL)
    assert result.computed == 24 and result.complete
    same_store(reference, path)


def test_ray_workers_write_a_store_at_a_url(tmp_path, ray, reference):
    """The workers open the store by its URL (fsspec, as for ``s3://``): the same store."""
    result = fv.audit((tmp_path / "url.zarr").as_uri(), engine="ray", **SMALL)
    assert result.computed == 24
    same_store(reference, tmp_path / "url.zarr")


def _busy_worker(timeout: float = 60.0) -> int:
    """The pid of a Ray worker process running a chunk (its title is ``ray::ChunkWorker.run``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if cmd.startswith(b"ray::ChunkWorker.run"):
                return int(entry)
        time.sleep(0.01)
    raise AssertionError("no Ray worker was running a chunk")


def test_a_worker_killed_mid_chunk_is_restarted_and_the_store_is_the_same(tmp_path, ray, reference):
    killed: list[int] = []

    def kill_a_busy_worker(chunk: int, frames_done: int) -> None:
        if not killed:
            pid = _busy_worker()
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    path = tmp_path / "killed.zarr"
    fv.audit(path, engine="ray", on_chunk=kill_a_busy_worker, **SMALL)
    assert len(killed) == 1 and _dead(killed[0])  # it really died
    same_store(reference, path)


def _dead(pid: int, timeout: float = 30.0) -> bool:
    """Whether process ``pid`` is gone or a zombie (dead, not yet reaped by its parent)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def test_one_engine_resumes_the_others_store(tmp_path, ray, reference):
    path = tmp_path / "mixed.zarr"
    assert local_audit(path, stop_after_frames=8) == 3
    assert zarr.open_group(str(path), mode="r")["progress/done"][:].sum() == 2
    fv.audit(path, engine="ray", **SMALL)
    same_store(reference, path)


def test_an_input_that_fails_part_way_on_ray_gives_the_single_process_store(tmp_path, ray, log):
    """Image 3 of 6 has another size: the source ends there. With chunks of 2 frames on 3 workers,
    the second worker starts at chunk 2 (images 4 and 5) and reads them, not knowing of the failure
    the first meets in chunk 1; once it is known, chunk 2 is computed again."""
    import cv2

    images = tmp_path / "images"
    images.mkdir()
    for i in range(6):
        frame = log.frames[i] if i != 3 else np.zeros((50, 60, 3), np.uint8)
        cv2.imwrite(str(images / f"f{i}.png"), frame[..., ::-1])
    video = write_ffv1(tmp_path / "after.mkv", log.frames[40:44])
    settings = {**SMALL, "max_frames": None, "chunk": 2, "batch": 2}
    assert local_audit(tmp_path / "local.zarr", [images, video], **settings) == 0
    commits: list[int] = []
    with pytest.warns(UserWarning, match="failed at frame 3"):
        fv.audit(tmp_path / "ray.zarr", [images, video], engine="ray", workers=3,
                 on_chunk=lambda c, n: commits.append(c), **settings)
    assert sorted(set(commits)) == [0, 1, 2, 3, 4] and commits.count(2) == 2  # chunk 2 again
    g = zarr.open_group(str(tmp_path / "ray.zarr"), mode="r")
    np.testing.assert_array_equal(g["frames/ok"][:], [1, 1, 1, 0, 0, 0, 1, 1, 1, 1])
    assert g.attrs["sources"][0]["frames_read"] == 3
    same_store(tmp_path / "local.zarr", tmp_path / "ray.zarr")


@pytest.fixture(scope="module")
def log():
    return fv.data.load_drive_log()


def test_tainted_chunks_are_those_done_that_read_past_a_failure(tmp_path, log):
    """By hand: chunk 1 read frames 2, 3 of source 0 as ok although it failed at frame 3."""
    from fastviz.audit.run import tainted_chunks
    from fastviz.audit.sources import AuditSource
    from fastviz.audit.store import AuditStore

    st = AuditStore.create(tmp_path / "t.zarr", spec={}, sources=[], frames=6, size=(2, 2), methods=["m"], steps=1,
                           chunk=2, model={})
    st.group["frames/source"][:] = [0, 0, 0, 0, 1, 1]
    st.group["frames/index"][:] = [0, 1, 2, 3, 0, 1]
    st.group["frames/ok"][:] = [1, 1, 1, 1, 1, 1]
    st.group["progress/done"][:] = [True, True, False]
    failed = AuditSource(path="a", kind="video", sha256="", frames=4, error="bad", frames_read=3)
    fine = AuditSource(path="b", kind="video", sha256="", frames=2)
    assert tainted_chunks(st, [failed, fine]) == [1]
    st.group["frames/ok"][3] = False
    assert tainted_chunks(st, [failed, fine]) == []
    assert tainted_chunks(st, [AuditSource(path="a", kind="video", sha256="", frames=4), fine]) == []


def test_engine_arguments_are_checked(tmp_path):
    with pytest.raises(InputError, match="engine must be"):
        fv.audit(tmp_path / "a.zarr", engine="dask", **SMALL)
    with pytest.raises(InputError, match="options of the Ray engine"):
        fv.audit(tmp_path / "a.zarr", workers=2, **SMALL)
    with pytest.raises(InputError, match="workers must be"):
        fv.audit(tmp_path / "a.zarr", engine="ray", workers=0, **SMALL)
    assert not (tmp_path / "a.zarr").exists()


def test_without_ray_the_engine_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(InputError, match=r"pip install 'fastviz\[dist\]'"):
        fv.audit(tmp_path / "a.zarr", engine="ray", **SMALL)
    assert cli.main(["audit", "-o", str(tmp_path / "a.zarr"), "--ray", "--max-frames", "4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fastviz[dist]" in err
    assert not (tmp_path / "a.zarr").exists()


def test_cli_ray_audit(tmp_path, ray, capsys):
    out = tmp_path / "cli.zarr"
    assert cli.main(["audit", "-o", str(out), "--ray", "--workers", "2", "--methods", "grad_cam", "--max-frames", "8",
                     "--chunk", "4", "--sanity-frames", "0", "--steps", "2", "-q"]) == 0
    assert "audit of 8 frames (8 frames computed)" in capsys.readouterr().out
    assert zarr.open_group(str(out), mode="r")["progress/done"][:].all()


def test_an_error_in_a_worker_stops_the_audit_and_keeps_the_chunks_done(tmp_path, ray, monkeypatch, capsys):
    """A worker that cannot write (here: told the disk is full on chunk 2) is not retried: the
    audit stops with its error, as one line on the command line; the chunks committed stay done."""
    from fastviz.audit import distributed
    from fastviz.tempfiles import OutputError

    run = distributed.ChunkWorker.run

    def full_on_chunk_two(self, c, failures=()):
        if c == 2:
            raise OutputError("cannot write audit store: No space left on device")
        return run(self, c, failures)

    monkeypatch.setattr(distributed.ChunkWorker, "run", full_on_chunk_two)
    path = tmp_path / "full.zarr"
    with pytest.raises(OutputError, match="No space left") as info:
        fv.audit(path, engine="ray", workers=1, **SMALL)
    assert any("2 of 6 chunks are done and kept" in n for n in info.value.__notes__)
    assert zarr.open_group(str(path), mode="r")["progress/done"][:].tolist() == [True, True] + [False] * 4
    assert cli.main(["audit", "-o", str(tmp_path / "cli.zarr"), "--ray", "--workers", "1", "--methods", "grad_cam",
                     "--max-frames", "12", "--chunk", "4", "-q"]) != 0
    err = capsys.readouterr().err
    assert "No space left on device" in err and "Traceback" not in err
