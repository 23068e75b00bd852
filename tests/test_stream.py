"""fastviz.stream: the concurrent decode -> method -> sink pipeline. Real threads throughout; the
results are compared with per-frame fastviz.explain, the accounting with the frames fed in."""

from __future__ import annotations

import gc
import json
import signal
import threading
import time
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import fastviz as fv
from fastviz.errors import InputError, InputFileNotFoundError, UnknownNameError
from fastviz.methods.backprojection import backprojection_maps
from fastviz.postprocess import Smoother
from fastviz.stream import ArraySource, BatchCost, CaptureSource, RecordedSource, StreamResult, open_live_source, stream

from videofiles import decode_all, write_ffv1

H, W = 8, 10


class Tiny(nn.Module):
    """Conv(3->4, 3x3, p1) ReLU, flatten, Linear(320 -> outputs); fixed weights; takes 8 x 10 frames.

    ``delay_s``: the forward pass sleeps that long per frame (a slow method). A frame whose pixel
    (0, 0) is pure red (255 in channel 0, which the test frames never hold elsewhere) makes the
    forward pass raise."""

    input_size = (H, W)

    def __init__(self, outputs: int = 1, delay_s: float = 0.0):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4 * H * W, outputs)
        self.delay_s = delay_s
        self.eval()

    def forward(self, x):
        if self.delay_s:
            time.sleep(self.delay_s * x.shape[0])
        if bool((x[:, 0, 0, 0] == 1.0).any()):
            raise RuntimeError("marker frame reached the model")
        return self.head(torch.relu(self.conv(x)).flatten(1))

    def preprocess(self, frames):
        return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div(255.0)


def make_frames(n: int, seed: int = 0, size=(H, W)) -> np.ndarray:
    """uint8 (n, H, W, 3) RGB, values 0..254 (255 is the marker)."""
    return np.random.default_rng(seed).integers(0, 255, (n, *size, 3), dtype=np.uint8)


def stream_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("fastviz-stream-")]


def assert_no_stream_threads(timeout: float = 2.0) -> None:
    end = time.monotonic() + timeout
    while stream_threads() and time.monotonic() < end:
        time.sleep(0.02)
    assert stream_threads() == []


@pytest.fixture(autouse=True)
def _no_leftover_threads():
    yield
    assert_no_stream_threads()


class RecordingSource:
    """A LiveSource over an array that records close() and feedback(); ``fail_at``: frames()
    raises ValueError before yielding that frame."""

    def __init__(self, frames: np.ndarray, fps: float | None = 25.0, live: bool = False, fail_at: int | None = None):
        self.array = frames
        self.fps = fps
        self.live = live
        self.fail_at = fail_at
        self.closed = 0
        self.feedback_calls: list[tuple[int, float | None]] = []
        self.threads: set[str] = set()

    def frames(self):
        for i, frame in enumerate(self.array):
            if i == self.fail_at:
                raise ValueError(f"camera cable pulled at frame {i}")
            self.threads.add(threading.current_thread().name)
            yield frame

    def feedback(self, index, prediction):
        self.feedback_calls.append((index, prediction))

    def close(self):
        self.closed += 1


def per_frame(model, frames, method, **options):
    """Reference: fastviz.explain and the model's output, one frame at a time."""
    maps, preds = [], []
    for i in range(len(frames)):
        x = model.preprocess(frames[i : i + 1])
        maps.append(fv.explain(model, x, method=method, **options)[0].numpy())
        with torch.no_grad():
            out = model(x)
        preds.append(float(out[0, 0]) if out.shape[1] == 1 else None)
    return np.stack(maps), preds


# --------------------------------------------------------------------------- results


@pytest.mark.parametrize("method", ["saliency", "grad_cam", "occlusion"])
def test_block_policy_gives_every_frame_with_the_per_frame_results(method):
    model = Tiny()
    frames = make_frames(24)
    options = {"windows": (2, 4), "stride": 2} if method == "occlusion" else {}
    want_maps, want_preds = per_frame(model, frames, method, **options)
    assert np.abs(want_maps).max() > 0
    with stream(model, frames, method, policy="block", max_latency_ms=1000, **options) as s:
        got = list(s)
    assert [r.index for r in got] == list(range(24))
    for r in got:
        assert isinstance(r, StreamResult)
        assert r.frame.dtype == np.uint8 and np.array_equal(r.frame, frames[r.index])
        assert r.saliency_map.dtype == np.float32 and r.saliency_map.shape == (H, W)
        np.testing.assert_allclose(r.saliency_map, want_maps[r.index], rtol=1e-4, atol=1e-5)
        assert r.prediction == pytest.approx(want_preds[r.index], rel=1e-5, abs=1e-6)
    st = s.stats
    assert (st.frames_in, st.processed, st.shown, st.dropped) == (24, 24, 24, 0)


