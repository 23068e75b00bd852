"""fastviz.video: frame sources (video files, image folders) and the all-or-nothing sinks
(VideoSink on PyAV, ImageFolderSink, MapsSink).

References are independent of fastviz.video: OpenCV writes and decodes the reference videos
(tests/videofiles.py), a plain box parser reads MP4 layouts, OpenCV reads PNGs, NumPy loads .npz."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
import tracemalloc
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

import fastviz.data
from fastviz import tempfiles, video
from fastviz.errors import FastvizError, InputError, InputFileNotFoundError
from fastviz.video import ImageFolderSink, MapsSink, OutputError, VideoSink, open_source

from children import run
from fsfaults import full_disk, read_only_folder
from videofiles import decode_all, mp4_top_level_boxes, write_ffv1


def random_frames(n: int, h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)


def smooth_frames(n: int, h: int = 48, w: int = 64) -> np.ndarray:
    """Gradients that drift frame to frame: what lossy codecs keep well."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack(
        [np.stack([(xx * 3 + 5 * i) % 256, (yy * 4 + 2 * i) % 256, ((xx + yy) * 2) % 256], -1) for i in range(n)]
    ).astype(np.uint8)


def write_with(sink: VideoSink | ImageFolderSink, frames: np.ndarray):
    with sink:
        for f in frames:
            sink.write(f)
    return sink


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


def _cut_in_half(path: Path, cut: Path) -> Path:
    data = path.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    return cut


@pytest.mark.parametrize("writer", ["opencv-ffv1.mkv", "opencv-mjpg.avi", "fastviz-h264.mp4", "fastviz-ffv1.mkv"])
def test_truncated_video_is_reported_when_opened(tmp_path, writer):
    """A real encoded file cut in half: reported by open_source, before any frame is computed;
    the container (header intact) still announces 30 frames."""
    frames = random_frames(30, 48, 64)
    name = writer.split("-", 1)[1]
    path = tmp_path / name
    if writer == "opencv-ffv1.mkv":
        write_ffv1(path, frames)
    elif writer == "opencv-mjpg.avi":
        w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (64, 48))
        for f in frames:
            w.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
        w.release()
    else:
        write_with(VideoSink(path, fps=25, size=(48, 64)), frames)
    assert open_source(path).frame_count == 30
    cut = _cut_in_half(path, tmp_path / f"cut{path.suffix}")
    pattern = r"cut\.\w+: (frame \d+ is damaged|holds \d+ of the 30 frames|its frames end at .* of the 1\.20 s).*truncated"
    with pytest.raises(InputError, match=pattern):
        open_source(cut)


def test_valid_variable_frame_rate_and_audio_files_are_not_called_truncated(tmp_path):
    """Without a frame index (Matroska) the check compares times, never a frame count guessed from a
    rate: a variable-frame-rate video, and a video whose audio track lasts longer, are whole."""
    import av
    from fractions import Fraction

    vfr = tmp_path / "vfr.mkv"
    with av.open(str(vfr), "w") as c:
        s = c.add_stream("ffv1", rate=50)
        s.width, s.height, s.pix_fmt = 32, 24, "bgr0"
        s.time_base = Fraction(1, 1000)
        t = 0
        for i, f in enumerate(random_frames(100, 24, 32)):
            picture = av.VideoFrame.from_ndarray(f, format="rgb24")
            picture.pts, picture.time_base = t, Fraction(1, 1000)
            t += 20 if i < 50 else 200
            c.mux(s.encode(picture))
        c.mux(s.encode(None))
    src = open_source(vfr)
    assert src.frame_count == 100 and len(list(src)) == 100

    with_audio = tmp_path / "audio.mkv"
    with av.open(str(with_audio), "w") as c:
        v = c.add_stream("ffv1", rate=25)
        v.width, v.height, v.pix_fmt = 32, 24, "bgr0"
        a = c.add_stream("pcm_s16le", rate=8000)
        for i, f in enumerate(random_frames(50, 24, 32)):  # 2 s of video
            picture = av.VideoFrame.from_ndarray(f, format="rgb24")
            picture.pts = i
            c.mux(v.encode(picture))
        c.mux(v.encode(None))
        for k in range(10):  # 10 s of audio
            samples = av.AudioFrame.from_ndarray(np.zeros((1, 8000), np.int16), format="s16", layout="mono")
            samples.sample_rate, samples.pts = 8000, k * 8000
            c.mux(a.encode(samples))
        c.mux(a.encode(None))
    src = open_source(with_audio)
    assert src.frame_count == 50 and len(list(src)) == 50


