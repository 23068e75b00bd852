"""``fastviz overlay``'s outputs: H.264 by default, a legend and gauge on every frame, maps saved as
arrays, image folders, partial outputs kept on request, and real faults (read-only and full file
systems, SIGTERM/SIGHUP/SIGKILL, planted symbolic links) that leave nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch

import fastviz
from fastviz import cli
from fastviz import render as rd
from fastviz.methods.registry import explain as real_explain
from fastviz.tempfiles import MARK

from fsfaults import full_disk, read_only_folder
from videofiles import decode_all, write_ffv1

BUNDLED_LOG = fastviz.data.example_log_path()


@pytest.fixture(scope="module")
def model():
    return fastviz.models.load("pilotnet-carracing")


@pytest.fixture
def out_dir(tmp_path) -> Path:
    d = tmp_path / "out"
    d.mkdir()
    return d


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one stderr line, got: {err!r}"
    assert lines[0].startswith("fastviz: error: "), lines[0]
    return lines[0]


def overlay(*args: str) -> int:
    return cli.main(["overlay", *args])


# --------------------------------------------------------------------------- formats


def test_default_mp4_is_h264_for_browsers(out_dir, capsys):
    out = out_dir / "o.mp4"
    assert overlay("-o", str(out), "--max-frames", "3", "-q") == 0, capsys.readouterr().err
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"
        assert sum(1 for _ in container.demux(stream) if _.size) == 3
    data = out.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat")  # +faststart: playable while downloading


def test_codec_option(out_dir, capsys):
    out = out_dir / "o.mkv"
    assert overlay("-o", str(out), "--max-frames", "2", "--codec", "mpeg4", "-q") == 0, capsys.readouterr().err
    with av.open(str(out)) as container:
        assert container.streams.video[0].codec_context.name == "mpeg4"
    assert overlay("-o", str(out_dir / "p.mkv"), "--codec", "no-such-codec") == 2
    assert "no-such-codec" in one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in out_dir.iterdir()) == ["o.mkv"]


# --------------------------------------------------------------------------- legend and gauge


def test_legend_below_an_untouched_picture(out_dir, capsys):
    """The legend adds a strip below the picture and changes nothing above it."""
    plain, legend = out_dir / "plain.mkv", out_dir / "legend.mkv"
    base = ["--max-frames", "2", "--method", "occlusion", "--windows", "32", "--stride", "16", "-q"]
    assert overlay("-o", str(plain), *base, "--no-legend") == 0, capsys.readouterr().err
    assert overlay("-o", str(legend), *base) == 0, capsys.readouterr().err
    a, b = decode_all(plain), decode_all(legend)
    assert a.shape == (2, 384, 384, 3) and b.shape[1] > 384
    np.testing.assert_array_equal(b[:, :384], a)
    strip = b[:, 384:]
    # occlusion maps are signed: the bar runs through the diverging map, white (zero) in the middle
    colours = {tuple(c) for c in strip.reshape(-1, 3)}
    assert tuple(rd.lut("rdbu_r")[0]) in colours and tuple(rd.lut("rdbu_r")[255]) in colours


def test_gauge_shows_prediction_and_recorded_steering(out_dir, tmp_path, capsys):
    """On a drive log both needles are drawn; on a video without a .csv only the prediction."""
    out = out_dir / "g.mkv"
    assert overlay("-o", str(out), "--max-frames", "2", "--gauge", "--no-legend", "-q") == 0, capsys.readouterr().err
    video = decode_all(out)
    picture = video[:, :384]
    gauge = video[:, 384:]
    assert gauge.shape[1] > 0

    def has(colour, img):
        return bool((np.abs(img.astype(int) - np.array(colour)).sum(-1) <= 6).any())

    assert all(has(rd.PREDICTED_COLOUR, g) and has(rd.RECORDED_COLOUR, g) for g in gauge)
    # without a steering file there is no recorded needle
    log = tmp_path / "frames.mkv"
    write_ffv1(log, fastviz.data.load_drive_log().frames[:2], fps=50.0)
    out2 = out_dir / "g2.mkv"
    assert overlay(str(log), "-o", str(out2), "--gauge", "--no-legend", "-q") == 0, capsys.readouterr().err
    gauge2 = decode_all(out2)[:, 384:]
    assert all(has(rd.PREDICTED_COLOUR, g) and not has(rd.RECORDED_COLOUR, g) for g in gauge2)
    np.testing.assert_array_equal(decode_all(out2)[:, :384], picture)  # same frames, same pictures


def test_gauge_needs_a_model(out_dir, capsys):
    assert overlay("-o", str(out_dir / "o.mp4"), "--method", "backprojection", "--gauge") == 2
    assert "gauge" in one_error_line(capsys.readouterr().err)
    assert list(out_dir.iterdir()) == []


# --------------------------------------------------------------------------- maps and image folders


def test_save_maps_holds_the_raw_maps_and_predictions(out_dir, model, capsys):
    maps_file = out_dir / "maps.npz"
    argv = ["-o", str(out_dir / "o.mp4"), "--method", "grad_cam", "--max-frames", "5", "--batch", "2"]
    assert overlay(*argv, "--save-maps", str(maps_file), "-q") == 0, capsys.readouterr().err
    data = np.load(maps_file, allow_pickle=False)
    frames = fastviz.data.load_drive_log().frames[:5]
    x = model.preprocess(frames)
    want = fastviz.grad_cam(model, x).numpy()
    assert data["maps"].dtype == np.float16 and data["maps"].shape == (5, 66, 200)
    # float16: 3 significant digits; Grad-CAM's raw values are ~1e-4 here, so the smallest are
    # float16 subnormals, exact to 6e-8 (a thousandth of the map's maximum)
    np.testing.assert_allclose(data["maps"].astype(np.float32), want, rtol=1e-3, atol=1e-3 * want.max())
    np.testing.assert_array_equal(data["index"], np.arange(5))
    with torch.no_grad():
        np.testing.assert_allclose(data["prediction"], model(x)[:, 0].numpy(), rtol=1e-5, atol=1e-7)


def test_smooth_changes_the_pictures_not_the_saved_maps(out_dir, capsys):
    """--smooth ema: the first picture is the unsmoothed one (the average starts at the first
    map), later ones differ; the saved maps stay the method's raw maps; across batches of 2."""
    common = ["--method", "grad_cam", "--max-frames", "4", "--batch", "2", "-q"]
    plain, smooth = out_dir / "plain.mkv", out_dir / "smooth.mkv"
    assert overlay("-o", str(plain), *common, "--save-maps", str(out_dir / "plain.npz")) == 0, capsys.readouterr().err
    assert overlay("-o", str(smooth), *common, "--save-maps", str(out_dir / "smooth.npz"), "--smooth", "ema",
                   "--smooth-alpha", "0.3") == 0, capsys.readouterr().err
    # the pipeline sizes its micro-batches by measured time (1 or 2 frames here), and a conv's
    # float rounding depends on its batch: the two runs' maps agree to rounding, not bit for bit
    a, b = decode_all(plain), decode_all(smooth)
    assert np.abs(a[0].astype(np.int16) - b[0]).max() <= 1
    assert all(np.abs(a[i].astype(np.int16) - b[i]).max() > 8 for i in range(1, 4))
    np.testing.assert_allclose(np.load(out_dir / "plain.npz")["maps"], np.load(out_dir / "smooth.npz")["maps"],
                               rtol=1e-4, atol=1e-6)
    # a bad setting: one line, nothing written
    assert overlay("-o", str(out_dir / "bad.mkv"), *common, "--smooth", "ema", "--smooth-alpha", "0") == 2
    assert "ema_alpha" in one_error_line(capsys.readouterr().err)
    assert not (out_dir / "bad.mkv").exists()


