#!/usr/bin/env python
"""(Re)make the bundled example drive log ``fastviz/data/carracing_heldout.{mkv,csv}``.

A CarRacing-v3 drive on a track that is in neither the training nor the validation set of the
bundled model (default seed 2024; training used seeds 1-16, validation 101-103), recorded by
``record_drive_log.py``'s expert with its default controller and noise settings, 30 s long
(20-40 s allowed), at most 5 MB in total. ``steering_rad`` is the applied steering command in
radians, positive = steer right, within +-0.4 rad.

Example::

    python scripts/make_example_log.py            # seed 2024, 30 s
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from record_drive_log import add_controller_args, config_from_args, record  # noqa: E402

MAX_BYTES = 5_000_000
DATA_DIR = Path(__file__).resolve().parent.parent / "fastviz" / "data"
NAME = "carracing_heldout"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=(
            "Make the bundled held-out example drive log fastviz/data/carracing_heldout.mkv + .csv "
            "(steering_rad: front-wheel target angle in RADIANS, POSITIVE = STEER RIGHT, +-0.4 rad limit)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--seed", type=int, default=2024, help="track seed; must not be a training or validation seed")
    p.add_argument("--seconds", type=float, default=30.0, help="duration, 20..40 s")
    p.add_argument("--out", type=Path, default=DATA_DIR, help="output folder")
    add_controller_args(p)
    a = p.parse_args(argv)
    if not 20.0 <= a.seconds <= 40.0:
        p.error("--seconds must be within 20..40")
    r = record(a.seed, a.seconds, a.out, config_from_args(a), name=NAME)
    print(f"seed {a.seed}: {r['frames']} frames ({r['seconds']:.1f} s, stop: {r['stop']}), "
          f"{r['bytes'] / 1e6:.2f} MB, {r['wall_s']:.0f} s -> {r['path']}")
    if r["seconds"] < 20.0:
        print(f"error: the drive stopped after {r['seconds']:.1f} s (< 20 s); choose another seed", file=sys.stderr)
        return 1
    if r["bytes"] > MAX_BYTES:
        print(f"error: {r['bytes'] / 1e6:.2f} MB is over the {MAX_BYTES / 1e6:.0f} MB budget; use fewer --seconds", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
