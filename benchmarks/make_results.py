"""Print the generated sections of benchmarks/RESULTS.md from the recorded JSON files.

Usage: python benchmarks/make_results.py [--dir benchmarks] [> generated.md]

Prints Markdown to stdout, one block per section of RESULTS.md, each preceded by an HTML
comment naming the section and its source file, for pasting under the section's prose (the
prose itself is written by hand and is not touched):

- occlusion: ``results-cpu.json`` (glibc malloc defaults) then ``results-cpu-tuned.json``;
- kernels: the kernel groups of ``results-cpu.json``;
- memory budget: ``results-memory.json``;
- peers: ``results-peers-cpu.json`` then ``results-peers-cuda.json``
  (benchmarks/test_bench_peers.py).

Files that are absent are named on stderr and skipped. The tables come from
benchmarks/report.py's functions, so they match ``python benchmarks/report.py FILE``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import report  # noqa: E402

#: (section, JSON file, part of report.split's output, whether the "Run:" line is printed)
SECTIONS = (
    ("occlusion", "results-cpu.json", "occlusion", True),
    ("occlusion", "results-cpu-tuned.json", "occlusion", True),
    ("kernels", "results-cpu.json", "kernel", False),  # same run as the first occlusion table
    ("memory budget", "results-memory.json", "memory", True),
    ("peers", "results-peers-cpu.json", "peers", True),
    ("peers", "results-peers-cuda.json", "peers", True),
)

RENDER = {
    "occlusion": report.occlusion_tables,
    "kernel": report.kernel_tables,
    "memory": report.memory_tables,
    "peers": report.peer_tables,
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=str(Path(__file__).resolve().parent), help="folder of the JSON files")
    args = ap.parse_args(argv)
    folder = Path(args.dir)
    for section, name, part, with_run in SECTIONS:
        path = folder / name
        if not path.is_file():
            print(f"make_results: {path} not found, section {section!r} skips it", file=sys.stderr)
            continue
        data = report.load(str(path))
        groups = report.split(data)[part]
        if not groups:
            continue
        print(f"<!-- generated: {section}, from benchmarks/{name} by benchmarks/make_results.py -->")
        print()
        if with_run:
            report.run_line(data)
        RENDER[part](groups)
    return 0


if __name__ == "__main__":
    sys.exit(main())