def test_mp4_with_index_at_the_end_cut_is_reported_when_opened(tmp_path):
    # OpenCV's mp4 writer puts the index (moov) last: cut in half, there is no index at all
    frames = random_frames(10)
    path = tmp_path / "tail.mp4"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (32, 24))
    for f in frames:
        w.write(f)
    w.release()
    assert mp4_top_level_boxes(path)[-1] == "moov"
    with pytest.raises(InputError, match=r"cannot open video .*cut\.mp4.*truncated"):
        open_source(_cut_in_half(path, tmp_path / "cut.mp4"))


def test_damaged_frame_raises_at_once_naming_it(tmp_path):
    """PNG-coded frames in AVI: damage the data of frame 5 (its packet keeps its size, so the
    demux-only check at open passes); decoding stops at frame 5 with the frame named."""
    frames = random_frames(10)
    path = write_with(VideoSink(tmp_path / "png.avi", fps=25, size=(24, 32), codec="png"), frames).path
    with av.open(str(path)) as container:  # where frame 5's bytes are
        packets = [(p.pos, p.size) for p in container.demux(video=0) if p.size]
    pos, size = packets[5]
    data = bytearray(path.read_bytes())
    data[pos + size // 2 : pos + size // 2 + 40] = bytes(range(40))
    path.write_bytes(bytes(data))
    src = open_source(path)
    assert src.frame_count == 10
    got = []
    with pytest.raises(InputError, match=r"png\.avi: frame 5 cannot be decoded"):
        for frame in src:
            got.append(frame)
    np.testing.assert_array_equal(np.stack(got), frames[:5])  # exact (PNG) up to the damage


def test_default_source_is_bundled_log(monkeypatch, tmp_path):
    missing = tmp_path / "carracing_heldout.mkv"
    monkeypatch.setattr(fastviz.data, "example_log_path", lambda: missing)
    with pytest.raises(InputFileNotFoundError, match="bundled"):
        open_source(None)
    path = write_ffv1(tmp_path / "log.mkv", random_frames(2))
    monkeypatch.setattr(fastviz.data, "example_log_path", lambda: path)
    assert open_source().path == path


def test_bundled_log_decodes_as_the_opencv_reference():
    path = fastviz.data.example_log_path()
    if not path.is_file():
        pytest.skip("bundled drive log not generated yet")
    src = open_source()
    assert src.shape == (96, 96, 3) and src.fps == 50.0 and src.frame_count == 1500
    np.testing.assert_array_equal(np.concatenate(list(src.batches(256))), decode_all(path))


def test_read_video_unchanged(tmp_path):
    frames = random_frames(3)
    got, fps = video.read_video(write_ffv1(tmp_path / "c.mkv", frames), max_frames=2)
    np.testing.assert_array_equal(got, frames[:2])
    assert fps == 25.0


# --------------------------------------------------------------------------- VideoSink: formats


def test_sink_ffv1_round_trip_is_exact(tmp_path):
    frames = random_frames(5, 20, 30, seed=1)
    out = tmp_path / "out.mkv"
    sink = write_with(VideoSink(out, fps=15, size=(20, 30)), frames)
    assert sink.frames_written == 5 and (sink.codec, sink.pix_fmt) == ("ffv1", "bgr0")
    np.testing.assert_array_equal(decode_all(out), frames)  # OpenCV's decoder
    src = open_source(out)
    assert src.fps == 15.0 and src.frame_count == 5
    np.testing.assert_array_equal(np.stack(list(src)), frames)


def test_sink_ffv1_odd_size_is_exact_without_padding(tmp_path):
    frames = random_frames(3, 9, 13)
    sink = write_with(VideoSink(tmp_path / "odd.mkv", fps=25, size=(9, 13)), frames)
    assert sink.frame_size == (9, 13)  # bgr0 has no chroma subsampling
    np.testing.assert_array_equal(decode_all(tmp_path / "odd.mkv"), frames)


def test_sink_h264_mp4_is_browser_ready(tmp_path):
    """H.264 in yuv420p, the index (moov) before the data (mdat), every frame there, close to
    the input (lossy)."""
    frames = smooth_frames(12)
    out = tmp_path / "web.mp4"
    write_with(VideoSink(out, fps=30, size=(48, 64)), frames)
    boxes = mp4_top_level_boxes(out)
    assert "moov" in boxes and "mdat" in boxes and boxes.index("moov") < boxes.index("mdat"), boxes
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
        assert stream.frames == 12 and stream.average_rate == 30
    decoded = decode_all(out)
    assert decoded.shape == (12, 48, 64, 3)
    error = np.abs(decoded.astype(int) - frames).mean(axis=(1, 2, 3))
    assert error.max() < 4.0, error  # every frame (measured ~1.5 at libx264's default CRF)


@pytest.mark.parametrize("threads", [1, 3])
def test_sink_encoder_threads_reach_the_encoder(tmp_path, threads):
    frames = smooth_frames(6)
    out = tmp_path / "t.mp4"
    with VideoSink(out, fps=30, size=(48, 64), threads=threads) as sink:
        assert sink._stream.codec_context.thread_count == threads
        for f in frames:
            sink.write(f)
    assert np.abs(decode_all(out).astype(int) - frames).mean() < 4.0


@pytest.mark.parametrize("threads", [0, -1, 1.5, True, "2"])
def test_sink_rejects_bad_encoder_threads(tmp_path, threads):
    with pytest.raises(InputError, match="encoder threads"):
        VideoSink(tmp_path / "t.mp4", fps=30, size=(48, 64), threads=threads)
    assert list(tmp_path.iterdir()) == []


def test_overlay_leaves_two_cores_to_the_pipeline(monkeypatch):
    from fastviz.overlay import encoder_threads

    for cores, want in ((1, 1), (2, 1), (3, 1), (4, 2), (16, 14)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, n=cores: set(range(n)))
        assert encoder_threads() == want


def test_sink_faststart_pass_moves_the_data_intact(tmp_path):
    """The faststart pass rewrites the whole file (it shifts the data to put the index first),
    reading it back through the descriptor. Against a plain PyAV writer (by path, no faststart,
    same settings; x264 is deterministic), every frame's coded bytes must be the same: a stale or
    short read would change them. Random frames make a file of 100+ KB, many I/O buffers long."""
    frames = random_frames(20, 96, 128)
    out = tmp_path / "fast.mp4"
    write_with(VideoSink(out, fps=25, size=(96, 128)), frames)
    plain = tmp_path / "plain.mp4"
    with av.open(str(plain), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
        stream.options = {"preset": "veryfast"}  # as VideoSink's H.264
        for i, f in enumerate(frames):
            picture = av.VideoFrame.from_ndarray(f, format="rgb24")
            picture.pts = i
            container.mux(stream.encode(picture))
        container.mux(stream.encode(None))
    assert mp4_top_level_boxes(plain).index("mdat") < mp4_top_level_boxes(plain).index("moov")
    assert mp4_top_level_boxes(out).index("moov") < mp4_top_level_boxes(out).index("mdat")
    assert out.stat().st_size > 100_000  # PyAV moves 32 KB at a time, Python buffers 8 KB

    def payloads(path):
        with av.open(str(path)) as container:
            return [bytes(p) for p in container.demux(video=0) if p.size]

    assert payloads(out) == payloads(plain)
    np.testing.assert_array_equal(decode_all(out), decode_all(plain))


def test_sink_mjpeg_avi(tmp_path):
    frames = smooth_frames(6)
    out = tmp_path / "clip.avi"
    sink = write_with(VideoSink(out, fps=25, size=(48, 64)), frames)
    assert (sink.codec, sink.pix_fmt) == ("mjpeg", "yuvj420p")
    with av.open(str(out)) as container:
        assert container.streams.video[0].codec_context.name == "mjpeg"
    decoded = decode_all(out)
    assert decoded.shape == (6, 48, 64, 3) and np.abs(decoded.astype(int) - frames).mean() < 4.0


@pytest.mark.parametrize("ext", [".mp4", ".avi"])
def test_sink_pads_odd_sizes_for_yuv420(tmp_path, ext):
    out = tmp_path / f"odd{ext}"
    frames = np.zeros((2, 9, 13, 3), np.uint8)
    frames[:, :, :, 1] = 200  # green frame; the padding is black
    sink = write_with(VideoSink(out, fps=25, size=(9, 13)), frames)
    assert sink.frame_size == (10, 14)
    decoded = decode_all(out)
    assert decoded.shape == (2, 10, 14, 3)
    assert abs(decoded[:, :8, :12, 1].mean() - 200) < 8  # away from the edge shared with the padding


def test_sink_other_codec(tmp_path):
    out = tmp_path / "mpeg4.mp4"
    sink = write_with(VideoSink(out, fps=25, size=(48, 64), codec="mpeg4"), smooth_frames(4))
    assert sink.codec == "mpeg4"
    with av.open(str(out)) as container:
        assert container.streams.video[0].codec_context.name == "mpeg4"
    assert decode_all(out).shape == (4, 48, 64, 3)
    assert VideoSink(out, fps=25, size=(8, 8), codec="h264").codec == "libx264"  # FFmpeg's alias


@pytest.mark.parametrize("codec", ["no-such-codec", "aac", ""])
def test_sink_unknown_codec(tmp_path, codec):
    with pytest.raises(InputError, match="codec"):
        VideoSink(tmp_path / "o.mkv", fps=25, size=(8, 8), codec=codec)
    assert list(tmp_path.iterdir()) == []


def test_sink_codec_the_container_cannot_hold_fails_on_entering(tmp_path):
    sink = VideoSink(tmp_path / "o.mkv", fps=25, size=(8, 8), codec="png")
    with pytest.raises(OutputError, match=r"o\.mkv: codec png .*matroska"):
        with sink:
            raise AssertionError("not reached")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- VideoSink: all or nothing


@pytest.mark.parametrize("ext", [".mp4", ".avi", ".mkv"])
def test_sink_renames_on_success(tmp_path, ext):
    out = tmp_path / f"out{ext}"
    frames = random_frames(6, 32, 48)
    with VideoSink(out, fps=25, size=(32, 48)) as sink:
        for f in frames:
            sink.write(f)
        assert not out.exists()
        assert re.fullmatch(rf"\.out{ext}\.fastviz-tmp-{os.getpid()}-[0-9a-f]{{12}}{ext}", sink.tmp_path.name)
        assert sink.tmp_path.exists() and sink.tmp_path.parent == tmp_path
    assert sink.tmp_path is None
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]
    assert decode_all(out).shape == (6, 32, 48, 3)


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt(), tempfiles.Terminated(15)])
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


