"""``fastviz bench`` and :func:`fastviz.bench` (module :mod:`fastviz.costs`): the record fields and their arithmetic,
forward calls and model evaluations against hand-counted windows, the progress bar, the JSON / CSV / PNG files,
skipped methods, user models from an import path with weights-only loading (never from the current folder),
and bad arguments (API and CLI)."""

from __future__ import annotations

import csv
import importlib
import json
import math
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import fastviz
from fastviz import costs as fb
from fastviz import cli
from fastviz.errors import InputError, InputFileNotFoundError, UnknownNameError
from fastviz.methods.perturbation import window_grids
from fastviz.scheduler import Plan

from conftest import materialise, small_convnet

#: Occlusion options that keep PilotNet's occlusion cheap.
FAST_OCCLUSION = {"windows": (16, 32), "stride": 16}
#: Its windows on 66x200, counted by hand: 16 px at stride 16 -> tops 0,16,32,48 + 50 flush (5) x lefts 0..176
#: + 184 flush (13) = 65; 32 px -> tops 0,16,32 + 34 flush (4) x lefts 0..160 + 168 flush (12) = 48.
FAST_OCCLUSION_WINDOWS = 65 + 48


@pytest.fixture(scope="module")
def pilotnet():
    model, size = fb.load_model("pilotnet")
    assert size == (66, 200)
    return model


@pytest.fixture(scope="module")
def records(pilotnet):
    return fb.bench(pilotnet, (66, 200), frames=3, batch=2, repeats=3, warmup=1, progress=False,
                    method_options={"occlusion": dict(FAST_OCCLUSION, chunk_size=7)})


def by_method(records) -> dict:
    return {r.method: r for r in records}


# --------------------------------------------------------------------------- records


def test_one_record_per_registered_method(records):
    assert [r.method for r in records] == fastviz.methods()


def test_record_fields_and_arithmetic(records):
    for r in records:
        assert r.device == "cpu" and r.batch == 2 and r.frames == 3
        if r.skipped is not None:
            continue
        assert r.ms_per_frame > 0
        assert r.ms_per_frame_p10 <= r.ms_per_frame <= r.ms_per_frame_p90
        assert r.frames_per_s == pytest.approx(1000.0 / r.ms_per_frame)
        assert r.forward_calls_per_frame > 0 and r.model_evaluations_per_frame >= r.forward_calls_per_frame
        assert r.peak_memory_bytes is None or (isinstance(r.peak_memory_bytes, int) and r.peak_memory_bytes >= 0)
        assert set(r.as_dict()) == {f for f in fb.CSV_COLUMNS if f not in ("cpu", "gpu", "torch", "numba")}


def test_cam_on_pilotnet_is_skipped_with_the_reason(records):
    cam = by_method(records)["cam"]
    assert cam.skipped and "global average pool" in cam.skipped
    assert cam.ms_per_frame is None and cam.frames_per_s is None
    assert cam.forward_calls_per_frame is None and cam.model_evaluations_per_frame is None


def test_occlusion_calls_and_evaluations_equal_the_window_plan(records):
    n = FAST_OCCLUSION_WINDOWS
    assert n == sum(len(g) for g in window_grids(66, 200, FAST_OCCLUSION["windows"], FAST_OCCLUSION["stride"]))
    r = by_method(records)["occlusion"]
    # batches of 2 and 1 frames: per batch one clean call (all its frames) + ceil(windows x frames / chunk)
    assert r.forward_calls_per_frame == pytest.approx(sum(1 + math.ceil(n * b / 7) for b in (2, 1)) / 3)
    # every frame: its windows and its clean row
    assert r.model_evaluations_per_frame == n + 1


def test_one_pass_per_batch_methods(records):
    recs = by_method(records)
    for name in ("visual_backprop", "saliency", "grad_cam", "guided_backprop", "hypercolumns"):
        assert recs[name].forward_calls_per_frame == pytest.approx(2 / 3), name  # batches of 2 and 1 frames
        assert recs[name].model_evaluations_per_frame == 1, name


