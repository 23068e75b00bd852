"""The audit driver and its store: layout, values, resume, refusals, failing sources."""

from __future__ import annotations

import csv
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

import fastviz as fv
from fastviz.audit import metrics as fm
from fastviz.audit.run import _frame_seed
from fastviz.audit.store import AuditStore, describe_difference
from fastviz.errors import InputError, InputFileNotFoundError
from fastviz.tempfiles import OutputError
from fsfaults import full_disk, read_only_folder
from videofiles import write_ffv1

METHODS = ["grad_cam", "visual_backprop"]
SMALL = dict(methods=METHODS, max_frames=10, chunk=4, batch=3, steps=4, sanity_frames=2, progress=False)


@pytest.fixture(scope="module")
def model():
    return fv.models.load()


@pytest.fixture(scope="module")
def log():
    return fv.data.load_drive_log()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, model):
    """One uninterrupted small audit of the bundled log."""
    path = tmp_path_factory.mktemp("ref") / "ref.zarr"
    result = fv.audit(path, model=model, **SMALL)
    return path, result


def arrays(path: Path, skip=("progress/seconds",)) -> dict[str, np.ndarray]:
    g = zarr.open_group(str(path), mode="r")
    out = {}

    def walk(group, prefix):
        for name, arr in group.arrays():
            key = f"{prefix}{name}"
            if key not in skip:
                out[key] = arr[:]
        for name, sub in group.groups():
            walk(sub, f"{prefix}{name}/")

    walk(g, "")
    return out


def assert_same_arrays(a: Path, b: Path) -> None:
    x, y = arrays(a), arrays(b)
    assert sorted(x) == sorted(y)
    for key in x:
        assert x[key].dtype == y[key].dtype, key
        np.testing.assert_array_equal(x[key], y[key], err_msg=key)


# --------------------------------------------------------------------------- layout and values


def test_layout_shapes_dtypes_and_attributes(reference, model):
    path, result = reference
    g = zarr.open_group(str(path), mode="r")
    n, (h, w), s = 10, model.input_size, 4
    expect = {
        "frames/source": ("int32", (n,)), "frames/index": ("int64", (n,)), "frames/time_s": ("float64", (n,)),
        "frames/prediction": ("float32", (n,)), "frames/truth": ("float32", (n,)), "frames/ok": ("bool", (n,)),
        "progress/done": ("bool", (3,)), "progress/seconds": ("float64", (3, len(METHODS) + 1)),
        "metrics/random/deletion_curve": ("float32", (n, s + 1)),
        "metrics/random/insertion_curve": ("float32", (n, s + 1)),
    }
    for m in METHODS:
        expect[f"maps/{m}"] = ("float16", (n, h, w))
        for name in ("deletion_auc", "insertion_auc", "random_deletion_auc", "random_insertion_auc", "entropy"):
            expect[f"metrics/{m}/{name}"] = ("float32", (n,))
        expect[f"metrics/{m}/deletion_curve"] = ("float32", (n, s + 1))
        expect[f"metrics/{m}/insertion_curve"] = ("float32", (n, s + 1))
        expect[f"metrics/{m}/centroid"] = ("float32", (n, 2))
    got = arrays(path, skip=())
    assert sorted(got) == sorted(expect)
    for key, (dtype, shape) in expect.items():
        assert (str(got[key].dtype), got[key].shape) == (dtype, shape), key
        assert g[key].chunks[0] == (1 if key.startswith("progress/") else 4), key
    assert g.metadata.zarr_format == 3
    attrs = g.attrs.asdict()
    assert attrs["fastviz"] == {"format": "fastviz.audit/1", "version": fv.__version__}
    assert attrs["complete"] is True and attrs["completed"] >= attrs["created"]
    assert attrs["model"]["weights_sha256"] == fv.audit.weights_sha256(model)
    assert attrs["model"]["name"] == "PilotNet"
    [source] = attrs["sources"]
    assert source["path"] == str(fv.data.example_log_path())
    assert source["kind"] == "drive_log" and source["frames"] == 10 and source["error"] is None
    assert attrs["spec"]["methods"] == METHODS and attrs["spec"]["chunk"] == 4 and attrs["spec"]["batch"] == 3
    assert set(attrs["sanity"]["methods"]) == set(METHODS)
    assert attrs["sanity"]["frames"] == [0, 9]
    json.dumps(attrs)  # plain JSON throughout (no NaN objects)
    assert result.complete and result.frames == 10 and result.computed == 10
    assert np.asarray(g["progress/done"][:]).all()
    assert np.isfinite(g["progress/seconds"][:]).all() and (g["progress/seconds"][:] >= 0).all()


