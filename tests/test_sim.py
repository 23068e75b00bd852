"""fastviz.sim: CarRacing-v3 driven in closed loop by the model's feedback (``fastviz live sim``).

Needs the ``sim`` extra (gymnasium with Box2D); without it the simulator tests skip, and only the
argument checks and the missing-dependency message are tested.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
import threading
import time

import numpy as np
import pytest
import torch

from fastviz.errors import FastvizError, InputError
from fastviz.sim import STEER_LIMIT, CarRacingSource, FeedbackTimeoutError

HAVE_SIM = all(importlib.util.find_spec(m) is not None for m in ("gymnasium", "Box2D", "pygame"))
needs_sim = pytest.mark.skipif(
    not HAVE_SIM, reason="gymnasium[box2d] (gymnasium, Box2D, pygame) not installed: pip install 'fastviz[sim]'"
)


def drive(src: CarRacingSource, rule) -> np.ndarray:
    """Lockstep driver: every frame answered at once with ``rule(index, frame)``; the frames."""
    frames = []
    for i, frame in enumerate(src.frames()):
        frames.append(frame)
        src.feedback(i, rule(i, frame))
    return np.stack(frames) if frames else np.zeros((0, 96, 96, 3), np.uint8)


@functools.lru_cache(maxsize=None)
def constant_run(steering: float | None, steps: int, seed: int = 0) -> tuple[np.ndarray, dict, float, float]:
    """Frames, report and the hull angle at the first and the last frame, for constant feedback."""
    with CarRacingSource(seed, realtime=False, max_steps=steps) as src:
        angles = []

        def rule(i, frame):
            angles.append(float(src.env.unwrapped.car.hull.angle))
            return steering

        frames = drive(src, rule)
        return frames, src.report(), angles[0], float(src.env.unwrapped.car.hull.angle)


def check_report(report: dict, frames: int) -> None:
    assert report["frames"] == frames
    assert report["steps"] == frames  # each frame yielded is followed by exactly one step
    assert report["sim_s"] == pytest.approx(frames / 50)
    assert report["tiles_total"] > 100  # a CarRacing track has ~250-350 tiles
    assert 0 <= report["tiles_visited"] <= report["tiles_total"]
    assert report["fraction"] == pytest.approx(report["tiles_visited"] / report["tiles_total"])
    assert 0.0 <= report["off_track_s"] <= report["sim_s"]
    assert report["ended_by"] in ("lap", "off-playfield", "max_steps", "closed")
    assert report["lap_complete"] is (report["ended_by"] == "lap")


# --- arguments and dependencies (no simulator needed) -------------------------------------------


@pytest.mark.parametrize(
    "kwargs, word",
    [({"seed": -1}, "seed"), ({"seed": 1.5}, "seed"), ({"max_steps": 0}, "max_steps"), ({"fps": 0}, "fps"),
     ({"speed": float("nan")}, "speed"), ({"realtime": "yes"}, "realtime"), ({"feedback_timeout": -1}, "feedback_timeout")],
)
def test_bad_arguments(kwargs, word):
    with pytest.raises(InputError, match=word):
        CarRacingSource(**kwargs)


@pytest.mark.parametrize("module, name", [("gymnasium", "gymnasium"), ("Box2D", "Box2D")])
def test_missing_dependency_names_the_extra(monkeypatch, module, name):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    with pytest.raises(InputError) as info:
        CarRacingSource(0)
    msg = str(info.value)
    assert "\n" not in msg and name in msg and "pip install 'fastviz[sim]'" in msg


# --- 1. lockstep determinism ----------------------------------------------------------------------


@needs_sim
def test_lockstep_same_seed_same_frames():
    a, ra, *_ = constant_run(0.0, 60)
    with CarRacingSource(0, realtime=False, max_steps=60) as src:
        assert src.live is False and src.fps == 50.0
        b = drive(src, lambda i, f: 0.0)
    assert a.shape == (60, 96, 96, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.shares_memory(b[0], b[1])
    check_report(ra, 60)
    assert ra["ended_by"] == "max_steps" and ra["mean_lag_frames"] == 0.0 and ra["predictions"] == 60

    c, *_ = constant_run(0.3, 60)
    diff = np.abs(a.astype(np.int16) - c.astype(np.int16)).mean(axis=(1, 2, 3))
    assert diff[0] == 0  # frame 0 comes before any steering is applied
    assert np.all(diff[30:] > 5.0), diff  # grey levels: a different road ahead after 0.6 s

    with CarRacingSource(1, realtime=False, max_steps=1) as other:  # another seed, another track
        first = drive(other, lambda i, f: 0.0)
    assert not np.array_equal(first[0], a[0])


@needs_sim
def test_no_prediction_keeps_the_previous_steering():
    a, *_ = constant_run(0.0, 60)
    with CarRacingSource(0, realtime=False, max_steps=60) as src:  # no prediction ever: steering stays 0
        b = drive(src, lambda i, f: None if i % 2 else float("nan"))
        assert src.report()["predictions"] == 0 and src.report()["mean_lag_frames"] is None
    assert np.array_equal(a, b)


@needs_sim
def test_steering_is_clipped_to_the_joint_limit():
    a, *_ = constant_run(STEER_LIMIT, 40)
    with CarRacingSource(0, realtime=False, max_steps=40) as src:
        b = drive(src, lambda i, f: torch.tensor([[5.0]]))  # a model's (1, 1) output works as it is
    assert np.array_equal(a, b)


# --- 2. steering sign -------------------------------------------------------------------------------


@needs_sim
def test_positive_steering_turns_right():
    # Box2D angles grow counter-clockwise: turning right (clockwise) makes the hull angle decrease.
    _, right, a0, a1 = constant_run(0.3, 100)
    assert a1 - a0 < -1.0
    _, left, b0, b1 = constant_run(-0.3, 100)
    assert b1 - b0 > 1.0
    _, straight, c0, c1 = constant_run(0.0, 100)
    assert abs(c1 - c0) < 0.01
    assert a0 == b0 == c0  # the same start


# --- 3. the bundled model drives ----------------------------------------------------------------------


@needs_sim
def test_bundled_model_drives_better_than_zero_steering():
    import fastviz.models

    model = fastviz.models.load("pilotnet-carracing")

    def pilot(i, frame):
        with torch.no_grad():
            return float(model(model.preprocess(frame[None]))[0, 0])

    with CarRacingSource(0, realtime=False, max_steps=300) as src:
        drive(src, pilot)
        driven = src.report()
    _, zero, *_ = constant_run(0.0, 300)
    check_report(driven, 300)
    check_report(zero, 300)
    # measured (seed 0, 300 steps, speed 25): model 46 tiles, 0.0 s off the track;
    # zero steering 20 tiles, 3.04 s off the track (it leaves the road at the first bend)
    assert driven["tiles_visited"] > 1.5 * zero["tiles_visited"], (driven, zero)
    assert driven["off_track_s"] < 0.5 < 2.0 < zero["off_track_s"], (driven, zero)
    assert driven["episode_reward"] > zero["episode_reward"] + 50


# --- 4. close, timeouts ------------------------------------------------------------------------------


@needs_sim
def test_close_releases_the_env_once_and_ends_frames(monkeypatch):
    src = CarRacingSource(0, realtime=False, max_steps=50)
    env = src.env
    calls = []
    close = env.close
    monkeypatch.setattr(env, "close", lambda: (calls.append(1), close())[1])
    it = src.frames()
    next(it)
    src.feedback(0, 0.0)
    next(it)
    src.close()
    src.close()
    assert calls == [1] and src.env is None
    assert list(it) == []
    assert list(src.frames()) == []
    r = src.report()
    assert r["ended_by"] == "closed" and r["frames"] == 2 and r["steps"] == 1


@needs_sim
def test_frames_after_close_end_at_once():
    src = CarRacingSource(0, realtime=False)
    src.close()
    assert list(src.frames()) == []
    assert src.report()["ended_by"] == "closed" and src.report()["frames"] == 0


@needs_sim
def test_missing_feedback_times_out():
    with CarRacingSource(0, realtime=False, feedback_timeout=0.2) as src:
        it = src.frames()
        next(it)
        t = time.monotonic()
        with pytest.raises(FeedbackTimeoutError, match="no feedback for frame 0 within 0.2 s") as info:
            next(it)
        assert 0.19 <= time.monotonic() - t < 10
        assert isinstance(info.value, TimeoutError) and isinstance(info.value, FastvizError)
        assert src.report()["ended_by"] == "feedback-timeout"
        assert list(src.frames()) == []


@needs_sim
def test_close_from_another_thread_wakes_a_lockstep_wait():
    with CarRacingSource(0, realtime=False, feedback_timeout=30.0) as src:
        it = src.frames()
        next(it)
        timer = threading.Timer(0.2, src.close)
        timer.start()
        t = time.monotonic()
        assert list(it) == []
        timer.join()
        assert time.monotonic() - t < 10  # woken by close, not by the 30 s timeout
        assert src.report()["ended_by"] == "closed"


@needs_sim
def test_feedback_checks_its_arguments():
    with CarRacingSource(0, realtime=False, max_steps=5) as src:
        with pytest.raises(InputError, match="frame 0"):
            src.feedback(0, 0.1)  # nothing handed out yet
        it = src.frames()
        next(it)
        with pytest.raises(InputError, match="frame 3"):
            src.feedback(3, 0.1)
        with pytest.raises(InputError, match="number"):
            src.feedback(0, "left")


# --- real time --------------------------------------------------------------------------------------


@needs_sim
def test_realtime_keeps_stepping_without_feedback():
    n = 20
    with CarRacingSource(0, realtime=True, fps=50.0, max_steps=n) as src:
        assert src.live is True
        t = None
        count = 0
        for frame in src.frames():  # never answered: a real-time source does not wait
            t = t or time.monotonic()
            count += 1
        wall = time.monotonic() - t
        r = src.report()
    assert count == n
    assert wall >= (n - 1) / 50 - 0.01  # paced by the wall clock, not as fast as possible
    check_report(r, n)
    assert r["ended_by"] == "max_steps" and r["predictions"] == 0 and r["mean_lag_frames"] is None
    assert r["late_steps"] >= 0


@needs_sim
def test_realtime_uses_the_newest_prediction():
    n = 30
    with CarRacingSource(0, realtime=True, max_steps=n) as src:
        angles = []
        for i, frame in enumerate(src.frames()):
            angles.append(float(src.env.unwrapped.car.hull.angle))
            if i == 4:
                src.feedback(4, 0.4)  # one answer, then silence: the steering stays
        r = src.report()
    assert r["predictions"] == 1
    assert r["mean_lag_frames"] == pytest.approx(np.mean(np.arange(4, n) - 4))  # steps 4..n-1 used frame 4's
    assert angles[-1] < angles[5] - 0.05  # turned right
