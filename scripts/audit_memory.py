"""Resident memory of a long audit, chunk by chunk: does it stay flat as frames stream through?

Usage: python scripts/audit_memory.py --frames N --out FILE.json [--method visual_backprop]
       [--chunk 32] [--steps 2] [--batch 16] [--no-trim]

Writes, in a temporary folder, a list file (``inputs.txt``) naming the bundled drive log's video
(``fastviz.data.example_log_path()``, 1,500 frames) by absolute path as many times as needed to
reach ``N`` frames, and runs ``fastviz.audit`` on it in this process (``max_frames=N``, one
method, ``sanity_frames=0``, ``progress=False``, few curve ``steps`` to stay cheap) into a store
in the same folder (removed at the end). After every committed chunk (``on_chunk``) it records
the resident set size: the second field of ``/proc/self/statm`` times the page size (and the
third, its file-backed part); then, unless ``--no-trim``, it calls glibc's ``malloc_trim(0)`` and
reads it again. glibc keeps up to 64 MiB of freed heap resident for reuse, so the raw figure
swings by tens of MiB from chunk to chunk; the trimmed one is what is held (plus the free top of
per-thread arenas, which ``malloc_trim`` leaves: run with ``MALLOC_ARENA_MAX=1`` to exclude that
too). At the end it reads the kernel's high-water mark (``VmHWM`` of ``/proc/self/status``: the
peak of the whole process, imports and model included).

The JSON written to ``--out`` (atomically, ``fastviz.tempfiles.atomic_output``)::

    {"frames": N, "chunk": C, "method": "...", "steps": S, "batch": B,
     "rss_mib": [RSS after each chunk, MiB], "rss_trimmed_mib": [the same after malloc_trim]
     or null, "rss_file_mib": [file-backed part], "frames_done": [frames done after each chunk],
     "rss_before_mib": RSS right before the audit, "peak_rss_mib": VmHWM at the end,
     "seconds": wall seconds of the audit, "malloc_arena_max": the environment's or null,
     "python": "3.x.y", "torch": "2.x"}

and one summary line on stdout: RSS after 10% of the frames, after the last chunk, and the growth
in between (MiB), raw and trimmed. Linux only (``/proc``).

A flat audit keeps the trimmed RSS after the first few chunks within a few MiB; a leak that
keeps each chunk's maps (66 x 200 float32 = 52 KB a frame) would grow by ~50 MiB per 1,000
frames. ``tests/test_audit_memory.py`` runs this script and asserts the bound.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

MIB = 2**20
#: Frames in the bundled drive log (checked against fastviz's own count at run time).
LOG_FRAMES = 1500


def rss_bytes() -> int:
    """Resident set size of this process now: ``/proc/self/statm``'s second field (pages)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def statm_bytes() -> tuple[int, int]:
    """Resident and file-backed resident bytes now (``/proc/self/statm``'s 2nd and 3rd fields)."""
    with open("/proc/self/statm") as f:
        fields = f.read().split()
    page = os.sysconf("SC_PAGE_SIZE")
    return int(fields[1]) * page, int(fields[2]) * page