def test_image_folder_output(out_dir, capsys):
    video, folder = out_dir / "v.mkv", out_dir / "frames"
    assert overlay("-o", str(video), "--max-frames", "3", "-q") == 0, capsys.readouterr().err
    assert overlay("-o", f"{folder}/", "--max-frames", "3", "-q") == 0, capsys.readouterr().err
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["frame_000000.png", "frame_000001.png", "frame_000002.png"]
    pngs = np.stack([cv2.cvtColor(cv2.imread(str(folder / n)), cv2.COLOR_BGR2RGB) for n in names])
    np.testing.assert_array_equal(pngs, decode_all(video))  # both lossless: the same pictures
    assert sorted(p.name for p in out_dir.iterdir()) == ["frames", "v.mkv"]
    # a folder that holds files is refused, and left as it was
    assert overlay("-o", f"{folder}/", "--max-frames", "1", "-q") == 2
    assert "frames" in one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in folder.iterdir()) == names


# --------------------------------------------------------------------------- bounds


@pytest.mark.parametrize("argv, needle", [
    (["--scale", "100000"], "--scale"),
    (["--scale", "40", "--layout", "side-by-side"], "8192"),
    (["--vrange", "1,0"], "--vrange"),
])
def test_display_bounds(out_dir, capsys, argv, needle):
    assert overlay("-o", str(out_dir / "o.mp4"), *argv, "--max-frames", "1") == 2
    assert needle in one_error_line(capsys.readouterr().err)
    assert list(out_dir.iterdir()) == []


