"""fastviz.tempfiles: exclusive temporaries, all-or-nothing outputs, signals, stale temporaries.

Faults are real: links planted in the folder, a tmpfs that fills up, a read-only mount,
SIGTERM/SIGHUP/SIGKILL sent to real processes."""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fastviz import tempfiles
from fastviz.errors import FastvizError, InputError
from fastviz.tempfiles import (
    AtomicFile,
    AtomicFolder,
    OutputError,
    Terminated,
    atomic_folder,
    atomic_output,
    deferred_signals,
    exit_code,
    install_signal_handlers,
    live_temporaries,
    remove_stale,
    temp_pattern,
)

from children import first_line, run, start
from fsfaults import full_disk, read_only_folder

TEMP_NAME = re.compile(r"\.out\.bin\.fastviz-tmp-(\d+)-([0-9a-f]{12})\.bin")


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --------------------------------------------------------------------------- names


def test_temporary_name_embeds_final_name_and_pid_and_is_unpredictable(tmp_path):
    out = tmp_path / "out.bin"
    a, b = AtomicFile(out), AtomicFile(out)
    try:
        ma, mb = TEMP_NAME.fullmatch(a.path.name), TEMP_NAME.fullmatch(b.path.name)
        assert ma and mb and int(ma[1]) == int(mb[1]) == os.getpid()
        assert ma[2] != mb[2]  # 48 random bits each
        assert a.path.parent == b.path.parent == tmp_path  # the output's own folder
        assert set(live_temporaries()) >= {a.path, b.path}
        assert temp_pattern(out).match(a.path.name)
    finally:
        a.discard()
        b.discard()
    assert a.path not in live_temporaries() and names(tmp_path) == []


def test_long_final_names_are_cut_in_the_temporary_name(tmp_path):
    out = tmp_path / ("x" * 240 + ".mp4")
    with atomic_output(out) as f:
        assert len(os.fsencode(f.path.name)) <= 255 and temp_pattern(out).match(f.path.name)
        f.file.write(b"1")
    assert names(tmp_path) == [out.name]


# --------------------------------------------------------------------------- AtomicFile


def test_success_writes_the_final_name_with_the_umask(tmp_path):
    out = tmp_path / "out.bin"
    with atomic_output(out) as f:
        f.write(b"hello")
        assert not out.exists() and f.path.exists()
    assert out.read_bytes() == b"hello" and names(tmp_path) == ["out.bin"]
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask


def test_success_replaces_an_existing_file(tmp_path):
    out = tmp_path / "out.bin"
    out.write_bytes(b"old")
    with atomic_output(out) as f:
        f.file.write(b"new")
    assert out.read_bytes() == b"new" and names(tmp_path) == ["out.bin"]


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt(), Terminated(signal.SIGTERM)])
def test_any_exception_removes_the_temporary_and_keeps_the_old_output(tmp_path, exc):
    out = tmp_path / "out.bin"
    out.write_bytes(b"old")
    with pytest.raises(type(exc)):
        with atomic_output(out) as f:
            f.file.write(b"half")
            raise exc
    assert out.read_bytes() == b"old" and names(tmp_path) == ["out.bin"]
    assert f.path not in live_temporaries()


def test_check_reads_through_the_descriptor_and_can_refuse(tmp_path):
    out = tmp_path / "out.bin"
    seen = []

    def check(f: AtomicFile) -> None:
        reader = f.reader()
        reader.seek(2)
        seen.append(reader.read())
        assert f.file.tell() == 6  # reading did not move the writer
        if seen[-1] != b"good":
            raise OutputError(f"{f.final}: bad content")

    with atomic_output(out, check=check) as f:
        f.file.write(b"--good")
    assert out.read_bytes() == b"--good"
    with pytest.raises(OutputError, match="bad content"):
        with atomic_output(out, check=check) as f:
            f.file.write(b"--evil")
    assert seen == [b"good", b"evil"] and out.read_bytes() == b"--good" and names(tmp_path) == ["out.bin"]


def test_missing_folder_and_folder_in_the_way(tmp_path):
    with pytest.raises(OutputError, match="folder .*nowhere does not exist") as info:
        atomic_output(tmp_path / "nowhere" / "o.bin")
    assert info.value.errno == errno.ENOENT
    (tmp_path / "dir").mkdir()
    with pytest.raises(OutputError, match="it is a folder"):
        atomic_output(tmp_path / "dir")
    assert names(tmp_path) == ["dir"]