def test_sink_without_frames_is_an_error_and_leaves_nothing(tmp_path):
    with pytest.raises(OutputError, match="no frame"):
        with VideoSink(tmp_path / "out.mp4", fps=25, size=(8, 8)):
            pass
    assert list(tmp_path.iterdir()) == []


def test_sink_rejects_wrong_frames_and_leaves_nothing(tmp_path):
    out = tmp_path / "out.avi"
    with pytest.raises(InputError, match=r"\(16, 16, 3\)"):
        with VideoSink(out, fps=25, size=(16, 16)) as sink:
            sink.write(np.zeros((16, 17, 3), np.uint8))
    with pytest.raises(InputError, match="uint8"):
        with VideoSink(out, fps=25, size=(16, 16)) as sink:
            sink.write(np.zeros((16, 16, 3), np.float32))
    assert list(tmp_path.iterdir()) == []


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


@pytest.mark.parametrize("ext", [".mp4", ".mkv"])
@pytest.mark.parametrize("exc", [RuntimeError("model failed"), KeyboardInterrupt()])
def test_sink_keep_partial_keeps_the_frames_written(tmp_path, ext, exc):
    out = tmp_path / f"part{ext}"
    frames = random_frames(3, 16, 16)
    with pytest.raises(type(exc)):
        with VideoSink(out, fps=25, size=(16, 16), keep_partial=True) as sink:
            for f in frames:
                sink.write(f)
            raise exc
    assert sink.kept_frames == 3
    assert sorted(tmp_path.iterdir()) == [out]
    decoded = decode_all(out)
    assert decoded.shape == (3, 16, 16, 3)
    if ext == ".mkv":
        np.testing.assert_array_equal(decoded, frames)


