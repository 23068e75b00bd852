"""Regenerate docs/report.png: the top of an audit store's HTML report, as headless Chromium draws it.

    fastviz audit -o audit.zarr                  # the bundled log, default methods (about 27 min on 2 cores)
    python scripts/make_report_figure.py audit.zarr

Needs the ``report`` and ``test`` extras (Jinja2, matplotlib, scikit-learn, Playwright) and Debian's
``chromium``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from fastviz.audit import write_report

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store", type=Path)
    ap.add_argument("-o", "--output", type=Path, default=ROOT / "docs" / "report.png")
    ap.add_argument("--width", type=int, default=1100)
    ap.add_argument("--height", type=int, default=1700)
    args = ap.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("Debian's chromium is needed: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        page_path = Path(tmp) / "report.html"
        write_report(args.store, page_path)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
            try:
                tab = browser.new_page(viewport={"width": args.width, "height": args.height})
                tab.goto(page_path.as_uri(), wait_until="load")
                tab.screenshot(path=str(args.output))
            finally:
                browser.close()
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
