"""fastviz.data: the bundled held-out drive log and load_drive_log's contract and errors."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from fastviz.data import EXAMPLE_LOG, example_log_path, load_drive_log
from fastviz.errors import FastvizError, InputError, InputFileNotFoundError

from videofiles import write_ffv1

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def write_log(stem: Path, frames: np.ndarray, steering, fps: float = 50.0) -> Path:
    """Reference writer (plain OpenCV + csv): RGB frames -> STEM.mkv (FFV1) + STEM.csv."""
    video = write_ffv1(stem.with_suffix(".mkv"), frames, fps=fps)
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["frame", "time_s", "steering_rad"])
        for i, s in enumerate(steering):
            wr.writerow([i, f"{i / fps:.2f}", s])
    return video


@pytest.fixture
def small_frames() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(6, 24, 32, 3), dtype=np.uint8)


# --- the bundled example log ------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundled():
    return load_drive_log()


def test_bundled_log_contract(bundled):
    n = len(bundled)
    assert bundled.frames.dtype == np.uint8 and bundled.frames.shape == (n, 96, 96, 3)
    assert bundled.steering.dtype == np.float32 and bundled.steering.shape == (n,)
    assert bundled.fps == 50.0
    assert 20.0 <= n / bundled.fps <= 40.0
    assert bundled.path == example_log_path() and bundled.path.name == EXAMPLE_LOG


def test_bundled_log_steering_is_radians_within_the_wheel_limit(bundled):
    s = bundled.steering
    assert np.all(np.isfinite(s))
    assert s.min() >= -0.4 and s.max() <= 0.4
    assert s.std() > 0.02  # it really steers ...
    assert s.min() < -0.1 and s.max() > 0.1  # ... both ways
    assert np.abs(np.diff(s)).max() < 0.1  # a smooth expert, not bang-bang


def test_bundled_log_files_small_and_csv_format():
    video = example_log_path()
    table = video.with_suffix(".csv")
    assert video.stat().st_size + table.stat().st_size <= 5_000_000
    with open(table, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["frame", "time_s", "steering_rad"]
    frames = [int(r[0]) for r in rows[1:]]
    assert frames == list(range(len(frames)))
    assert [float(r[1]) for r in rows[1:4]] == [0.0, 0.02, 0.04]


def test_bundled_log_has_the_dashboard_in_the_bottom_twelve_rows(bundled):
    """The frames are the simulator's own: the dashboard (black, true steering/speed bars) is
    rows 84..95, and the scene above it; the bundled model crops it away (tests/test_models.py)."""
    f = bundled.frames
    dash_black = np.mean(np.all(f[:, 84:] == 0, axis=-1))
    scene_black = np.mean(np.all(f[:, 80:84] == 0, axis=-1))
    assert dash_black > 0.6
    assert scene_black < 0.05


def test_bundled_log_frames_change(bundled):
    f = bundled.frames[:, :84].astype(np.int16)
    assert np.mean(np.abs(f[100] - f[0])) > 1.0  # the car moves
    assert np.all([np.any(f[i] != f[i + 1]) for i in range(0, len(f) - 1, 50)])


# --- load_drive_log on logs written here ------------------------------------------------------


def test_load_drive_log_round_trip(tmp_path, small_frames):
    steering = [0.0, 0.1, -0.25, 0.4, -0.4, 0.123456]
    video = write_log(tmp_path / "run", small_frames, steering, fps=50.0)
    dl = load_drive_log(video)
    assert np.array_equal(dl.frames, small_frames)  # FFV1 is lossless
    assert dl.steering.dtype == np.float32
    assert np.allclose(dl.steering, steering)
    assert dl.fps == 50.0 and len(dl) == 6 and dl.path == video


def test_load_drive_log_missing_video(tmp_path):
    with pytest.raises(InputFileNotFoundError, match="drive log video not found"):
        load_drive_log(tmp_path / "nothing.mkv")


def test_load_drive_log_missing_video_with_csv(tmp_path):
    (tmp_path / "run.csv").write_text("frame,time_s,steering_rad\n0,0.00,0.1\n")
    with pytest.raises(InputFileNotFoundError, match="run.mkv"):
        load_drive_log(tmp_path / "run.mkv")


def test_load_drive_log_missing_csv(tmp_path, small_frames):
    video = write_log(tmp_path / "run", small_frames, [0.0] * 6)
    video.with_suffix(".csv").unlink()
    with pytest.raises(InputFileNotFoundError, match="steering file not found.*run.csv"):
        load_drive_log(video)


def test_load_drive_log_row_count_mismatch(tmp_path, small_frames):
    video = write_log(tmp_path / "run", small_frames, [0.0] * 5)
    with pytest.raises(InputError, match="5 rows but the video has 6 frames"):
        load_drive_log(video)


def test_load_drive_log_corrupt_video(tmp_path):
    video = tmp_path / "run.mkv"
    video.write_bytes(b"\x1a\x45\xdf\xa3 definitely not a matroska stream" * 10)
    (tmp_path / "run.csv").write_text("frame,time_s,steering_rad\n0,0.00,0.1\n")
    with pytest.raises(InputError, match="run.mkv"):
        load_drive_log(video)


def test_load_drive_log_truncated_video(tmp_path, small_frames):
    video = write_log(tmp_path / "run", small_frames, [0.0] * 6)
    raw = video.read_bytes()
    video.write_bytes(raw[: len(raw) // 3])
    with pytest.raises(InputError):
        load_drive_log(video)  # fewer decodable frames than rows, or none at all


@pytest.mark.parametrize(
    "text, match",
    [
        ("frame,time_s,steer\n" + "".join(f"{i},0,0\n" for i in range(6)), "no 'steering_rad' column"),
        ("frame,time_s,steering_rad\n" + "".join(f"{i},0,left\n" for i in range(6)), "non-numeric"),
        ("", "holds no rows"),
        ("frame,time_s,steering_rad\n", "holds no rows"),
    ],
)
def test_load_drive_log_bad_csv(tmp_path, small_frames, text, match):
    video = write_log(tmp_path / "run", small_frames, [0.0] * 6)
    video.with_suffix(".csv").write_text(text)
    with pytest.raises(InputError, match=match):
        load_drive_log(video)


def test_load_errors_are_fastviz_errors(tmp_path):
    with pytest.raises(FastvizError):
        load_drive_log(tmp_path / "x.mkv")


# --- the recorder writes logs in this format --------------------------------------------------


def test_recorder_writes_a_loadable_log_with_right_steering_sign(tmp_path):
    pytest.importorskip("gymnasium")
    pytest.importorskip("Box2D")
    spec = importlib.util.spec_from_file_location("record_drive_log", SCRIPTS / "record_drive_log.py")
    rec = importlib.util.module_from_spec(spec)
    sys.modules["record_drive_log"] = rec
    spec.loader.exec_module(rec)
    r = rec.record(7, 1.0, tmp_path, rec.ControllerConfig(noise=0.0), progress=False)
    dl = load_drive_log(tmp_path / "carracing_seed7.mkv")
    assert r["frames"] == len(dl) == 50 and dl.fps == 50.0
    assert dl.frames.shape == (50, 96, 96, 3)
    assert np.all(np.abs(dl.steering) <= 0.4)
    assert not list(tmp_path.glob("*.tmp.*"))  # temporary files renamed or removed

    # sign convention: a positive command turns the car right (clockwise, hull angle decreases)
    import gymnasium as gym

    env = gym.make("CarRacing-v3")
    env.reset(seed=7)
    car = env.unwrapped.car
    a0 = car.hull.angle
    for _ in range(100):
        env.step(np.array([0.3, 0.3, 0.0]))
    assert car.hull.angle < a0 - 0.3
    assert car.wheels[0].joint.angle == pytest.approx(-0.3, abs=1e-3)
    env.close()


def test_truncated_log_video_is_rejected(tmp_path):
    bundled = example_log_path()
    video = tmp_path / "cut.mkv"
    video.write_bytes(bundled.read_bytes()[:200_000])  # the first ~5% of the FFV1 stream
    (tmp_path / "cut.csv").write_bytes(bundled.with_suffix(".csv").read_bytes())
    with pytest.raises(InputError, match="truncated"):
        load_drive_log(video)
