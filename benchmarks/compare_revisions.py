"""Time the same method calls on two checkouts of fastviz, in alternating fresh processes.

Usage: python benchmarks/compare_revisions.py OLD_ROOT NEW_ROOT [--rounds 7]

Make OLD_ROOT with ``git worktree add /tmp/old REV``. Each round runs one process per checkout
(old, then new) that imports fastviz from its root, warms every call up twice and records its
median over repeated calls. The figure printed per call is the median over rounds, with
new / old (above 1: the new code is slower). The processes alternate so that the VM's drift
(+-10-20% from one minute to the next) falls on both sides alike; pytest-benchmark's back-to-back
rounds cannot do that across two versions of the package.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r'''
import sys, time, json, torch
sys.path.insert(0, sys.argv[1])
import fastviz as fv
torch.manual_seed(0)
m = fv.models.load(); frames = fv.data.load_drive_log().frames
x16 = m.preprocess(frames[:16]); x64 = m.preprocess(frames[:64]); x1 = x16[:1]
cases = {"grad_cam b16": lambda: fv.grad_cam(m, x16), "saliency b64": lambda: fv.saliency(m, x64),
         "visual_backprop b64": lambda: fv.visual_backprop(m, x64), "occlusion b1": lambda: fv.occlusion(m, x1)}
out = {}
for k, f in cases.items():
    f(); f()
    n = 2 if k.startswith("occ") else 20
    ts = []
    for _ in range(n):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    ts.sort(); out[k] = ts[len(ts) // 2]
print(json.dumps(out))
'''


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    res: dict[str, list[dict]] = {"old": [], "new": []}
    for _ in range(args.rounds):
        for tag in ("old", "new"):
            proc = subprocess.run([sys.executable, "-c", CHILD, getattr(args, tag)], capture_output=True, text=True,
                                  cwd="/tmp", check=True)
            res[tag].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    mid = args.rounds // 2
    for k in res["old"][0]:
        o = sorted(d[k] for d in res["old"])[mid]
        n = sorted(d[k] for d in res["new"])[mid]
        print(f"{k:22s} old {o * 1e3:9.2f} ms  new {n * 1e3:9.2f} ms  new/old {n / o:5.3f}")


if __name__ == "__main__":
    main()