def malloc_trim():
    """glibc's ``malloc_trim(0)`` (hands free heap pages back to the OS), or ``None`` without glibc."""
    import ctypes

    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def hwm_bytes() -> int | None:
    """The kernel's resident high-water mark of this process (``VmHWM``), or ``None``."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    value, unit = line.split()[1:3]
                    return int(value) * {"kB": 1024, "mB": MIB}.get(unit, 1024)
    except OSError:
        pass
    return None


def log_frames(video: Path) -> int:
    """Frames of the bundled log (its ``.csv`` has one row per frame)."""
    csv = video.with_suffix(".csv")
    try:
        with open(csv) as f:
            return max(sum(1 for _ in f) - 1, 0) or LOG_FRAMES
    except OSError:
        return LOG_FRAMES


def write_list(folder: Path, frames: int) -> Path:
    """A list file in ``folder`` naming the bundled log enough times to hold ``frames`` frames."""
    import fastviz as fv

    video = Path(fv.data.example_log_path()).resolve()
    copies = max(1, math.ceil(frames / log_frames(video)))
    listing = folder / "inputs.txt"
    listing.write_text("".join(f"{video}\n" for _ in range(copies)))
    return listing


def measure(frames: int, *, method: str = "visual_backprop", chunk: int = 32, steps: int = 2,
            batch: int = 16, trim: bool = True) -> dict:
    """Run the audit of ``frames`` frames and return the record (see the module description)."""
    import torch

    import fastviz as fv

    rss: list[float] = []
    shared: list[float] = []
    trimmed: list[float] = []
    done: list[int] = []
    trim_fn = malloc_trim() if trim else None

    def on_chunk(_c: int, frames_done: int) -> None:
        resident, file_backed = statm_bytes()
        rss.append(resident / MIB)
        shared.append(file_backed / MIB)
        done.append(int(frames_done))
        if trim_fn is not None:
            trim_fn(0)
            trimmed.append(rss_bytes() / MIB)

    with tempfile.TemporaryDirectory(prefix="fastviz-audit-memory-") as tmp:
        folder = Path(tmp)
        listing = write_list(folder, frames)
        before = rss_bytes() / MIB
        t = time.perf_counter()
        result = fv.audit(folder / "audit.zarr", listing, methods=[method], batch=batch, chunk=chunk, steps=steps,
                          sanity_frames=0, max_frames=frames, progress=False, on_chunk=on_chunk)
        seconds = time.perf_counter() - t
        if result.frames != frames or result.failed:
            raise SystemExit(f"audit_memory: the audit covered {result.frames} frames (failed: {result.failed}), "
                             f"not {frames}")
    hwm = hwm_bytes()
    return {
        "frames": int(frames),
        "chunk": int(chunk),
        "method": method,
        "steps": int(steps),
        "batch": int(batch),
        "rss_mib": rss,
        "rss_trimmed_mib": trimmed if trim_fn is not None else None,
        "rss_file_mib": shared,
        "frames_done": done,
        "rss_before_mib": before,
        "peak_rss_mib": None if hwm is None else hwm / MIB,
        "seconds": seconds,
        "malloc_arena_max": os.environ.get("MALLOC_ARENA_MAX"),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def summary_line(record: dict) -> str:
    """RSS after 10% of the frames, at the end, and the growth in between (raw; and after
    ``malloc_trim`` when recorded)."""
    rss, done, trimmed = record["rss_mib"], record["frames_done"], record.get("rss_trimmed_mib")
    i = next((k for k, d in enumerate(done) if d >= 0.1 * record["frames"]), 0)
    peak = record["peak_rss_mib"]
    line = (f"{record['method']}, {record['frames']} frames in chunks of {record['chunk']} "
            f"({record['seconds']:.1f} s): RSS {rss[i]:.1f} MiB after {done[i]} frames (10%), "
            f"{rss[-1]:.1f} MiB at the end ({done[-1]} frames): growth {rss[-1] - rss[i]:+.1f} MiB")
    if trimmed:
        line += (f"; after malloc_trim {trimmed[i]:.1f} -> {trimmed[-1]:.1f} MiB: growth "
                 f"{trimmed[-1] - trimmed[i]:+.1f} MiB")
    return line + (f"; peak {peak:.1f} MiB" if peak is not None else "")


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=positive, required=True, help="frames to audit (the log repeated as needed)")
    parser.add_argument("--out", type=Path, required=True, help="the JSON record to write")
    parser.add_argument("--method", default="visual_backprop", help="the one method audited (default %(default)s)")
    parser.add_argument("--chunk", type=positive, default=32, help="frames per store chunk (default %(default)s)")
    parser.add_argument("--steps", type=positive, default=2, help="deletion/insertion curve steps (default %(default)s)")
    parser.add_argument("--batch", type=positive, default=16, help="frames per method call (default %(default)s)")
    parser.add_argument("--no-trim", dest="trim", action="store_false",
                        help="do not call malloc_trim(0) after each chunk's raw reading (no rss_trimmed_mib)")
    args = parser.parse_args(argv)
    if not os.path.exists("/proc/self/statm"):
        parser.error("needs Linux's /proc/self/statm")

    from fastviz.tempfiles import atomic_output

    record = measure(args.frames, method=args.method, chunk=args.chunk, steps=args.steps, batch=args.batch,
                     trim=args.trim)
    with atomic_output(args.out, what="memory record") as out:
        out.write((json.dumps(record, indent=1) + "\n").encode())
    print(summary_line(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
