"""Turn a pytest-benchmark JSON file into the tables of benchmarks/RESULTS.md.

Usage: python benchmarks/report.py RESULTS.json [MORE.json ...] [> table.md]
Prints Markdown: per device, each implementation's median time per frame, and the ratios of
fastviz against the plain loop and against Captum's best perturbations_per_eval (speed-up = their
time / fastviz's time: above 1, fastviz is faster).
"""

from __future__ import annotations

import json
import sys


def main(path: str) -> None:
    with open(path) as f:
        data = json.load(f)
    m = data["machine_info"]
    print(f"Run: {data['datetime'][:19]} UTC; CPU: {m.get('cpu', {}).get('brand_raw', '?')}, "
          f"{m.get('cpu', {}).get('count', '?')} logical cores; Python {m.get('python_version')}")
    print()
    by_device: dict[str, list[dict]] = {}
    kernel_groups: dict[str, list[dict]] = {}
    memory_groups: dict[str, list[dict]] = {}
    for b in data["benchmarks"]:
        if b["group"].startswith("memory-"):  # benchmarks/test_bench_memory.py: memory_tables
            memory_groups.setdefault(b["group"], []).append(b)
            continue
        if not b["group"].startswith("occlusion-"):
            kernel_groups.setdefault(b["group"], []).append(b)
            continue
        key = f"{b['extra_info']['device']}, malloc {b['extra_info'].get('malloc', 'default')}"
        by_device.setdefault(key, []).append(b)
    for device, rows in by_device.items():
        print(f"### occlusion, PilotNet, one 66x200 frame, windows 8/16/32 at stride 4 — {device}")
        print()
        print("| implementation | windows | median (ms) | min (ms) | rounds | ms per window |")
        print("|---|---:|---:|---:|---:|---:|")
        med: dict[str, list[float]] = {}
        mins: dict[str, list[float]] = {}
        for b in sorted(rows, key=lambda b: b["stats"]["median"]):
            e = b["extra_info"]
            name = e["impl"] + (f" (perturbations_per_eval={e['ppe']})" if "ppe" in e else "")
            if e["impl"] == "fastviz":
                name += f" (chunk_size={e['chunk']}, not the default)" if "chunk" in e else " (default plan)"
            s = b["stats"]
            print(f"| {name} | {e['windows']} | {s['median'] * 1e3:.1f} | {s['min'] * 1e3:.1f} | {s['rounds']} | "
                  f"{s['median'] * 1e3 / e['windows']:.3f} |")
            if "chunk" not in e:  # ratios use fastviz's default plan only
                med.setdefault(e["impl"], []).append(s["median"])
                mins.setdefault(e["impl"], []).append(s["min"])
        print()
        ours, ours_min = min(med["fastviz"]), min(mins["fastviz"])
        if "loop" in med:
            print(f"- speed-up of fastviz over the plain per-window loop: **{min(med['loop']) / ours:.2f}x** "
                  f"(medians; minima: {min(mins['loop']) / ours_min:.2f}x)")
        if "captum" in med:
            best, best_min = min(med["captum"]), min(mins["captum"])
            print(f"- speed-up of fastviz over Captum Occlusion at its best perturbations_per_eval: **{best / ours:.2f}x** "
                  f"(medians; minima: {best_min / ours_min:.2f}x; per window, medians: {best / 1733 / (ours / 1872):.2f}x)")
        print()
    if kernel_groups:
        kernel_tables(kernel_groups)
    if memory_groups:
        memory_tables(memory_groups)


#: Implementation names that denote the plain-torch reference in the kernel suites.
REFERENCES = ("torch", "torch-reference")
_HIDDEN = {"device", "impl", "kernel", "malloc"}


def kernel_tables(groups: dict[str, list[dict]]) -> None:
    """One table per kernel benchmark group: each implementation's median and its speed-up over
    the group's plain-torch reference (reference median / its median)."""
    for group, rows in sorted(groups.items()):
        print(f"#### {group}")
        print()
        ref = [b["stats"]["median"] for b in rows if b["extra_info"].get("impl") in REFERENCES]
        print("| implementation | settings | median (ms) | min (ms) | rounds | speed-up over torch |")
        print("|---|---|---:|---:|---:|---:|")
        for b in sorted(rows, key=lambda b: b["stats"]["median"]):
            e, st = b["extra_info"], b["stats"]
            settings = ", ".join(f"{k}={v}" for k, v in e.items()
                                 if k not in _HIDDEN and not isinstance(v, (list, dict)) and not k.endswith("_all"))
            ratio = f"{ref[0] / st['median']:.2f}x" if ref else ""
            print(f"| {e.get('impl', '?')} | {settings} | {st['median'] * 1e3:.3f} | {st['min'] * 1e3:.3f} | "
                  f"{st['rounds']} | {ratio} |")
        print()


def _mib(nbytes) -> str:
    return "" if nbytes is None else f"{nbytes / 2**20:,.1f}"


def memory_tables(groups: dict[str, list[dict]]) -> None:
    """One table per memory benchmark group (benchmarks/test_bench_memory.py): per budget, the
    plan fastviz chose, its predicted and the measured peak, and the occlusion call's time."""
    for group, rows in sorted(groups.items()):
        e0 = rows[0]["extra_info"]
        print(f"#### {group}: {e0['workload']}, {e0['frames']} frame(s), {e0['windows']:,} windows")
        print()
        print(f"Peak: {e0['peak_method']}.")
        print()
        print("| budget | chunk | passes | predicted peak (MiB) | measured peak (MiB) | within budget +5%? | seconds | windows/s |")
        print("|---:|---:|---:|---:|---:|:---:|---:|---:|")
        for b in sorted(rows, key=lambda b: b["extra_info"]["budget_bytes"]):
            e = b["extra_info"]
            print(f"| {e['budget']} | {e['chunk']} | {e['passes']} | {_mib(e['predicted_peak_bytes'])} | "
                  f"{_mib(e['peak_bytes'])} | {'yes' if e['within_budget'] else '**no**'} | {e['seconds']:.2f} | "
                  f"{e['windows_per_s']:.1f} |")
        print()


if __name__ == "__main__":
    for p in sys.argv[1:] or ["benchmarks/results-cpu.json"]:
        main(p)