def test_values_match_the_methods_and_metrics_run_directly(reference, model, log):
    path, _ = reference
    g = zarr.open_group(str(path), mode="r")
    frames = log.frames[:10]
    np.testing.assert_array_equal(g["frames/source"][:], np.zeros(10))
    np.testing.assert_array_equal(g["frames/index"][:], np.arange(10))
    with open(fv.data.example_log_path().with_suffix(".csv")) as f:
        rows = list(csv.DictReader(f))[:10]
    np.testing.assert_array_equal(g["frames/time_s"][:], [float(r["time_s"]) for r in rows])
    np.testing.assert_array_equal(g["frames/truth"][:], log.steering[:10])
    assert g["frames/ok"][:].all()
    # the chunks' batches: frames 0-2, 3 | 4-6, 7 | 8-9 (a chunk splits into batches from its first frame)
    for c0, c1 in ((0, 4), (4, 8), (8, 10)):
        for b0 in range(c0, c1, 3):
            b1 = min(b0 + 3, c1)
            x = model.preprocess(frames[b0:b1])
            ranks = []
            for m in METHODS:
                maps = fv.explain(model, x, method=m, memory_budget=fv.scheduler.parse_budget(None))
                np.testing.assert_array_equal(g[f"maps/{m}"][b0:b1], maps.numpy().astype(np.float16), err_msg=m)
                cen, ent = fm.map_statistics(maps)
                np.testing.assert_array_equal(g[f"metrics/{m}/centroid"][b0:b1], cen.numpy())
                np.testing.assert_array_equal(g[f"metrics/{m}/entropy"][b0:b1], ent.numpy())
                ranks.append(fm.pixel_ranks(maps.abs()))
            ranks.append(fm.random_ranks([_frame_seed(0, i) for i in range(b0, b1)], *model.input_size))
            curves = fm.perturbation_curves(model, x, torch.stack(ranks), steps=4)
            np.testing.assert_allclose(g["frames/prediction"][b0:b1], model(x).detach()[:, 0].numpy(), atol=1e-6)
            for k, m in enumerate(METHODS):
                np.testing.assert_array_equal(g[f"metrics/{m}/deletion_curve"][b0:b1], curves.deletion[k].numpy())
                np.testing.assert_array_equal(g[f"metrics/{m}/insertion_auc"][b0:b1], curves.insertion_auc[k].numpy())
                np.testing.assert_array_equal(g[f"metrics/{m}/deletion_auc"][b0:b1], curves.deletion_auc[k].numpy())
                np.testing.assert_array_equal(g[f"metrics/{m}/random_deletion_auc"][b0:b1], curves.deletion_auc[-1].numpy())
            np.testing.assert_array_equal(g["metrics/random/insertion_curve"][b0:b1], curves.insertion[-1].numpy())


def test_summary_reports_every_method_and_the_sanity_check(reference):
    path, result = reference
    text = result.summary()
    assert "10 frames from 1 source" in text and "complete" in text
    assert "prediction vs recorded truth on 10 frames" in text
    sanity = zarr.open_group(str(path), mode="r").attrs["sanity"]["methods"]
    for m in METHODS:
        line = next(line for line in text.splitlines() if line.startswith(m))
        assert ("pass" if sanity[m]["passed"] else "FAIL") in line
        assert f"{sanity[m]['rank_correlation']:.2g}" in line
    assert sanity["visual_backprop"]["passed"] is False  # 0.88 on the bundled model: it redraws the input


# --------------------------------------------------------------------------- resume


class Stop(Exception):
    pass


def test_resume_after_an_interruption_equals_an_uninterrupted_run(tmp_path, reference, model):
    path = tmp_path / "a.zarr"

    def stop_after_two(chunk, done):
        if chunk == 1:
            raise Stop

    with pytest.raises(Stop):
        fv.audit(path, model=model, on_chunk=stop_after_two, **SMALL)
    g = zarr.open_group(str(path), mode="r")
    assert list(g["progress/done"][:]) == [True, True, False]
    assert g.attrs["complete"] is False and g.attrs["sanity"] is None
    seen = []
    result = fv.audit(path, model=model, on_chunk=lambda c, d: seen.append(c), **SMALL)
    assert seen == [2] and result.computed == 2
    assert_same_arrays(path, reference[0])
    assert zarr.open_group(str(path), mode="r").attrs["sanity"] == zarr.open_group(str(reference[0]), mode="r").attrs["sanity"]
    # complete: a third run computes nothing
    again = fv.audit(path, model=model, on_chunk=lambda c, d: seen.append(c), **SMALL)
    assert again.computed == 0 and seen == [2]


