"""The overlay video plays in a real browser: headless Chromium (Debian's ``chromium``, driven by
Playwright with the system executable) loads ``fastviz overlay``'s default ``.mp4`` over HTTP,
decodes it (its first frame drawn to a canvas matches PyAV's decoding), and plays it to the end.

Chromium is a system package (``apt-get install chromium``, done by ``.ci/run``). Without it the
test is skipped, except where ``FASTVIZ_REQUIRE_BROWSER=1`` (CI) makes a missing browser a
failure."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from fastviz import cli
from fastviz.video import open_source

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
REQUIRED = os.environ.get("FASTVIZ_REQUIRE_BROWSER") == "1"

#: Flags for a headless Chromium on a machine without a network or a screen.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--autoplay-policy=no-user-gesture-required",
]

PAGE = '<!doctype html><video id="v" src="overlay.mp4" muted playsinline preload="auto"></video>'

def mean_rgb(element_id: str, width: str = "videoWidth", height: str = "videoHeight") -> str:
    """JavaScript: the mean colour of an element's current picture (a video's frame, an image),
    drawn to a canvas (same origin: not tainted)."""
    return """() => {
  const v = document.getElementById('%s');
  const c = document.createElement('canvas');
  c.width = v.%s; c.height = v.%s;
  const g = c.getContext('2d');
  g.drawImage(v, 0, 0);
  const d = g.getImageData(0, 0, c.width, c.height).data;
  const s = [0, 0, 0];
  for (let i = 0; i < d.length; i += 4) { s[0] += d[i]; s[1] += d[i + 1]; s[2] += d[i + 2]; }
  return s.map(x => x / (d.length / 4));
}""" % (element_id, width, height)


MEAN_RGB = mean_rgb("v")


def _browser():
    if CHROMIUM is None:
        if REQUIRED:
            pytest.fail("FASTVIZ_REQUIRE_BROWSER=1 but no chromium executable is installed")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if REQUIRED:
            pytest.fail("FASTVIZ_REQUIRE_BROWSER=1 but playwright is not installed (pip install -e '.[test]')")
        pytest.skip("playwright is not installed")
    return sync_playwright


class _Server:
    """A loopback HTTP server for one folder, in a thread."""

    def __init__(self, folder: Path):
        class Quiet(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

        handler = functools.partial(Quiet, directory=str(folder))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __exit__(self, *exc) -> bool:
        self.httpd.shutdown()
        self.httpd.server_close()
        return False


def test_default_overlay_plays_in_chromium(tmp_path, capsys):
    sync_playwright = _browser()
    video = tmp_path / "overlay.mp4"
    assert cli.main(["overlay", "-o", str(video), "--max-frames", "10", "-q"]) == 0, capsys.readouterr().err
    (tmp_path / "index.html").write_text(PAGE)
    source = open_source(video)
    first = next(iter(source)).reshape(-1, 3).mean(axis=0)
    with _Server(tmp_path) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000)
        try:
            page = browser.new_page()
            page.goto(f"{url}/index.html")
            page.wait_for_function("document.getElementById('v').readyState >= 2", timeout=20_000)
            size = page.evaluate("() => [document.getElementById('v').videoWidth, document.getElementById('v').videoHeight]")
            assert size == [source.shape[1], source.shape[0]]
            # the browser's decoding of frame 0 agrees with PyAV's (colour conversions differ by a level or so)
            np.testing.assert_allclose(page.evaluate(MEAN_RGB), first, atol=3.0)
            assert page.evaluate("() => document.getElementById('v').play().then(() => 'playing', e => String(e))") == "playing"
            page.wait_for_function("document.getElementById('v').ended", timeout=20_000)
            shown = page.evaluate("() => document.getElementById('v').getVideoPlaybackQuality().totalVideoFrames")
            assert shown == 10
            assert page.evaluate("() => document.getElementById('v').error") is None
        finally:
            browser.close()
