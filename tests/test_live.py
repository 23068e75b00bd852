"""``fastviz live``: the command's outputs (a video of the pictures shown, the statistics JSON,
the served page), its stop conditions and its one-line errors."""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import numpy as np
import pytest

import fastviz as fv
from fastviz import cli
from fastviz.live import LoopedSource, run_live, stats_line
from fastviz.stream import open_live_source
from fastviz.video import open_source


def _stream_threads():
    return [t for t in threading.enumerate() if t.name.startswith(("fastviz-stream", "fastviz-serve")) and t.is_alive()]


def _no_threads_left():
    deadline = time.monotonic() + 3.0
    while _stream_threads() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _stream_threads()


def test_live_block_writes_every_frame_and_the_statistics(tmp_path, capsys):
    out, stats = tmp_path / "live.mkv", tmp_path / "stats.json"
    code = cli.main(["live", "--method", "visual_backprop", "--policy", "block", "--no-realtime", "--max-frames", "24",
                     "-o", str(out), "--stats", str(stats)])
    assert code == 0
    doc = json.loads(stats.read_text())
    assert doc["frames_in"] == 24 and doc["shown"] == 24 and doc["dropped"] == 0
    assert doc["method"] == "visual_backprop" and doc["output"] == {"path": str(out), "frames": 24}
    assert 0 < doc["latency_ms_p50"] <= doc["latency_ms_p95"] <= doc["latency_ms_p99"]
    video = open_source(out)
    frames = list(video)
    assert len(frames) == 24
    # the pictures are drawn: the overlay of frame 0 differs from the bare (scaled) frame
    bare = open_source(None)
    first = next(iter(bare))
    assert frames[0].shape[0] > first.shape[0]
    err = capsys.readouterr().err
    assert "24 in, 24 shown, 0 dropped" in err
    _no_threads_left()


def test_live_serves_the_page_and_its_statistics():
    model = fv.models.load("pilotnet-carracing")
    urls, seen = [], []
    done = threading.Event()

    def watch(url):
        urls.append(url)

    result = {}

    def run():
        try:
            result["stats"] = run_live(model, None, method="visual_backprop", serve="127.0.0.1:0", duration=3.0,
                                       realtime=True, quiet=True, on_start=watch)
        finally:
            done.set()

    t = threading.Thread(target=run)
    t.start()
    try:
        deadline = time.monotonic() + 20
        while not urls and time.monotonic() < deadline:
            time.sleep(0.05)
        assert urls and urls[0].startswith("http://127.0.0.1:")
        while not done.is_set() and len(seen) < 3:
            try:
                with urllib.request.urlopen(urls[0] + "stats.json", timeout=2) as r:
                    seen.append(json.load(r)["shown"])
            except OSError:  # no frame published yet
                pass
            time.sleep(0.3)
    finally:
        t.join(30)
    assert not t.is_alive()
    # the first frame is published with the statistics of before it was shown (shown 0)
    assert len(seen) >= 3 and seen[-1] > seen[0] >= 0 and seen[-1] > 0  # the page's statistics run on
    stats = result["stats"]
    assert 2.5 <= stats["seconds"] < 10
    # the bundled log plays at its 50 fps: never faster (paced), and not far slower (the lower
    # bound leaves room for a busy CI machine, where start-up counts in the seconds)
    assert 30 <= stats["frames_in"] / stats["seconds"] <= 55
    _no_threads_left()


def test_looped_source_plays_again():
    src = LoopedSource(open_live_source(np.zeros((3, 8, 8, 3), np.uint8)))
    frames = src.frames()
    assert len([next(frames) for _ in range(7)]) == 7
    src.close()


def test_stats_line():
    line = stats_line({"frames_in": 10, "shown": 8, "dropped": 2, "fps": 49.5,
                       "latency_ms_p50": 12.3, "latency_ms_p95": 20.0, "latency_ms_p99": 31.6})
    assert line == "10 in, 8 shown, 2 dropped, 49.5 fps, latency p50 12 / p95 20 / p99 32 ms"


@pytest.mark.parametrize("argv, message", [
    (["live", "missing.mkv"], "not found"),
    (["live", "--window", "--max-frames", "2"], "--window needs a display"),
    (["live", "--duration", "0"], "--duration"),
    (["live", "--serve", "127.0.0.1:notaport", "--max-frames", "2"], "notaport"),
    (["live", "-o", "/nonexistent-folder/x.mp4", "--max-frames", "2"], "does not exist"),
])
def test_live_errors_are_one_line(argv, message, capsys, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    code = cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("fastviz: error:") and message in err and "\n" not in err
    _no_threads_left()


def test_live_sim_drives_in_closed_loop(tmp_path, capsys):
    pytest.importorskip("gymnasium")
    pytest.importorskip("Box2D")
    stats = tmp_path / "sim.json"
    assert cli.main(["live", "sim", "--no-realtime", "--policy", "block", "--max-frames", "150", "--method",
                     "visual_backprop", "--stats", str(stats)]) == 0
    doc = json.loads(stats.read_text())
    sim = doc["sim"]
    # lockstep: every frame's prediction steered the next step; the bundled model keeps the car on
    # the road (zero steering leaves it at the first bend: tests/test_sim.py)
    assert doc["shown"] == 150 and sim["predictions"] == 150 and sim["mean_lag_frames"] == 0.0
    assert sim["off_track_s"] == 0.0 and sim["tiles_visited"] >= 15
    assert "track tiles visited" in capsys.readouterr().err
    _no_threads_left()