def test_a_chunk_written_but_not_marked_done_is_recomputed(tmp_path, reference, model):
    path = tmp_path / "a.zarr"
    fv.audit(path, model=model, **SMALL)
    g = zarr.open_group(str(path), mode="r+")
    g["progress/done"][1] = False
    g["maps/grad_cam"][4:8] = np.zeros((4, *model.input_size), dtype=np.float16)  # a torn write
    g.attrs.update(complete=False)
    (path / "maps" / "grad_cam" / "c" / "0" / "0" / "0.0123456789abcdef0123456789abcdef.partial").write_bytes(b"torn")
    seen = []
    fv.audit(path, model=model, on_chunk=lambda c, d: seen.append(c), **SMALL)
    assert seen == [1]
    assert not list(path.rglob("*.partial"))
    assert_same_arrays(path, reference[0])


@pytest.mark.parametrize(
    "change, words",
    [
        (dict(methods=["grad_cam"]), "methods differ"),
        (dict(steps=8), "metric settings differ: steps was 4, now 8"),
        (dict(chunk=5), "frames per chunk differ"),
        (dict(batch=2), "batch differ"),
        (dict(max_frames=11), "frame count differ"),
        (dict(memory_budget="64MiB"), "memory budget differ"),
        (dict(options={"grad_cam": {"layer": "features.7"}}), "method options differ: grad_cam"),
    ],
)
def test_a_store_started_with_other_settings_is_refused(tmp_path, model, change, words):
    path = tmp_path / "a.zarr"
    fv.audit(path, model=model, **{**SMALL, "sanity_frames": 0})
    before = arrays(path)
    with pytest.raises(InputError, match="started with other settings") as info:
        fv.audit(path, model=model, **{**SMALL, "sanity_frames": 0, **change})
    assert words in str(info.value) and "--overwrite" in str(info.value)
    after = arrays(path)
    assert all(np.array_equal(before[k], after[k], equal_nan=True) for k in before)


def test_other_weights_or_changed_inputs_are_refused(tmp_path, model, log):
    video = write_ffv1(tmp_path / "clip.mkv", log.frames[:6])
    path = tmp_path / "a.zarr"
    fv.audit(path, video, model=model, **{**SMALL, "sanity_frames": 0})
    other = fv.models.load()
    with torch.no_grad():
        other.regressor[-1].bias += 1.0
    with pytest.raises(InputError, match="model differ: weights_sha256"):
        fv.audit(path, video, model=other, **{**SMALL, "sanity_frames": 0})
    write_ffv1(video, log.frames[1:7])
    with pytest.raises(InputError, match=r"input .*clip.mkv changed since the store was started"):
        fv.audit(path, video, model=model, **{**SMALL, "sanity_frames": 0})
    result = fv.audit(path, video, model=model, overwrite=True, **{**SMALL, "sanity_frames": 0})
    assert result.computed == 6
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the old store is gone


def test_describe_difference_names_the_first_difference():
    a = {"methods": ["x"], "metrics": {"steps": 4, "baseline": "blur"}}
    assert describe_difference(a, a) is None
    assert describe_difference(a, {**a, "metrics": {"steps": 4, "baseline": "mean"}}) == (
        "metric settings differ: baseline was blur, now mean")


# --------------------------------------------------------------------------- refusals


def test_paths_that_are_not_stores_are_never_touched(tmp_path, model):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(InputError, match="is not a fastviz audit store"):
            fv.audit(folder, model=model, overwrite=overwrite, **SMALL)
    assert (folder / "keep.txt").read_text() == "mine"
    file = tmp_path / "a.zarr"
    file.write_text("x")
    with pytest.raises(InputError, match="is a file"):
        fv.audit(file, model=model, **SMALL)
    with pytest.raises(InputError, match="does not exist"):
        fv.audit(tmp_path / "no" / "a.zarr", model=model, **SMALL)
    empty = tmp_path / "empty.zarr"
    empty.mkdir()
    assert fv.audit(empty, model=model, **{**SMALL, "sanity_frames": 0}).computed == 10