def test_sink_keep_partial_without_frames_keeps_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with VideoSink(tmp_path / "p.mp4", fps=25, size=(8, 8), keep_partial=True) as sink:
            raise RuntimeError
    assert sink.kept_frames is None and list(tmp_path.iterdir()) == []


def test_sink_replaces_a_link_at_the_final_name_without_following_it(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    out = tmp_path / "out.mkv"
    out.symlink_to(victim)
    write_with(VideoSink(out, fps=25, size=(8, 8)), random_frames(2, 8, 8))
    assert victim.read_bytes() == b"precious"
    assert not out.is_symlink() and decode_all(out).shape == (2, 8, 8, 3)


def test_sink_ignores_links_planted_at_the_old_predictable_names(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    for name in (f"out.tmp-{os.getpid()}.mp4", "out.mp4.tmp", "out.tmp.mp4"):
        (tmp_path / name).symlink_to(victim)
    write_with(VideoSink(tmp_path / "out.mp4", fps=25, size=(8, 8)), random_frames(2, 8, 8))
    assert victim.read_bytes() == b"precious"
    assert decode_all(tmp_path / "out.mp4").shape == (2, 8, 8, 3)


@pytest.mark.parametrize("ext", [".mp4", ".mkv"])
def test_sink_temporary_swapped_for_a_link_is_refused_and_the_target_untouched(tmp_path, ext):
    """An attacker renames the temporary away and puts a link to a victim in its place while
    frames are written. The muxer writes (and MP4's faststart pass reads) through the descriptor,
    never by name, so the victim is untouched; the rename then sees another file and refuses."""
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    out = tmp_path / f"out{ext}"
    with pytest.raises(OutputError, match="replaced by someone else"):
        with VideoSink(out, fps=25, size=(16, 16)) as sink:
            sink.write(random_frames(1, 16, 16)[0])
            os.rename(sink.tmp_path, tmp_path / "moved")
            sink.tmp_path.symlink_to(victim)
            for f in random_frames(5, 16, 16):
                sink.write(f)
    assert victim.read_bytes() == b"precious"
    assert not out.exists() and not out.is_symlink()


def test_sink_removes_stale_temporaries_of_dead_processes_on_entering(tmp_path):
    dead = _dead_pid()
    stale = tmp_path / f".out.mkv.fastviz-tmp-{dead}-0123456789ab.mkv"
    stale.write_bytes(b"left by kill -9")
    other = tmp_path / f".other.mkv.fastviz-tmp-{dead}-0123456789ab.mkv"
    other.write_bytes(b"another output's")
    write_with(VideoSink(tmp_path / "out.mkv", fps=25, size=(8, 8)), random_frames(1, 8, 8))
    assert not stale.exists() and other.exists()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --------------------------------------------------------------------------- VideoSink: faults


@pytest.mark.parametrize("ext", [".mkv", ".mp4"])
def test_sink_full_disk_is_one_error_naming_the_output_and_leaves_nothing(tmp_path, capfd, ext):
    """Disk full while frames are written (.mkv: FFV1 of noise, 9 KB a frame) or while the
    trailer and faststart pass run (.mp4: 64 KB disk): one error, nothing left, and nothing on
    the console (PyAV prints every I/O exception it has to drop)."""
    with full_disk(tmp_path / "small", size="300k" if ext == ".mkv" else "64k") as folder:
        out = folder / f"big{ext}"
        with pytest.raises(OutputError) as info:
            with VideoSink(out, fps=25, size=(48, 64)) as sink:
                for f in random_frames(100, 48, 64):
                    sink.write(f)
        message = str(info.value)
        assert "\n" not in message and str(out) in message and "no space left on device" in message
        assert info.value.errno == errno.ENOSPC and isinstance(info.value, InputError)
        assert 0 < sink.frames_written <= 100
        assert list(folder.iterdir()) == []
    assert capfd.readouterr().err == ""


def test_sink_read_only_folder_is_one_error_and_leaves_nothing(tmp_path):
    with read_only_folder(tmp_path / "ro") as folder:
        with pytest.raises(OutputError) as info:
            with VideoSink(folder / "o.mp4", fps=25, size=(8, 8)):
                raise AssertionError("not reached")
        message = str(info.value)
        assert "\n" not in message and "o.mp4" in message
        assert re.search("read-only file system|permission denied", message), message
        assert list(folder.iterdir()) == []


# --------------------------------------------------------------------------- ImageFolderSink


def test_image_folder_sink_writes_numbered_pngs_exactly(tmp_path):
    frames = random_frames(3, 10, 12)
    out = tmp_path / "frames"
    sink = write_with(ImageFolderSink(out), frames)
    assert sink.frames_written == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames"]
    assert sorted(p.name for p in out.iterdir()) == ["frame_000000.png", "frame_000001.png", "frame_000002.png"]
    for i, f in enumerate(frames):
        bgr = cv2.imread(str(out / f"frame_{i:06d}.png"), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), f)
    assert [b.shape for b in open_source(out).batches(8)] == [(3, 10, 12, 3)]  # reads back in order


def test_image_folder_sink_fills_an_empty_folder(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    write_with(ImageFolderSink(out), random_frames(2, 4, 4))
    assert len(list(out.iterdir())) == 2


def test_image_folder_sink_refuses_a_non_empty_folder_a_file_and_a_link(tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match="not empty"):
        with ImageFolderSink(full):
            pass
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="file of that name"):
        with ImageFolderSink(tmp_path / "file"):
            pass
    (tmp_path / "link").symlink_to(full)
    with pytest.raises(OutputError, match="symbolic link"):
        with ImageFolderSink(tmp_path / "link"):
            pass
    with pytest.raises(OutputError, match="does not exist"):
        ImageFolderSink(tmp_path / "nowhere" / "frames")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "full", "link"]
    assert [p.name for p in full.iterdir()] == ["keep.txt"]