@pytest.mark.parametrize("incremental,calls", [(False, 14), (True, 15)])
def test_occlusion_counts_on_a_tiny_input_by_hand(incremental, calls):
    """10x12 frames, windows 4 and 6 at stride 4: 4 px -> tops 0,4 + 6 flush x lefts 0,4,8 = 9 windows;
    6 px -> tops 0,4 x lefts 0,4 + 6 flush = 6 windows; 15 windows + the clean row = 16 rows per frame.
    3 frames in batches of 2 and 1, 4 rows per call. Full passes chunk all windows of a batch
    together: (1 + ceil(30/4)) + (1 + ceil(15/4)) = 9 + 5 calls. Incremental passes chunk each
    scale apart (its patches have one size per scale): (1 + ceil(18/4) + ceil(12/4)) +
    (1 + ceil(9/4) + ceil(6/4)) = 9 + 6 calls."""
    model = materialise(small_convnet(classes=3), torch.zeros(1, 3, 10, 12))
    (r,) = fb.bench(model, (10, 12), methods=["occlusion"], frames=3, batch=2, repeats=1, progress=False,
                    method_options={"occlusion": {"windows": (4, 6), "stride": 4, "chunk_size": 4,
                                                  "incremental": incremental}})
    assert r.model_evaluations_per_frame == 16
    assert r.forward_calls_per_frame == pytest.approx(calls / 3)


def test_occlusion_default_windows_on_pilotnet_are_1872_plus_the_clean_row(pilotnet):
    """The README's figure: 16x49 + 14x47 + 10x43 = 1,872 windows of 8, 16, 32 px at stride 4 on 66x200."""
    (r,) = fb.bench(pilotnet, (66, 200), methods=["occlusion"], frames=1, repeats=1, progress=False)
    assert r.model_evaluations_per_frame == 1872 + 1
    assert "1,873" in fb.table([r])


def test_occlusion_default_batch_is_all_frames(pilotnet):
    (r,) = fb.bench(pilotnet, "66x200", methods=["occlusion"], frames=2, repeats=1, progress=False,
                    method_options={"occlusion": dict(FAST_OCCLUSION, chunk_size=5)})
    n = FAST_OCCLUSION_WINDOWS
    assert r.batch == 2
    assert r.forward_calls_per_frame == pytest.approx((1 + math.ceil(n * 2 / 5)) / 2)
    assert r.model_evaluations_per_frame == n + 1


def test_small_custom_model_and_memory_budget():
    model = materialise(small_convnet(classes=3), torch.zeros(1, 3, 17, 23))
    recs = fb.bench(model, (17, 23), methods=["saliency", "visual_backprop"], frames=2, repeats=1, memory_budget="64MiB",
                    progress=False)
    assert [r.method for r in recs] == ["saliency", "visual_backprop"]
    assert all(r.skipped is None and r.forward_calls_per_frame == pytest.approx(0.5) for r in recs)
    assert all(r.model_evaluations_per_frame == 1 for r in recs)


def test_as_run_plans_are_the_ones_run_chunks_published():
    """``scheduler.plan`` publishes a plan, ``run_chunks`` publishes it again as run (after an
    out-of-memory back-off: another chunk and more passes); a plan made by hand and run is
    published once, as run. Only the as-run plans count."""
    from fastviz import scheduler

    calls = []

    def step(r0: int, r1: int) -> None:
        calls.append((r0, r1))
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated by the test)")

    with scheduler.record_plans() as plans:
        model = torch.nn.Conv2d(3, 4, 3).eval()
        planned = scheduler.plan(model, torch.zeros(1, 3, 8, 8), 10, chunk=10)
        ran = scheduler.run_chunks(planned, step, "cpu")
        by_hand = Plan(rows=7, chunk=3, passes=3, row_bytes=50, budget_bytes=5000)
        scheduler.run_chunks(by_hand, lambda r0, r1: None, "cpu")
    assert not planned.as_run and ran.as_run and ran.backoffs == 1 and ran.chunk == planned.chunk // 2
    got = fb._as_run(plans)
    assert [(p.rows, p.chunk, p.passes, p.as_run) for p in got] == [
        (10, ran.chunk, ran.passes, True), (7, 3, 3, True)]
    assert fb._as_run([]) == []