def test_bad_arguments_are_named(tmp_path, model):
    path = tmp_path / "a.zarr"
    with pytest.raises(InputError, match="unknown method 'nope'"):
        fv.audit(path, model=model, methods=["nope"])
    with pytest.raises(InputError, match="takes no option 'windows'"):
        fv.audit(path, model=model, methods=["grad_cam"], options={"grad_cam": {"windows": (8,)}})
    with pytest.raises(InputError, match="not audited"):
        fv.audit(path, model=model, methods=["grad_cam"], options={"occlusion": {}})
    with pytest.raises(InputError, match="chunk must be"):
        fv.audit(path, model=model, chunk=0)
    with pytest.raises(InputError, match="training mode"):
        fv.audit(path, model=fv.models.load().train())
    with pytest.raises(InputFileNotFoundError, match="input not found"):
        fv.audit(path, tmp_path / "missing.mkv", model=model)
    # methods are tried on the first frame before a store is made for them
    with pytest.raises(InputError, match="CAM needs conv -> global average pool -> linear"):
        fv.audit(path, model=model, methods=["cam"])
    with pytest.raises(InputError, match=r"grad_cam gives maps of shape \(5, 22\), not the model's input size"):
        fv.audit(path, model=model, methods=["grad_cam"], options={"grad_cam": {"upsample": False}})
    with pytest.raises(fv.errors.UnknownNameError):
        fv.audit(path, model=model, methods=["grad_cam"], options={"grad_cam": {"layer": "features.99"}})
    assert not path.exists()


def test_one_writer_at_a_time(reference):
    with AuditStore(reference[0], zarr.open_group(str(reference[0]), mode="r")) as first:
        with pytest.raises(InputError, match="being written by another process"):
            with AuditStore(first.path, first.group):
                pass


# --------------------------------------------------------------------------- inputs