def test_image_folder_sink_all_or_nothing(tmp_path):
    out = tmp_path / "frames"
    with pytest.raises(KeyboardInterrupt):
        with ImageFolderSink(out) as sink:
            sink.write(random_frames(1, 4, 4)[0])
            assert sink.tmp_path.is_dir() and len(list(sink.tmp_path.iterdir())) == 1
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InputError, match=r"\(4, 4, 3\)"):
        with ImageFolderSink(out) as sink:
            sink.write(random_frames(1, 4, 4)[0])
            sink.write(random_frames(1, 5, 4)[0])
    assert list(tmp_path.iterdir()) == []


def test_image_folder_sink_keep_partial(tmp_path):
    out = tmp_path / "frames"
    with pytest.raises(RuntimeError):
        with ImageFolderSink(out, keep_partial=True) as sink:
            for f in random_frames(2, 4, 4):
                sink.write(f)
            raise RuntimeError
    assert sink.kept_frames == 2 and sorted(p.name for p in out.iterdir()) == ["frame_000000.png", "frame_000001.png"]


def test_image_folder_sink_full_disk(tmp_path):
    with full_disk(tmp_path / "small", size="300k") as folder:
        with pytest.raises(OutputError, match="no space left on device") as info:
            with ImageFolderSink(folder / "frames") as sink:
                for f in random_frames(100, 48, 64):
                    sink.write(f)
        assert "\n" not in str(info.value) and "frames" in str(info.value)
        assert list(folder.iterdir()) == []