def test_progress_bar_per_method_on_stderr(capsys):
    model = materialise(small_convnet(classes=3), torch.zeros(1, 3, 9, 11))
    # 3 frames: a first run + 1 more warm-up + 2 timed runs = 12 frames per method
    fb.bench(model, (9, 11), methods=["saliency", "cam"], frames=3, batch=2, repeats=2, warmup=2)
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err
    assert "[1/2] saliency" in err and "[2/2] cam" in err
    assert "12/12" in err and "timed" in err
    assert "0/12" in err.split("[2/2] cam")[-1] and "skipped" in err  # CAM does not apply: no GAP head
    fb.bench(model, (9, 11), methods=["saliency"], frames=1, repeats=1, progress=False)
    assert capsys.readouterr().err == ""
    with pytest.raises(InputError, match="progress"):
        fb.bench(model, (9, 11), methods=["saliency"], frames=1, progress="yes")


def test_resnet50_sized_model():
    model = fastviz.models.build("resnet50-random")
    assert isinstance(model, fastviz.models.ResNet50) and not model.training
    assert 25.0e6 < sum(p.numel() for p in model.parameters()) < 26.0e6
    again = fastviz.models.build("resnet50-random")
    assert torch.equal(model.fc.weight, again.fc.weight)  # fixed seed
    # small input keeps it fast; CAM applies (global average pool -> linear)
    recs = fb.bench(model, (32, 32), methods=["cam", "grad_cam"], frames=1, repeats=1, warmup=1, progress=False,
                    method_options=fb.BENCH_MODEL_OPTIONS["resnet50"])
    assert all(r.skipped is None and r.forward_calls_per_frame == 1.0 and r.model_evaluations_per_frame == 1.0
               for r in recs)
    with pytest.raises(UnknownNameError):
        fastviz.models.build("resnet51")


# --------------------------------------------------------------------------- files


def test_json_schema(records, tmp_path):
    info = fb.machine()
    path = fb.to_json(records, tmp_path / "bench.json", info)
    doc = json.loads(path.read_text())
    assert doc["schema"] == fb.SCHEMA == "fastviz.bench/2"
    assert set(doc["machine"]) == {"cpu", "gpu", "torch", "numba"}
    assert doc["machine"]["torch"] == torch.__version__ and isinstance(doc["machine"]["cpu"], str)
    assert len(doc["records"]) == len(records)
    for rec in doc["records"]:
        assert isinstance(rec["method"], str) and isinstance(rec["batch"], int) and isinstance(rec["frames"], int)
        if rec["skipped"] is None:
            for key in ("ms_per_frame", "ms_per_frame_p10", "ms_per_frame_p90", "frames_per_s",
                        "forward_calls_per_frame", "model_evaluations_per_frame"):
                assert isinstance(rec[key], float), key
        else:
            assert rec["ms_per_frame"] is None and rec["model_evaluations_per_frame"] is None
        assert "forward_passes_per_frame" not in rec  # schema 1's ambiguous count is gone
    occlusion = next(rec for rec in doc["records"] if rec["method"] == "occlusion")
    assert occlusion["model_evaluations_per_frame"] == FAST_OCCLUSION_WINDOWS + 1
    assert not list(tmp_path.glob(".*tmp*"))


def test_csv_schema(records, tmp_path):
    path = fb.to_csv(records, tmp_path / "bench.csv", fb.machine())
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == fb.CSV_COLUMNS
    assert [row["method"] for row in rows] == [r.method for r in records]
    for row, r in zip(rows, records):
        assert int(row["batch"]) == 2
        if r.skipped is None:
            assert float(row["ms_per_frame"]) == pytest.approx(r.ms_per_frame)
            assert float(row["frames_per_s"]) == pytest.approx(1000.0 / float(row["ms_per_frame"]))
            assert float(row["forward_calls_per_frame"]) == pytest.approx(r.forward_calls_per_frame)
            assert float(row["model_evaluations_per_frame"]) == r.model_evaluations_per_frame
            assert row["skipped"] == ""
        else:
            assert row["ms_per_frame"] == "" and row["skipped"] == r.skipped