def test_list_files_image_folders_and_a_corrupt_source(tmp_path, model, log):
    write_ffv1(tmp_path / "good.mkv", log.frames[20:25])
    broken = tmp_path / "broken.mkv"
    data = write_ffv1(tmp_path / "whole.mkv", log.frames[:40]).read_bytes()
    broken.write_bytes(data[: len(data) // 2])  # truncated
    images = tmp_path / "images"
    images.mkdir()
    import cv2

    for i in range(3):
        cv2.imwrite(str(images / f"f{i}.png"), log.frames[30 + i][..., ::-1])
    listing = tmp_path / "inputs.txt"
    listing.write_text("# a comment\n\ngood.mkv\nbroken.mkv\n" + str(images) + "\n")
    path = tmp_path / "a.zarr"
    with pytest.warns(UserWarning, match="broken.mkv is skipped"):
        result = fv.audit(path, listing, model=model, **{**SMALL, "max_frames": None, "sanity_frames": 0})
    assert result.frames == 8 and result.failed[0]["path"].endswith("broken.mkv")
    g = zarr.open_group(str(path), mode="r")
    sources = g.attrs["sources"]
    assert [s["kind"] for s in sources] == ["video", "video", "images"]
    assert [s["frames"] for s in sources] == [5, 0, 3]
    assert "truncated" in sources[1]["error"] or "damaged" in sources[1]["error"]
    np.testing.assert_array_equal(g["frames/source"][:], [0] * 5 + [2] * 3)
    np.testing.assert_array_equal(g["frames/index"][:], [0, 1, 2, 3, 4, 0, 1, 2])
    assert np.isnan(g["frames/truth"][:]).all()
    np.testing.assert_allclose(g["frames/time_s"][:], [0, 0.04, 0.08, 0.12, 0.16, 0, 0.04, 0.08])
    x = model.preprocess(np.concatenate([log.frames[20:25], log.frames[30:33]]))
    maps = fv.explain(model, x[5:8], method="grad_cam", memory_budget=fv.scheduler.parse_budget(None))
    np.testing.assert_array_equal(g["maps/grad_cam"][5:8], maps.numpy().astype(np.float16))


def test_a_source_that_fails_part_way_keeps_the_rest(tmp_path, model, log):
    import cv2

    images = tmp_path / "images"
    images.mkdir()
    for i in range(5):
        frame = log.frames[i] if i != 3 else np.zeros((50, 60, 3), np.uint8)  # another size: fails at frame 3
        cv2.imwrite(str(images / f"f{i}.png"), frame[..., ::-1])
    video = write_ffv1(tmp_path / "after.mkv", log.frames[40:43])
    path = tmp_path / "a.zarr"
    settings = {**SMALL, "max_frames": None, "sanity_frames": 1}
    with pytest.warns(UserWarning, match="failed at frame 3"):
        fv.audit(path, [images, video], model=model, **settings)
    g = zarr.open_group(str(path), mode="r")
    np.testing.assert_array_equal(g["frames/ok"][:], [1, 1, 1, 0, 0, 1, 1, 1])
    assert np.isnan(g["maps/grad_cam"][3:5]).all() and np.isnan(g["frames/prediction"][3:5]).all()
    assert np.isfinite(g["maps/grad_cam"][5:]).all()
    failed = g.attrs["sources"][0]
    assert failed["frames_read"] == 3 and "size" in failed["error"]
    # resumed from the second chunk, the failure recorded in the store is kept and the result is equal
    before = arrays(path)
    g2 = zarr.open_group(str(path), mode="r+")
    g2["progress/done"][1] = False
    g2.attrs.update(complete=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the failure is not met again: its frames are done
        fv.audit(path, [images, video], model=model, **settings)
    after = arrays(path)
    for k in before:
        np.testing.assert_array_equal(before[k], after[k], err_msg=k)


# --------------------------------------------------------------------------- faults


def test_full_disk_is_an_error(tmp_path, model):
    with full_disk(tmp_path / "small", size="200k") as folder:
        with pytest.raises(OutputError, match="cannot write audit store"):
            fv.audit(folder / "a.zarr", model=model, **{**SMALL, "max_frames": 40, "sanity_frames": 0})


def test_read_only_folder_is_an_error(tmp_path, model):
    with read_only_folder(tmp_path / "ro") as folder:
        with pytest.raises(OutputError):
            fv.audit(folder / "a.zarr", model=model, **SMALL)
        assert not os.listdir(folder)


# --------------------------------------------------------------------------- stores at a URL (fsspec)


def test_a_store_at_a_url_equals_one_at_a_path(tmp_path, reference, model):
    """``file://`` goes through fsspec and Zarr's FsspecStore, as ``s3://`` would: the same
    arrays, resumable, readable by open_store and summary, refused when it is something else."""
    from fastviz.audit.store import is_store, open_store

    url = (tmp_path / "u.zarr").as_uri()

    class Stop(Exception):
        pass

    def stop_after_one(chunk, done):
        raise Stop

    with pytest.raises(Stop):
        fv.audit(url, model=model, on_chunk=stop_after_one, **SMALL)
    assert is_store(url) and not open_store(url).attrs["complete"]
    result = fv.audit(url, model=model, **SMALL)  # resumed
    assert result.computed == SMALL["max_frames"] - SMALL["chunk"]
    ref, got = arrays(reference[0]), arrays(tmp_path / "u.zarr")
    assert sorted(ref) == sorted(got)
    for name in ref:
        np.testing.assert_array_equal(ref[name], got[name], err_msg=name)
    assert "10 frames from 1 source" in fv.audit.summary(url)
    with pytest.raises(InputError, match="started with other settings: metric settings differ"):
        fv.audit(url, model=model, **{**SMALL, "steps": 5})  # other settings: refused, named
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("not a store")
    with pytest.raises(InputError, match="not a fastviz audit store"):
        fv.audit((tmp_path / "other").as_uri(), model=model, **SMALL)
    with pytest.raises(InputFileNotFoundError):
        open_store((tmp_path / "missing.zarr").as_uri())


def test_creating_a_store_never_replaces_its_temporary_folder(tmp_path, monkeypatch):
    """The store is built in a temporary folder whose identity the commit checks; zarr's mode "w"
    would clear it by removing the folder (LocalStore.delete_dir) and making a new one (a new inode, unless the file
    system happens to reuse the number), and the commit would refuse it as replaced."""
    import zarr.storage._local as zarr_local

    def rmtree(path, *args, **kwargs):
        raise AssertionError(f"zarr removed the store's folder {path}")

    # what zarr's mode "w" calls (LocalStore.delete_dir); zarr_local.shutil is the shutil module,
    # so this patches shutil.rmtree everywhere for the test, which creating a new store never uses
    monkeypatch.setattr(zarr_local.shutil, "rmtree", rmtree)
    AuditStore.create(tmp_path / "t.zarr", spec={}, sources=[], frames=6, size=(2, 2), methods=["m"], steps=1,
                      chunk=3, model={"name": "t"})
    assert zarr.open_group(str(tmp_path / "t.zarr"), mode="r")["progress/done"].shape == (2,)
    assert [p.name for p in tmp_path.iterdir()] == ["t.zarr"]  # no temporary left beside it