# --------------------------------------------------------------------------- MapsSink


def test_maps_sink_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    maps = rng.normal(0, 10, size=(7, 5, 6)).astype(np.float32)
    pred = rng.normal(size=7).astype(np.float32)
    out = tmp_path / "maps.npz"
    with MapsSink(out) as sink:
        sink.write(maps[:3], index=np.arange(3), prediction=pred[:3])
        sink.write(maps[3], index=10, prediction=pred[3])  # one (H, W) map
        sink.write(maps[4:], index=[20, 21, 22], prediction=pred[4:])
    assert sink.frames_written == 7
    with np.load(out, allow_pickle=False) as data:
        assert sorted(data.files) == ["index", "maps", "prediction"]
        assert data["maps"].dtype == np.float16 and data["maps"].shape == (7, 5, 6)
        np.testing.assert_array_equal(data["maps"], maps.astype(np.float16))
        assert data["index"].dtype == np.int64 and data["index"].tolist() == [0, 1, 2, 10, 20, 21, 22]
        assert data["prediction"].dtype == np.float32
        np.testing.assert_array_equal(data["prediction"], pred)
    assert sorted(tmp_path.iterdir()) == [out]


def test_maps_sink_without_predictions_and_compressed(tmp_path):
    maps = np.linspace(0, 1, 2 * 4 * 4).reshape(2, 4, 4)
    for compress in (False, True):
        out = tmp_path / f"m{compress}.npz"
        with MapsSink(out, compress=compress) as sink:
            sink.write(maps, index=[4, 5])
        with np.load(out, allow_pickle=False) as data:
            assert sorted(data.files) == ["index", "maps"]
            np.testing.assert_array_equal(data["maps"], maps.astype(np.float16))