def test_plot_writes_png(records, tmp_path):
    path = fb.plot(records, tmp_path / "bench.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["bench.png"]


def test_plot_of_only_skipped_records_is_an_error(records, tmp_path):
    with pytest.raises(InputError, match="skipped"):
        fb.plot([by_method(records)["cam"]], tmp_path / "x.png")
    assert not list(tmp_path.iterdir())


def test_table_lists_every_method(records):
    text = fb.table(records, fb.machine())
    for r in records:
        assert r.method in text
    assert "skipped:" in text and "ms/frame" in text
    header = next(line for line in text.splitlines() if line.startswith("method"))
    assert header.split()[7:9] == ["calls/frame", "evals/frame"]
    occlusion = next(line for line in text.splitlines() if line.startswith("occlusion")).split()
    r = by_method(records)["occlusion"]
    assert occlusion[7] == f"{r.forward_calls_per_frame:.2f}" and occlusion[8] == str(FAST_OCCLUSION_WINDOWS + 1)
    saliency = next(line for line in text.splitlines() if line.startswith("saliency")).split()
    assert saliency[7:9] == ["0.67", "1"]


# --------------------------------------------------------------------------- bad arguments (API)


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(frames=0), InputError, "frames"),
        (dict(batch=0), InputError, "batch"),
        (dict(repeats=0), InputError, "repeats"),
        (dict(input_size="66by200"), InputError, "input size"),
        (dict(input_size=(0, 10)), InputError, "positive"),
        (dict(methods=["occlusion", "nope"]), UnknownNameError, "nope"),
        (dict(methods=[]), InputError, "no methods"),
        (dict(memory_budget="lots"), InputError, "budget"),
        (dict(methods=["saliency"], method_options={"occlusion": {}}), InputError, "occlusion"),
        (dict(device="tpu"), InputError, "device"),
    ],
)
def test_bad_api_arguments(pilotnet, kwargs, error, words):
    args = dict(input_size=(66, 200), methods=["saliency"], frames=1, repeats=1)
    args.update(kwargs)
    with pytest.raises(error, match=words):
        fb.bench(pilotnet, **args)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_unavailable_is_an_error(pilotnet):
    with pytest.raises(InputError, match="CUDA"):
        fb.bench(pilotnet, (66, 200), methods=["saliency"], frames=1, device="cuda")


def test_bad_method_option_is_an_error_not_a_skip(pilotnet):
    with pytest.raises(InputError, match="no option"):
        fb.bench(pilotnet, (66, 200), methods=["saliency"], frames=1, repeats=1, method_options={"saliency": {"bogus": 1}})


# --------------------------------------------------------------------------- user models


USER_MODULE = textwrap.dedent(
    """
    import torch
    from torch import nn

    class GapNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(torch.flatten(self.pool(self.features(x)), 1))

    class NeedsArgs(nn.Module):
        def __init__(self, width):
            super().__init__()

    class NotAModule:
        pass
    """
)


