"""fastviz.video: frame sources (video files, image folders) and the all-or-nothing VideoSink."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

import fastviz.data
from fastviz import video
from fastviz.errors import FastvizError, InputError, InputFileNotFoundError
from fastviz.video import VideoSink, open_source

from videofiles import decode_all, write_ffv1


def random_frames(n: int, h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)


def constant_image(path: Path, value: int, h: int = 6, w: int = 8) -> Path:
    assert cv2.imwrite(str(path), np.full((h, w, 3), value, np.uint8))
    return path


# --------------------------------------------------------------------------- image folders


def test_image_folder_natural_order(tmp_path):
    for value, name in [(10, "frame10.png"), (2, "frame2.png"), (1, "frame1.png"), (3, "Frame3.jpg"), (20, "frame20.bmp")]:
        constant_image(tmp_path / name, value)
    (tmp_path / "notes.txt").write_text("not an image")
    src = open_source(tmp_path)
    assert isinstance(src, video.ImageFolderSource)
    assert src.shape == (6, 8, 3) and src.frame_count == 5 and src.fps == video.DEFAULT_FPS
    frames = list(src)
    assert [f.dtype for f in frames] == [np.uint8] * 5
    # jpg is lossy, but a constant image decodes to (almost) its value
    assert [int(round(f.mean())) for f in frames] == [1, 2, 3, 10, 20]
    assert [int(round(f.mean())) for f in src] == [1, 2, 3, 10, 20]  # iterating again restarts


def test_natural_key_orders_numbers_by_value():
    names = ["img_10_b.png", "img_9_a.png", "img_10_a.png", "img_100.png", "img_9_b.png"]
    assert sorted(names, key=video.natural_key) == [
        "img_9_a.png",
        "img_9_b.png",
        "img_10_a.png",
        "img_10_b.png",
        "img_100.png",
    ]


def test_image_folder_is_rgb_and_fps_override(tmp_path):
    bgr = np.zeros((4, 5, 3), np.uint8)
    bgr[..., 2] = 200  # red in OpenCV's BGR order
    cv2.imwrite(str(tmp_path / "a.png"), bgr)
    src = open_source(tmp_path, fps=12.5)
    assert src.fps == 12.5
    (frame,) = list(src)
    assert (frame[..., 0] == 200).all() and (frame[..., 1:] == 0).all()


def test_batches_sizes_and_max_frames(tmp_path):
    for i in range(5):
        constant_image(tmp_path / f"f{i}.png", i)
    src = open_source(tmp_path)
    assert [b.shape[0] for b in src.batches(2)] == [2, 2, 1]
    assert [b.shape[0] for b in src.batches(2, max_frames=3)] == [2, 1]
    batches = list(src.batches(4))
    assert batches[0].shape == (4, 6, 8, 3) and batches[0].dtype == np.uint8
    np.testing.assert_array_equal(batches[1][0], np.full((6, 8, 3), 4, np.uint8))
    with pytest.raises(InputError, match="batch size"):
        next(src.batches(0))


def test_image_folder_mismatched_size_names_file_and_sizes(tmp_path):
    constant_image(tmp_path / "f1.png", 1, h=6, w=8)
    constant_image(tmp_path / "f2.png", 2, h=6, w=8)
    constant_image(tmp_path / "f10.png", 3, h=7, w=9)
    src = open_source(tmp_path)
    with pytest.raises(InputError) as info:
        list(src)
    msg = str(info.value)
    assert "f10.png" in msg and "9x7" in msg and "8x6" in msg and "f1.png" in msg


def test_image_folder_reads_lazily_and_names_unreadable_file(tmp_path):
    constant_image(tmp_path / "f1.png", 1)
    constant_image(tmp_path / "f2.png", 2)
    src = open_source(tmp_path)  # opening reads the first image only
    (tmp_path / "f2.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    frames = src.batches(1)
    assert next(frames).shape == (1, 6, 8, 3)
    with pytest.raises(InputError, match="f2.png"):
        next(frames)


def test_unreadable_first_image_fails_at_open(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(InputError, match="a.jpg"):
        open_source(tmp_path)


def test_empty_folder_and_missing_path(tmp_path):
    (tmp_path / "readme.md").write_text("x")
    with pytest.raises(InputError, match="no images"):
        open_source(tmp_path)
    with pytest.raises(InputFileNotFoundError, match="missing.mp4"):
        open_source(tmp_path / "missing.mp4")


def test_single_image_file_is_one_frame(tmp_path):
    src = open_source(constant_image(tmp_path / "one.png", 9))
    assert src.frame_count == 1 and [int(f.mean()) for f in src] == [9]


# --------------------------------------------------------------------------- video files


def test_video_file_source_streams_exact_ffv1_frames(tmp_path):
    frames = random_frames(7)
    path = write_ffv1(tmp_path / "clip.mkv", frames, fps=10.0)
    src = open_source(path)
    assert isinstance(src, video.VideoFileSource)
    assert src.shape == (24, 32, 3) and src.fps == 10.0 and src.frame_count == 7
    got = np.concatenate(list(src.batches(3)))
    np.testing.assert_array_equal(got, frames)
    np.testing.assert_array_equal(np.concatenate(list(src.batches(3, max_frames=4))), frames[:4])


@pytest.mark.parametrize("content", [b"", b"this is not a video at all\n" * 10])
def test_not_a_video_is_input_error(tmp_path, content):
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    with pytest.raises(InputError, match="bad.mp4"):
        open_source(path)


@pytest.mark.parametrize("ext, fourcc", [(".avi", "MJPG"), (".mkv", "FFV1"), (".mp4", "mp4v")])
def test_video_with_zero_frames_is_input_error(tmp_path, ext, fourcc):
    path = tmp_path / f"zero{ext}"
    cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 25, (32, 32)).release()
    assert path.is_file()
    with pytest.raises(InputError, match=f"zero{ext}"):
        open_source(path)


def test_truncated_video_is_input_error(tmp_path):
    path = write_ffv1(tmp_path / "long.mkv", random_frames(30, 48, 64))
    data = path.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 2])
    src = open_source(cut)  # the header is intact: it opens and announces 30 frames
    assert src.frame_count == 30
    with pytest.raises(InputError, match=r"ended after \d+ of 30 frames \(truncated"):
        list(src)


def test_default_source_is_bundled_log(monkeypatch, tmp_path):
    missing = tmp_path / "carracing_heldout.mkv"
    monkeypatch.setattr(fastviz.data, "example_log_path", lambda: missing)
    with pytest.raises(InputFileNotFoundError, match="bundled"):
        open_source(None)
    path = write_ffv1(tmp_path / "log.mkv", random_frames(2))
    monkeypatch.setattr(fastviz.data, "example_log_path", lambda: path)
    assert open_source().path == path


def test_bundled_log_opens_when_present():
    path = fastviz.data.example_log_path()
    if not path.is_file():
        pytest.skip("bundled drive log not generated yet")
    src = open_source()
    assert src.shape == (96, 96, 3) and src.fps > 0
    assert next(src.batches(2)).shape == (2, 96, 96, 3)


def test_read_video_unchanged(tmp_path):
    frames = random_frames(3)
    got, fps = video.read_video(write_ffv1(tmp_path / "c.mkv", frames), max_frames=2)
    np.testing.assert_array_equal(got, frames[:2])
    assert fps == 25.0


# --------------------------------------------------------------------------- VideoSink


def test_sink_ffv1_round_trip_is_exact(tmp_path):
    frames = random_frames(5, 20, 30, seed=1)
    out = tmp_path / "out.mkv"
    with VideoSink(out, fps=15, size=(20, 30)) as sink:
        for f in frames:
            sink.write(f)
    assert sink.frames_written == 5
    np.testing.assert_array_equal(decode_all(out), frames)
    src = open_source(out)
    assert src.fps == 15.0 and src.frame_count == 5


@pytest.mark.parametrize("ext", [".mp4", ".avi", ".mkv"])
def test_sink_renames_on_success(tmp_path, ext):
    out = tmp_path / f"out{ext}"
    frames = random_frames(6, 32, 48)
    with VideoSink(out, fps=25, size=(32, 48)) as sink:
        for f in frames:
            sink.write(f)
        assert not out.exists()
        assert sink.tmp_path.exists() and sink.tmp_path.name == f"out.tmp-{os.getpid()}{ext}"
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]
    decoded = decode_all(out)
    assert decoded.shape == (6, 32, 48, 3)


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_sink_leaves_nothing_when_block_raises(tmp_path, exc):
    out = tmp_path / "out.mp4"
    with pytest.raises(type(exc)):
        with VideoSink(out, fps=25, size=(16, 16)) as sink:
            sink.write(np.zeros((16, 16, 3), np.uint8))
            raise exc
    assert list(tmp_path.iterdir()) == []


def test_sink_failure_keeps_existing_output(tmp_path):
    out = tmp_path / "out.mkv"
    out.write_bytes(b"previous")
    with pytest.raises(RuntimeError):
        with VideoSink(out, fps=25, size=(8, 8)) as sink:
            sink.write(np.zeros((8, 8, 3), np.uint8))
            raise RuntimeError
    assert out.read_bytes() == b"previous" and sorted(tmp_path.iterdir()) == [out]


def test_sink_rejects_wrong_frames_and_leaves_nothing(tmp_path):
    out = tmp_path / "out.avi"
    with pytest.raises(InputError, match=r"\(16, 16, 3\)"):
        with VideoSink(out, fps=25, size=(16, 16)) as sink:
            sink.write(np.zeros((16, 17, 3), np.uint8))
    with pytest.raises(InputError, match="uint8"):
        with VideoSink(out, fps=25, size=(16, 16)) as sink:
            sink.write(np.zeros((16, 16, 3), np.float32))
    assert list(tmp_path.iterdir()) == []


def test_sink_pads_odd_sizes(tmp_path):
    out = tmp_path / "odd.mkv"
    frames = random_frames(2, 9, 13)
    with VideoSink(out, fps=25, size=(9, 13)) as sink:
        for f in frames:
            sink.write(f)
    assert sink.frame_size == (10, 14)
    decoded = decode_all(out)
    assert decoded.shape == (2, 10, 14, 3)
    np.testing.assert_array_equal(decoded[:, :9, :13], frames)
    assert not decoded[:, 9:].any() and not decoded[:, :, 13:].any()


@pytest.mark.parametrize(
    "path, kwargs, match",
    [
        ("out.gif", {}, "unknown extension"),
        ("out", {}, "unknown extension"),
        ("nowhere/out.mp4", {}, "does not exist"),
        ("out.mp4", {"fps": 0}, "fps"),
        ("out.mp4", {"size": (0, 4)}, "size"),
    ],
)
def test_sink_bad_arguments(tmp_path, path, kwargs, match):
    args = {"fps": 25, "size": (8, 8), **kwargs}
    with pytest.raises(InputError, match=match):
        VideoSink(tmp_path / path, **args)
    assert list(tmp_path.iterdir()) == []


def test_errors_are_fastviz_errors():
    assert issubclass(InputError, FastvizError) and issubclass(InputFileNotFoundError, FastvizError)
