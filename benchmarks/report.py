"""Turn a pytest-benchmark JSON file into the tables of benchmarks/RESULTS.md.

Usage: python benchmarks/report.py RESULTS.json [MORE.json ...] [> table.md]
Prints Markdown: per device, each implementation's median time per frame, and the ratios of
fastviz against the plain loop and against Captum's best perturbations_per_eval (speed-up = their
time / fastviz's time: above 1, fastviz is faster); the kernel, memory and peers groups of the
file through kernel_tables, memory_tables and peer_tables. benchmarks/make_results.py prints
every generated section of RESULTS.md from the recorded JSON files.
"""

from __future__ import annotations

import json
import sys


def load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def run_line(data: dict) -> None:
    """The "Run: ..." line (date, CPU, Python) and a blank line."""
    m = data["machine_info"]
    print(f"Run: {data['datetime'][:19]} UTC; CPU: {m.get('cpu', {}).get('brand_raw', '?')}, "
          f"{m.get('cpu', {}).get('count', '?')} logical cores; Python {m.get('python_version')}")
    print()


def split(data: dict) -> dict[str, dict[str, list[dict]]]:
    """The file's benchmarks by section: ``occlusion`` (keyed by "device, malloc ..."),
    ``kernel``, ``memory`` and ``peers`` (keyed by benchmark group), in file order."""
    out: dict[str, dict[str, list[dict]]] = {"occlusion": {}, "kernel": {}, "memory": {}, "peers": {}}
    for b in data["benchmarks"]:
        if b["group"].startswith("peers-"):  # benchmarks/test_bench_peers.py: peer_tables
            out["peers"].setdefault(b["group"], []).append(b)
        elif b["group"].startswith("memory-"):  # benchmarks/test_bench_memory.py: memory_tables
            out["memory"].setdefault(b["group"], []).append(b)
        elif not b["group"].startswith("occlusion-"):
            out["kernel"].setdefault(b["group"], []).append(b)
        else:
            key = f"{b['extra_info']['device']}, malloc {b['extra_info'].get('malloc', 'default')}"
            out["occlusion"].setdefault(key, []).append(b)
    return out


def main(path: str) -> None:
    data = load(path)
    run_line(data)
    sections = split(data)
    occlusion_tables(sections["occlusion"])
    if sections["kernel"]:
        kernel_tables(sections["kernel"])
    if sections["memory"]:
        memory_tables(sections["memory"])
    if sections["peers"]:
        peer_tables(sections["peers"])


def occlusion_tables(by_device: dict[str, list[dict]]) -> None:
    """Per "device, malloc" key: each implementation's time on the reference occlusion workload
    and fastviz's speed-ups over the plain loop and over Captum's best perturbations_per_eval."""
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
        if "fastviz" not in med:  # no fastviz row to compare with
            continue
        ours, ours_min = min(med["fastviz"]), min(mins["fastviz"])
        if "loop" in med:
            print(f"- speed-up of fastviz over the plain per-window loop: **{min(med['loop']) / ours:.2f}x** "
                  f"(medians; minima: {min(mins['loop']) / ours_min:.2f}x)")
        if "captum" in med:
            best, best_min = min(med["captum"]), min(mins["captum"])
            print(f"- speed-up of fastviz over Captum Occlusion at its best perturbations_per_eval: **{best / ours:.2f}x** "
                  f"(medians; minima: {best_min / ours_min:.2f}x; per window, medians: {best / 1733 / (ours / 1872):.2f}x)")
        print()


#: Implementation names that denote the plain-torch reference in the kernel suites.
REFERENCES = ("torch", "torch-reference")
_HIDDEN = {"device", "impl", "kernel", "malloc"}


def kernel_tables(groups: dict[str, list[dict]]) -> None:
    """One table per kernel benchmark group: each implementation's median and its speed-up over
    the group's plain-torch reference (reference median / its median). "peers-" groups are
    left to :func:`peer_tables`."""
    for group, rows in sorted(groups.items()):
        if group.startswith("peers-"):
            continue
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


#: Display order of the implementations in the peers tables.
PEERS = ("fastviz", "captum", "pytorch-grad-cam")


def peer_tables(groups: dict[str, list[dict]]) -> None:
    """One table per peers benchmark group (benchmarks/test_bench_peers.py): each
    implementation's median and minimum per frame (time / batch), frames per second, and
    fastviz's speed-up over each peer (the peer's median / fastviz's median: above 1, fastviz is
    faster; the ratio of the minima in brackets)."""
    for group, rows in sorted(groups.items()):
        e0 = rows[0]["extra_info"]
        batch = e0["batch"]
        print(f"#### {group}: {e0.get('method', '?')}, {e0.get('model', '?')}, batch {batch}, {e0.get('device', '?')}")
        print()
        print("| implementation | ms per frame (median) | ms per frame (min) | frames/s | rounds | fastviz's speed-up |")
        print("|---|---:|---:|---:|---:|---:|")
        order = {name: i for i, name in enumerate(PEERS)}
        rows = sorted(rows, key=lambda b: (order.get(b["extra_info"].get("impl"), len(PEERS)), b["stats"]["median"]))
        ours = next((b["stats"] for b in rows if b["extra_info"].get("impl") == "fastviz"), None)
        for b in rows:
            e, st = b["extra_info"], b["stats"]
            med, lo = st["median"] * 1e3 / batch, st["min"] * 1e3 / batch
            ratio = "" if ours is None or e.get("impl") == "fastviz" else (
                f"**{st['median'] / ours['median']:.2f}x** ({st['min'] / ours['min']:.2f}x)")
            print(f"| {e.get('impl', '?')} | {med:.3f} | {lo:.3f} | {batch / st['median']:,.1f} | {st['rounds']} | {ratio} |")
        print()


if __name__ == "__main__":
    for p in sys.argv[1:] or ["benchmarks/results-cpu.json"]:
        main(p)
