"""The ``fastviz`` command line: end to end on a few frames, and every bad input -> one error
line, a non-zero exit and no output file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import fastviz
import fastviz.data
from fastviz import cli
from fastviz import render as rd
from fastviz.models import FramePreprocess, PilotNet

from videofiles import decode_all, write_ffv1

BUNDLED_LOG = fastviz.data.example_log_path()
BUNDLED_WEIGHTS = Path(fastviz.models.__file__).parent / "weights" / "pilotnet-carracing.safetensors"

#: Extra options that keep a method fast enough for a unit test on a 2-core CPU.
FAST_OPTIONS = {"occlusion": ["--windows", "16,32", "--stride", "16"]}


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict:
    """Input and model: the bundled log and model when present, else stand-ins of the same kind
    (96 x 96 RGB frames, PilotNet seeing the top 84 rows)."""
    root = tmp_path_factory.mktemp("assets")
    torch.manual_seed(0)
    stand_in = fastviz.models.save(
        PilotNet(preprocess=FramePreprocess(size=(66, 200), crop=(0.0, 84 / 96, 0.0, 1.0))), root / "pilotnet.safetensors"
    )
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(6, 96, 96, 3), dtype=np.uint8)
    log = write_ffv1(root / "log.mkv", frames, fps=50.0)
    small = fastviz.models.save(PilotNet(preprocess=FramePreprocess(size=(32, 32))), root / "small.safetensors")
    return {
        "input": [] if BUNDLED_LOG.is_file() else [str(log)],  # [] = the default input: the bundled log
        "log": BUNDLED_LOG if BUNDLED_LOG.is_file() else log,
        "model": "pilotnet-carracing" if BUNDLED_WEIGHTS.is_file() else str(stand_in),
        "stand_in_model": str(stand_in),
        "stand_in_log": log,
        "stand_in_frames": frames,
        "small_model": str(small),
        "root": root,
    }


@pytest.fixture
def out_dir(tmp_path) -> Path:
    d = tmp_path / "out"
    d.mkdir()
    return d


def legend_height(width: int, layout: str) -> int:
    """Rows the legend strip adds below a picture ``width`` pixels wide (as fastviz.render draws it)."""
    frame = np.zeros((8, width // (3 if layout == "side-by-side" else 1), 3), np.uint8)
    return rd.render(frame, np.ones((4, 4)), layout, legend=True).shape[0] - 8


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one stderr line, got: {err!r}"
    assert lines[0].startswith("fastviz: error: "), lines[0]
    return lines[0]


# --------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("layout, width_factor", [("overlay", 1), ("focus", 1), ("side-by-side", 3)])
def test_overlay_end_to_end(assets, out_dir, capsys, layout, width_factor):
    out = out_dir / "out.mp4"
    argv = ["overlay", *assets["input"], "-o", str(out), "--model", assets["model"], "--layout", layout]
    rc = cli.main([*argv, "--max-frames", "4", "--batch", "3"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert sorted(p.name for p in out_dir.iterdir()) == ["out.mp4"]
    video = decode_all(out)
    # 96 x 96 frames are enlarged x4 by default (whole factor up to ~384 px), the legend strip below
    assert video.shape[0] == 4 and video.shape[2:] == (384 * width_factor, 3)
    assert video.shape[1] == 384 + legend_height(384 * width_factor, layout)
    summary = captured.out.strip().splitlines()
    assert len(summary) == 1 and "4 frames" in summary[0] and str(out) in summary[0]
    assert "frame/s" in captured.err  # the progress bar reports a rate
    assert "Traceback" not in captured.err


#: Methods whose structure PilotNet lacks: the CLI must refuse them with one readable line.
NOT_FOR_PILOTNET = {"cam": "global average pool"}


@pytest.mark.parametrize("method", fastviz.methods())
def test_every_registered_method_runs(assets, out_dir, capsys, method):
    out = out_dir / "out.mkv"
    argv = ["overlay", *assets["input"], "-o", str(out), "--model", assets["model"], "--method", method]
    rc = cli.main([*argv, *FAST_OPTIONS.get(method, []), "--max-frames", "2", "--batch", "2", "--scale", "1", "-q"])
    if method in NOT_FOR_PILOTNET:  # PilotNet has no conv -> GAP -> linear head
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and err[0].startswith("fastviz: error:"), err
        assert NOT_FOR_PILOTNET[method] in err[0]
        assert not any(out_dir.iterdir())
        return
    assert rc == 0, capsys.readouterr().err
    video = decode_all(out)
    assert video.shape[:1] == (2,) and video.shape[2:] == (96, 3)
    assert video.shape[1] == 96 + legend_height(96, "overlay")


class FakeExplain:
    """Stands in for fastviz.explain: records the calls, returns given maps."""

    def __init__(self, value: float = 0.0, interrupt_on: int | None = None):
        self.calls: list[tuple[str, tuple, dict]] = []
        self.value = value
        self.interrupt_on = interrupt_on

    def __call__(self, model, x, method="visual_backprop", **kwargs):
        self.calls.append((method, tuple(x.shape), kwargs))
        if self.interrupt_on is not None and len(self.calls) >= self.interrupt_on:
            raise KeyboardInterrupt
        return torch.full((x.shape[0], x.shape[2], x.shape[3]), self.value)


@pytest.mark.parametrize(
    "extra, method, expected",
    [
        ([], "visual_backprop", {}),
        (["--windows", "8,16", "--stride", "4"], "occlusion", {"windows": (8, 16), "stride": 4}),
        (["--baseline", "mean"], "occlusion", {"baseline": "mean"}),
        ([], "grad_cam", {}),  # grad_cam picks the model's cam_layer itself
        (["--layer", "features.7"], "grad_cam", {"layer": "features.7"}),
        (["--memory-budget", "512MiB"], "visual_backprop", {"memory_budget": "512MiB"}),
        (["--memory-budget", "0.5"], "occlusion", {"memory_budget": 0.5}),
        (["--memory-budget", "100000000"], "grad_cam", {"memory_budget": 100000000}),
    ],
)
def test_method_options_pass_through_only_when_given(assets, out_dir, monkeypatch, extra, method, expected):
    fake = FakeExplain()
    monkeypatch.setattr(fastviz, "explain", fake)
    argv = ["overlay", str(assets["stand_in_log"]), "-o", str(out_dir / "o.mkv"), "--model", assets["stand_in_model"]]
    assert cli.main([*argv, "--method", method, *extra, "--batch", "4", "-q"]) == 0
    # 6 frames in the pipeline's micro-batches of at most 4 (frame 0 alone: the input check)
    assert all(c[0] == method for c in fake.calls)
    assert fake.calls[0][1] == (1, 3, 66, 200)
    assert all(c[1][0] <= 4 and c[1][1:] == (3, 66, 200) for c in fake.calls)
    assert sum(c[1][0] for c in fake.calls) == 6
    assert all(c[2] == expected for c in fake.calls)


@pytest.mark.parametrize(
    "text, want",
    [("steering", "Steering(threshold_deg=5.0, index=0)"), ("steering:2.5", "Steering(threshold_deg=2.5, index=0)"),
     ("output", "Output(0)"), ("output:3", "Output(3)"), ("class:7", "Class(7)"), ("top", "TopClass()")],
)
def test_target_option(assets, out_dir, monkeypatch, text, want):
    fake = FakeExplain()
    monkeypatch.setattr(fastviz, "explain", fake)
    argv = ["overlay", str(assets["stand_in_log"]), "-o", str(out_dir / "o.mkv"), "--model", assets["stand_in_model"]]
    assert cli.main([*argv, "--method", "grad_cam", "--target", text, "-q"]) == 0
    assert repr(fake.calls[0][2]["target"]) == want


@pytest.mark.parametrize("text", ["lots", "0", "1.5", "-3MiB"])
def test_bad_memory_budget_option(assets, out_dir, capsys, text):
    argv = ["overlay", str(assets["stand_in_log"]), "-o", str(out_dir / "o.mkv"), "--model", assets["stand_in_model"]]
    assert cli.main([*argv, "--memory-budget", text]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fastviz: error:") and "budget" in err[0]
    assert not any(out_dir.iterdir())


@pytest.mark.parametrize("text", ["left", "class", "class:x", "steering:-1", "top:2"])
def test_bad_target_option(assets, out_dir, capsys, text):
    argv = ["overlay", str(assets["stand_in_log"]), "-o", str(out_dir / "o.mkv"), "--model", assets["stand_in_model"]]
    assert cli.main([*argv, "--method", "grad_cam", "--target", text]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fastviz: error:") and "target" in err[0]
    assert not any(out_dir.iterdir())


def test_rendered_values(assets, out_dir, monkeypatch):
    """alpha 0 gives the frames back; alpha 1 with a constant map paints the model's region in
    the colormap's lowest colour and leaves the cropped-away dashboard as recorded."""
    frames = assets["stand_in_frames"]
    monkeypatch.setattr(fastviz, "explain", FakeExplain(value=3.0))
    base = ["overlay", str(assets["stand_in_log"]), "--model", assets["stand_in_model"], "--scale", "1", "-q",
            "--no-legend", "--opacity", "constant", "--clip", "none"]
    assert cli.main([*base, "-o", str(out_dir / "a0.mkv"), "--alpha", "0"]) == 0
    np.testing.assert_array_equal(decode_all(out_dir / "a0.mkv"), frames)
    assert cli.main([*base, "-o", str(out_dir / "a1.mkv"), "--alpha", "1", "--colormap", "jet"]) == 0
    video = decode_all(out_dir / "a1.mkv")
    lowest = cv2.applyColorMap(np.zeros((1, 1), np.uint8), cv2.COLORMAP_JET)[0, 0, ::-1]
    assert (video[:, :84] == lowest).all()
    np.testing.assert_array_equal(video[:, 84:], frames[:, 84:])