def test_maps_sink_streams_without_holding_the_maps(tmp_path):
    """40 MB of float32 maps go through with a few MB of Python/NumPy memory at most."""
    batch = np.ones((10, 100, 100), np.float32)
    tracemalloc.start()
    try:
        with MapsSink(tmp_path / "big.npz") as sink:
            for i in range(100):
                sink.write(batch * i, index=np.arange(10) + 10 * i)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8e6, peak  # 100 batches of 0.4 MB (0.2 MB as float16) would be 20-40 MB
    with np.load(tmp_path / "big.npz") as data:
        maps = data["maps"]
        assert maps.shape == (1000, 100, 100) and float(maps[999, 0, 0]) == 99.0


@pytest.mark.parametrize(
    "maps, index, prediction, match",
    [
        (np.zeros((2, 4, 4)), [0], None, "index must be 2 integers"),
        (np.zeros((2, 4, 4)), [0.0, 1.0], None, "index must be 2 integers"),
        (np.zeros((2, 4, 4)), [0, 1], [1.0], "prediction must be 2 numbers"),
        (np.zeros((4,)), [0], None, r"shape \(n, H, W\)"),
        (np.array([[["a"]]]), [0], None, "real maps"),
        (np.full((1, 2, 2), 1e5), [0], None, "float16"),
    ],
)
def test_maps_sink_bad_input(tmp_path, maps, index, prediction, match):
    with pytest.raises(InputError, match=match):
        with MapsSink(tmp_path / "m.npz") as sink:
            sink.write(maps, index, prediction)
    assert list(tmp_path.iterdir()) == []


def test_maps_sink_consistency_between_batches(tmp_path):
    with pytest.raises(InputError, match=r"\(5, 4\) but the others are \(4, 4\)"):
        with MapsSink(tmp_path / "m.npz") as sink:
            sink.write(np.zeros((1, 4, 4)), [0])
            sink.write(np.zeros((1, 5, 4)), [1])
    with pytest.raises(InputError, match="every batch"):
        with MapsSink(tmp_path / "m.npz") as sink:
            sink.write(np.zeros((1, 4, 4)), [0], [0.5])
            sink.write(np.zeros((1, 4, 4)), [1])
    with pytest.raises(InputError, match="npz"):
        MapsSink(tmp_path / "m.npy")
    assert list(tmp_path.iterdir()) == []


def test_maps_sink_nan_and_inf_are_kept(tmp_path):
    with MapsSink(tmp_path / "m.npz") as sink:
        sink.write(np.array([[[np.nan, np.inf], [-np.inf, 1.0]]]), [0])
    with np.load(tmp_path / "m.npz") as data:
        assert np.isnan(data["maps"][0, 0, 0]) and data["maps"][0, 0, 1] == np.inf and data["maps"][0, 1, 1] == 1.0


def test_maps_sink_all_or_nothing_and_keep_partial(tmp_path):
    out = tmp_path / "m.npz"
    with pytest.raises(KeyboardInterrupt):
        with MapsSink(out) as sink:
            sink.write(np.ones((2, 3, 3)), [0, 1])
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError):
        with MapsSink(out, keep_partial=True) as sink:
            sink.write(np.ones((2, 3, 3)), [0, 1])
            raise RuntimeError
    assert sink.kept_frames == 2
    with np.load(out) as data:
        assert data["maps"].shape == (2, 3, 3) and data["index"].tolist() == [0, 1]