def test_bundled_model_on_the_bundled_log():
    model = fv.models.load("pilotnet-carracing")
    log = fv.video.open_source(None)
    frames = np.stack([f for _, f in zip(range(5), log)])
    want_maps, want_preds = per_frame(model, frames, "saliency")
    got = list(stream(model, None, "saliency", policy="block", max_frames=5))
    assert [r.index for r in got] == [0, 1, 2, 3, 4]
    for r in got:
        assert np.array_equal(r.frame, frames[r.index])
        assert r.saliency_map.shape == (66, 200)
        np.testing.assert_allclose(r.saliency_map, want_maps[r.index], rtol=1e-4, atol=1e-6)
        assert r.prediction == pytest.approx(want_preds[r.index], rel=1e-4, abs=1e-6)
        assert r.time_s >= 0.0


def test_micro_batches_grow_when_frames_wait_and_do_not_change_the_results():
    model = Tiny(delay_s=0.001)  # the forward pass sleeps: the decode thread fills the queue meanwhile
    frames = make_frames(64, seed=3)
    want_maps, _ = per_frame(model, frames, "saliency")
    with stream(model, frames, "saliency", policy="block", max_latency_ms=2000) as s:
        got = list(s)
    st = s.stats
    assert st.mean_batch_size > 1.0 and st.batches < 64
    assert st.batch_fixed_ms is not None and st.batch_per_frame_ms is not None
    assert [r.index for r in got] == list(range(64))
    np.testing.assert_allclose(np.stack([r.saliency_map for r in got]), want_maps, rtol=1e-4, atol=1e-5)


def test_multi_output_model_has_no_prediction_and_maps_per_class():
    model = Tiny(outputs=3)
    frames = make_frames(6, seed=4)
    want_maps, _ = per_frame(model, frames, "saliency")
    got = list(stream(model, frames, "saliency", policy="block"))
    assert [r.prediction for r in got] == [None] * 6
    np.testing.assert_allclose(np.stack([r.saliency_map for r in got]), want_maps, rtol=1e-4, atol=1e-5)


def test_backprojection_needs_no_model():
    frames = make_frames(5, seed=5, size=(16, 20))
    got = list(stream(None, frames, "backprojection", policy="block"))
    assert [r.prediction for r in got] == [None] * 5
    for r in got:
        np.testing.assert_array_equal(r.saliency_map, backprojection_maps(frames[r.index : r.index + 1])[0])


def test_ema_smoothing_is_the_smoother_applied_in_frame_order():
    model = Tiny()
    frames = make_frames(20, seed=6)
    raw, _ = per_frame(model, frames, "saliency")
    smoother = Smoother("ema", 0.3)
    want = np.stack([smoother(torch.from_numpy(raw[i : i + 1]))[0].numpy() for i in range(20)])
    assert not np.allclose(want, raw, atol=1e-3)  # the smoothing shows
    got = list(stream(model, frames, "saliency", policy="block", max_latency_ms=1000, smooth="ema", smooth_alpha=0.3))
    assert [r.index for r in got] == list(range(20))
    np.testing.assert_allclose(np.stack([r.saliency_map for r in got]), want, rtol=1e-4, atol=1e-5)


def test_sink_sees_every_result_in_order_before_the_consumer():
    model = Tiny()
    frames = make_frames(16, seed=7)
    handled: list[int] = []
    sink_threads: set[str] = set()

    def sink(result):
        sink_threads.add(threading.current_thread().name)
        handled.append(result.index)

    seen_by_sink_first = []
    with stream(model, frames, "saliency", policy="block", sink=sink) as s:
        for r in s:
            seen_by_sink_first.append(r.index in handled)
    assert handled == list(range(16)) and all(seen_by_sink_first)
    assert len(sink_threads) == 1 and next(iter(sink_threads)).startswith("fastviz-stream-")
    st = s.stats
    assert st.shown == 16 and st.latency_ms_p50 >= 0 and st.latency_ms_p99 >= st.latency_ms_p50
    assert st.fps_overall == pytest.approx(16 / st.elapsed_s) and st.fps > 0
    assert s.stats == st  # frozen once closed
    assert json.loads(json.dumps(st.as_dict()))["shown"] == 16


