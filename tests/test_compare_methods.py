"""scripts/compare_methods.py: each measure against a hand-computed or independent value."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import fastviz as fv

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "compare_methods.py"


@pytest.fixture(scope="module")
def cm():
    spec = importlib.util.spec_from_file_location("compare_methods", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["compare_methods"] = mod
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop("compare_methods", None)


def _frames(rgb_rows) -> np.ndarray:
    """(1, 3, 1, W) float frames in [0, 1] from a list of 0..255 RGB triples."""
    a = np.array(rgb_rows, np.float32).T[None, :, None, :] / 255.0
    return a


def test_road_mask_colours(cm):
    colours = [
        (105, 105, 105),  # road
        (102, 102, 102),  # road, darker tile
        (102, 204, 102),  # grass
        (102, 230, 102),  # light grass
        (255, 255, 255),  # curb, white
        (255, 0, 0),  # curb / car, red
        (30, 30, 30),  # car's black
        (102, 118, 102),  # road mixed ~15% with grass: spread 16 -> road
        (102, 119, 102),  # spread 17 -> not road
    ]
    got = cm.road_mask(_frames(colours))[0, 0]
    assert got.tolist() == [True, True, False, False, False, False, False, True, False]
    with pytest.raises(fv.errors.InputError, match=r"\(B, 3, H, W\)"):
        cm.road_mask(np.zeros((2, 66, 200)))


def test_road_mask_on_the_bundled_log(cm):
    model = fv.models.load("pilotnet-carracing")
    frame = fv.data.load_drive_log().frames[:1]  # a straight stretch: road down the middle
    road = cm.road_mask(model.preprocess(frame).numpy())[0]
    assert road[5, 100] and road[30, 100]  # the road ahead of the car
    assert not road[5, 10] and not road[30, 190]  # grass on either side
    assert 0.12 < road.mean() < 0.3  # the road is a vertical band, ~1/5 of the picture


def test_rank_average_gives_ties_their_mean_rank(cm):
    got = cm.rank_average(np.array([[3.0, 1.0, 2.0, 2.0], [0.0, 0.0, 0.0, 5.0]]))
    np.testing.assert_array_equal(got, [[4, 1, 2.5, 2.5], [2, 2, 2, 4]])


def test_pearson_rows_matches_numpy_and_flags_constant_rows(cm):
    rng = np.random.default_rng(1)
    a, b = rng.random((3, 50)), rng.random((3, 50))
    b[1] = 2 * a[1] + 1
    got = cm.pearson_rows(a, b)
    for i in (0, 1):
        assert got[i] == pytest.approx(np.corrcoef(a[i], b[i])[0, 1], abs=1e-12)
    assert got[1] == pytest.approx(1.0)
    a[2] = 7.0
    assert np.isnan(cm.pearson_rows(a, b)[2])


def test_specificity_leave_one_out_by_hand(cm):
    # three 1x3 "maps"; weights are |map| / sum |map|
    maps = np.array([[[1.0, 0.0, 0.0]], [[0.0, 2.0, 0.0]], [[0.0, 0.0, -4.0]]])
    spec = cm.specificity(maps)
    w = np.eye(3)
    for i in range(3):
        others = w[[j for j in range(3) if j != i]].mean(axis=0)
        assert spec["pearson"][i] == pytest.approx(np.corrcoef(w[i], others)[0, 1])
    assert spec["pearson"][0] == pytest.approx(-1.0)  # (1,0,0) against (0,.5,.5)
    same = np.stack([np.arange(6.0).reshape(2, 3) * s for s in (1, 3, 10)])  # one picture at three scales
    np.testing.assert_allclose(cm.specificity(same)["pearson"], 1.0)
    np.testing.assert_allclose(cm.specificity(same)["spearman"], 1.0)


def test_specificity_counts_blank_maps_apart(cm):
    maps = np.stack([np.ones((2, 2)), np.zeros((2, 2)), np.array([[1.0, 2.0], [3.0, 4.0]])])
    spec = cm.specificity(maps)
    assert spec["blank"].tolist() == [False, True, False]
    assert np.isnan(spec["pearson"][1])
    # frame 2 against frame 0 alone (the blank one is not in the mean): a constant map -> undefined
    assert np.isnan(spec["pearson"][2])


def test_mass_on(cm):
    maps = np.array([[[1.0, -3.0], [0.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]]])
    mask = np.array([[[True, True], [False, False]]] * 2)
    got = cm.mass_on(maps, mask)
    assert got[0] == pytest.approx(4 / 8)
    assert np.isnan(got[1])


def test_order_by_ranks_abs_values_first_and_shuffles_ties(cm):
    m = np.array([[[0.5, -2.0, 0.0, 0.0, 1.0, 0.0]]])
    seen = set()
    for seed in range(8):
        r = cm.order_by(m, np.random.default_rng(seed))[0]
        assert sorted(r.tolist()) == list(range(6))
        assert r[1] == 0 and r[4] == 1 and r[0] == 2  # |-2| > 1 > 0.5
        seen.add(tuple(r[[2, 3, 5]]))  # the three zeros share ranks 3..5 in some order
        assert sorted(r[[2, 3, 5]].tolist()) == [3, 4, 5]
    assert len(seen) > 1


def test_auc_is_the_mean_height_by_trapezoids(cm):
    assert cm.auc(np.array([0.0, 1.0, 1.0]), steps=(0.0, 0.5, 1.0)) == pytest.approx(0.75)
    # default steps 0..0.5: a constant curve of height h has mean height h
    assert cm.auc(np.full(len(cm.DELETION_STEPS), 3.0)) == pytest.approx(3.0)


class PixelLinear(nn.Module):
    """f(x) = sum(w * x): each pixel's contribution is known exactly."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x):
        return (x * self.w).sum(dim=(1, 2, 3)).unsqueeze(1)