def test_image_folder_input(assets, out_dir, tmp_path, capsys):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(assets["stand_in_frames"][:3]):
        cv2.imwrite(str(folder / f"f{i + 1}.png"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    out = out_dir / "o.avi"
    rc = cli.main(["overlay", str(folder), "-o", str(out), "--model", assets["stand_in_model"], "--scale", "2", "-q",
                   "--no-legend"])
    assert rc == 0, capsys.readouterr().err
    assert decode_all(out).shape == (3, 192, 192, 3)


def test_help_exits_zero(capsys):
    assert cli.main(["overlay", "--help"]) == 0
    assert "--method" in capsys.readouterr().out


# --------------------------------------------------------------------------- bad input


def _bad_inputs(assets: dict, tmp: Path) -> dict[str, list[str]]:
    """name -> argv (without -o) of every kind of bad input."""
    junk = tmp / "junk.mp4"
    junk.write_text("this is not a video\n" * 20)
    empty = tmp / "empty.mkv"
    empty.write_bytes(b"")
    zero_frames = tmp / "zero.avi"
    cv2.VideoWriter(str(zero_frames), cv2.VideoWriter_fourcc(*"MJPG"), 25, (32, 32)).release()
    no_images = tmp / "no_images"
    no_images.mkdir()
    (no_images / "notes.txt").write_text("x")
    unreadable = tmp / "unreadable"
    unreadable.mkdir()
    (unreadable / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    mixed = tmp / "mixed"
    mixed.mkdir()
    for name, size in [("f1.png", 96), ("f2.png", 96), ("f10.png", 80)]:
        cv2.imwrite(str(mixed / name), np.zeros((size, size, 3), np.uint8))
    data = assets["stand_in_log"].read_bytes()
    cut = tmp / "cut.mkv"
    cut.write_bytes(data[: len(data) // 2])
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in PilotNet().state_dict().items()}
    huge = tmp / "huge.safetensors"  # metadata asking for a 2.3 TB input
    save_file(state, str(huge), metadata={"architecture": "PilotNet", "input_size": "[1000000, 1000000]"})
    bad_crop = tmp / "crop.safetensors"
    save_file(state, str(bad_crop), metadata={"architecture": "PilotNet", "crop": "[0.5, 0.2, 0, 1]"})
    log, model = str(assets["stand_in_log"]), assets["stand_in_model"]
    return {
        "weights asking for a huge input": [log, "--model", str(huge)],
        "weights with a bad crop": [log, "--model", str(bad_crop)],
        "display scale too large": [log, "--model", model, "--scale", "100000"],
        "picture too large": [log, "--model", model, "--scale", "60", "--layout", "side-by-side"],
        "unknown codec": [log, "--model", model, "--codec", "nope264"],
        "missing input": [str(tmp / "missing.mp4"), "--model", model],
        "not a video": [str(junk), "--model", model],
        "empty file": [str(empty), "--model", model],
        "video without frames": [str(zero_frames), "--model", model],
        "folder without images": [str(no_images), "--model", model],
        "unreadable image": [str(unreadable), "--model", model],
        "images of two sizes": [str(mixed), "--model", model, "--batch", "1"],
        "truncated video": [str(cut), "--model", model, "--batch", "2"],
        "unknown model": [log, "--model", "no-such-model"],
        "missing model file": [log, "--model", str(tmp / "nope.safetensors")],
        "unknown method": [log, "--model", model, "--method", "no_such_method"],
        "model cannot take the frames": [log, "--model", assets["small_model"]],
        "option of another method": [log, "--model", model, "--method", "visual_backprop", "--layer", "features.9"],
        "unknown layer": [log, "--model", model, "--method", "grad_cam", "--layer", "nope"],
        "bad batch": [log, "--model", model, "--batch", "0"],
        "bad windows": [log, "--model", model, "--method", "occlusion", "--windows", "8,x"],
        "unknown colormap": [log, "--model", model, "--colormap", "rainbowish"],
        "unknown layout": [log, "--model", model, "--layout", "grid"],
        "no cuda": [log, "--model", model, "--device", "cuda"] if not torch.cuda.is_available() else [log, "--device", "tpu"],
    }


BAD_INPUT_NAMES = [
    "weights asking for a huge input",
    "weights with a bad crop",
    "display scale too large",
    "picture too large",
    "unknown codec",
    "missing input",
    "not a video",
    "empty file",
    "video without frames",
    "folder without images",
    "unreadable image",
    "images of two sizes",
    "truncated video",
    "unknown model",
    "missing model file",
    "unknown method",
    "model cannot take the frames",
    "option of another method",
    "unknown layer",
    "bad batch",
    "bad windows",
    "unknown colormap",
    "unknown layout",
    "no cuda",
]


@pytest.mark.parametrize("name", BAD_INPUT_NAMES)
@pytest.mark.parametrize("ext", [".mp4", ".mkv"])
def test_bad_input_one_line_no_output(assets, tmp_path, out_dir, capsys, name, ext):
    argv = _bad_inputs(assets, tmp_path)[name]
    quiet = ["-q"] if name in ("images of two sizes", "truncated video") else []  # fail mid-stream
    rc = cli.main(["overlay", *argv, "-o", str(out_dir / f"out{ext}"), *quiet])
    captured = capsys.readouterr()
    assert rc == 2
    one_error_line(captured.err)
    assert captured.out == ""
    assert list(out_dir.iterdir()) == []


def test_error_messages_name_the_problem(assets, tmp_path, out_dir, capsys):
    cases = _bad_inputs(assets, tmp_path)
    expect = {
        "missing input": "missing.mp4",
        "unreadable image": "a.png",
        "images of two sizes": "f10.png",
        "truncated video": "truncated",
        "unknown model": "no-such-model",
        "unknown method": "no_such_method",
        "model cannot take the frames": "cannot take 32x32 inputs",
        "option of another method": "--layer",
        "weights asking for a huge input": "input_size",
        "weights with a bad crop": "crop",
        "display scale too large": "--scale",
        "picture too large": "8192",
        "unknown codec": "nope264",
    }
    for name, needle in expect.items():
        cli.main(["overlay", *cases[name], "-o", str(out_dir / "o.mp4"), "-q"])
        assert needle in one_error_line(capsys.readouterr().err), name


def test_bad_output_paths(assets, tmp_path, capsys):
    log, model = str(assets["stand_in_log"]), assets["stand_in_model"]
    assert cli.main(["overlay", log, "--model", model, "-o", str(tmp_path / "o.gif")]) == 2
    assert "unknown extension" in one_error_line(capsys.readouterr().err)
    assert cli.main(["overlay", log, "--model", model, "-o", str(tmp_path / "nowhere" / "o.mp4")]) == 2
    assert "does not exist" in one_error_line(capsys.readouterr().err)
    assert cli.main(["overlay", log, "--model", model]) == 2
    assert "--output" in one_error_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


def test_bare_fastviz_prints_usage(capsys):
    """No arguments: the usage and every command, on stderr, exit 2 (nothing to do)."""
    assert cli.main([]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("usage: fastviz")
    for command in ("overlay", "bench"):
        assert command in captured.err


def test_output_may_not_overwrite_input(assets, tmp_path, capsys):
    log = write_ffv1(tmp_path / "in.mkv", assets["stand_in_frames"][:2], fps=50.0)
    before = log.read_bytes()
    assert cli.main(["overlay", str(log), "--model", assets["stand_in_model"], "-o", str(log)]) == 2
    assert "overwrite" in one_error_line(capsys.readouterr().err)
    assert log.read_bytes() == before and sorted(tmp_path.iterdir()) == [log]


def test_missing_bundled_log(monkeypatch, assets, out_dir, capsys):
    monkeypatch.setattr(fastviz.data, "example_log_path", lambda: assets["root"] / "gone.mkv")
    assert cli.main(["overlay", "-o", str(out_dir / "o.mp4"), "--model", assets["stand_in_model"]]) == 2
    assert "bundled" in one_error_line(capsys.readouterr().err)
    assert list(out_dir.iterdir()) == []


def test_keyboard_interrupt_exits_130_and_leaves_nothing(assets, out_dir, monkeypatch, capsys):
    monkeypatch.setattr(fastviz, "explain", FakeExplain(interrupt_on=2))
    argv = ["overlay", str(assets["stand_in_log"]), "-o", str(out_dir / "o.mp4"), "--model", assets["stand_in_model"]]
    assert cli.main([*argv, "--batch", "2"]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert list(out_dir.iterdir()) == []


# --------------------------------------------------------------------------- as a process


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    return subprocess.run(
        [sys.executable, "-m", "fastviz", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_subprocess_bad_input_has_no_traceback(assets, tmp_path, out_dir):
    cases = _bad_inputs(assets, tmp_path)
    for name in ("not a video", "truncated video", "model cannot take the frames"):
        proc = _run(["overlay", *cases[name], "-o", str(out_dir / "o.mp4"), "-q"], cwd=tmp_path)
        assert proc.returncode == 2, name
        assert "Traceback" not in proc.stderr
        one_error_line(proc.stderr)
        assert list(out_dir.iterdir()) == []


def test_subprocess_success(assets, tmp_path, out_dir):
    out = out_dir / "o.mp4"
    proc = _run(["overlay", *assets["input"], "-o", str(out), "--model", assets["model"], "--max-frames", "2"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "Warning" not in proc.stderr
    assert proc.stdout.count("\n") == 1 and "2 frames" in proc.stdout
    assert decode_all(out).shape[0] == 2


# --------------------------------------------------------------------------- --method backprojection (model-free)


def test_backprojection_is_a_method_choice(capsys):
    args = cli.build_parser().parse_args(["overlay", "-o", "x.mp4", "--method", "backprojection"])
    assert args.method == "backprojection"
    assert cli.main(["overlay", "--help"]) == 0
    assert "backprojection" in capsys.readouterr().out


@pytest.mark.parametrize("layout, width_factor", [("overlay", 1), ("focus", 1), ("side-by-side", 3)])
def test_backprojection_end_to_end(assets, out_dir, capsys, layout, width_factor):
    out = out_dir / "out.mp4"
    rc = cli.main(["overlay", *assets["input"], "-o", str(out), "--method", "backprojection", "--layout", layout,
                   "--max-frames", "3", "--batch", "2"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert sorted(p.name for p in out_dir.iterdir()) == ["out.mp4"]
    video = decode_all(out)
    assert video.shape[0] == 3 and video.shape[2:] == (384 * width_factor, 3)
    assert video.shape[1] == 384 + legend_height(384 * width_factor, layout)
    summary = captured.out.strip().splitlines()
    assert len(summary) == 1 and "3 frames (backprojection" in summary[0]
    assert "Traceback" not in captured.err


def test_backprojection_loads_no_model(assets, out_dir, monkeypatch, capsys):
    """Model-free: --model (even an unknown one) and --device are ignored, nothing is explained."""

    def no_model(*args, **kwargs):
        raise AssertionError("backprojection must not load a model")

    monkeypatch.setattr(fastviz.models, "load", no_model)
    monkeypatch.setattr(fastviz, "explain", no_model)
    out = out_dir / "o.mkv"
    argv = ["overlay", str(assets["stand_in_log"]), "-o", str(out), "--method", "backprojection"]
    assert cli.main([*argv, "--model", "no-such-model", "--device", "cuda:7", "--scale", "1", "-q", "--no-legend"]) == 0, (
        capsys.readouterr().err
    )
    assert decode_all(out).shape == (6, 96, 96, 3)


def test_backprojection_map_covers_the_whole_frame(assets, out_dir):
    """alpha 1: every pixel, the dashboard rows a model would crop away included, is the
    colormap of the frame's own back-projection map."""
    from fastviz.methods.backprojection import backprojection_maps

    frames = assets["stand_in_frames"]
    out = out_dir / "a1.mkv"
    argv = ["overlay", str(assets["stand_in_log"]), "-o", str(out), "--method", "backprojection"]
    assert cli.main([*argv, "--alpha", "1", "--scale", "1", "--batch", "4", "-q"]) == 0
    video = decode_all(out)
    maps = backprojection_maps(frames)
    expected = np.stack([
        rd.render(f, m, "overlay", region=(0, 96, 0, 96), scale=1, alpha=1.0, legend=True, units="relative",
                  opacity="value", clip=(0.0, 99.0))
        for f, m in zip(frames, maps)
    ])
    np.testing.assert_array_equal(video, expected)
    assert not (video[:, 84:96] == frames[:, 84:]).all()  # the bottom rows are painted too


#: The bad inputs that concern a model (backprojection loads none) — the rest apply to it too.
MODEL_ONLY_BAD_INPUTS = {
    "weights asking for a huge input", "weights with a bad crop",
    "unknown model", "missing model file", "unknown method", "model cannot take the frames",
    "unknown layer", "bad windows", "no cuda",
}
BACKPROJECTION_BAD_INPUTS = [name for name in BAD_INPUT_NAMES if name not in MODEL_ONLY_BAD_INPUTS]


@pytest.mark.parametrize("name", BACKPROJECTION_BAD_INPUTS)
def test_backprojection_bad_input_one_line_no_output(assets, tmp_path, out_dir, capsys, name):
    argv = _bad_inputs(assets, tmp_path)[name]
    quiet = ["-q"] if name in ("images of two sizes", "truncated video") else []  # fail mid-stream
    rc = cli.main(["overlay", *argv, "--method", "backprojection", "-o", str(out_dir / "out.mp4"), *quiet])
    captured = capsys.readouterr()
    assert rc == 2
    one_error_line(captured.err)
    assert captured.out == ""
    assert list(out_dir.iterdir()) == []


@pytest.mark.parametrize(
    "extra, option",
    [(["--layer", "features.5"], "--layer"), (["--target", "top"], "--target"), (["--windows", "8"], "--windows"),
     (["--stride", "4"], "--stride"), (["--baseline", "mean"], "--baseline"), (["--memory-budget", "1GiB"], "--memory-budget")],
)
def test_backprojection_rejects_model_method_options(assets, out_dir, capsys, extra, option):
    argv = ["overlay", str(assets["stand_in_log"]), "-o", str(out_dir / "o.mp4"), "--method", "backprojection"]
    assert cli.main([*argv, *extra, "-q"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert option in line and "backprojection" in line
    assert list(out_dir.iterdir()) == []