@pytest.fixture
def user_model(tmp_path, monkeypatch):
    """A module ``benchusernet`` on sys.path, and weights of a GapNet with other values."""
    (tmp_path / "benchusernet.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    module = importlib.import_module("benchusernet")
    torch.manual_seed(123)
    trained = module.GapNet()
    state = {k: v + 1.0 for k, v in trained.state_dict().items()}
    torch.save(state, tmp_path / "gap.pt")
    from safetensors.torch import save_file

    save_file(state, str(tmp_path / "gap.safetensors"))
    yield tmp_path, state
    import sys

    sys.modules.pop("benchusernet", None)


@pytest.mark.parametrize("name", ["gap.pt", "gap.safetensors"])
def test_user_model_weights_round_trip(user_model, name):
    folder, state = user_model
    model, size = fb.load_model("benchusernet:GapNet", folder / name)
    assert size is None and not model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    recs = fb.bench(model, (12, 12), methods=["cam", "saliency"], frames=2, repeats=1, progress=False)
    assert all(r.skipped is None for r in recs)


def test_user_model_bad_inputs(user_model):
    folder, state = user_model
    with pytest.raises(InputError, match="cannot import"):
        fb.load_model("no_such_module_xyz:Net")
    with pytest.raises(InputError, match="no attribute"):
        fb.load_model("benchusernet:Missing")
    with pytest.raises(InputError, match="without arguments"):
        fb.load_model("benchusernet:NeedsArgs")
    with pytest.raises(InputError, match="not a torch.nn.Module"):
        fb.load_model("benchusernet:NotAModule")
    with pytest.raises(InputError, match="malformed"):
        fb.load_model("benchusernet:")
    with pytest.raises(InputFileNotFoundError):
        fb.load_model("benchusernet:GapNet", folder / "missing.pt")
    partial = {k: v for k, v in state.items() if not k.startswith("fc")}
    torch.save(partial, folder / "partial.pt")
    with pytest.raises(InputError, match="do not fit"):
        fb.load_model("benchusernet:GapNet", folder / "partial.pt")
    torch.save({"model": Path("code objects are not weights")}, folder / "pickled.pt")
    with pytest.raises(InputError, match="weights-only"):
        fb.load_model("benchusernet:GapNet", folder / "pickled.pt")
    (folder / "w.bin").write_bytes(b"x")
    with pytest.raises(InputError, match="safetensors, .pt or .pth"):
        fb.load_model("benchusernet:GapNet", folder / "w.bin")
    with pytest.raises(InputError, match="--weights"):
        fb.load_model("pilotnet", folder / "gap.pt")
    with pytest.raises(UnknownNameError):
        fb.load_model("vgg")


SHADOW_MODULE = textwrap.dedent(
    """
    from torch import nn

    ORIGIN = {origin!r}

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3)

        def forward(self, x):
            return self.conv(x).mean(dim=(1, 2, 3))
    """
)


@pytest.fixture
def shadowing_cwd(tmp_path, monkeypatch):
    """An "installed" package ``fvshadowpkg`` (a folder at the end of sys.path, as site-packages is) and a
    local folder of the same name in the current folder; sys.path holds neither '' nor the current folder,
    as under the ``fastviz`` command."""
    name = "fvshadowpkg"
    for origin in ("installed", "local"):
        folder = tmp_path / origin / name
        folder.mkdir(parents=True)
        (folder / "__init__.py").write_text(SHADOW_MODULE.format(origin=origin))
    (tmp_path / "local" / "fvlocalonly.py").write_text(SHADOW_MODULE.format(origin="local"))
    monkeypatch.chdir(tmp_path / "local")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path / "local"))]
                        + [str(tmp_path / "installed")])
    importlib.invalidate_caches()
    yield tmp_path
    for module in (name, "fvlocalonly"):
        sys.modules.pop(module, None)


def test_import_path_model_never_comes_from_the_current_folder(shadowing_cwd):
    before = list(sys.path)
    model, size = fb.load_model("fvshadowpkg:Net")
    module = sys.modules["fvshadowpkg"]
    assert module.ORIGIN == "installed"
    assert Path(module.__file__).parent.parent == shadowing_cwd / "installed"
    assert type(model).__module__ == "fvshadowpkg" and size is None and not model.training
    assert sys.path == before  # nothing added, not even for the time of the import


def test_local_module_is_not_imported_and_the_error_says_how(shadowing_cwd):
    with pytest.raises(InputError, match="cannot import 'fvlocalonly'") as err:
        fb.load_model("fvlocalonly:Net")
    assert f"PYTHONPATH={shadowing_cwd / 'local'}" in str(err.value)
    assert "fvlocalonly" not in sys.modules
    # what the message suggests works
    sys.path.insert(0, str(shadowing_cwd / "local"))
    model, _ = fb.load_model("fvlocalonly:Net")
    assert sys.modules["fvlocalonly"].ORIGIN == "local" and isinstance(model, torch.nn.Module)


def test_malformed_module_path_is_an_error():
    for spec in ("a..b:Net", "a b:Net", ".rel:Net"):
        with pytest.raises(InputError, match="malformed"):
            fb.load_model(spec)


# --------------------------------------------------------------------------- CLI


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("fastviz: error: "), err
    return lines[0]


