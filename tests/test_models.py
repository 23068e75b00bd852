"""fastviz.models: PilotNet shapes, FramePreprocess, safetensors save/load, the bundled model."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import fastviz.data
import fastviz.models as fvm
from fastviz.errors import FastvizError, InputError, InputFileNotFoundError, UnknownNameError
from fastviz.models import FramePreprocess, PilotNet

CARRACING_CROP = (0.0, 0.875, 0.0, 1.0)


def r2(y: np.ndarray, p: np.ndarray) -> float:
    y, p = np.asarray(y, np.float64), np.asarray(p, np.float64)
    return float(1.0 - np.sum((y - p) ** 2) / np.sum((y - y.mean()) ** 2))


# --- PilotNet -------------------------------------------------------------------------------


def test_pilotnet_layer_output_shapes():
    torch.manual_seed(0)
    model = PilotNet().eval()
    shapes = {}
    hooks = [
        model.features[i].register_forward_hook(lambda m, i_, o, k=i: shapes.__setitem__(k, tuple(o.shape)))
        for i in range(len(model.features))
    ]
    with torch.no_grad():
        out = model(torch.rand(2, 3, 66, 200))
    for h in hooks:
        h.remove()
    assert shapes[0] == (2, 24, 31, 98)
    assert shapes[2] == (2, 36, 14, 47)
    assert shapes[4] == (2, 48, 5, 22)
    assert shapes[6] == (2, 64, 3, 20)
    assert shapes[8] == (2, 64, 1, 18)  # the conv stack ends at 64 x 1 x 18 on 66 x 200
    assert all(shapes[i] == shapes[i - 1] for i in (1, 3, 5, 7, 9))  # ReLUs keep shapes
    assert out.shape == (2, 1) and out.dtype == torch.float32
    assert [m.out_features for m in model.regressor if isinstance(m, torch.nn.Linear)] == [100, 50, 10, 1]
    assert model.regressor[1].in_features == 64 * 1 * 18


def test_pilotnet_normalises_input_to_minus_one_one():
    torch.manual_seed(0)
    model = PilotNet().eval()
    x = torch.rand(3, 3, 66, 200)
    with torch.no_grad():
        assert torch.allclose(model(x), model.regressor(model.features(x * 2 - 1)))


# --- FramePreprocess ------------------------------------------------------------------------


def test_preprocess_constant_frame_hand_checked():
    frames = np.full((2, 96, 96, 3), 51, np.uint8)  # 51 / 255 = 0.2
    x = FramePreprocess(size=(66, 200), crop=CARRACING_CROP)(frames)
    assert x.shape == (2, 3, 66, 200) and x.dtype == torch.float32
    assert torch.allclose(x, torch.full_like(x, 0.2), atol=1e-6)


def test_preprocess_channel_order_and_scale_without_resize():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(1, 66, 200, 3), dtype=np.uint8)
    x = FramePreprocess(size=(66, 200))(frames)  # whole frame, already the right size: no resampling
    expect = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0
    assert torch.allclose(x, expect, atol=1e-7)
    assert x[0, 0, 5, 7] == pytest.approx(frames[0, 5, 7, 0] / 255.0)  # channel 0 is R


def test_carracing_crop_excludes_the_whole_dashboard():
    pre = FramePreprocess(size=(66, 200), crop=CARRACING_CROP)
    assert pre.region(96, 96) == (0, 84, 0, 96)  # rows 84..95 are CarRacing's dashboard
    frames = np.zeros((1, 96, 96, 3), np.uint8)
    frames[:, :84] = (20, 200, 40)  # scene
    frames[:, 84:] = (255, 0, 255)  # dashboard in a colour the scene never has
    x = pre(frames)[0]
    assert torch.allclose(x[0], torch.full((66, 200), 20 / 255), atol=1e-6)
    assert torch.allclose(x[1], torch.full((66, 200), 200 / 255), atol=1e-6)
    assert torch.allclose(x[2], torch.full((66, 200), 40 / 255), atol=1e-6)
    # nothing of the dashboard colour leaks in, not even at the bottom edge
    assert float(x[0].max()) < 21 / 255 and float(x[2].max()) < 41 / 255


def test_preprocess_crop_fractions_select_the_right_pixels():
    frames = np.zeros((1, 100, 40, 3), np.uint8)
    frames[:, 50:, 20:] = 255  # bottom-right quarter white
    x = FramePreprocess(size=(25, 10), crop=(0.5, 1.0, 0.5, 1.0))(frames)
    assert x.shape == (1, 3, 25, 10)
    assert torch.allclose(x, torch.ones_like(x), atol=1e-6)
    x = FramePreprocess(size=(25, 10), crop=(0.0, 0.5, 0.0, 0.5))(frames)
    assert torch.allclose(x, torch.zeros_like(x), atol=1e-6)


def test_preprocess_accepts_tensors_and_keeps_batch():
    frames = torch.full((5, 96, 96, 3), 255, dtype=torch.uint8)
    x = PilotNet().preprocess(frames)
    assert x.shape == (5, 3, 66, 200)
    assert torch.allclose(x, torch.ones_like(x), atol=1e-6)


@pytest.mark.parametrize(
    "frames, match",
    [
        (np.zeros((1, 96, 96, 3), np.float32), "uint8"),
        (np.zeros((96, 96, 3), np.uint8), r"\(N, H, W, 3\)"),
        (np.zeros((1, 96, 96, 4), np.uint8), r"\(N, H, W, 3\)"),
        (np.zeros((0, 96, 96, 3), np.uint8), "empty"),
        ([[0, 1, 2]], "numpy array or torch tensor"),
    ],
)
def test_preprocess_rejects_bad_frames(frames, match):
    with pytest.raises(InputError, match=match):
        FramePreprocess()(frames)


@pytest.mark.parametrize("kwargs", [{"crop": (0.5, 0.5, 0, 1)}, {"crop": (0, 1.2, 0, 1)}, {"size": (0, 200)}])
def test_preprocess_rejects_bad_settings(kwargs):
    with pytest.raises(InputError):
        FramePreprocess(**kwargs)


# --- save / load ----------------------------------------------------------------------------


def test_save_load_round_trip_identical_outputs(tmp_path):
    torch.manual_seed(3)
    model = PilotNet(preprocess=FramePreprocess(size=(66, 200), crop=CARRACING_CROP)).eval()
    path = fvm.save(model, tmp_path / "m.safetensors", val_r2="0.5", note="hello")
    assert path == tmp_path / "m.safetensors" and path.is_file()
    assert sorted(tmp_path.iterdir()) == [path]  # the temporary was renamed onto it, nothing else left
    loaded = fvm.load(path)
    assert not loaded.training
    assert loaded.transform == model.transform
    frames = np.random.default_rng(0).integers(0, 256, size=(4, 96, 96, 3), dtype=np.uint8)
    with torch.no_grad():
        assert torch.equal(loaded(loaded.preprocess(frames)), model(model.preprocess(frames)))
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    meta = fvm.metadata(path)
    assert meta["architecture"] == "PilotNet"
    assert json.loads(meta["crop"]) == list(CARRACING_CROP)
    assert json.loads(meta["input_size"]) == [66, 200]
    assert meta["val_r2"] == "0.5" and meta["note"] == "hello"


def test_save_records_frame_size_and_load_restores_it(tmp_path):
    torch.manual_seed(0)
    model = PilotNet(preprocess=FramePreprocess(size=(66, 200), crop=(0.0, 0.875, 0.0, 1.0), frame_size=(96, 96)))
    path = fvm.save(model, tmp_path / "m.safetensors")
    assert json.loads(fvm.metadata(path)["frame_size"]) == [96, 96]
    assert fvm.load(path).transform == model.transform
    plain = fvm.save(PilotNet(), tmp_path / "plain.safetensors")
    assert "frame_size" not in fvm.metadata(plain) and fvm.load(plain).transform.frame_size is None


def test_saved_file_is_weights_only_safetensors(tmp_path):
    model = PilotNet()
    path = fvm.save(model, tmp_path / "m.safetensors")
    raw = path.read_bytes()
    assert not raw.startswith(b"PK") and not raw.startswith(b"\x80")  # no zip / pickle
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    tensors = {k for k in header if k != "__metadata__"}
    assert tensors == set(model.state_dict())
    assert all(header[k]["dtype"] == "F32" for k in tensors)
    assert all(isinstance(v, str) for v in header["__metadata__"].values())


def test_load_unknown_name():
    with pytest.raises(UnknownNameError, match="unknown model 'resnet-imagenet'.*pilotnet-carracing"):
        fvm.load("resnet-imagenet")


def test_load_missing_file(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(InputFileNotFoundError, match="not found.*nope.safetensors"):
        fvm.load(missing)


@pytest.mark.parametrize("content", [b"this is not a safetensors file", b"", b"\xff" * 64])
def test_load_corrupt_file(tmp_path, content):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(content)
    with pytest.raises(InputError, match="cannot read model weights"):
        fvm.load(bad)


def test_load_pickle_renamed_to_safetensors_is_refused(tmp_path):
    bad = tmp_path / "pickled.safetensors"
    torch.save(PilotNet().state_dict(), bad)  # a zip/pickle checkpoint, not safetensors
    with pytest.raises(InputError, match="cannot read model weights"):
        fvm.load(bad)


def test_load_weights_that_do_not_fit(tmp_path):
    path = tmp_path / "wrong.safetensors"
    save_file({"features.0.weight": torch.zeros(3, 3)}, str(path), metadata={"architecture": "PilotNet"})
    with pytest.raises(InputError, match="do not fit PilotNet"):
        fvm.load(path)


def test_load_errors_are_fastviz_errors():
    for exc in (InputError, InputFileNotFoundError, UnknownNameError):
        assert issubclass(exc, FastvizError)


# --- the bundled model ----------------------------------------------------------------------


def test_bundled_model_file_and_metadata():
    assert "pilotnet-carracing" in fvm.available()
    path = Path(fvm.__file__).parent / "weights" / "pilotnet-carracing.safetensors"
    assert path.is_file() and path.stat().st_size < 2_000_000
    meta = fvm.metadata("pilotnet-carracing")
    assert meta["architecture"] == "PilotNet"
    assert json.loads(meta["crop"]) == list(CARRACING_CROP)  # never sees the dashboard
    assert json.loads(meta["frame_size"]) == [96, 96]  # CarRacing's frames: aspect-ratio warnings
    train = {int(s) for s in meta["train_seeds"].split(",")}
    val = {int(s) for s in meta["val_seeds"].split(",")}
    assert train and val and not train & val
    assert float(meta["val_r2"]) >= 0.5


def test_bundled_model_drives_the_held_out_log():
    """Acceptance: R^2 >= 0.5 of the bundled model's steering on the bundled held-out log."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    model = fvm.load("pilotnet-carracing")
    assert model.transform.region(96, 96)[1] == 84
    log = fastviz.data.load_drive_log()
    with torch.no_grad():
        pred = torch.cat([model(model.preprocess(log.frames[i : i + 250])) for i in range(0, len(log), 250)])
    pred = pred.squeeze(1).numpy()
    assert pred.shape == log.steering.shape
    assert np.all(np.abs(pred) < 0.6)
    score = r2(log.steering, pred)
    assert score >= 0.5, f"bundled model R^2 on the bundled log is {score:.3f}"
    # the sign is right: left turns predicted left, right turns right
    big = np.abs(log.steering) > 0.1
    assert np.mean(np.sign(pred[big]) == np.sign(log.steering[big])) > 0.9


@pytest.mark.parametrize(
    "meta,match",
    [
        ({"crop": "[0, 0.875, 0]"}, "crop must be 4 numbers"),
        ({"crop": '["a", 1, 0, 1]'}, "crop must be 4 numbers"),
        ({"input_size": "[66.5, 200]"}, "two positive ints"),
        ({"input_size": "not json"}, "malformed preprocessing metadata"),
    ],
)
def test_load_malformed_metadata(tmp_path, meta, match):
    state = {k: v.contiguous() for k, v in fvm.PilotNet().state_dict().items()}
    path = tmp_path / "m.safetensors"
    save_file(state, str(path), metadata={"architecture": "PilotNet", **meta})
    with pytest.raises(InputError, match=match):
        fvm.load(path)


def test_save_failure_leaves_no_file(tmp_path):
    target = tmp_path / "missing-folder" / "m.safetensors"
    with pytest.raises(OSError):
        fvm.save(fvm.PilotNet(), target)
    assert not target.parent.exists() or not any(target.parent.iterdir())


def test_metadata_of_a_corrupt_file(tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"garbage")
    with pytest.raises(InputError, match="cannot read model weights"):
        fvm.metadata(path)