def test_deletion_curves_against_a_linear_model(cm):
    torch.manual_seed(0)
    b, c, h, w = 2, 3, 4, 5
    x = torch.rand(b, c, h, w)
    weights = torch.randn(1, c, h, w)
    model = PixelLinear(weights).eval()
    base = x.mean(dim=(2, 3), keepdim=True)  # per-channel mean, as the script's "mean" baseline
    ranks = torch.stack([torch.stack([torch.randperm(h * w) for _ in range(3)]) for _ in range(b)])  # (B, 3, P)
    steps = (0.0, 0.1, 0.25, 0.5, 1.0)
    got = cm.deletion_curves(model, x, ranks, base, steps=steps, chunk=4)
    assert got.shape == (b, 3, len(steps))
    xn, wn, bn, rn = x.numpy(), weights.numpy()[0], base.numpy(), ranks.numpy()
    for i in range(b):
        for r in range(3):
            for k, s in enumerate(steps):
                deleted = rn[i, r] < round(s * h * w)  # (P,)
                change = ((bn[i] - xn[i]) * wn).reshape(c, -1)[:, deleted].sum()
                assert got[i, r, k].item() == pytest.approx(abs(change), abs=1e-5)
    assert torch.all(got[:, :, 0] < 1e-5)


def test_bootstrap_ratio(cm):
    den = np.random.default_rng(3).random(40) + 0.5
    lo, hi = cm.bootstrap_ratio(2 * den, den)
    assert lo == pytest.approx(2.0) and hi == pytest.approx(2.0)
    lo, hi = cm.bootstrap_ratio(den + np.random.default_rng(4).normal(0, 0.3, 40), den)
    assert lo < 1.0 < hi


def test_random_blobs_are_smooth_and_non_negative(cm):
    blobs = cm.random_blobs((2, 66, 200), np.random.default_rng(0))
    assert blobs.shape == (2, 66, 200) and blobs.min() >= 0
    # neighbouring pixels of smoothed noise correlate strongly; of white noise, not at all
    a, b = blobs[:, :, :-1].ravel(), blobs[:, :, 1:].ravel()
    assert np.corrcoef(a, b)[0, 1] > 0.9


def test_car_box_in_input_space(cm):
    model = fv.models.load("pilotnet-carracing")
    mask = cm.car_mask(model, (96, 96))
    rows, cols = np.nonzero(mask)
    # recorded rows 65..78 of the 84 the model sees -> x 66/84; columns 44..52 of 96 -> x 200/96
    assert abs(rows.min() - 65 * 66 / 84) <= 1.5 and abs(rows.max() + 1 - 79 * 66 / 84) <= 1.5
    assert abs(cols.min() - 44 * 200 / 96) <= 2 and abs(cols.max() + 1 - 53 * 200 / 96) <= 2
    frame = fv.data.load_drive_log().frames[:1]
    box = frame[0, 65:79, 44:53].reshape(-1, 3).astype(int)
    red = (box[:, 0] > 150) & (box[:, 1] < 80) & (box[:, 2] < 80)
    assert red.sum() >= 15  # the car's red body is inside the box


