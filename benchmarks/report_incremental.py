"""Markdown tables of benchmarks/test_bench_incremental.py's runs (issue 13).

Usage: ``python benchmarks/report_incremental.py results-incremental-*.json``

One table per workload and device: each implementation's median seconds over the interleaved
rounds, per frame, its speed-up over Captum at its best ``perturbations_per_eval`` and over
fastviz's full recomputation, and for the approximate modes the SSIM to the exact maps (min and
mean over the frames); then the multiply-accumulates per window.
"""

from __future__ import annotations

import json
import sys


def tables(path: str) -> None:
    with open(path) as f:
        data = json.load(f)
    info = data.get("machine_info", {})
    print(f"<!-- {path}: {data.get('datetime', '?')}, {info.get('cpu', {}).get('brand_raw', '?')} -->\n")
    for b in data["benchmarks"]:
        e = b["extra_info"]
        print(f"#### {e['workload']} on {e['device']}: {e['frames']} frame(s), {e['windows_per_frame']} windows per frame, "
              f"{e['rounds']} interleaved rounds\n")
        print("| implementation | median s | ms / frame | vs Captum's best | vs fastviz full | SSIM min / mean |")
        print("|---|---:|---:|---:|---:|---|")
        captum = e.get("speedup_vs_captum", {})
        for impl, t in e["median_s"].items():
            s = e.get("ssim", {}).get(impl)
            sim = f"{s['min']:.3f} / {s['mean']:.3f}" if s else ("exact" if impl in ("incremental", "full") else "")
            best = " (best)" if impl == e.get("best_captum") else ""
            vs_c = f"{captum[impl]:.2f}x" if impl in captum else "n/a"
            print(f"| {impl}{best} | {t:.3f} | {1000 * t / e['frames']:.1f} | {vs_c} | "
                  f"{e['speedup_vs_full'][impl]:.2f}x | {sim} |")
        inc, full = e["macs_per_window_incremental"], e["macs_per_window_full"]
        print(f"\nMultiply-accumulates per window: incremental {inc / 1e6:.2f} M, full {full / 1e6:.2f} M "
              f"({full / inc:.2f}x fewer); incremental vs full, largest difference: "
              f"{e['incremental_vs_full_max_error_rel']:.1e} of the target's value.\n")


if __name__ == "__main__":
    for p in sys.argv[1:]:
        tables(p)