def test_output_error_is_one_line_input_error_and_os_error():
    err = OutputError("cannot write video a.mp4: no space left on device", errno.ENOSPC)
    assert isinstance(err, InputError) and isinstance(err, FastvizError) and isinstance(err, OSError)
    assert str(err) == "cannot write video a.mp4: no space left on device" and err.errno == errno.ENOSPC


# --------------------------------------------------------------------------- links


def test_a_link_at_the_final_name_is_replaced_not_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    out = tmp_path / "out.bin"
    out.symlink_to(victim)
    with atomic_output(out) as f:
        f.file.write(b"mine")
    assert victim.read_bytes() == b"precious"
    assert not out.is_symlink() and out.read_bytes() == b"mine"


def test_links_planted_at_every_predictable_name_are_not_followed(tmp_path, monkeypatch):
    """The old names (NAME.tmp, NAME.tmp-<pid>.EXT) and, with the random part forced to a known
    sequence, the new name itself, planted by an attacker right after the stale clean-up ran:
    exclusive creation refuses the planted link and tries the next name; no link target is
    written."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    out = tmp_path / "out.bin"
    tokens = iter(["aaaaaaaaaaaa", "bbbbbbbbbbbb"])
    monkeypatch.setattr(tempfiles.secrets, "token_hex", lambda n: next(tokens))
    planted = ["out.bin.tmp", f"out.tmp-{os.getpid()}.bin", f".out.bin.fastviz-tmp-{os.getpid()}-aaaaaaaaaaaa.bin"]
    real_remove_stale = tempfiles.remove_stale

    def remove_stale_then_attack(final):
        removed = real_remove_stale(final)
        for name in planted:
            (tmp_path / name).symlink_to(victim)
        return removed

    monkeypatch.setattr(tempfiles, "remove_stale", remove_stale_then_attack)
    with atomic_output(out) as f:
        assert f.path.name == f".out.bin.fastviz-tmp-{os.getpid()}-bbbbbbbbbbbb.bin"
        f.write(b"mine")
    assert victim.read_bytes() == b"precious"
    assert out.read_bytes() == b"mine"
    assert all((tmp_path / name).is_symlink() for name in planted)


def test_a_temporary_swapped_for_a_link_is_never_renamed_into_place(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    out = tmp_path / "out.bin"
    with pytest.raises(OutputError, match="replaced by someone else"):
        with atomic_output(out) as f:
            f.file.write(b"data")
            os.rename(f.path, tmp_path / "moved")
            f.path.symlink_to(victim)
            f.file.write(b"more")
    assert victim.read_bytes() == b"precious" and not out.exists()
    assert (tmp_path / "moved").read_bytes() == b"datamore"  # the data went to our own file


# --------------------------------------------------------------------------- file-system faults


def test_full_disk_is_one_error_naming_the_output_and_leaves_nothing(tmp_path):
    with full_disk(tmp_path / "small", size="300k") as folder:
        out = folder / "out.bin"
        out.write_bytes(b"old")
        with pytest.raises(OutputError) as info:
            with atomic_output(out, what="model weights") as f:
                for _ in range(64):
                    f.write(b"\0" * 16384)  # 1 MB
        message = str(info.value)
        assert message == f"cannot write model weights {out}: no space left on device"
        assert info.value.errno == errno.ENOSPC
        assert names(folder) == ["out.bin"] and out.read_bytes() == b"old"


def test_read_only_folder_is_one_error_and_leaves_nothing(tmp_path):
    with read_only_folder(tmp_path / "ro") as folder:
        with pytest.raises(OutputError) as info:
            atomic_output(folder / "out.bin")
        assert re.fullmatch(
            rf"cannot write output {re.escape(str(folder))}/out\.bin: (read-only file system|permission denied)",
            str(info.value),
        ), str(info.value)
        assert info.value.errno in (errno.EROFS, errno.EACCES)
        with pytest.raises(OutputError, match="read-only file system|permission denied"):
            atomic_folder(folder / "frames")
        assert names(folder) == []
    assert live_temporaries() == []


# --------------------------------------------------------------------------- AtomicFolder


def test_atomic_folder_success_exception_and_refusals(tmp_path):
    out = tmp_path / "frames"
    with atomic_folder(out) as d:
        assert isinstance(d, AtomicFolder)
        assert re.fullmatch(rf"\.frames\.fastviz-tmp-{os.getpid()}-[0-9a-f]{{12}}", d.path.name)
        d.write_file("a.png", b"1")
        d.write_file("b.png", b"22")
        with pytest.raises(ValueError, match="plain name"):
            d.write_file("../escape", b"x")
        with pytest.raises(ValueError, match="already written"):
            d.write_file("a.png", b"again")
        assert not out.exists()
    assert names(tmp_path) == ["frames"] and names(out) == ["a.png", "b.png"]
    assert (out / "b.png").read_bytes() == b"22"
    with pytest.raises(OutputError, match="not empty"):
        atomic_folder(out)
    other = tmp_path / "other"
    with pytest.raises(KeyboardInterrupt):
        with atomic_folder(other) as d:
            d.write_file("a.png", b"1")
            raise KeyboardInterrupt
    assert names(tmp_path) == ["frames"]


def test_atomic_folder_refuses_a_link_at_its_name(tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    (tmp_path / "out").symlink_to(target)
    with pytest.raises(OutputError, match="symbolic link"):
        atomic_folder(tmp_path / "out")
    assert names(target) == []


def test_atomic_folder_full_disk(tmp_path):
    with full_disk(tmp_path / "small", size="300k") as folder:
        with pytest.raises(OutputError, match=r"cannot write folder .*frames: no space left on device"):
            with atomic_folder(folder / "frames") as d:
                for i in range(40):
                    d.write_file(f"{i}.bin", b"\0" * 16384)
        assert names(folder) == []


# --------------------------------------------------------------------------- stale temporaries


HOLDER = textwrap.dedent(
    """
    import sys, time
    from fastviz.tempfiles import AtomicFile, atomic_folder
    f = AtomicFile(sys.argv[1])
    d = atomic_folder(sys.argv[2])
    print(f.path, d.path, flush=True)
    time.sleep(120)
    """
)


def test_stale_temporaries_of_a_killed_process_are_removed_and_a_live_ones_kept(tmp_path):
    out, frames = tmp_path / "out.bin", tmp_path / "frames"
    killed, alive = start(HOLDER, str(out), str(frames)), start(HOLDER, str(out), str(frames))
    try:
        killed_paths = [Path(p) for p in first_line(killed).split()]
        alive_paths = [Path(p) for p in first_line(alive).split()]
        killed.send_signal(signal.SIGKILL)  # kill -9: no clean-up runs
        killed.wait(30)
        assert all(p.exists() for p in killed_paths + alive_paths)
        # unrelated files that look alike are never touched
        dead = dead_pid()
        bystanders = [
            tmp_path / f".other.bin.fastviz-tmp-{dead}-0123456789ab.bin",  # another output's
            tmp_path / "out.bin.tmp",
            tmp_path / f".out.bin.fastviz-tmp-{dead}-xyz.bin",  # not our random part
            tmp_path / f".out.bin.fastviz-tmp-0-0123456789ab.bin",  # pid 0 is no process
        ]
        for p in bystanders:
            p.write_bytes(b"x")
        # a new run opening the same outputs removes the dead process's temporaries only
        with atomic_output(out) as f:
            f.file.write(b"new")
            assert not killed_paths[0].exists() and alive_paths[0].exists()
        with atomic_folder(frames) as d:
            d.write_file("a", b"1")
            assert not killed_paths[1].exists() and alive_paths[1].exists()
        assert all(p.exists() for p in bystanders)
        assert out.read_bytes() == b"new"
    finally:
        alive.kill()
        alive.wait(30)
        killed.kill()
    assert remove_stale(out) == [alive_paths[0]] and remove_stale(frames) == [alive_paths[1]]


def test_remove_stale_removes_links_without_following_them_and_our_own_unregistered_names(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("precious")
    out = tmp_path / "out.bin"
    with AtomicFile(out) as live:
        live.write(b"y")
        link = tmp_path / f".out.bin.fastviz-tmp-{dead_pid()}-0123456789ab"
        link.symlink_to(victim)
        mine_stale = tmp_path / f".out.bin.fastviz-tmp-{os.getpid()}-0123456789ab.bin"  # pid reused: not live
        mine_stale.write_bytes(b"x")
        assert sorted(remove_stale(out)) == sorted([link, mine_stale])
        assert live.path.exists()  # this process's live temporary stays
    assert (victim / "keep").read_text() == "precious"
    assert names(tmp_path) == ["out.bin", "victim"]


# --------------------------------------------------------------------------- signals


WRITER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from fastviz.tempfiles import Terminated, exit_code, install_signal_handlers
    from fastviz.video import VideoSink

    install_signal_handlers()
    try:
        with VideoSink(sys.argv[1], fps=25, size=(32, 32)) as sink:
            for i in range(100000):
                sink.write(np.full((32, 32, 3), i % 256, np.uint8))
                if i == 3:
                    print(sink.tmp_path, flush=True)
                time.sleep(0.002)
    except Terminated as exc:
        print(f"fastviz: {exc}; no output written", file=sys.stderr)
        sys.exit(exit_code(exc))
    """
)


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_mid_write_leave_nothing_and_exit_128_plus_signal(tmp_path, signum, status):
    out = tmp_path / "out.mp4"
    proc = start(WRITER, str(out))
    try:
        temporary = Path(first_line(proc))
        assert temporary.exists() and temporary.parent == tmp_path
        proc.send_signal(signum)
        assert proc.wait(60) == status
    finally:
        proc.kill()
    assert names(tmp_path) == []
    assert proc.stderr.read().strip() == f"fastviz: terminated by {signal.Signals(signum).name}; no output written"


