"""How the audit report scales: tile a real audit store to ~100,000 frames and time the report.

    python scripts/report_scale.py AUDIT.zarr --copies 68 --work /tmp/scale

The store given (e.g. the bundled log's full audit, ``fastviz audit -o AUDIT.zarr``) is copied
``copies`` times end to end (whole chunks) into a new store (its sources listed as many times, so the report
reads its frames again from the same files), then :func:`fastviz.audit.write_report` runs on it
once; wall time, peak memory and the page's size and picture count are printed as JSON. Nothing is
asserted here: the figures go to ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
import zarr

from fastviz.audit.report import write_report
from fastviz.audit.store import AuditStore


def tile(src: Path, dst: Path, copies: int) -> int:
    g = zarr.open_group(str(src), mode="r")
    attrs = dict(g.attrs)
    spec = dict(attrs["spec"])
    chunk = int(spec["chunk"])
    n = g["frames/ok"].shape[0] // chunk * chunk  # whole chunks only (a short last one is left out)
    names = spec["methods"]
    steps = g["metrics/random/deletion_curve"].shape[1] - 1
    st = AuditStore.create(dst, spec={**spec, "frames": n * copies}, sources=attrs["sources"] * copies,
                           frames=n * copies, size=tuple(g[f"maps/{names[0]}"].shape[1:]), methods=names,
                           steps=steps, chunk=chunk, model=attrs["model"], overwrite=True)
    arrays: dict[str, np.ndarray] = {}

    def walk(group, prefix):
        for key, arr in group.arrays():
            arrays[f"{prefix}{key}"] = arr
        for key, sub in group.groups():
            walk(sub, f"{prefix}{key}/")

    walk(g, "")
    seconds = g["progress/seconds"][:]
    chunks = n // chunk
    for copy in range(copies):
        for c in range(chunks):
            g0, g1 = c * chunk, (c + 1) * chunk
            block = {name: a[g0:g1] for name, a in arrays.items() if not name.startswith("progress/")}
            block["frames/source"] = np.full(chunk, copy, np.int32)
            block["progress/seconds"] = seconds[c]
            st.write_chunk(copy * chunks + c, block)
    st.update(complete=True, completed=attrs.get("completed"), sanity=attrs.get("sanity"))
    return n * copies


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store", type=Path)
    ap.add_argument("--copies", type=int, default=68)
    ap.add_argument("--work", type=Path, default=Path("/tmp/report-scale"))
    ap.add_argument("--reuse", action="store_true", help="report on WORK/tiled.zarr as it is, if there")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    big = args.work / "tiled.zarr"
    t0 = time.perf_counter()
    if args.reuse and big.exists():
        frames = zarr.open_group(str(big), mode="r")["frames/ok"].shape[0]
    else:
        frames = tile(args.store, big, args.copies)
    built = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = write_report(big, args.work / "report.html")
    seconds = time.perf_counter() - t0
    size = sum(f.stat().st_size for f in big.rglob("*") if f.is_file())
    print(json.dumps({
        "frames": frames, "store_bytes": size, "tile_s": round(built, 1), "report_s": round(seconds, 1),
        "page_bytes": result.bytes, "pictures": result.images, "notes": result.notes,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }, indent=1))


if __name__ == "__main__":
    main()