def test_feedback_is_called_in_order_with_each_prediction():
    model = Tiny()
    source = RecordingSource(make_frames(12, seed=8), live=True)
    got = list(stream(model, source, "saliency", policy="block"))
    assert source.feedback_calls == [(r.index, r.prediction) for r in got]
    assert [i for i, _ in source.feedback_calls] == list(range(12))
    assert source.closed == 1
    # frame 0 is read by the caller (the synchronous check), the others by the decode thread
    readers = source.threads - {threading.current_thread().name}
    assert len(readers) == 1 and next(iter(readers)).startswith("fastviz-stream-")
    assert next(iter(readers)).endswith("-decode")


# --------------------------------------------------------------------------- drop, pacing, batch cost


def test_drop_policy_drops_the_oldest_and_accounts_for_every_frame():
    n = 30
    model = Tiny(delay_s=0.01)  # >= 20 ms a frame (explain + prediction): over the 15 ms budget
    frames = make_frames(n, seed=9)
    with stream(model, frames, "saliency", policy="drop", max_latency_ms=15) as s:
        got = list(s)
    indices = [r.index for r in got]
    st = s.stats
    dropped = s.dropped_indices
    assert all(a < b for a, b in zip(indices, indices[1:]))
    assert st.dropped > 0 and st.dropped == len(dropped)
    assert st.frames_in == n == st.processed + st.dropped
    assert st.shown == st.processed == len(got)
    assert sorted(indices + dropped) == list(range(n))  # each frame exactly once: shown or dropped
    assert indices[0] == 0 and indices[-1] == n - 1  # the newest frame wins
    assert st.queue_capacity == 1
    for r in got:
        assert np.array_equal(r.frame, frames[r.index])


def test_realtime_array_is_paced_at_its_frame_rate():
    frames = make_frames(20, seed=10)
    started = time.perf_counter()
    arrivals = []
    for r in stream(Tiny(), frames, "saliency", policy="block", realtime=True, fps=100):
        arrivals.append((r.index, time.perf_counter() - started))
        assert r.time_s == r.index / 100
    assert [i for i, _ in arrivals] == list(range(20))
    for i, t in arrivals:  # frame i is released at start + i / fps, after the call began
        assert t >= i / 100
    assert arrivals[-1][1] >= 0.19


def test_not_realtime_capture_time_is_when_read():
    got = list(stream(Tiny(), make_frames(10, seed=11), "saliency", policy="block"))
    times = [r.time_s for r in got]
    assert times[0] == 0.0 and all(b >= a for a, b in zip(times, times[1:]))


def test_max_frames_counts_frames_read():
    with stream(Tiny(), make_frames(30, seed=12), "saliency", policy="block", max_frames=7) as s:
        got = list(s)
    assert [r.index for r in got] == list(range(7)) and s.stats.frames_in == 7


def test_batch_cost_fits_a_line_and_falls_back_to_proportional():
    cost = BatchCost()
    assert cost.coefficients() is None and cost.largest(1.0, 8) == 0
    for b in (1, 2, 4, 8, 3, 6):
        cost.add(b, 0.004 + 0.002 * b)
    a, c = cost.coefficients()
    assert a == pytest.approx(0.004) and c == pytest.approx(0.002)
    assert cost.largest(0.020, 64) == 8  # 4 + 2 * 8 = 20 ms
    assert cost.largest(0.020, 5) == 5 and cost.largest(0.005, 64) == 0
    assert cost.trusted_limit() == 16
    same = BatchCost()
    for _ in range(3):
        same.add(2, 0.010)
    assert same.coefficients() == pytest.approx((0.0, 0.005))  # proportional: 5 ms a frame
    assert same.largest(0.021, 64) == 4 and same.trusted_limit() == 4


# --------------------------------------------------------------------------- shutdown and errors


def test_breaking_out_closes_the_stream_and_the_source():
    source = RecordingSource(make_frames(200, seed=13))
    got = []
    for r in stream(Tiny(), source, "saliency", policy="block"):
        got.append(r.index)
        if len(got) == 3:
            break
    assert got == [0, 1, 2]
    assert_no_stream_threads()
    assert source.closed == 1