SECOND_SIGNAL = textwrap.dedent(
    """
    import os, signal, sys, time
    from fastviz.tempfiles import AtomicFile, Terminated, install_signal_handlers

    install_signal_handlers()
    f = AtomicFile(sys.argv[1])
    try:
        print(f.path, flush=True)
        time.sleep(60)
    except Terminated:
        # clean-up is slow; a second SIGTERM arrives before it ran
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(60)
    print("not reached", flush=True)
    """
)


def test_a_second_signal_during_clean_up_removes_temporaries_and_exits_at_once(tmp_path):
    proc = start(SECOND_SIGNAL, str(tmp_path / "out.bin"))
    try:
        assert Path(first_line(proc)).exists()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 143
    finally:
        proc.kill()
    assert names(tmp_path) == [] and "not reached" not in proc.stdout.read()


def test_temporaries_still_open_at_exit_are_removed(tmp_path):
    script = "import sys\nfrom fastviz.tempfiles import AtomicFile\nf = AtomicFile(sys.argv[1])\nprint(f.path)\n"
    proc = run(script, str(tmp_path / "o.bin"))
    assert proc.returncode == 0 and proc.stdout.strip().startswith(str(tmp_path))
    assert names(tmp_path) == []


def test_deferred_signals_hold_terminated_to_the_end_of_the_block():
    restore = install_signal_handlers()
    try:
        steps = []
        with pytest.raises(Terminated) as info:
            with deferred_signals():
                os.kill(os.getpid(), signal.SIGHUP)
                time.sleep(0.05)  # the handler has run by now: deferred
                steps.append("block finished")
        assert steps == ["block finished"] and info.value.signum == signal.SIGHUP
        assert exit_code(info.value) == 129 and str(info.value) == "terminated by SIGHUP"
    finally:
        restore()
    assert signal.getsignal(signal.SIGHUP) is not tempfiles._handler