def test_maps_sink_full_disk(tmp_path):
    with full_disk(tmp_path / "small", size="300k") as folder:
        with pytest.raises(OutputError, match="no space left on device") as info:
            with MapsSink(folder / "m.npz") as sink:
                for i in range(100):
                    sink.write(np.random.default_rng(i).normal(size=(1, 64, 64)), [i])  # 8 KB each
        assert "m.npz" in str(info.value)
        assert list(folder.iterdir()) == []


# --------------------------------------------------------------------------- the console


def test_ffmpeg_console_stays_quiet(tmp_path):
    """Encoding with libx264 and opening junk and truncated files print nothing: FFmpeg's and
    x264's messages are not routed to the console."""
    script = f"""
import numpy as np
from pathlib import Path
from fastviz.video import VideoSink, open_source
from fastviz.errors import InputError
folder = Path({str(tmp_path)!r})
with VideoSink(folder / "a.mp4", fps=25, size=(32, 32)) as sink:
    for i in range(5):
        sink.write(np.full((32, 32, 3), 40 * i, np.uint8))
data = (folder / "a.mp4").read_bytes()
(folder / "cut.mp4").write_bytes(data[: len(data) // 2])
(folder / "junk.mkv").write_bytes(b"junk" * 100)
for name in ("cut.mp4", "junk.mkv"):
    try:
        open_source(folder / name)
    except InputError:
        pass
    else:
        raise SystemExit(name + " opened")
print("done")
"""
    proc = run(script)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "done\n" and proc.stderr == ""


def test_errors_are_fastviz_errors():
    assert issubclass(InputError, FastvizError) and issubclass(InputFileNotFoundError, FastvizError)
    assert issubclass(OutputError, InputError) and issubclass(OutputError, OSError)


# --------------------------------------------------------------------------- frames_at: only some frames


def _moving(n: int, h: int = 32, w: int = 48) -> np.ndarray:
    """Frames that differ from each other: a bright square moving over a gradient."""
    yy, xx = np.mgrid[:h, :w]
    frames = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        img = np.stack([(xx * 5) % 256, (yy * 7) % 256, np.full_like(xx, (i * 3) % 256)], -1).astype(np.uint8)
        side = min(8, h // 2, w // 2)
        y, x = (i * 2) % (h - side), (i * 3) % (w - side)
        img[y:y + side, x:x + side] = 255
        frames[i] = img
    return frames


@pytest.mark.parametrize("name,codec", [("a.mkv", None), ("a.mp4", None), ("a.avi", None)])
def test_frames_at_equals_the_same_frames_of_a_full_decode(tmp_path, name, codec):
    """FFV1 (intra-only), H.264 (keyframes far apart: seeks land before the frame and decode
    forward) and MJPEG: the frames asked for are those a full decode gives, in ascending order."""
    path = write_with(VideoSink(tmp_path / name, fps=25, size=(32, 48), codec=codec), _moving(300)).path
    source = open_source(path)
    everything = list(source)
    want = [299, 0, 5, 5, 6, 120, 121, 200, 201, 250, 40]
    got = list(source.frames_at(want))
    assert [k for k, _ in got] == sorted(set(want))
    for k, frame in got:
        np.testing.assert_array_equal(frame, everything[k], err_msg=f"frame {k}")
    assert list(source.frames_at([])) == []
    # without timestamps (no seeking: frames are counted from the start)
    source._pts = None
    again = list(source.frames_at(want))
    assert [k for k, _ in again] == sorted(set(want))
    for k, frame in again:
        np.testing.assert_array_equal(frame, everything[k], err_msg=f"frame {k}, no timestamps")
    with pytest.raises(InputError, match=r"0 \.\. 299"):
        list(source.frames_at([300]))


def test_frames_at_of_an_image_folder_reads_only_those_files(tmp_path):
    frames = _moving(5, 6, 8)
    for i, f in enumerate(frames):
        cv2.imwrite(str(tmp_path / f"f{i}.png"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    source = open_source(tmp_path)
    (tmp_path / "f2.png").write_bytes(b"not an image")  # never read: not asked for
    got = list(source.frames_at([4, 1]))
    assert [k for k, _ in got] == [1, 4]
    np.testing.assert_array_equal(got[1][1], frames[4])
    with pytest.raises(InputError, match="f2.png"):
        list(source.frames_at([2]))