@pytest.mark.parametrize("error", [RuntimeError("consumer failed"), KeyboardInterrupt()])
def test_an_exception_in_the_loop_body_closes_the_stream(error):
    source = RecordingSource(make_frames(200, seed=14), live=True)
    with pytest.raises(type(error)):
        for r in stream(Tiny(), source, "saliency", policy="drop"):
            if r.index >= 2:
                raise error
    assert_no_stream_threads()
    assert source.closed == 1


def test_a_stream_dropped_unclosed_is_closed_when_collected():
    source = RecordingSource(make_frames(200, seed=21))
    s = stream(Tiny(), source, "saliency", policy="block")
    assert next(s).index == 0 and stream_threads() != []
    del s
    gc.collect()
    assert_no_stream_threads()
    assert source.closed == 1


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals reach the main thread")
def test_ctrl_c_while_the_consumer_waits_closes_the_stream():
    source = RecordingSource(make_frames(200, seed=22), live=True)
    main = threading.main_thread().ident

    def sink(result):
        if result.index == 2:  # the consumer now waits for frame 2: interrupt it there
            threading.Timer(0.05, signal.pthread_kill, (main, signal.SIGINT)).start()
            time.sleep(0.5)

    got = []
    with pytest.raises(KeyboardInterrupt):
        for r in stream(Tiny(), source, "saliency", policy="block", sink=sink):
            got.append(r.index)
    assert got == [0, 1]
    assert_no_stream_threads()
    assert source.closed == 1


def test_with_block_exit_closes_the_stream():
    source = RecordingSource(make_frames(200, seed=15))
    with stream(Tiny(), source, "saliency", policy="block") as s:
        assert next(s).index == 0 and next(s).index == 1
        assert stream_threads() != []
    assert s.closed and source.closed == 1
    assert_no_stream_threads()
    s.close()  # idempotent
    assert source.closed == 1


def test_a_failing_source_raises_its_own_error_in_the_consumer():
    source = RecordingSource(make_frames(40, seed=16), fail_at=9)
    got = []
    with pytest.raises(ValueError, match=r"^camera cable pulled at frame 9$") as info:
        for r in stream(Tiny(), source, "saliency", policy="block"):
            got.append(r.index)
    assert got == list(range(len(got))) and len(got) <= 9
    assert "frames" in [f.name for f in traceback.extract_tb(info.value.__traceback__)]  # where it was raised
    assert_no_stream_threads()
    assert source.closed == 1


def test_a_failing_sink_raises_its_own_error_in_the_consumer():
    source = RecordingSource(make_frames(40, seed=17))

    def sink(result):
        if result.index == 4:
            raise OSError(28, "No space left on device")

    got = []
    with pytest.raises(OSError, match="No space left on device") as info:
        for r in stream(Tiny(), source, "saliency", policy="block", sink=sink):
            got.append(r.index)
    assert info.value.errno == 28 and got == [0, 1, 2, 3][: len(got)]
    assert "sink" in [f.name for f in traceback.extract_tb(info.value.__traceback__)]
    assert_no_stream_threads()
    assert source.closed == 1


def test_a_failing_method_raises_its_own_error_in_the_consumer():
    frames = make_frames(30, seed=18)
    frames[12, 0, 0, 0] = 255  # the marker: the model raises on this frame
    source = RecordingSource(frames)
    got = []
    with pytest.raises(RuntimeError, match="^marker frame reached the model$"):
        for r in stream(Tiny(), source, "saliency", policy="block"):
            got.append(r.index)
    assert got == list(range(len(got))) and len(got) <= 12
    assert_no_stream_threads()
    assert source.closed == 1


# --------------------------------------------------------------------------- OpenCV capture


def test_open_live_source_dispatch(tmp_path):
    frames = make_frames(4, seed=23)
    array = open_live_source(frames, fps=10)
    assert isinstance(array, ArraySource) and array.fps == 10.0 and not array.live
    assert np.array_equal(np.stack(list(array.frames())), frames)
    log = open_live_source(None)
    assert isinstance(log, RecordedSource) and log.fps == fv.video.open_source(None).fps and not log.live
    log.close()
    custom = RecordingSource(frames)
    assert open_live_source(custom) is custom
    with pytest.raises(InputError, match="cannot open camera 99"):  # a digit string is a camera index
        open_live_source("99")


@pytest.fixture
def small_video(tmp_path) -> tuple[Path, np.ndarray]:
    path = write_ffv1(tmp_path / "clip.mkv", make_frames(12, seed=19), fps=25.0)
    return path, decode_all(path)