def test_sigint_stays_keyboard_interrupt_and_is_deferred_too():
    restore = install_signal_handlers()
    try:
        steps = []
        with pytest.raises(KeyboardInterrupt):
            with deferred_signals():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)
                steps.append("block finished")
        assert steps == ["block finished"]
    finally:
        restore()
    assert signal.getsignal(signal.SIGINT) is not tempfiles._handler


def test_exit_codes():
    assert exit_code(Terminated(signal.SIGTERM)) == 143
    assert exit_code(Terminated(signal.SIGHUP)) == 129
    assert exit_code(KeyboardInterrupt()) == 130
    assert issubclass(Terminated, BaseException) and not issubclass(Terminated, Exception)
    with pytest.raises(TypeError):
        exit_code(RuntimeError())


# --------------------------------------------------------------------------- models.save


def test_models_save_is_exclusive_and_all_or_nothing(tmp_path):
    import torch

    import fastviz.models as fvm

    torch.manual_seed(0)
    model = fvm.PilotNet()
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    out = tmp_path / "m.safetensors"
    out.symlink_to(victim)
    (tmp_path / "m.safetensors.tmp").symlink_to(victim)  # the old fixed temporary name
    assert fvm.save(model, out) == out
    assert victim.read_bytes() == b"precious" and not out.is_symlink()
    assert names(tmp_path) == ["m.safetensors", "m.safetensors.tmp", "victim"]
    loaded = fvm.load(out)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    with full_disk(tmp_path / "small", size="300k") as folder:  # PilotNet's weights: ~1 MB
        with pytest.raises(OutputError, match=rf"cannot write model weights {re.escape(str(folder))}/m\.safetensors: no space left on device"):
            fvm.save(model, folder / "m.safetensors")
        assert names(folder) == []
