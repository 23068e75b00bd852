"""The audit report (fastviz/audit/report.py): its aggregates against plain computations, the page's
content against the store, frames read again from the sources (and what happens when they are gone
or changed), incomplete stores, bad input and a full disk, and the page in headless Chromium."""

from __future__ import annotations

import base64
import math
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import zarr

import fastviz as fv
from fastviz import cli
from fastviz.audit import metrics as fm
from fastviz.audit import report as fr
from fastviz.errors import InputError, InputFileNotFoundError
from fastviz.tempfiles import OutputError
from fsfaults import full_disk

METHODS = ("grad_cam", "visual_backprop")
SMALL = dict(methods=METHODS, max_frames=36, chunk=12, batch=12, steps=4, sanity_frames=2, progress=False)
QUICK = dict(worst=3, sample=2, analysis=24)
SECTIONS = ("summary", "prediction", "looks", "worst", "sample", "strategies", "scenes", "faithfulness", "sanity", "cost")


@pytest.fixture(scope="module")
def model():
    return fv.models.load()


@pytest.fixture(scope="module")
def log_copy(tmp_path_factory):
    """The bundled drive log copied to a folder of its own (tests may remove or change it)."""
    folder = tmp_path_factory.mktemp("log")
    src = Path(fv.data.__file__).parent / "carracing_heldout.mkv"
    shutil.copy(src, folder / "drive.mkv")
    shutil.copy(src.with_suffix(".csv"), folder / "drive.csv")
    return folder / "drive.mkv"


@pytest.fixture(scope="module")
def store(tmp_path_factory, model, log_copy):
    path = tmp_path_factory.mktemp("store") / "a.zarr"
    fv.audit(path, [log_copy], model=model, **SMALL)
    return path


@pytest.fixture(scope="module")
def page(tmp_path_factory, store):
    out = tmp_path_factory.mktemp("page") / "report.html"
    result = fr.write_report(store, out, **QUICK)
    return out, result, out.read_text(encoding="utf-8")


def section(html: str, name: str) -> str:
    m = re.search(rf'<section id="{name}">(.*?)</section>', html, re.S)
    assert m is not None, f"no section {name}"
    return m.group(1)


def images(html: str) -> list[str]:
    return re.findall(r'<img[^>]*\ssrc="([^"]*)"', html)


# --------------------------------------------------------------------------- aggregates by hand


def test_unit_max_by_hand():
    maps = np.array([[[2.0, -4.0]], [[0.0, 0.0]], [[-1.0, 0.5]]], dtype=np.float32)
    np.testing.assert_array_equal(fr.unit_max(maps), [[[0.5, 1.0]], [[0.0, 0.0]], [[1.0, 0.5]]])


def test_steering_classes_by_hand():
    deg = np.array([-10.0, -5.0, -4.9, 0.0, 5.0, 5.1, np.nan])
    np.testing.assert_array_equal(fr.steering_classes(np.radians(deg), bend_deg=5.0), [0, 1, 1, 1, 1, 2, -1])


def test_fit_r2_by_hand():
    # errors (0, 0, 0, 1): MSE 0.25; var(truth) = 1.25 -> R² = 0.8; RMSE 0.5; NaN rows ignored
    r2, rmse, k = fm.fit_r2(np.array([0.0, 1.0, 2.0, 4.0, np.nan]), np.array([0.0, 1.0, 2.0, 3.0, 7.0]))
    assert k == 4 and r2 == pytest.approx(0.8) and rmse == pytest.approx(0.5)
    assert math.isnan(fm.fit_r2(np.array([1.0, 2.0]), np.array([3.0, 3.0]))[0])  # constant truth


def test_mean_maps_equal_a_plain_mean_chunk_by_chunk():
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(11, 3, 4)).astype(np.float32)
    maps[4] = 0.0  # an all-zero map counts as zeros
    use = np.ones(11, bool)
    use[[1, 7]] = False
    classes = np.array([0, 1, 2, 1, 1, 0, -1, 2, 2, 1, 0], np.int8)
    mean, class_means, counts, kept = fr.mean_maps(maps, use, classes, chunk=3, keep=np.array([1, 5, 10]))
    with np.errstate(invalid="ignore"):
        u = np.abs(maps) / np.abs(maps).reshape(11, -1).max(1)[:, None, None]
    u[4] = 0.0
    np.testing.assert_allclose(mean, u[use].mean(0), rtol=1e-6)
    for k in range(3):
        sel = use & (classes == k)
        np.testing.assert_allclose(class_means[k], u[sel].mean(0), rtol=1e-6)
    assert counts.tolist() == [9, 3, 3, 2]
    assert sorted(kept) == [1, 5, 10] and all(np.array_equal(kept[i], maps[i]) for i in kept)