def test_capture_source_reads_rgb_frames_and_is_released(small_video):
    path, frames = small_video
    source = open_live_source(f"file://{path}")
    assert isinstance(source, CaptureSource) and source.live and source.fps == 25.0
    got = list(stream(Tiny(), source, "saliency", policy="block"))
    assert [r.index for r in got] == list(range(len(frames)))
    for r in got:
        assert np.array_equal(r.frame, frames[r.index])  # BGR -> RGB
    assert not source.capture.isOpened()


def test_capture_source_is_released_after_a_break_and_after_an_error(small_video):
    path, _ = small_video
    source = CaptureSource(str(path))
    for r in stream(Tiny(), source, "saliency", policy="block"):
        break
    assert not source.capture.isOpened()
    source = CaptureSource(str(path))

    def sink(result):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        for r in stream(Tiny(), source, "saliency", policy="block", sink=sink):
            pass
    assert not source.capture.isOpened()


# --------------------------------------------------------------------------- bad input, before any thread


@pytest.fixture
def started_threads(monkeypatch) -> list[str]:
    """Names of every thread started during the test."""
    names: list[str] = []
    start = threading.Thread.start

    def recording_start(self, *args, **kwargs):
        names.append(self.name)
        return start(self, *args, **kwargs)

    monkeypatch.setattr(threading.Thread, "start", recording_start)
    return names


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"policy": "newest"}, InputError, r"unknown policy 'newest'"),
        ({"max_latency_ms": 0}, InputError, r"max_latency_ms must be a finite number > 0, got 0"),
        ({"max_latency_ms": -5.0}, InputError, r"max_latency_ms"),
        ({"max_batch": 0}, InputError, r"max_batch must be a whole number >= 1"),
        ({"max_frames": 0}, InputError, r"max_frames must be a whole number >= 1"),
        ({"smooth": "blur"}, InputError, r"unknown smoothing 'blur'"),
        ({"windows": (2,)}, InputError, r"method 'saliency' takes no option 'windows'"),
        ({"method": "no_such_method"}, UnknownNameError, r"unknown method 'no_such_method'"),
        ({"source": "/no/such/clip.mkv"}, InputFileNotFoundError, r"input not found: /no/such/clip.mkv"),
        ({"source": "file:///no/such/clip.mkv"}, InputError, r"cannot open stream 'file:///no/such/clip.mkv'"),
        ({"source": make_frames(3, size=(9, 12))}, InputError,
         r"frames of 9 x 12 pixels, but its input_size is 8 x 10"),
        ({"source": np.zeros((3, H, W), np.uint8)}, InputError, r"uint8 RGB frames of shape \(N, H, W, 3\)"),
        ({"source": 3.5}, InputError, r"source must be None, a path"),
    ],
)
def test_bad_input_fails_before_any_thread_starts(started_threads, kwargs, error, match):
    kwargs = {"source": make_frames(3), "method": "saliency", **kwargs}
    with pytest.raises(error, match=match):
        stream(Tiny(), **kwargs)
    assert not [n for n in started_threads if n.startswith("fastviz-stream-")]


def test_wrong_frames_from_a_live_source_close_it_before_any_thread(started_threads):
    source = RecordingSource(make_frames(3, size=(12, 12)))
    with pytest.raises(InputError, match=r"frames of 12 x 12 pixels"):
        stream(Tiny(), source, "saliency")
    assert source.closed == 1 and not started_threads
    empty = RecordingSource(make_frames(0))
    with pytest.raises(InputError, match="yields no frame"):
        stream(Tiny(), empty, "saliency")
    assert empty.closed == 1
    unpaced = RecordingSource(make_frames(3), fps=None)
    with pytest.raises(InputError, match="realtime=True needs a frame rate"):
        stream(Tiny(), unpaced, "saliency", realtime=True)
    assert unpaced.closed == 1
    with pytest.raises(InputError, match="method 'saliency' needs a model"):
        stream(None, make_frames(3), "saliency")
    assert not started_threads


def test_a_frame_of_another_size_midway_is_an_input_error():
    frames = list(make_frames(6, seed=20))
    frames[3] = make_frames(1, size=(H + 1, W))[0]
    source = RecordingSource(frames)
    with pytest.raises(InputError, match=r"source frame 3 has shape \(9, 10, 3\) but frame 0 has \(8, 10, 3\)"):
        list(stream(Tiny(), source, "saliency", policy="block"))
    assert source.closed == 1
