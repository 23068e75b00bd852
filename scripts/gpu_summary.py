"""Merge the outputs of scripts/gpu_check.sh into one JSON of figures: ``OUT/gpu-check.json``.

Holds the device, the versions, each step's exit status and seconds, the tests' counts (from
the JUnit XML), the kernels' benchmark medians (ms) by name, and the interleaved occlusion
figures (``extra_info`` of benchmarks/test_bench_incremental.py) by workload.

Usage: ``python scripts/gpu_summary.py OUT``
"""

from __future__ import annotations

import json
import os
import sys
import xml.etree.ElementTree as ET


def _load(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def main(out: str) -> int:
    import torch

    summary: dict = {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no cuda",
        "torch": torch.__version__, "cuda": torch.version.cuda, "steps": {}, "tests": None,
        "kernels_median_ms": {}, "occlusion": {},
    }
    try:
        import numba

        summary["numba"] = numba.__version__
    except ImportError:
        pass
    try:
        with open(os.path.join(out, "steps.txt")) as f:
            for line in f:
                name, rc, secs = line.split()
                summary["steps"][name] = {"rc": int(rc), "seconds": int(secs)}
    except OSError:
        pass
    try:
        root = ET.parse(os.path.join(out, "tests.xml")).getroot()
        suite = root if root.tag == "testsuite" else root.find("testsuite")
        summary["tests"] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    except (OSError, ET.ParseError, AttributeError):
        pass
    kernels = _load(os.path.join(out, "kernels.json")) or {}
    for b in kernels.get("benchmarks", []):
        summary["kernels_median_ms"][b["name"]] = round(b["stats"]["median"] * 1e3, 4)
    occ = _load(os.path.join(out, "incremental.json")) or {}
    for b in occ.get("benchmarks", []):
        info = b.get("extra_info", {})
        summary["occlusion"][info.get("workload", b["name"])] = info
    with open(os.path.join(out, "gpu-check.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps({k: summary[k] for k in ("device", "steps", "tests")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "gpu-check"))
