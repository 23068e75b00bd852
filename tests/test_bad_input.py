"""Every bad input to the methods and the models is named before any work is done: NaN/Inf
frames, a channel count or size the model does not take, grayscale and oddly shaped frames, and
weights files whose metadata is malformed, out of range or absurdly large."""

from __future__ import annotations

import json
import math
import struct
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import fastviz as fv
import fastviz.models as fvm
from fastviz.errors import InputError
from fastviz.hooks import SHOWN_FRAMES, check_input, expected_input
from fastviz.methods import registry
from fastviz.models import FramePreprocess, PilotNet

from conftest import materialise, small_convnet

OPTIONS = {"occlusion": {"windows": (4, 8), "stride": 4}}


def net() -> nn.Sequential:
    """conv blocks -> global average pool -> linear: every registered method applies (CAM too);
    it declares no input size, so its sizes are found by a one-row trial pass."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Conv2d(6, 8, 3, stride=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    ).eval()


class Calls:
    """Counts the forward passes of a model, and their batch sizes (a forward pre-hook)."""

    def __init__(self, model: nn.Module):
        self.batches: list[int] = []
        self.handle = model.register_forward_pre_hook(lambda _m, args: self.batches.append(args[0].shape[0]))

    def __enter__(self) -> Calls:
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


# --- NaN / Inf ----------------------------------------------------------------------------


@pytest.mark.parametrize("method", fv.methods())
def test_nan_frames_are_named_before_any_forward_pass(method):
    model = net()
    x = torch.rand(4, 3, 16, 16)
    x[1, 0, 3, 3] = float("nan")
    x[3, 2, 0, 0] = float("nan")
    for call in (lambda: fv.explain(model, x, method=method), lambda: registry.get(method)(model, x)):
        with Calls(model) as calls, pytest.raises(InputError) as info:
            call()
        assert calls.batches == []  # raised before the model ran
        assert str(info.value) == (
            "x holds NaN values in 2 of its 4 frames (indices along B: 1, 3); "
            "fix the input, or pass check_finite=False to skip this check"
        )


@pytest.mark.parametrize("method", fv.methods())
def test_check_finite_false_skips_only_the_check(method):
    model = net()
    torch.manual_seed(2)
    clean = torch.rand(3, 3, 16, 16)
    x = clean.clone()
    x[2] = float("inf")
    opts = OPTIONS.get(method, {})
    got = fv.explain(model, x, method=method, check_finite=False, **opts)
    want = fv.explain(model, clean[:2], method=method, **opts)
    assert got.shape == (3, 16, 16)
    # the clean frames' maps are as without the bad frame (each frame's map is its own)
    torch.testing.assert_close(got[:2], want, rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match=r"Inf values in 1 of its 3 frames \(indices along B: 2\)"):
        registry.get(method)(model, x, **opts)


def test_many_bad_frames_are_cut_short_and_both_kinds_named():
    model = net()
    x = torch.rand(12, 3, 16, 16)
    x[::2, 1, 5, 5] = float("nan")
    x[1::2, 0, 0, 0] = -float("inf")
    with pytest.raises(InputError) as info:
        fv.grad_cam(model, x)
    shown = ", ".join(str(i) for i in range(SHOWN_FRAMES))
    assert f"holds NaN and Inf values in 12 of its 12 frames (indices along B: {shown}, ...)" in str(info.value)


def test_explain_checks_for_a_method_registered_without_the_option(monkeypatch):
    seen = []

    def plain(model, x, scale=1.0):  # a third-party method with no check of its own
        seen.append(x)
        return x.mean(dim=1) * scale

    monkeypatch.setitem(registry._REGISTRY, "plain_mean", plain)
    x = torch.rand(2, 3, 4, 4)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match=r"NaN values in 1 of its 2 frames \(indices along B: 0\)"):
        fv.explain(net(), x, method="plain_mean")
    assert not seen
    out = fv.explain(net(), x, method="plain_mean", check_finite=False, scale=2.0)
    torch.testing.assert_close(out[1], x[1].mean(dim=0) * 2.0)


def test_explain_still_rejects_unknown_options_and_lists_check_finite():
    with pytest.raises(InputError, match="takes no option 'windows'; its options are: layers, .*check_finite"):
        fv.explain(net(), torch.rand(1, 3, 16, 16), method="visual_backprop", windows=(4,))


def test_tools_check_finite_too():
    model = net()
    x = torch.rand(2, 3, 16, 16)
    x[1, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match=r"NaN values in 1 of its 2 frames \(indices along B: 1\)"):
        fv.feature_maps(model, x, "2")
    maps = fv.feature_maps(model, x, "2", check_finite=False)
    assert torch.isfinite(maps[0]).all()
    # layers() lists shapes: values do not matter there
    assert [info.shape for info in fv.layers(model, x)][:2] == [(6, 14, 14), (6, 14, 14)]


# --- channels and size --------------------------------------------------------------------


def test_pilotnet_declares_its_input():
    assert expected_input(PilotNet()) == (3, (66, 200), "features.0")
    assert expected_input(net()) == (3, None, "0")
    assert expected_input(nn.Sequential(nn.LazyConv2d(4, 3))) == (None, None, None)  # not yet run


@pytest.mark.parametrize("method", fv.methods())
@pytest.mark.parametrize(
    "shape, message",
    [
        ((2, 1, 66, 200), "x has shape (2, 1, 66, 200) but PilotNet takes (B, 3, 66, 200): "
                          "1 channel, but its first conv 'features.0' takes 3"),
        ((2, 3, 70, 200), "x has shape (2, 3, 70, 200) but PilotNet takes (B, 3, 66, 200): "
                          "frames of 70 x 200 pixels, but its input_size is 66 x 200"),
        ((5, 4, 96, 96), "x has shape (5, 4, 96, 96) but PilotNet takes (B, 3, 66, 200): frames of 96 x 96 "
                         "pixels, but its input_size is 66 x 200; 4 channels, but its first conv 'features.0' takes 3"),
    ],
    ids=["channels", "size", "both"],
)
def test_wrong_shape_on_pilotnet_names_both_shapes_before_the_method_runs(method, shape, message):
    model = PilotNet().eval()
    with Calls(model) as calls, pytest.raises(InputError) as info:
        fv.explain(model, torch.rand(shape), method=method)
    assert str(info.value) == message
    # a wrong size is refused from the declaration alone; a wrong channel count after at most
    # one trial pass of one frame
    assert calls.batches in ([], [1])
    assert "batch 1" not in str(info.value) and "[1, " not in str(info.value)


def test_pilotnet_size_is_strict_even_where_the_convs_would_run():
    # 66 x 201 would reach the same 1 x 18 last conv map, but it is not the size PilotNet takes
    with pytest.raises(InputError, match=r"\(3, 3, 66, 201\) but PilotNet takes \(B, 3, 66, 200\)"):
        fv.visual_backprop(PilotNet().eval(), torch.rand(3, 3, 66, 201))


def test_undeclared_size_is_found_by_one_trial_frame_and_the_layer_named(frames):
    model = materialise(small_convnet(), frames[:1])  # its linear head fixes the size to 17 x 23
    with Calls(model) as calls, pytest.raises(InputError) as info:
        fv.grad_cam(model, torch.rand(2, 3, 20, 20))
    msg = str(info.value)
    assert msg.startswith(
        "x has shape (2, 3, 20, 20) but Sequential takes (B, 3, H, W); one frame of shape (3, 20, 20) "
        "fails in layer '7' (Linear): mat1 and mat2 shapes cannot be multiplied"
    )
    assert set(calls.batches) == {1}  # only one-frame trial passes, never the batch


def test_a_fitting_shape_is_probed_once_per_model_and_shape(frames):
    model = materialise(small_convnet(), frames[:1])
    with Calls(model) as calls:
        check_input(model, frames)
        assert calls.batches == [1]  # the trial frame
        check_input(model, frames)
        check_input(model, frames[:2])  # another batch size: same frame shape
        assert calls.batches == [1]
        fv.visual_backprop(model, frames)  # its planner reuses the trial pass: one forward of the batch
        assert calls.batches == [1, 3]
        other = small_convnet(seed=1)
        materialise(other, frames[:1])
    with Calls(other) as calls:
        check_input(other, frames)  # the result is per model
        assert calls.batches == [1]


def test_declared_first_conv_that_does_not_run_first_is_overruled_by_the_trial():
    class HeadFirst(nn.Module):
        """Registers an 8-channel conv before the 3-channel stem that feeds it."""

        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.head = nn.Conv2d(8, 4, 1)
            self.stem = nn.Conv2d(3, 8, 3)
            self.fc = nn.Linear(4, 1)

        def forward(self, x):
            return self.fc(torch.relu(self.head(torch.relu(self.stem(x)))).mean(dim=(2, 3)))

    model = HeadFirst().eval()
    assert expected_input(model)[0] == 8
    x = torch.rand(2, 3, 12, 12)
    maps = fv.grad_cam(model, x, layer="head")
    assert maps.shape == (2, 12, 12) and torch.isfinite(maps).all() and maps.abs().max() > 0


def test_channel_error_on_a_model_without_declared_size(frames):
    model = materialise(small_convnet(), frames[:1])
    with pytest.raises(InputError) as info:
        fv.occlusion(model, torch.rand(2, 1, 17, 23))
    assert str(info.value) == "x has shape (2, 1, 17, 23) but Sequential takes (B, 3, H, W): 1 channel, but its first conv '0' takes 3"


# --- frames: grayscale and aspect ratio ---------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 30, 40), (2, 30, 40, 1)], ids=["NHW", "NHW1"])
def test_grayscale_frames_become_rgb_with_one_warning_at_the_call_site(shape):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, size=shape, dtype=np.uint8)
    pre = FramePreprocess(size=(30, 40))  # no resize: values are exactly gray / 255 in every channel
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        x = pre(gray)
    assert [str(w.message) for w in caught] == [
        "grayscale frames of 40x30 converted to RGB by repeating the gray value; the model expects colour frames"
    ]
    assert caught[0].category is UserWarning and caught[0].filename == __file__
    want = torch.from_numpy(gray.reshape(2, 30, 40)).float().div(255.0)
    assert x.shape == (2, 3, 30, 40)
    for c in range(3):
        assert torch.equal(x[:, c], want)


def test_grayscale_through_model_preprocess_warns_at_the_users_line():
    model = PilotNet()
    gray = np.full((3, 96, 96), 51, np.uint8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        x = model.preprocess(gray)
    assert len(caught) == 1 and caught[0].filename == __file__ and "grayscale" in str(caught[0].message)
    torch.testing.assert_close(x, torch.full((3, 3, 66, 200), 0.2), rtol=0, atol=1e-6)


def test_one_rgb_frame_without_batch_axis_is_still_refused():
    with pytest.raises(InputError, match=r"one RGB frame\? add the batch axis"):
        FramePreprocess()(np.zeros((96, 96, 3), np.uint8))


def test_aspect_ratio_change_is_warned_once_per_transform():
    pre = FramePreprocess(size=(66, 200), crop=(0.0, 0.875, 0.0, 1.0), frame_size=(96, 96))
    wide = np.zeros((2, 108, 192, 3), np.uint8)  # 16:9
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pre(wide)
        pre(wide)  # the same transform and size: no second warning
        pre(np.zeros((1, 96, 96, 3), np.uint8))  # the training shape
        pre(np.zeros((1, 100, 101, 3), np.uint8))  # 1 % off: within the tolerance
    assert [str(w.message) for w in caught] == [
        "frames of 192x108 (aspect 1.78) are squashed into the model's 200x66 input (region 192x94 resized), "
        "but the model was trained on 96x96 frames (aspect 1.00): shapes look distorted to it and its output may be off"
    ]
    assert caught[0].filename == __file__
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pre(np.zeros((1, 100, 103, 3), np.uint8))  # 3 % off: warned (another size)
        FramePreprocess(size=(66, 200), frame_size=(96, 96))(wide)  # another transform: warned again
        FramePreprocess(size=(66, 200))(wide)  # training frame size unknown: no warning
    assert [str(w.message).split(" (aspect")[0] for w in caught] == ["frames of 103x100", "frames of 192x108"]


def test_bundled_model_knows_its_training_frames():
    model = fvm.load("pilotnet-carracing")
    assert model.transform.frame_size == (96, 96)
    assert json.loads(fvm.metadata("pilotnet-carracing")["frame_size"]) == [96, 96]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.preprocess(np.zeros((1, 96, 96, 3), np.uint8))
        assert not caught
        model.preprocess(np.zeros((1, 72, 128, 3), np.uint8))
    assert len(caught) == 1 and "frames of 128x72" in str(caught[0].message)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"size": (5000, 200)}, r"size must be \(height, width\), two positive ints of at most 4096"),
        ({"frame_size": (96, 0)}, r"frame_size must be \(height, width\), two positive ints of at most 16384"),
        ({"frame_size": (96.0, 96)}, "frame_size must be"),
        ({"crop": (0.0, math.nan, 0.0, 1.0)}, "crop must be 4 numbers"),
    ],
)
def test_preprocess_settings_are_bounded(kwargs, match):
    with pytest.raises(InputError, match=match):
        FramePreprocess(**kwargs)


# --- weights metadata ---------------------------------------------------------------------


def weights_file(tmp_path, **meta) -> str:
    state = {k: v.contiguous() for k, v in PilotNet().state_dict().items()}
    path = tmp_path / "m.safetensors"
    save_file(state, str(path), metadata={"architecture": "PilotNet", **meta})
    return path


@pytest.mark.parametrize(
    "meta, key, detail",
    [
        ({"input_size": "[300000, 300000]"}, "input_size", "at most 4096"),
        ({"input_size": "[0, 200]"}, "input_size", "two positive ints"),
        ({"input_size": "[66, 200, 3]"}, "input_size", "two positive ints"),
        ({"input_size": '"66x200"'}, "input_size", "two positive ints"),
        ({"input_size": "[true, 200]"}, "input_size", "two positive ints"),
        ({"input_size": "[[66], 200]"}, "input_size", "two positive ints"),
        ({"input_size": "{\"h\": 66}"}, "input_size", "two positive ints"),
        ({"crop": "[0, 1.5, 0, 1]"}, "crop", "0 <= top < bottom <= 1"),
        ({"crop": "[0.6, 0.2, 0, 1]"}, "crop", "0 <= top < bottom <= 1"),
        ({"crop": "[0, NaN, 0, 1]"}, "crop", "crop must be 4 numbers"),
        ({"crop": "7"}, "crop", "crop must be 4 numbers"),
        ({"frame_size": "[96, 100000]"}, "frame_size", "at most 16384"),
        ({"frame_size": "[-96, 96]"}, "frame_size", "two positive ints"),
        ({"frame_size": "[96, 96"}, "frame_size", "not JSON"),
        ({"architecture": "ResNet9000"}, "architecture", "not a known architecture"),
    ],
)
def test_bad_metadata_names_the_file_and_the_key(tmp_path, monkeypatch, meta, key, detail):
    path = weights_file(tmp_path, **meta)
    # rejected from the header alone: no tensor is read, nothing is allocated for the model
    monkeypatch.setattr(fvm, "load_file", lambda *a, **k: pytest.fail("tensors read before the metadata was checked"))
    for call in (fvm.load, fvm.metadata):
        with pytest.raises(InputError) as info:
            call(path)
        msg = str(info.value)
        assert msg.startswith(f"{path}: ") and f"'{key}'" in msg and detail in msg, msg


def test_huge_input_size_fails_before_any_model_is_built(tmp_path, monkeypatch):
    path = weights_file(tmp_path, input_size="[1000000, 1000000]")
    built = []
    monkeypatch.setattr(fvm, "_ARCHITECTURES", {"PilotNet": lambda **kw: built.append(kw)})
    with pytest.raises(InputError) as info:
        fvm.load(path)
    assert str(info.value) == (
        f"{path}: metadata 'input_size': size must be (height, width), two positive ints of at most 4096, "
        "got (1000000, 1000000)"
    )
    assert not built


def test_header_length_is_bounded(tmp_path):
    huge = tmp_path / "huge-header.safetensors"
    huge.write_bytes(struct.pack("<Q", 2**40) + b"{}")
    with pytest.raises(InputError, match=r"header length field says 1099511627776 bytes, above the limit of 8 MiB"):
        fvm.metadata(huge)
    short = tmp_path / "short.safetensors"
    short.write_bytes(struct.pack("<Q", 5000) + b'{"__metadata__": {}}')
    with pytest.raises(InputError, match=r"header length field says 5000 bytes but the file has 28"):
        fvm.load(short)
    # a real safetensors file whose metadata alone is above the bound
    big = weights_file(tmp_path, note="x" * (fvm.MAX_HEADER_BYTES + 1))
    with pytest.raises(InputError, match="above the limit of 8 MiB"):
        fvm.load(big)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_occlusion_baseline_must_be_finite(value):
    model = fv.models.PilotNet().eval()
    x = torch.rand(1, 3, 66, 200)
    with pytest.raises(InputError, match="baseline must be a finite number"):
        fv.occlusion(model, x, baseline=value, windows=(32,), stride=32)


def test_weights_whose_input_size_the_architecture_cannot_take(tmp_path):
    path = weights_file(tmp_path, input_size="[100, 200]")
    with pytest.raises(InputError, match=r"metadata 'input_size': PilotNet cannot take 100x200 inputs"):
        fv.models.load(path)


def test_weights_missing_a_tensor_name_it(tmp_path):
    state = {k: v.contiguous() for k, v in PilotNet().state_dict().items() if k != "regressor.7.bias"}
    path = tmp_path / "m.safetensors"
    save_file(state, str(path), metadata={"architecture": "PilotNet"})
    with pytest.raises(InputError, match=r"weights do not fit PilotNet: .*regressor\.7\.bias"):
        fv.models.load(path)


def test_check_finite_accepts_finite_values_whose_sum_overflows():
    """The fast path sums x; finite values that overflow the sum are settled element by element."""
    from fastviz.hooks import check_finite

    x = torch.full((2, 3, 4, 4), 3e38)
    assert not torch.isfinite(x.sum())
    check_finite(x)  # no error
    x[1, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match=r"NaN values in 1 of its 2 frames \(indices along B: 1\)"):
        check_finite(x)
    x[1, 0, 0, 0] = -float("inf")
    x[0, 2, 3, 3] = float("inf")
    with pytest.raises(InputError, match=r"Inf values in 2 of its 2 frames \(indices along B: 0, 1\)"):
        check_finite(x)