# --------------------------------------------------------------------------- partial outputs


class Interrupting:
    """Stands in for fastviz.explain: real maps, then KeyboardInterrupt on the given call."""

    def __init__(self, on: int):
        self.on, self.calls = on, 0
        self.explain = real_explain

    def __call__(self, model, x, **kwargs):
        self.calls += 1
        if self.calls >= self.on:
            raise KeyboardInterrupt
        return self.explain(model, x, **kwargs)


def test_keep_partial_keeps_the_frames_done(out_dir, monkeypatch, capsys):
    monkeypatch.setattr(fastviz, "explain", Interrupting(on=3))
    out, maps_file = out_dir / "o.mkv", out_dir / "m.npz"
    argv = ["-o", str(out), "--batch", "2", "--save-maps", str(maps_file), "-q"]
    assert overlay(*argv) == 130
    assert "no output written" in capsys.readouterr().err
    assert list(out_dir.iterdir()) == []
    monkeypatch.setattr(fastviz, "explain", Interrupting(on=3))
    assert overlay(*argv, "--keep-partial") == 130
    err = capsys.readouterr().err
    # the pipeline's method stage made two calls before the third was interrupted: frame 0's
    # check and a first micro-batch of one frame (no batch has been timed yet); both were drawn
    assert f"kept 2 frames in {out}" in err and f"kept 2 frames in {maps_file}" in err
    assert decode_all(out).shape[0] == 2
    assert np.load(maps_file)["maps"].shape[0] == 2
    assert sorted(p.name for p in out_dir.iterdir()) == ["m.npz", "o.mkv"]


# --------------------------------------------------------------------------- file-system faults


def test_read_only_output_folder(tmp_path, capsys):
    with read_only_folder(tmp_path / "ro") as folder:
        assert overlay("-o", str(folder / "o.mp4"), "--max-frames", "2", "-q") == 2
        line = one_error_line(capsys.readouterr().err)
        assert "o.mp4" in line and ("read-only" in line.lower() or "permission" in line.lower())
        assert list(folder.iterdir()) == []