def test_mean_maps_of_an_empty_class_are_zero():
    maps = np.ones((4, 2, 2), np.float32)
    mean, class_means, counts, _ = fr.mean_maps(maps, np.ones(4, bool), np.ones(4, np.int8), chunk=2)
    assert counts.tolist() == [4, 0, 4, 0]
    assert not class_means[0].any() and not class_means[2].any() and np.all(class_means[1] == 1.0)


def test_strategies_leave_zero_maps_out_and_find_planted_ones():
    """Three planted strategies (a blob left, centre or right) and four maps that are zero
    everywhere: the zero maps are counted apart, the rest fall into three clusters of twelve
    (more than the graph's ten neighbours, so a strategy's maps are each other's neighbours)."""
    rng = np.random.default_rng(1)
    maps = {}
    for i in range(36):
        m = np.zeros((16, 48), np.float32)
        x = 6 + 18 * (i % 3)
        m[4:12, x:x + 6] = 1.0 + rng.random((8, 6))
        maps[i] = m
    for i in range(36, 40):
        maps[i] = np.zeros((16, 48), np.float32)
    rows = np.arange(40)
    error = rng.normal(size=40)
    pics = fr._Pictures((0.0, 1.0, 0.0, 1.0), (16, 48))
    (entry,) = fr._strategies(["m"], rows, {"m": maps}, error, {}, pics, {"m": False}, 0, False)
    assert entry["zero"] == 4 and entry["maps"] == 36 and entry["k"] == 3 and not entry["at_cap"]
    assert sorted(c["size"] for c in entry["clusters"]) == [12, 12, 12]
    for c in entry["clusters"]:
        strategy = {f % 3 for f in c["example_frames"]}
        assert len(strategy) == 1  # each cluster's examples share one strategy
        members = [f for f in range(36) if f % 3 in strategy]
        assert c["error"] == fr._fmt(float(np.mean(np.abs(error[members]))), 3)


# --------------------------------------------------------------------------- the page against the store


