"""Memory flat: resident memory does not grow with the number of frames of an audit.

A long audit over a looped input (the bundled 1,500-frame drive log named twice in a list file,
1,536 frames: the reader crosses from one copy to the next) runs in a fresh subprocess through
``scripts/audit_memory.py``, which records the process's resident set size after every committed
chunk. The audit streams chunk by chunk into its store, so after the first chunks (model, oneDNN
primitives, Zarr's thread pool, the video decoder) its memory must stay flat.

How the resident size is read: the child calls glibc's ``malloc_trim(0)`` after each chunk before
reading ``/proc/self/statm``. Without it, RSS swings by 20-50 MiB from chunk to chunk: glibc keeps
up to twice its (dynamic, up to 32 MiB) mmap threshold of freed heap resident for reuse, so raw
RSS says more about where the last free() landed than about what is held. The child also runs with
``MALLOC_ARENA_MAX=1``: each thread that first allocates under contention (Zarr's codec workers,
PyTorch's) gets its own glibc arena, and ``malloc_trim`` does not release the free top of those
arenas, so each new arena adds a step of ~3.4 MiB at a random chunk (seen here: four steps, all
before chunk 20, ~14 MiB in all on 2 cores; more threads on bigger machines). That is bounded by
the number of threads, not by frames, but it would make a tight bound flaky. Both are settings of
the allocator, not of fastviz: what remains is memory that is actually held.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "audit_memory.py"

#: 48 chunks of 32 frames: past the end of the first copy of the 1,500-frame log. About 20 s
#: of audit on a quiet 2-core machine (visual_backprop, 2 curve steps), ~25 s with the start-up.
FRAMES, CHUNK, STEPS = 1536, 32, 2
METHOD = "visual_backprop"
#: The model's input (PilotNet: 66 x 200) and what one frame's map takes as float32.
MAP_H, MAP_W = 66, 200
MIB = 2**20


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads Linux's /proc/self/statm")
def test_resident_memory_stays_flat_over_a_long_looped_audit(tmp_path):
    out = tmp_path / "memory.json"
    env = dict(os.environ, MALLOC_ARENA_MAX="1")  # see the module description
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--frames", str(FRAMES), "--chunk", str(CHUNK), "--steps", str(STEPS),
         "--method", METHOD, "--out", str(out)],
        capture_output=True, text=True, timeout=600, env=env,
    )
    wall = time.perf_counter() - started
    assert proc.returncode == 0, proc.stdout + proc.stderr
    record = json.loads(out.read_text())

    n_chunks = -(-FRAMES // CHUNK)
    assert record["frames"] == FRAMES
    assert record["frames_done"] == [min((c + 1) * CHUNK, FRAMES) for c in range(n_chunks)]
    assert len(record["rss_mib"]) == n_chunks >= 30
    # after malloc_trim where glibc has it (elsewhere the raw figures: another allocator)
    rss = record["rss_trimmed_mib"] or record["rss_mib"]
    assert len(rss) == n_chunks

    quarter, middle, end = rss[n_chunks // 4 - 1], rss[n_chunks // 2 - 1], rss[-1]
    figures = (f"{record['method']}, {FRAMES} frames, {n_chunks} chunks in {wall:.1f} s "
               f"(audit {record['seconds']:.1f} s): RSS after chunk {n_chunks // 4} {quarter:.1f} MiB, "
               f"after chunk {n_chunks // 2} {middle:.1f} MiB, at the end {end:.1f} MiB, "
               f"peak (VmHWM) {record['peak_rss_mib']:.1f} MiB; raw RSS per chunk "
               f"{min(record['rss_mib']):.1f}-{max(record['rss_mib']):.1f} MiB, ends at {record['rss_mib'][-1]:.1f}")
    print(figures)

    # The bound. Holding the maps of every frame audited (float32 66 x 200, 52.8 KB a frame) would
    # take FRAMES x 66 x 200 x 4 bytes (81 MB here); even holding only what the last three
    # quarters of the chunks produce adds 3/4 of that. Growth from the first quarter to the end
    # must stay below a quarter of it and below 16 MiB in any case (~15 KB a frame over those
    # 1,152 frames: keeping the float16 maps the store writes, 26 KB a frame, crosses it twice
    # over); what is left after the first quarter is allocator noise (under 1 MiB over the run,
    # measured).
    maps_bytes = FRAMES * MAP_H * MAP_W * 4
    bound = min(maps_bytes / 4, 16 * MIB) / MIB
    assert end - quarter < bound, f"resident memory grew {end - quarter:.1f} MiB (bound {bound:.1f}): {figures}"
    # The second half holds half the frames: the same per-frame rate gives half the bound. A
    # memory that grows until the middle and then stops (a cache filling up) passes the first check;
    # one that keeps growing at a small rate fails here.
    half_bound = min(maps_bytes / 8, 8 * MIB) / MIB
    assert end - middle < half_bound, \
        f"resident memory grew {end - middle:.1f} MiB in the second half (bound {half_bound:.1f}): {figures}"