@pytest.mark.parametrize("ext", [".mkv", ".mp4"])
def test_full_disk_is_an_error_and_leaves_nothing(tmp_path, capsys, ext):
    with full_disk(tmp_path / "small", size="300k" if ext == ".mkv" else "64k") as folder:
        # H.264 compresses CarRacing frames well (~2 KB each at 384 px): more of them to fill the disk
        frames = "200" if ext == ".mp4" else "60"
        argv = ["-o", str(folder / f"o{ext}"), "--method", "visual_backprop", "--max-frames", frames, "--batch", "25"]
        rc = overlay(*argv, "-q")
        assert rc == 2
        line = one_error_line(capsys.readouterr().err)
        assert f"o{ext}" in line and "space" in line.lower()
        assert list(folder.iterdir()) == []


def test_full_disk_for_the_maps_file(tmp_path, capsys):
    with full_disk(tmp_path / "small", size="300k") as folder:
        argv = ["-o", str(folder / "o.mp4"), "--save-maps", str(folder / "m.npz"), "--max-frames", "40", "-q"]
        assert overlay(*argv) == 2
        assert "m.npz" in one_error_line(capsys.readouterr().err)
        assert list(folder.iterdir()) == []


def test_planted_link_at_the_output_is_replaced_not_followed(tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "o.mp4"
    out.symlink_to(victim)
    assert overlay("-o", str(out), "--max-frames", "1", "-q") == 0, capsys.readouterr().err
    assert victim.read_text() == "precious"
    assert out.is_file() and not out.is_symlink()


# --------------------------------------------------------------------------- signals, as a process


def _start(out: Path, cwd: Path) -> subprocess.Popen:
    # the whole bundled log (1,500 frames) one frame at a time: the first frame is written within a
    # second of starting, the last many seconds later
    args = ["overlay", "-o", str(out), "--method", "visual_backprop", "--batch", "1", "-q"]
    return subprocess.Popen([sys.executable, "-m", "fastviz", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_temporary(folder: Path, proc: subprocess.Popen, timeout: float = 120.0) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [p for p in folder.iterdir() if MARK in p.name]
        if found:
            return found[0]
        if proc.poll() is not None:
            raise AssertionError(f"fastviz ended before writing: {proc.communicate()}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("no temporary appeared")


@pytest.mark.parametrize("signum, code, name", [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGHUP, 129, "SIGHUP")])
def test_signal_removes_the_temporary(tmp_path, out_dir, signum, code, name):
    proc = _start(out_dir / "o.mp4", tmp_path)
    _wait_for_temporary(out_dir, proc)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert err.strip().splitlines() == [f"fastviz: stopped by {name}; no output written"]
    assert list(out_dir.iterdir()) == []


def test_stale_temporary_of_a_killed_run_is_removed(tmp_path, out_dir, capsys):
    proc = _start(out_dir / "o.mp4", tmp_path)
    stale = _wait_for_temporary(out_dir, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert stale.exists()  # kill -9 leaves it: nothing runs in the killed process
    assert overlay("-o", str(out_dir / "o.mp4"), "--max-frames", "1", "-q") == 0, capsys.readouterr().err
    assert sorted(p.name for p in out_dir.iterdir()) == ["o.mp4"]


def test_maps_failing_at_commit_keep_the_video_and_say_so(tmp_path, out_dir, capsys):
    """The maps stream to a scratch file that fits the small disk; the .npz written from it at the
    end does not. The video, committed first in another folder, is complete: it stays (removing it
    would also lose the file it replaced), and the one error line says it was written."""
    with full_disk(tmp_path / "small", size="300k") as folder:
        # 8 maps of 66 x 200 float16: 211 KB of scratch, then 211 KB more for the .npz
        argv = ["-o", str(out_dir / "o.mp4"), "--save-maps", str(folder / "m.npz"), "--max-frames", "8", "-q"]
        assert overlay(*argv) == 2
        line = one_error_line(capsys.readouterr().err)
        assert "m.npz" in line and f"{out_dir / 'o.mp4'} was written (8 frames)" in line
        assert list(folder.iterdir()) == []
    assert decode_all(out_dir / "o.mp4").shape[0] == 8


def test_an_existing_output_survives_a_failed_run(out_dir, capsys):
    """A run that fails leaves the file already at the output's name as it was."""
    out = out_dir / "o.mp4"
    out.write_bytes(b"an earlier overlay")
    assert overlay("-o", str(out), "--method", "occlusion", "--baseline", "nan", "--max-frames", "1") == 2
    assert "baseline" in one_error_line(capsys.readouterr().err)
    assert out.read_bytes() == b"an earlier overlay" and list(out_dir.iterdir()) == [out]


def test_automatic_scale_is_bounded_too(tmp_path, out_dir, capsys):
    """Without --scale the picture limit still holds: a very wide video side by side is refused."""
    wide = tmp_path / "wide.mkv"
    write_ffv1(wide, np.zeros((2, 16, 3000, 3), np.uint8))
    assert overlay(str(wide), "-o", str(out_dir / "o.mp4"), "--layout", "side-by-side") == 2
    assert "8192" in one_error_line(capsys.readouterr().err)
    assert list(out_dir.iterdir()) == []


def test_grayscale_inputs_are_converted_with_one_warning_line(tmp_path, out_dir, capsys):
    import av

    gray = tmp_path / "gray.mkv"
    with av.open(str(gray), "w") as c:
        s = c.add_stream("ffv1", rate=25)
        s.width, s.height, s.pix_fmt = 96, 96, "gray"
        for i in range(2):
            picture = av.VideoFrame.from_ndarray(np.full((96, 96), 100 + i, np.uint8), format="gray")
            picture.pts = i
            c.mux(s.encode(picture))
        c.mux(s.encode(None))
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i in range(2):
        cv2.imwrite(str(folder / f"f{i}.png"), np.full((96, 96), 100, np.uint8))
    for source, name in ((gray, "gray.mkv"), (folder, "f0.png")):
        assert overlay(str(source), "-o", str(out_dir / f"o{name}.mp4"), "-q") == 0
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("fastviz: warning: ") and "grayscale" in err[0] and name in err[0], err


def test_image_folder_output_onto_the_current_folder_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert overlay("-o", ".", "--max-frames", "1", "-q") == 2
    assert "current folder" in one_error_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


def test_log_warnings_are_one_line(out_dir, capsys):
    assert overlay("-o", str(out_dir / "o.mp4"), "--max-frames", "2", "--memory-budget", "1", "-q") == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err and all(line.startswith("fastviz: warning: ") for line in err), err
    assert any("budget" in line for line in err)


def test_steering_file_with_non_finite_values_is_named(tmp_path, out_dir, capsys):
    frames = fastviz.data.load_drive_log().frames[:3]
    log = write_ffv1(tmp_path / "log.mkv", frames, fps=50.0)
    (tmp_path / "log.csv").write_text("frame,time_s,steering_rad\n0,0,0.1\n1,0.02,1e308\n2,0.04,nan\n")
    assert overlay(str(log), "-o", str(out_dir / "o.mp4"), "--gauge", "-q") == 2
    line = one_error_line(capsys.readouterr().err)
    assert "log.csv" in line and "not finite" in line and "lines 3, 4" in line
    assert list(out_dir.iterdir()) == []


def test_x265_keeps_the_console_quiet(out_dir, capfd):
    """x265 writes its banner straight to file descriptor 2 unless told its log level."""
    assert overlay("-o", str(out_dir / "o.mkv"), "--codec", "libx265", "--max-frames", "2", "-q") == 0
    assert capfd.readouterr().err == ""


def test_hidden_files_in_an_image_folder_are_not_frames(tmp_path, out_dir, capsys):
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i in range(2):
        cv2.imwrite(str(folder / f"f{i}.png"), np.zeros((96, 96, 3), np.uint8))
    (folder / "._f0.png").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    assert overlay(str(folder), "-o", f"{out_dir / 'frames'}/", "-q", "--no-legend") == 0, capsys.readouterr().err
    assert sorted(p.name for p in (out_dir / "frames").iterdir()) == ["frame_000000.png", "frame_000001.png"]
