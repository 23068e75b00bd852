"""Faithfulness metrics (fastviz.audit.metrics): trapezoid areas, step counts, pixel ranks,
deletion and insertion curves against a plain pixel-by-pixel loop, a planted feature, map
statistics, errors, and a model left as found."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn

from fastviz.audit.metrics import (
    Curves,
    area_under_curve,
    map_statistics,
    perturbation_curves,
    pixel_ranks,
    random_ranks,
    step_counts,
)
from fastviz.errors import InputError
from fastviz.methods.perturbation import blur
from fastviz.targets import Class

from conftest import BoxSum, materialise, small_convnet


# ---------------------------------------------------------------------------------------------
# helpers


def linear_model(c: int, h: int, w: int, outputs: int = 1, seed: int = 0) -> nn.Sequential:
    """``f(x) = W x + b`` over the flattened frame, fixed weights."""
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, outputs))
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(outputs, c * h * w, generator=gen) * 0.3)
        model[1].bias.copy_(torch.randn(outputs, generator=gen))
    return model.eval()


def plain_counts(pixels: int, steps: int) -> list[int]:
    """round(k * pixels / steps), halves up, in exact arithmetic."""
    return [math.floor(Fraction(k * pixels, steps) + Fraction(1, 2)) for k in range(steps + 1)]


def reference_curves(model, x, ranks, steps, base, target_class=None):
    """Deletion / insertion curves by a plain loop: for each ordering, frame and step, build the
    masked frame pixel by pixel, run the model on it alone and take |t(f(x_k)) - t(f(x))|.

    ``base`` is the (B, C, H, W) baseline image. ``target_class`` None: output 0 of a
    one-output model; "top": the clean frame's argmax class; "per-step": the argmax class of
    each masked output (the wrong thing, to show a test can tell the two apart).
    Returns deletion, insertion (K, B, S+1), clean (B,) and baseline (B,) scores, float64.
    """
    k_orders, b, _c, h, w = ranks.shape[0], *x.shape
    counts = plain_counts(h * w, steps)
    dele = torch.zeros(k_orders, b, steps + 1, dtype=torch.float64)
    ins = torch.zeros_like(dele)
    clean = torch.zeros(b, dtype=torch.float64)
    base_score = torch.zeros(b, dtype=torch.float64)
    with torch.no_grad():
        for f in range(b):
            out = model(x[f:f + 1])[0]
            cls = 0 if target_class is None else int(out.argmax())
            clean[f] = float(out[cls])

            def score(frame, f=f, cls=cls):
                o = model(frame[None])[0]
                if target_class == "per-step":
                    return float(o.max())
                return float(o[cls])

            base_score[f] = score(base[f].clone())
            for o in range(k_orders):
                for s, n in enumerate(counts):
                    deleted = x[f].clone()
                    inserted = base[f].clone()
                    for i in range(h):
                        for j in range(w):
                            if int(ranks[o, f, i, j]) < n:
                                deleted[:, i, j] = base[f, :, i, j]
                                inserted[:, i, j] = x[f, :, i, j]
                    dele[o, f, s] = abs(score(deleted) - clean[f])
                    ins[o, f, s] = abs(score(inserted) - clean[f])
    return dele, ins, clean, base_score


def random_permutation_ranks(k: int, b: int, h: int, w: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(h * w, generator=gen) for _ in range(k * b)]).view(k, b, h, w)


def hooks_count(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        + len(getattr(m, "_backward_pre_hooks", {}))
        for m in model.modules()
    )


# ---------------------------------------------------------------------------------------------
# area_under_curve


@pytest.mark.parametrize(
    "curve,expected",
    [
        ([0.0, 1.0, 1.0], 0.75),  # (0/2 + 1 + 1/2) / 2
        ([1.0, 1.0], 1.0),  # (1/2 + 1/2) / 1
        ([0.0, 1.0], 0.5),
        ([2.0, 0.0, 4.0, 0.0], 5.0 / 3.0),  # (2/2 + 0 + 4 + 0/2) / 3
        ([4.0, 3.0, 2.0, 1.0, 0.0], 2.0),  # (2 + 3 + 2 + 1 + 0) / 4
        ([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 8.0], 0.5),  # (8/2) / 8
    ],
)
def test_area_under_curve_hand_computed(curve, expected):
    got = area_under_curve(torch.tensor(curve, dtype=torch.float64))
    assert got.shape == ()
    assert got.dtype == torch.float64
    assert float(got) == pytest.approx(expected, abs=1e-12)


def test_area_under_curve_batched_matches_trapezoid():
    gen = torch.Generator().manual_seed(3)
    curve = torch.rand(2, 3, 7, generator=gen)  # S = 6
    got = area_under_curve(curve)
    assert got.shape == (2, 3) and got.dtype == torch.float32
    want = torch.from_numpy(np.trapezoid(curve.double().numpy(), dx=1.0 / 6, axis=-1)
                            if hasattr(np, "trapezoid") else np.trapz(curve.double().numpy(), dx=1.0 / 6, axis=-1))
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-7)
    # each entry is its own row's area
    for i in range(2):
        for j in range(3):
            assert float(got[i, j]) == pytest.approx(float(area_under_curve(curve[i, j])), abs=1e-7)


def test_area_under_a_constant_curve_is_the_constant():
    curve = torch.full((4, 17), 2.5)
    torch.testing.assert_close(area_under_curve(curve), torch.full((4,), 2.5))


@pytest.mark.parametrize("shape", [(1,), (3, 1), (0,), (2, 0)])
def test_area_under_curve_needs_two_points(shape):
    with pytest.raises(InputError):
        area_under_curve(torch.zeros(shape))


# ---------------------------------------------------------------------------------------------
# step_counts


@pytest.mark.parametrize(
    "pixels,steps,expected",
    [
        (10, 4, [0, 3, 5, 8, 10]),  # 2.5 -> 3, 7.5 -> 8
        (5, 2, [0, 3, 5]),  # 2.5 -> 3
        (3, 6, [0, 1, 1, 2, 2, 3, 3]),  # 0.5 -> 1, 1.5 -> 2, 2.5 -> 3
        (7, 7, [0, 1, 2, 3, 4, 5, 6, 7]),
        (100, 3, [0, 33, 67, 100]),  # 33.33 -> 33, 66.67 -> 67
        (13200, 16, [0, 825, 1650, 2475, 3300, 4125, 4950, 5775, 6600, 7425, 8250, 9075, 9900, 10725, 11550,
                     12375, 13200]),
        (1, 1, [0, 1]),
    ],
)
def test_step_counts_exact_values(pixels, steps, expected):
    got = step_counts(pixels, steps)
    assert got.dtype == torch.int64
    assert got.tolist() == expected


@pytest.mark.parametrize("pixels", [1, 2, 7, 30, 391, 1001])
@pytest.mark.parametrize("steps", [1, 2, 3, 5, 16, 40])
def test_step_counts_properties(pixels, steps):
    got = step_counts(pixels, steps).tolist()
    assert len(got) == steps + 1
    assert got[0] == 0 and got[-1] == pixels
    assert all(a <= b for a, b in zip(got, got[1:]))
    assert got == plain_counts(pixels, steps)


# ---------------------------------------------------------------------------------------------
# pixel_ranks and random_ranks


def test_pixel_ranks_hand_computed_with_ties():
    # values 3 (idx 0), 1 (idx 1), 3 (idx 2), 2 (idx 3): order 0, 2, 3, 1 -> ranks [0, 3, 1, 2]
    maps = torch.tensor([[3.0, 1.0], [3.0, 2.0]])
    assert pixel_ranks(maps).tolist() == [[0, 3], [1, 2]]
    # all equal: row-major order
    assert pixel_ranks(torch.zeros(2, 3)).tolist() == [[0, 1, 2], [3, 4, 5]]
    # strictly decreasing along row-major order, the same; increasing: reversed
    assert pixel_ranks(-torch.arange(6.0).view(2, 3)).tolist() == [[0, 1, 2], [3, 4, 5]]
    assert pixel_ranks(torch.arange(6.0).view(2, 3)).tolist() == [[5, 4, 3], [2, 1, 0]]


def test_pixel_ranks_match_plain_sort_and_are_permutations():
    gen = torch.Generator().manual_seed(5)
    maps = torch.round(torch.rand(2, 3, 4, 5, generator=gen) * 4) / 4  # many ties
    ranks = pixel_ranks(maps)
    assert ranks.shape == maps.shape and ranks.dtype == torch.int64
    flat_maps = maps.reshape(6, 20)
    flat_ranks = ranks.reshape(6, 20)
    for m, r in zip(flat_maps.tolist(), flat_ranks.tolist()):
        assert sorted(r) == list(range(20))
        order = sorted(range(20), key=lambda i: (-m[i], i))
        want = [0] * 20
        for rank, i in enumerate(order):
            want[i] = rank
        assert r == want


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_pixel_ranks_reject_non_finite(bad):
    maps = torch.rand(2, 3, 4)
    maps[1, 2, 3] = bad
    with pytest.raises(InputError):
        pixel_ranks(maps)


def test_random_ranks_are_seeded_permutations():
    a = random_ranks([0, 1, 2, 0], 6, 7)
    assert a.shape == (4, 6, 7) and a.dtype == torch.int64
    for r in a:
        assert sorted(r.flatten().tolist()) == list(range(42))
    assert torch.equal(a[0], a[3])  # same seed, same order
    assert not torch.equal(a[0], a[1]) and not torch.equal(a[1], a[2]) and not torch.equal(a[0], a[2])
    b = random_ranks([1], 6, 7)
    assert torch.equal(b[0], a[1])  # reproducible across calls
    # independent of (and not changing) the global random state
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    c = random_ranks([2], 6, 7)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(c[0], a[2])
    # the documented recipe: randperm with a CPU generator seeded with the seed
    assert torch.equal(a[2].flatten(), torch.randperm(42, generator=torch.Generator().manual_seed(2)))


def test_random_ranks_empty_seed_list():
    assert random_ranks([], 3, 4).shape == (0, 3, 4)


# ---------------------------------------------------------------------------------------------
# perturbation_curves against a plain loop


@pytest.mark.parametrize("steps", [1, 2, 5])
@pytest.mark.parametrize("baseline", [0.0, "blur"])
def test_curves_match_plain_loop(steps, baseline):
    c, h, w = 3, 5, 6
    model = linear_model(c, h, w)
    gen = torch.Generator().manual_seed(11)
    x = torch.rand(2, c, h, w, generator=gen)
    maps = torch.round(torch.rand(2, h, w, generator=gen) * 3)  # ties, ranked by pixel index
    ranks = torch.cat([pixel_ranks(maps)[None], random_permutation_ranks(2, 2, h, w, seed=4)])  # K = 3
    base = torch.zeros_like(x) if baseline == 0.0 else blur(x, min(h, w) / 4.0)
    if baseline == "blur":
        assert (base - x).abs().max() > 0.05  # the blurred baseline differs from the frame

    got = perturbation_curves(model, x, ranks, steps=steps, baseline=baseline)
    dele, ins, clean, base_score = reference_curves(model, x, ranks, steps, base)

    assert isinstance(got, Curves)
    assert got.deletion.shape == got.insertion.shape == (3, 2, steps + 1)
    assert got.deletion.dtype == got.insertion.dtype == torch.float32
    assert got.clean.shape == got.baseline.shape == (2,)
    torch.testing.assert_close(got.fractions, torch.tensor([k / steps for k in range(steps + 1)], dtype=torch.float64))
    assert torch.allclose(got.clean.double(), clean, atol=1e-6, rtol=0)
    assert torch.allclose(got.baseline.double(), base_score, atol=1e-6, rtol=0)
    assert torch.allclose(got.deletion.double(), dele, atol=1e-6, rtol=0)
    assert torch.allclose(got.insertion.double(), ins, atol=1e-6, rtol=0)
    # the end points: deletion 0 -> |t(f(b)) - t(f(x))|, insertion the reverse
    assert (got.deletion[..., 0] == 0).all() and (got.insertion[..., -1] == 0).all()
    start = (got.baseline - got.clean).abs()
    assert torch.equal(got.deletion[..., -1], start.expand(3, 2))
    assert torch.equal(got.insertion[..., 0], start.expand(3, 2))
    assert start.min() > 1e-2  # the curves are not trivially zero
    # the areas are the trapezoid areas of the curves
    torch.testing.assert_close(got.deletion_auc, area_under_curve(got.deletion))
    torch.testing.assert_close(got.insertion_auc, area_under_curve(got.insertion))
    assert got.deletion_auc.shape == (3, 2)


def test_curves_hand_computed_linear_model():
    # f(x) = 10 x00 + 100 x01 + 1000 x10 + 10000 x11 + 5, x = [[1, 2], [3, 4]]:
    # contributions w * x = [[10, 200], [3000, 40000]], clean 43215, baseline (all zero) 5.
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 1))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[10.0, 100.0, 1000.0, 10000.0]]))
        model[1].bias.fill_(5.0)
    model.eval()
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    # map ranks: (0,1) first, then (1,0), (1,1), (0,0)
    ranks = pixel_ranks(torch.tensor([[[0.1, 0.4], [0.3, 0.2]]]))[None]
    assert ranks.tolist() == [[[[3, 0], [1, 2]]]]
    got = perturbation_curves(model, x, ranks, steps=4, baseline=0.0)
    assert got.clean.tolist() == [43215.0]
    assert got.baseline.tolist() == [5.0]
    # deleting D changes the output by sum over D of w * x
    assert got.deletion[0, 0].tolist() == [0.0, 200.0, 3200.0, 43200.0, 43210.0]
    # inserting I into the zero baseline: output 5 + sum over I of w * x, change 43210 - that
    assert got.insertion[0, 0].tolist() == [43210.0, 43010.0, 40010.0, 10.0, 0.0]
    # (0/2 + 200 + 3200 + 43200 + 43210/2) / 4 and (43210/2 + 43010 + 40010 + 10 + 0/2) / 4
    assert float(got.deletion_auc[0, 0]) == pytest.approx(17051.25, abs=1e-3)
    assert float(got.insertion_auc[0, 0]) == pytest.approx(26158.75, abs=1e-3)
    # two steps: round(2 * 4 / 2) = 2 pixels at the midpoint
    two = perturbation_curves(model, x, ranks, steps=2, baseline=0.0)
    assert two.deletion[0, 0].tolist() == [0.0, 3200.0, 43210.0]
    assert two.insertion[0, 0].tolist() == [43210.0, 40010.0, 0.0]


@pytest.mark.parametrize("chunk_size", [1, 3])
def test_chunking_does_not_change_the_curves(convnet, frames, chunk_size):
    ranks = torch.cat([pixel_ranks(frames.mean(1))[None], random_permutation_ranks(1, 3, 17, 23, seed=2)])
    ref = perturbation_curves(convnet, frames, ranks, steps=4, chunk_size=None)
    got = perturbation_curves(convnet, frames, ranks, steps=4, chunk_size=chunk_size)
    for name in ("deletion", "insertion", "clean", "baseline"):
        assert torch.allclose(getattr(got, name), getattr(ref, name), atol=1e-6, rtol=0), name
    assert ref.deletion[..., 1:].abs().max() > 1e-3  # not a comparison of zeros


def test_convnet_curves_match_plain_loop(frames):
    x = frames[:2, :, :9, :11]
    model = materialise(small_convnet(), torch.zeros(1, 3, 9, 11))
    ranks = random_permutation_ranks(1, 2, 9, 11, seed=8)
    got = perturbation_curves(model, x, ranks, steps=3, baseline="blur", blur_sigma=1.5)
    dele, ins, clean, base_score = reference_curves(model, x, ranks, 3, blur(x, 1.5))
    assert torch.allclose(got.deletion.double(), dele, atol=1e-6, rtol=0)
    assert torch.allclose(got.insertion.double(), ins, atol=1e-6, rtol=0)
    assert torch.allclose(got.clean.double(), clean, atol=1e-6, rtol=0)
    assert torch.allclose(got.baseline.double(), base_score, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------
# a planted feature


def test_planted_feature_box_map_beats_random_beats_inverted():
    # BoxSum: the output is the sum of squares of the box rows 10..13, columns 20..26, alone
    model = BoxSum().eval()
    b, h, w = 4, 24, 32
    gen = torch.Generator().manual_seed(7)
    x = torch.rand(b, 3, h, w, generator=gen)  # random texture: the blurred baseline differs in the box
    box = torch.zeros(b, h, w)
    box[:, 10:14, 20:27] = 1.0
    box_map = box + 1e-3 * torch.rand(b, h, w, generator=gen)  # tiny noise, still the box first
    random_map = torch.rand(b, h, w, generator=gen)
    inverted = 1.0 - box_map
    ranks = torch.stack([
        pixel_ranks(box_map),
        pixel_ranks(random_map),
        random_ranks([100 + i for i in range(b)], h, w),
        pixel_ranks(inverted),
    ])
    curves = perturbation_curves(model, x, ranks, steps=16)  # default baseline: blur
    assert (curves.baseline - curves.clean).abs().min() > 0.5  # deleting the box moves the output
    dele, ins = curves.deletion_auc, curves.insertion_auc
    for f in range(b):
        for r in (1, 2):
            assert dele[0, f] > dele[r, f] > dele[3, f], (f, r, dele[:, f])
            assert ins[0, f] < ins[r, f] < ins[3, f], (f, r, ins[:, f])
    # the box is 28 pixels, each step 48: the box map deletes it all in step 1, the inverted map
    # only in the last step, so the areas are exactly 15.5/16 and 0.5/16 of the full change
    full = (curves.baseline - curves.clean).abs()
    torch.testing.assert_close(dele[0], full * 15.5 / 16)
    torch.testing.assert_close(dele[3], full * 0.5 / 16)
    torch.testing.assert_close(ins[0], full * 0.5 / 16)
    torch.testing.assert_close(ins[3], full * 15.5 / 16)


# ---------------------------------------------------------------------------------------------
# classifiers: the clean frame's top class throughout


def test_classifier_uses_the_clean_top_class_at_every_step():
    # class 0: a constant logit 2; class k = 1..3: 0.25 x the sum of column pair k-1 of the
    # frame. Frame f is bright in column pair f, so its top class is f + 1; as pixels are
    # deleted (to 0) class 0 takes over.
    c, h, w = 2, 4, 6
    model = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 4)).eval()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        weight = torch.zeros(4, c, h, w)
        for k in range(1, 4):
            weight[k, :, :, 2 * (k - 1):2 * k] = 0.25
        model[1].weight.copy_(weight.view(4, -1))
        model[1].bias.copy_(torch.tensor([2.0, 0.0, 0.0, 0.0]))
    x = torch.rand(3, c, h, w, generator=gen) * 0.5
    for f in range(3):
        x[f, :, :, 2 * f:2 * f + 2] += 1.0
    ranks = random_permutation_ranks(2, 3, h, w, seed=9)
    got = perturbation_curves(model, x, ranks, steps=5, baseline=0.0)
    with torch.no_grad():
        logits = model(x)
    top = logits.argmax(1)
    assert top.tolist() == [1, 2, 3]  # one choice per frame
    torch.testing.assert_close(got.clean, logits.max(1).values, rtol=0, atol=1e-6)
    base = torch.zeros_like(x)
    dele, ins, clean, base_score = reference_curves(model, x, ranks, 5, base, target_class="top")
    assert torch.allclose(got.clean.double(), clean, atol=1e-6, rtol=0)
    assert torch.allclose(got.baseline.double(), base_score, atol=1e-6, rtol=0)
    assert torch.allclose(got.deletion.double(), dele, atol=1e-6, rtol=0)
    assert torch.allclose(got.insertion.double(), ins, atol=1e-6, rtol=0)
    # the baseline's score is the clean top class's logit on zeros (its bias 0), not class 0's 2
    assert got.baseline.tolist() == [0.0, 0.0, 0.0]
    # the test can tell: taking each masked output's own top class gives other curves
    dele_moving, ins_moving, _, _ = reference_curves(model, x, ranks, 5, base, target_class="per-step")
    assert not torch.allclose(dele_moving, dele, atol=1e-3)
    assert not torch.allclose(ins_moving, ins, atol=1e-3)


def test_classifier_explicit_class_target():
    c, h, w = 1, 3, 3
    model = linear_model(c, h, w, outputs=3, seed=1)
    x = torch.rand(2, c, h, w, generator=torch.Generator().manual_seed(2))
    ranks = random_permutation_ranks(1, 2, h, w, seed=1)
    got = perturbation_curves(model, x, ranks, steps=3, baseline=0.0, target=2)
    with torch.no_grad():
        torch.testing.assert_close(got.clean, model(x)[:, 2], rtol=0, atol=1e-6)
        torch.testing.assert_close(got.baseline, model(torch.zeros_like(x))[:, 2], rtol=0, atol=1e-6)


@pytest.mark.parametrize("chunk_size", [None, 1])
def test_classifier_per_frame_class_list(chunk_size):
    c, h, w = 1, 3, 4
    model = linear_model(c, h, w, outputs=3, seed=6)
    x = torch.rand(3, c, h, w, generator=torch.Generator().manual_seed(6))
    classes = torch.tensor([2, 0, 1])
    ranks = random_permutation_ranks(1, 3, h, w, seed=6)
    # a budget of one row per pass splits the clean pass too: each chunk takes its frames' classes
    budget = 1 if chunk_size == 1 else None
    got = perturbation_curves(model, x, ranks, steps=3, baseline=0.0, target=Class(classes), chunk_size=chunk_size,
                              memory_budget=budget)
    with torch.no_grad():
        want_clean = model(x).gather(1, classes[:, None])[:, 0]
        want_base = model(torch.zeros_like(x)).gather(1, classes[:, None])[:, 0]
    torch.testing.assert_close(got.clean, want_clean, rtol=0, atol=1e-6)
    torch.testing.assert_close(got.baseline, want_base, rtol=0, atol=1e-6)


def test_int32_ranks_and_memory_budget_give_the_same_curves(frames):
    model = materialise(small_convnet(classes=3), torch.zeros(1, 3, 17, 23))
    ranks = random_permutation_ranks(2, 3, 17, 23, seed=12)
    ref = perturbation_curves(model, frames, ranks, steps=3)
    as_int32 = perturbation_curves(model, frames, ranks.int(), steps=3)
    small = perturbation_curves(model, frames, ranks, steps=3, memory_budget="64KiB")  # clean pass chunked too
    for got in (as_int32, small):
        for name in ("deletion", "insertion", "clean", "baseline"):
            assert torch.allclose(getattr(got, name), getattr(ref, name), atol=1e-6, rtol=0), name
    with torch.no_grad():
        torch.testing.assert_close(ref.clean, model(frames).max(1).values, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# input errors


def _bad_ranks_cases():
    good = random_permutation_ranks(2, 2, 3, 4, seed=0)
    too_big = good.clone()
    too_big[0, 1, 2, 3] = 12
    negative = good.clone()
    negative[1, 0, 0, 0] = -1
    return {
        "wrong-width": random_permutation_ranks(2, 2, 3, 3, seed=0),
        "wrong-frames": random_permutation_ranks(2, 3, 3, 4, seed=0),
        "three-dims": good[0],
        "five-dims": good[None],
        "float": good.float(),
        "too-big": too_big,
        "negative": negative,
        "no-orderings": good[:0],
    }


@pytest.mark.parametrize("case", list(_bad_ranks_cases()))
def test_bad_ranks_raise_input_error(case):
    model = linear_model(1, 3, 4)
    x = torch.rand(2, 1, 3, 4)
    with pytest.raises(InputError):
        perturbation_curves(model, x, _bad_ranks_cases()[case], steps=2)


@pytest.mark.parametrize("steps", [0, -1, 1.5, True, "4"])
def test_bad_steps_raise_input_error(steps):
    model = linear_model(1, 3, 4)
    x = torch.rand(2, 1, 3, 4)
    with pytest.raises(InputError):
        perturbation_curves(model, x, random_permutation_ranks(1, 2, 3, 4, seed=0), steps=steps)


def test_bad_frames_and_baseline_raise_input_error():
    model = linear_model(1, 3, 4)
    ranks = random_permutation_ranks(1, 2, 3, 4, seed=0)
    x = torch.rand(2, 1, 3, 4)
    with pytest.raises(InputError):
        perturbation_curves(model, x, ranks, baseline="nothing")
    with pytest.raises(InputError):
        perturbation_curves(model, x.double(), ranks)
    nan = x.clone()
    nan[0, 0, 1, 1] = float("nan")
    with pytest.raises(InputError):
        perturbation_curves(model, nan, ranks)


# ---------------------------------------------------------------------------------------------
# map_statistics


@pytest.mark.parametrize("r,c", [(0, 0), (2, 4), (1, 3), (2, 0)])
def test_map_statistics_single_pixel(r, c):
    maps = torch.zeros(1, 3, 5)
    maps[0, r, c] = 7.0
    centroid, entropy = map_statistics(maps)
    assert centroid.shape == (1, 2) and centroid.dtype == torch.float32
    assert entropy.shape == (1,) and entropy.dtype == torch.float32
    assert centroid[0].tolist() == [float(r), float(c)]
    assert float(entropy[0]) == pytest.approx(0.0, abs=1e-7)


def test_map_statistics_uniform_signed_and_empty():
    h, w = 3, 5
    uniform = torch.full((h, w), 0.2)
    signed = torch.zeros(h, w)
    signed[0, 0], signed[2, 4] = 1.0, -1.0
    empty = torch.zeros(h, w)
    negative_pixel = torch.zeros(h, w)
    negative_pixel[1, 2] = -3.0
    centroid, entropy = map_statistics(torch.stack([uniform, signed, empty, negative_pixel]))
    # uniform: the centre, entropy 1
    assert centroid[0].tolist() == pytest.approx([(h - 1) / 2, (w - 1) / 2], abs=1e-6)
    assert float(entropy[0]) == pytest.approx(1.0, abs=1e-6)
    # +1 at (0, 0) and -1 at (2, 4): |value| counts, the midpoint (1, 2), two equal masses
    assert centroid[1].tolist() == pytest.approx([1.0, 2.0], abs=1e-6)
    assert float(entropy[1]) == pytest.approx(math.log(2) / math.log(h * w), abs=1e-6)
    # all zero: NaN for both
    assert torch.isnan(centroid[2]).all() and torch.isnan(entropy[2])
    # one negative pixel: its position, entropy 0
    assert centroid[3].tolist() == pytest.approx([1.0, 2.0], abs=1e-6)
    assert float(entropy[3]) == pytest.approx(0.0, abs=1e-7)


def test_map_statistics_match_plain_weighted_mean():
    gen = torch.Generator().manual_seed(4)
    maps = torch.randn(3, 6, 7, generator=gen)
    centroid, entropy = map_statistics(maps)
    for i in range(3):
        m = maps[i].abs().double().numpy()
        p = m / m.sum()
        rows, cols = np.meshgrid(np.arange(6), np.arange(7), indexing="ij")
        assert centroid[i].tolist() == pytest.approx([(p * rows).sum(), (p * cols).sum()], abs=1e-5)
        assert float(entropy[i]) == pytest.approx(-(p * np.log(p)).sum() / np.log(42), abs=1e-6)
        assert 0.0 < float(entropy[i]) < 1.0


@pytest.mark.parametrize("shape", [(3, 5), (1, 1, 3, 5), (5,)])
def test_map_statistics_wrong_ndim(shape):
    with pytest.raises(InputError):
        map_statistics(torch.ones(shape))


def test_map_statistics_non_finite():
    maps = torch.ones(2, 3, 3)
    maps[1, 0, 0] = float("nan")
    with pytest.raises(InputError):
        map_statistics(maps)


# ---------------------------------------------------------------------------------------------
# the model is left as found


def _snapshot(model: nn.Module):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [p.requires_grad for p in model.parameters()],
        [m.training for m in model.modules()],
        hooks_count(model),
    )


def _assert_same(model, before):
    state, grads, modes, hooks = before
    now = model.state_dict()
    assert now.keys() == state.keys()
    for k in state:
        assert torch.equal(now[k], state[k]), k
    assert [p.requires_grad for p in model.parameters()] == grads
    assert [m.training for m in model.modules()] == modes
    assert hooks_count(model) == hooks


def test_model_left_unchanged(convnet, frames):
    convnet[0].weight.requires_grad_(False)  # a mix of flags
    calls = []
    handle = convnet[2].register_forward_hook(lambda m, i, o: calls.append(o.shape[0]))
    before = _snapshot(convnet)
    assert before[3] == 1
    ranks = random_permutation_ranks(2, 3, 17, 23, seed=1)
    perturbation_curves(convnet, frames, ranks, steps=3, chunk_size=5)
    _assert_same(convnet, before)
    assert sum(calls) >= 3 + 3 + 2 * 3 * 2 * 2  # the user's own hook still ran on every row
    handle.remove()


def test_model_in_training_mode_with_batch_norm_left_unchanged():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 7, 1))
    with torch.no_grad():
        model[1].running_mean.fill_(0.3)
        model[1].running_var.fill_(2.0)
    model.train()
    before = _snapshot(model)
    x = torch.rand(2, 3, 6, 7)
    perturbation_curves(model, x, random_permutation_ranks(1, 2, 6, 7, seed=0), steps=2)
    _assert_same(model, before)
    assert model.training and model[1].running_mean.eq(0.3).all()