def _row(cost, ratios, lo, spec, road):
    """A result row as ``recommend`` reads it; ``ratios``/``lo`` the same for every baseline and control."""
    dele = {b: {c: {"ratio_to_random": ratios, "ratio_ci95": [lo, ratios + 1]} for c in ("random pixels", "random blobs")}
            for b in ("mean", "blur")}
    return {"method": "m", "options": {}, "cost_ms_per_frame": cost, "deletion": dele,
            "specificity": {"pearson": {"mean": spec}}, "road_weight": {"median": road}}


def test_recommend_rule(cm):
    ms = {
        "slow but best": _row(300.0, 9.0, 5.0, 0.5, 0.9),
        "fast, unfaithful": _row(0.5, 0.4, 0.2, 0.1, 0.9),
        "fast, faithful": _row(0.9, 3.0, 2.0, 0.9, 0.3),
        "fast, faithful, 5% behind, more specific": _row(0.6, 2.86, 1.5, 0.6, 0.5),
        "fast, faithful, far behind": _row(0.4, 1.5, 1.1, 0.2, 0.95),
    }
    rec = cm.recommend({"methods": ms})
    assert rec["fast_enough"] == [n for n in ms if n != "slow but best"]
    assert "fast, unfaithful" not in rec["faithful_and_fast"]
    assert sorted(rec["tied_within_10_percent"]) == ["fast, faithful", "fast, faithful, 5% behind, more specific"]
    assert rec["variant"] == "fast, faithful, 5% behind, more specific"  # better on both plausibility ranks
    assert rec["faithfulness"]["fast, faithful"] == pytest.approx(3.0)


def test_script_end_to_end(cm, tmp_path):
    out_json, out_md = tmp_path / "c.json", tmp_path / "c.md"
    cm.main(["--frames-every", "500", "--seeds", "2", "--methods", "visual_backprop,saliency",
             "--out-json", str(out_json), "--out-md", str(out_md), "--save-maps", str(tmp_path / "m.npz")])
    res = json.loads(out_json.read_text())
    assert res["schema"] == "fastviz.method-choice/1"
    assert res["sample"]["frames"] == [0, 500, 1000]
    # the command that reproduces the numbers: output paths and the maps' cache left out
    assert res["command"] == "python scripts/compare_methods.py --frames-every 500 --seeds 2 --methods visual_backprop,saliency"
    assert set(res["methods"]) == {"visual_backprop", "saliency"}
    for e in res["methods"].values():
        d = e["deletion"]["mean"]["random pixels"]
        assert abs(d["curve_rad"][0]) < 1e-6 and d["auc_rad"] > 0  # 0% deleted: the clean prediction (batching rounds)
        assert d["ratio_ci95"][0] <= d["ratio_to_random"] <= d["ratio_ci95"][1]
        assert len(e["per_frame"]["pearson"]) == 3
    assert 0.12 < res["road_share"]["median"] < 0.3
    assert res["recommendation"]["variant"] in res["methods"]
    md = out_md.read_text()
    assert f"**Recommended default: `{res['recommendation']['variant']}`**" in md
    # re-measuring from saved maps gives the same numbers
    again = tmp_path / "d.json"
    cm.main(["--frames-every", "500", "--seeds", "2", "--methods", "visual_backprop,saliency",
             "--out-json", str(again), "--out-md", str(tmp_path / "d.md"), "--load-maps", str(tmp_path / "m.npz")])
    res2 = json.loads(again.read_text())
    assert res2["methods"] == res["methods"]
    with pytest.raises(SystemExit, match="other frames"):
        cm.main(["--frames-every", "700", "--methods", "saliency", "--out-json", str(again),
                 "--out-md", str(tmp_path / "d.md"), "--load-maps", str(tmp_path / "m.npz")])


def test_overlay_default_is_the_measured_recommendation():
    """``fastviz overlay``'s default method is the one the recorded measurement recommends
    (re-run scripts/compare_methods.py and update both together)."""
    import json
    from pathlib import Path

    from fastviz.cli import build_parser
    from fastviz.overlay import DEFAULT_METHOD

    doc = json.loads((Path(__file__).parents[1] / "docs" / "method-choice.json").read_text())
    assert doc["recommendation"]["method"] == DEFAULT_METHOD
    assert doc["recommendation"]["options"] == {}
    assert build_parser().parse_args(["overlay", "-o", "x.mp4"]).method == DEFAULT_METHOD