def test_every_section_is_there_and_every_picture_is_an_embedded_png(page):
    _, result, html = page
    for name in SECTIONS:
        section(html, name)
    srcs = images(html)
    assert len(srcs) == result.images > 0
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        img = cv2.imdecode(np.frombuffer(base64.b64decode(src.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
        assert img is not None and img.size > 0
    # nothing refers to another address: no http(s), protocol-relative or file URL in any attribute
    assert not re.search(r'(?:src|href|action|srcset)="(?!data:|#)', html)
    assert "Content-Security-Policy" in html and result.notes == []


def test_summary_and_prediction_agree_with_the_store(page, store):
    _, result, html = page
    g = zarr.open_group(str(store), mode="r")
    pred = g["frames/prediction"][:].astype(np.float64)
    truth = g["frames/truth"][:].astype(np.float64)
    r2, rmse, k = fm.fit_r2(pred, truth)
    assert result.frames == k == SMALL["max_frames"]
    assert f'<b id="r2">{r2:.3g}</b>' in html
    assert f'<b id="rmse">{math.degrees(rmse):.2f}°</b>' in html
    # the audit records the crop the model sees, with which maps go back onto frames
    assert g.attrs["model"]["crop"] == list(fv.models.load().transform.crop)
    summary = section(html, "summary")
    assert g.attrs["model"]["weights_sha256"] in summary and "grad_cam, visual_backprop" in summary


def test_worst_frames_are_the_largest_errors_in_order(page, store):
    _, _, html = page
    g = zarr.open_group(str(store), mode="r")
    err = np.abs(g["frames/prediction"][:].astype(np.float64) - g["frames/truth"][:].astype(np.float64))
    shown = [int(x) for x in re.findall(r'<div class="meta">frame (\d+) ', section(html, "worst"))]
    assert shown == np.argsort(-err, kind="stable")[: QUICK["worst"]].tolist()
    # each shown frame: the frame, then one overlay per method
    assert len(images(section(html, "worst"))) == QUICK["worst"] * (1 + len(METHODS))
    assert len(re.findall(r'<div class="meta">', section(html, "sample"))) == QUICK["sample"]


def test_strategies_and_scene_groups_cover_the_analysis_sample(page):
    _, _, html = page
    spray = section(html, "strategies")
    for m in METHODS:
        k = int(re.search(rf"<h3>{m}: (\d+) cluster", spray).group(1))
        assert 1 <= k <= 8
    sizes = [int(s) for s in re.findall(r'<tr class="cluster"><td>\d+</td><td>(\d+)</td>', spray)]
    clustered = [int(s) for s in re.findall(r"<p>(\d+) maps clustered", spray)]
    zero = [int(s) for s in re.findall(r"(\d+) maps that are zero everywhere left out", spray)]
    assert len(clustered) == len(METHODS) and sum(sizes) == sum(clustered)
    assert sum(clustered) + sum(zero) == len(METHODS) * QUICK["analysis"]
    scenes = section(html, "scenes")
    groups = [int(s) for s in re.findall(r'<tr class="group"><td>\d+</td><td>(\d+)</td>', scenes)]
    assert sum(groups) == QUICK["analysis"] and 2 <= len(groups) <= 6


def test_faithfulness_sanity_and_cost_tables_match_the_store(page, store):
    _, _, html = page
    g = zarr.open_group(str(store), mode="r")
    faith = section(html, "faithfulness")
    for m in METHODS:
        d = g[f"metrics/{m}/deletion_auc"][:].astype(np.float64)
        rd = g[f"metrics/{m}/random_deletion_auc"][:].astype(np.float64)
        row = re.search(rf"<tr><td>{m}</td><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td>", faith)
        assert row.group(1) == f"{d.mean():.3g}" and row.group(2) == f"{rd.mean():.3g}"
        assert row.group(3) == f"{100 * np.mean(d > rd):.0f}%"
    sanity = section(html, "sanity")
    for m in METHODS:
        s = g.attrs["sanity"]["methods"][m]
        verdict = "pass" if s["passed"] else "FAIL"
        assert re.search(rf"<tr><td>{m}</td><td>{s['rank_correlation']:.2g}</td>.*?>{verdict}</td>", sanity, re.S)
    seconds = g["progress/seconds"][:]
    cost = section(html, "cost")
    ms = 1e3 * seconds[:, 0].sum() / SMALL["max_frames"]
    assert f"<tr><td>grad_cam</td><td>{fr._fmt(ms, 3)}</td>" in cost


def test_the_same_seed_gives_the_same_page(tmp_path, store, page):
    _, _, html = page
    again = fr.write_report(store, tmp_path / "again.html", **QUICK)
    strip = lambda s: re.sub(r"generated [^<]*by fastviz", "", s)  # noqa: E731
    assert strip(again.path.read_text(encoding="utf-8")) == strip(html)


def test_the_page_size_is_bounded_by_the_pictures_not_the_frames(tmp_path, store):
    """Twice the analysis sample adds no picture of its own: only the shown frames, the clusters'
    and groups' examples are pictures."""
    few = fr.write_report(store, tmp_path / "few.html", worst=1, sample=1, analysis=12, scenes="none", strategies=False)
    more = fr.write_report(store, tmp_path / "more.html", worst=1, sample=1, analysis=36, scenes="none", strategies=False)
    assert few.images == more.images
    html = more.path.read_text(encoding="utf-8")
    g = zarr.open_group(str(store), mode="r")
    classes = fr.steering_classes(g["frames/truth"][:])
    panels = 1 + len(np.unique(classes[classes >= 0]))  # all frames, then each class that has frames
    plots = 3  # over time, error histogram, deletion/insertion curves
    assert more.images == 2 * (1 + len(METHODS)) + len(METHODS) * panels + plots
    assert len(images(section(html, "looks"))) == len(METHODS) * panels


# --------------------------------------------------------------------------- sources gone or changed, incomplete stores


def audit_of_a_copy(folder: Path, model, log_copy) -> Path:
    """A 12-frame audit of a copy of the drive log in ``folder`` (which the test may then change)."""
    folder.mkdir()
    shutil.copy(log_copy, folder / "drive.mkv")
    shutil.copy(log_copy.with_suffix(".csv"), folder / "drive.csv")
    path = folder.with_suffix(".zarr")
    fv.audit(path, [folder / "drive.mkv"], model=model, **{**SMALL, "max_frames": 12})
    return path


def test_a_removed_source_draws_maps_alone_and_says_so(tmp_path, model, log_copy):
    path = audit_of_a_copy(tmp_path / "gone", model, log_copy)
    (tmp_path / "gone" / "drive.mkv").unlink()
    result = fr.write_report(path, tmp_path / "r.html", worst=2, sample=1, analysis=12)
    html = result.path.read_text(encoding="utf-8")
    assert any("is not there any more" in n for n in result.notes)
    assert "is not there any more" in html and "Not computed: the frames could not be read again" in html
    assert len(images(section(html, "worst"))) == 2 * (1 + len(METHODS))  # maps on grey still shown


def test_a_changed_source_is_not_used(tmp_path, model, log_copy):
    path = audit_of_a_copy(tmp_path / "changed", model, log_copy)
    with open(tmp_path / "changed" / "drive.csv", "a") as f:
        f.write("\n")
    result = fr.write_report(path, tmp_path / "r.html", worst=1, sample=1, analysis=12, scenes="none")
    assert any("changed since the audit" in n for n in result.notes)


class Stop(Exception):
    pass


def test_an_incomplete_store_gives_a_report_of_the_chunks_done(tmp_path, model, log_copy):
    path = tmp_path / "part.zarr"

    def stop(chunk, done):
        if chunk == 0:
            raise Stop

    with pytest.raises(Stop):
        fv.audit(path, [log_copy], model=model, on_chunk=stop, **SMALL)
    result = fr.write_report(path, tmp_path / "r.html", worst=2, sample=2, analysis=12, scenes="none")
    html = result.path.read_text(encoding="utf-8")
    assert result.frames == SMALL["chunk"]
    assert 'id="incomplete"' in html and "1 of 3 chunks are done" in html
    shown = [int(x) for x in re.findall(r'<div class="meta">frame (\d+) ', html)]
    assert shown and max(shown) < SMALL["chunk"]


class TinyClassifier(torch.nn.Module):
    """Three classes from 24 x 32 RGB; ``preprocess`` resizes frames to that and scales to [0, 1]."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(),
                                            torch.nn.Conv2d(6, 8, 3, padding=1), torch.nn.ReLU())
        self.head = torch.nn.Linear(8, 3)
        self.eval()

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))

    def preprocess(self, frames):
        x = torch.from_numpy(np.stack([cv2.resize(f, (32, 24), interpolation=cv2.INTER_AREA) for f in frames]))
        return x.permute(0, 3, 1, 2).float() / 255.0


def test_a_classifier_audit_without_truth_gets_a_report(tmp_path):
    """No steering and no recorded output: no R², no worst frames, one mean map per method (no
    left/straight/right), maps over whole frames (the model takes the whole frame)."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(12):
        img = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
        img[:, : 4 + i] = 255 - img[:, : 4 + i]
        cv2.imwrite(str(folder / f"im{i:02d}.png"), img)
    path = tmp_path / "cls.zarr"
    fv.audit(path, [folder], model=TinyClassifier(), methods=["grad_cam", "saliency"], chunk=4, batch=4, steps=2,
             sanity_frames=2, progress=False)
    g = zarr.open_group(str(path), mode="r")
    assert g.attrs["model"]["crop"] == [0.0, 1.0, 0.0, 1.0] and g.attrs["model"]["output_units"] is None
    result = fr.write_report(path, tmp_path / "r.html", worst=3, sample=3, analysis=12)
    html = result.path.read_text(encoding="utf-8")
    assert result.frames == 12 and result.notes == []
    assert 'id="r2"' not in html and "nothing to compare the predictions with" in html
    assert "No recorded output to rank the frames by error." in html
    assert len(images(section(html, "looks"))) == 2  # one mean map per method
    assert len(re.findall(r'<div class="meta">', section(html, "sample"))) == 3
    assert "output units" in section(html, "summary")


# --------------------------------------------------------------------------- bad input, the command line, a full disk


def test_bad_arguments_are_named(tmp_path, store):
    with pytest.raises(InputError, match="name it .html"):
        fr.write_report(store, tmp_path / "r.pdf")
    with pytest.raises(InputError, match="does not exist"):
        fr.write_report(store, tmp_path / "nope" / "r.html")
    with pytest.raises(InputError, match="scenes must be one of"):
        fr.write_report(store, tmp_path / "r.html", scenes="sift")
    with pytest.raises(InputError, match="worst must be"):
        fr.write_report(store, tmp_path / "r.html", worst=-1)
    with pytest.raises(InputFileNotFoundError):
        fr.write_report(tmp_path / "none.zarr", tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


def test_cli_report_and_audit_report(tmp_path, store, capsys, log_copy):
    out = tmp_path / "cli.html"
    assert cli.main(["report", str(store), "-o", str(out), "-q", "--worst", "1", "--sample", "1",
                     "--analysis", "12", "--scenes", "bow"]) == 0
    assert "report of 36 frames" in capsys.readouterr().out
    assert "bags of visual words" in out.read_text(encoding="utf-8")
    # a bad report name fails before the audit starts: no store is created
    assert cli.main(["audit", str(log_copy), "-o", str(tmp_path / "s.zarr"), "--report", str(tmp_path / "r.txt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "name it .html" in err and not (tmp_path / "s.zarr").exists()
    # the audit, then its report
    assert cli.main(["audit", str(log_copy), "-o", str(tmp_path / "s.zarr"), "-q", "--methods", "grad_cam",
                     "--max-frames", "8", "--chunk", "8", "--sanity-frames", "0", "--steps", "2",
                     "--report", str(tmp_path / "s.html"), "--analysis", "8", "--scenes", "none"]) == 0
    assert (tmp_path / "s.html").read_text(encoding="utf-8").count('<section id="') == len(SECTIONS)


def test_a_full_disk_is_an_error_and_leaves_nothing(tmp_path, store):
    with full_disk(tmp_path / "small", size="64k") as folder:
        with pytest.raises(OutputError):
            fr.write_report(store, folder / "r.html", **QUICK)
        assert list(folder.iterdir()) == []


# --------------------------------------------------------------------------- in a real browser

#: Every picture decoded by the browser: [naturalWidth, naturalHeight, mean R, G, B] or the error.
DECODED = """() => Promise.all(Array.from(document.images).map(img => img.decode().then(() => {
  const c = document.createElement('canvas');
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const g = c.getContext('2d');
  g.drawImage(img, 0, 0);
  const d = g.getImageData(0, 0, c.width, c.height).data;
  const s = [0, 0, 0];
  for (let i = 0; i < d.length; i += 4) { s[0] += d[i]; s[1] += d[i + 1]; s[2] += d[i + 2]; }
  return [img.naturalWidth, img.naturalHeight, ...s.map(x => x / (d.length / 4))];
}, e => String(e))))"""


def test_the_report_renders_in_chromium_without_a_network(page, tmp_path):
    from test_browser import CHROMIUM, CHROMIUM_ARGS, _browser

    sync_playwright = _browser()
    path, result, html = page
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            context.on("request", lambda r: requests.append(r.url))
            tab = context.new_page()
            tab.goto(path.as_uri(), wait_until="load")
            for name in SECTIONS:
                box = tab.evaluate(f"() => document.getElementById('{name}')?.getBoundingClientRect().height ?? -1")
                assert box > 0, f"section {name} missing or empty in the browser"
            decoded = tab.evaluate(DECODED)
            assert len(decoded) == result.images
            # the browser's decoding of each picture agrees with OpenCV's
            for got, src in zip(decoded, images(html)):
                assert isinstance(got, list), got
                img = cv2.cvtColor(cv2.imdecode(np.frombuffer(base64.b64decode(src.split(",", 1)[1]), np.uint8),
                                                cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
                assert got[:2] == [img.shape[1], img.shape[0]]
                np.testing.assert_allclose(got[2:], img.reshape(-1, 3).mean(0), atol=1.0)
            shot = tmp_path / "report.png"
            tab.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    # the page itself, and nothing else: no request to any other address (data: pictures are not fetched)
    assert [u for u in requests if not u.startswith("data:")] == [path.as_uri()]
    picture = cv2.imread(str(shot))
    assert picture is not None and picture.shape[1] == 1280 and picture.shape[0] > 2000
