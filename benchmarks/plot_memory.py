"""Plot the memory suite (benchmarks/test_bench_memory.py): peak memory and throughput against
the memory budget.

Usage: python benchmarks/plot_memory.py RESULTS.json [-o benchmarks/memory.png]

Left panel (log-log): measured peak (solid, markers) and the planner's predicted peak (dotted)
against the budget, one series per ``memory-*`` group, with the line peak = budget and the
+5% line the suite's ``within_budget`` uses. Right panel: windows per second against the
budget (linear axis from 0). The PNG is written under a temporary name and renamed, so an interrupted run never
leaves a truncated image.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter

MiB = 2**20
DEFAULT_OUT = Path(__file__).resolve().parent / "memory.png"


def series(data: dict) -> dict[str, list[dict]]:
    """``memory-*`` group -> its benchmarks' extra_info, sorted by budget."""
    groups: dict[str, list[dict]] = {}
    for b in data["benchmarks"]:
        if (b.get("group") or "").startswith("memory-"):
            groups.setdefault(b["group"], []).append(b["extra_info"])
    return {g: sorted(rows, key=lambda e: e["budget_bytes"]) for g, rows in sorted(groups.items())}


def label(group: str, rows: list[dict]) -> str:
    e = rows[0]
    return f"{e['workload']} on {e['device']} ({e['windows']:,} windows)"


def plot(data: dict, out: Path) -> Path:
    groups = series(data)
    if not groups:
        raise SystemExit("no memory-* groups in this JSON (run benchmarks/test_bench_memory.py)")
    fig, (ax_mem, ax_tp) = plt.subplots(1, 2, figsize=(12, 5), constrained_layout=True)
    budgets = sorted({e["budget_bytes"] for rows in groups.values() for e in rows})
    lo, hi = budgets[0] / MiB, budgets[-1] / MiB
    ax_mem.plot([lo, hi], [lo, hi], color="black", lw=1, label="peak = budget")
    ax_mem.plot([lo, hi], [1.05 * lo, 1.05 * hi], color="black", lw=1, ls="--", label="budget + 5%")
    for group, rows in groups.items():
        x = [e["budget_bytes"] / MiB for e in rows]
        name = label(group, rows)
        (line,) = ax_mem.plot(x, [e["peak_bytes"] / MiB for e in rows], marker="o", label=f"{name}: measured peak")
        ax_mem.plot(x, [e["predicted_peak_bytes"] / MiB for e in rows], ls=":", marker="x", color=line.get_color(),
                    label=f"{name}: planner's predicted peak")
        for e, xi in zip(rows, x):
            ax_mem.annotate(f"chunk {e['chunk']}", (xi, e["peak_bytes"] / MiB), textcoords="offset points",
                            xytext=(0, -14), ha="center", fontsize=7, color=line.get_color())
        ax_tp.plot(x, [e["windows_per_s"] for e in rows], marker="o", color=line.get_color(), label=name)
    for ax in (ax_mem, ax_tp):
        ax.set_xscale("log", base=2)
        ax.set_xticks(budgets_mib := [b / MiB for b in budgets])
        ax.set_xticklabels([f"{b / 1024:g} GiB" if b >= 1024 else f"{b:g} MiB" for b in budgets_mib])
        ax.set_xlabel("memory_budget")
        ax.grid(True, which="both", alpha=0.3)
    ax_mem.set_yscale("log", base=2)
    ax_mem.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    lowest = min(e["peak_bytes"] for rows in groups.values() for e in rows) / MiB
    ax_mem.set_ylim(bottom=min(lowest, lo) / 2)
    ax_mem.set_ylabel("peak memory during the call (MiB)\nCPU: resident-set increase; CUDA: max_memory_allocated increase")
    ax_mem.set_title("Peak memory vs budget")
    ax_mem.legend(fontsize=7, loc="upper left")
    top = max(e["windows_per_s"] for rows in groups.values() for e in rows)
    ax_tp.set_ylim(0, top * 1.15)  # linear from 0: run-to-run noise is not dressed up as a trend
    ax_tp.set_ylabel("windows per second (occlusion call alone)")
    ax_tp.set_title("Throughput vs budget")
    ax_tp.legend(fontsize=7)
    m = data.get("machine_info", {})
    fig.suptitle(f"fastviz.occlusion under memory_budget — {data.get('datetime', '')[:19]} UTC, "
                 f"{m.get('cpu', {}).get('brand_raw', '?')}, {m.get('cpu', {}).get('count', '?')} cores", fontsize=9)
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp.png")
    try:
        fig.savefig(tmp, dpi=120)
        os.replace(tmp, out)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", help="pytest-benchmark JSON from benchmarks/test_bench_memory.py")
    parser.add_argument("-o", "--out", default=str(DEFAULT_OUT), help=f"PNG to write (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    with open(args.json) as f:
        data = json.load(f)
    print(plot(data, Path(args.out)))


if __name__ == "__main__":
    main()