def test_cli_bench_end_to_end(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    args = ["bench", "--methods", "saliency,visual_backprop,cam", "--frames", "2", "--batch", "1", "--repeats", "2",
            "--json", str(out / "b.json"), "--csv", str(out / "b.csv"), "--plot", str(out / "b.png")]
    assert cli.main(args) == 0
    stdout = capsys.readouterr().out
    assert "saliency" in stdout and "visual_backprop" in stdout and "skipped:" in stdout
    doc = json.loads((out / "b.json").read_text())
    assert [r["method"] for r in doc["records"]] == ["saliency", "visual_backprop", "cam"]
    assert all(r["batch"] == 1 for r in doc["records"])
    with open(out / "b.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 3
    assert (out / "b.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in out.iterdir()) == ["b.csv", "b.json", "b.png"]


def test_cli_user_model(user_model, capsys):
    folder, _ = user_model
    code = cli.main(["bench", "--model", "benchusernet:GapNet", "--weights", str(folder / "gap.safetensors"),
                     "--input-size", "12x12", "--methods", "cam,grad_cam", "--frames", "1", "--repeats", "1"])
    assert code == 0
    assert "cam" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--methods", "saliency,nope"], "unknown method 'nope'"),
        (["--input-size", "66x"], "input size"),
        (["--input-size", "0x5"], "positive"),
        (["--frames", "0"], "--frames"),
        (["--frames", "-3"], "--frames"),
        (["--batch", "0"], "--batch"),
        (["--memory-budget", "lots"], "budget"),
        (["--model", "no_such_module_xyz:Net"], "cannot import"),
        (["--model", "vgg"], "unknown model"),
        (["--model", "pilotnet", "--weights", "w.pt"], "--weights"),
        (["--plot", "OUT/b.jpg"], "PNG"),
        (["--json", "OUT/missing/b.json"], "does not exist"),
        (["--csv", "OUT"], "folder"),
        (["--json", "OUT/same", "--csv", "OUT/same"], "different files"),
    ],
)
def test_cli_bad_arguments_one_line_no_files(tmp_path, capsys, extra, words):
    out = tmp_path / "out"
    out.mkdir()
    extra = [e.replace("OUT", str(out)) for e in extra]
    args = ["bench", "--methods", "saliency", "--frames", "1", "--repeats", "1", "--json", str(out / "ok.json"), *extra]
    assert cli.main(args) == 2
    line = one_error_line(capsys.readouterr().err)
    assert words in line
    assert not any(p.is_file() for p in out.rglob("*"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cli_cuda_unavailable(tmp_path, capsys):
    assert cli.main(["bench", "--device", "cuda", "--methods", "saliency", "--json", str(tmp_path / "b.json")]) == 2
    assert "CUDA" in one_error_line(capsys.readouterr().err)
    assert not list(tmp_path.iterdir())


def test_cli_input_size_needed_for_user_model(user_model, capsys):
    assert cli.main(["bench", "--model", "benchusernet:GapNet", "--methods", "saliency", "--frames", "1"]) == 2
    assert "--input-size" in one_error_line(capsys.readouterr().err)


def test_cli_bench_outputs_on_a_read_only_folder(tmp_path, capsys):
    """A folder nothing can be written to (a read-only tmpfs as root): one line, exit 2, no file."""
    from fsfaults import read_only_folder

    with read_only_folder(tmp_path / "ro") as folder:
        args = ["bench", "--methods", "saliency", "--frames", "1", "--repeats", "1", "-q",
                "--json", str(folder / "b.json"), "--csv", str(folder / "b.csv")]
        assert cli.main(args) == 2
        line = one_error_line(capsys.readouterr().err)
        assert "b.json" in line and ("read-only" in line.lower() or "permission" in line.lower())
        assert list(folder.iterdir()) == []


def test_cli_bench_every_method_skipped_prints_the_table(capsys):
    """CAM does not apply to PilotNet: the table lists it as skipped (no traceback)."""
    assert cli.main(["bench", "--methods", "cam", "--frames", "1", "--repeats", "1", "-q"]) == 0
    out = capsys.readouterr().out
    assert "cam" in out and "skipped" in out
