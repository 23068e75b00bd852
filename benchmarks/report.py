"""Turn a pytest-benchmark JSON file into the tables of benchmarks/RESULTS.md.

Usage: python benchmarks/report.py benchmarks/results.json [> table.md]
Prints Markdown: per device, each implementation's median time per frame, and the ratios of
fastviz against the plain loop and against Captum's best perturbations_per_eval.
"""

from __future__ import annotations

import json
import sys


def main(path: str) -> None:
    data = json.load(open(path))
    m = data["machine_info"]
    print(f"Run: {data['datetime'][:19]} UTC; CPU: {m.get('cpu', {}).get('brand_raw', '?')}, "
          f"{m.get('cpu', {}).get('count', '?')} logical cores; Python {m.get('python_version')}")
    print()
    by_device: dict[str, list[dict]] = {}
    for b in data["benchmarks"]:
        by_device.setdefault(b["extra_info"]["device"], []).append(b)
    for device, rows in by_device.items():
        print(f"### occlusion, PilotNet, one 66x200 frame, windows 8/16/32 at stride 4 — {device}")
        print()
        print("| implementation | windows | median (ms) | min (ms) | rounds | ms per window |")
        print("|---|---:|---:|---:|---:|---:|")
        med = {}
        for b in sorted(rows, key=lambda b: b["stats"]["median"]):
            e = b["extra_info"]
            name = e["impl"] + (f" (perturbations_per_eval={e['ppe']})" if "ppe" in e else "")
            s = b["stats"]
            print(f"| {name} | {e['windows']} | {s['median'] * 1e3:.1f} | {s['min'] * 1e3:.1f} | {s['rounds']} | "
                  f"{s['median'] * 1e3 / e['windows']:.3f} |")
            med.setdefault(e["impl"], []).append(s["median"])
        print()
        ours = min(med["fastviz"])
        if "loop" in med:
            print(f"- fastviz vs plain per-window loop: **{min(med['loop']) / ours:.1f}x** faster")
        if "captum" in med:
            best = min(med["captum"])
            print(f"- fastviz vs Captum Occlusion at its best perturbations_per_eval: **{best / ours:.2f}x** "
                  f"(per window: {best / 1733 / (ours / 1872):.2f}x)")
        print()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results.json")
