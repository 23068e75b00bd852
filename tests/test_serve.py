"""``fastviz.serve``: the live page, its MJPEG stream and statistics over real HTTP (loopback),
a slow client that skips to the newest picture, a prompt close with clients connected, the
address parser and its errors, and the page in headless Chromium (skipped without it, except
where ``FASTVIZ_REQUIRE_BROWSER=1``)."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.error
import urllib.request

import cv2
import numpy as np
import pytest

from fastviz.errors import InputError
from fastviz.serve import LiveServer, parse_address
from test_browser import CHROMIUM, CHROMIUM_ARGS, _browser, mean_rgb

BITS = 8  # a picture's index, written as 8 black/white stripes (JPEG keeps them exactly)


def smooth_frame(h: int = 96, w: int = 128) -> np.ndarray:
    """R ramps left to right, G top to bottom, B constant: little JPEG error."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), np.full_like(x, 90)], axis=-1).astype(np.uint8)


def index_frame(i: int, h: int = 32) -> np.ndarray:
    """Stripe ``k`` (16 px wide, on JPEG's 8 px block grid) is white when bit ``k`` of ``i`` is set."""
    bits = np.array([(i >> k) & 1 for k in range(BITS)], np.uint8) * 255
    return np.repeat(np.repeat(bits, 16)[None, :, None], h, axis=0).repeat(3, axis=2)


def index_of(jpeg: bytes) -> int:
    picture = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert picture is not None and picture.shape == (32, 16 * BITS)
    stripes = picture.reshape(32, BITS, 16).mean(axis=(0, 2))
    assert np.all((stripes < 20) | (stripes > 235)), stripes  # clean stripes: a whole picture
    return int(sum(1 << k for k in range(BITS) if stripes[k] > 128))


def decode_rgb(jpeg: bytes) -> np.ndarray:
    bgr = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert bgr is not None
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def get(url: str) -> tuple[int, dict, bytes]:
    """Status, headers (lower-case names) and body of a GET, also for error statuses."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def open_stream(server: LiveServer, timeout: float = 5.0) -> tuple[http.client.HTTPConnection,
                                                                    http.client.HTTPResponse]:
    """A GET of ``/stream.mjpg`` whose response headers were checked; the parts are still to read."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    conn.request("GET", "/stream.mjpg")
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.getheader("Content-Type") == "multipart/x-mixed-replace; boundary=frame"
    return conn, resp


def read_exactly(resp, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = resp.read(n - len(out))
        assert chunk, f"stream ended after {len(out)} of {n} bytes"
        out += chunk
    return out


def read_part(resp) -> bytes | None:
    """The next MJPEG part's JPEG bytes; None at the closing boundary or the end of the stream."""
    line = resp.readline()
    while line == b"\r\n":
        line = resp.readline()
    if line in (b"", b"--frame--\r\n"):
        return None
    assert line == b"--frame\r\n", line
    headers = {}
    while (line := resp.readline()) != b"\r\n":
        assert line, "stream ended inside a part's headers"
        name, value = line.decode("ascii").split(":", 1)
        headers[name.strip().lower()] = value.strip()
    assert headers["content-type"] == "image/jpeg"
    body = read_exactly(resp, int(headers["content-length"]))
    assert read_exactly(resp, 2) == b"\r\n"  # the part ends exactly where Content-Length says
    return body


class Publisher:
    """Publishes ``make(i)`` (and ``stats(i)``) for i = 1, 2, ... every ``period`` seconds, in a thread."""

    def __init__(self, server: LiveServer, make, period: float, stats=None) -> None:
        self.server, self.make, self.period, self.stats = server, make, period, stats
        self.count = 0
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="test-publisher", daemon=True)

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                i = self.count + 1
                self.server.publish(self.make(i), None if self.stats is None else self.stats(i))
                self.count = i
                self.stop.wait(self.period)
        except BaseException as exc:  # noqa: BLE001 - reported by __exit__
            self.error = exc

    def __enter__(self) -> Publisher:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> bool:
        self.stop.set()
        self.thread.join(5)
        assert not self.thread.is_alive()
        if self.error is not None and exc[0] is None:
            raise self.error
        return False


def serve_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("fastviz-serve") and t.is_alive()]


# --------------------------------------------------------------------------- plain HTTP


def test_routes_frame_stats_page_and_404():
    with LiveServer(port=0, title="fastviz live: <test> & co") as server:
        assert server.url == f"http://127.0.0.1:{server.port}/" and server.port > 0
        assert serve_threads() == ["fastviz-serve"]
        code, _, body = get(server.url + "frame.jpg")
        assert code == 503 and b"no frame" in body
        assert get(server.url + "stats.json")[0] == 503

        frame = smooth_frame()
        stats = {"frames_in": 12, "shown": 10, "dropped": 2, "fps": 24.5, "latency_ms_p50": 12.5,
                 "latency_ms_p99": float("nan"), "method": "occlusion", "source": "drive.mkv",
                 "batch_size": np.int64(4), "mean_batch_size": np.float32(2.5), "batch_fixed_ms": None}
        server.publish(frame[:, ::-1][:, ::-1], stats)  # any strides
        assert server.published == 1

        code, headers, body = get(server.url + "frame.jpg")
        assert code == 200 and headers["content-type"] == "image/jpeg"
        got = decode_rgb(body)
        assert got.shape == frame.shape
        assert np.abs(got.astype(int) - frame).mean() < 3.0  # RGB order kept, within JPEG error

        code, headers, body = get(server.url + "stats.json?t=1")  # query strings are ignored
        assert code == 200 and headers["content-type"] == "application/json"
        assert headers["cache-control"] == "no-store"
        assert json.loads(body) == {**stats, "latency_ms_p99": None, "batch_size": 4, "mean_batch_size": 2.5}

        # publish without stats keeps the statistics, replaces the picture
        server.publish(np.zeros((20, 30, 3), np.uint8))
        assert json.loads(get(server.url + "stats.json")[2])["shown"] == 10
        assert decode_rgb(get(server.url + "frame.jpg")[2]).shape == (20, 30, 3)

        code, headers, page = get(server.url)
        text = page.decode()
        assert code == 200 and headers["content-type"].startswith("text/html")
        assert '<img id="live" src="/stream.mjpg"' in text
        assert '<table id="stats"' in text and '"/stats.json"' in text and "setTimeout(poll, 500)" in text
        assert "<title>fastviz live: &lt;test&gt; &amp; co</title>" in text  # escaped
        assert "http://" not in text and "https://" not in text  # no external resources

        code, _, body = get(server.url + "nothing.here")
        assert code == 404 and b"/nothing.here" in body
    assert server.closed and serve_threads() == []


def test_publish_rejects_bad_frames_and_stats():
    server = LiveServer(port=0)  # publish works without a started server
    for bad, words in [(np.zeros((4, 5, 3), np.float32), ["float32", "(4, 5, 3)"]),
                       (np.zeros((4, 5), np.uint8), ["uint8", "(4, 5)"]),
                       (np.zeros((4, 5, 4), np.uint8), ["(4, 5, 4)"]),
                       (np.zeros((0, 5, 3), np.uint8), ["(0, 5, 3)"]),
                       ([[0, 0, 0]], ["list"])]:
        with pytest.raises(InputError) as err:
            server.publish(bad)
        assert all(w in str(err.value) for w in words), str(err.value)
    with pytest.raises(InputError, match="stats must be a dict"):
        server.publish(np.zeros((4, 5, 3), np.uint8), [1, 2])
    assert server.published == 0
    server.close()
    server.close()  # idempotent, also before start
    server.publish(np.zeros((4, 5, 3), np.uint8))  # after close: ignored
    assert server.published == 0
    with pytest.raises(RuntimeError, match="closed"):
        server.start()


# --------------------------------------------------------------------------- MJPEG


def test_mjpeg_sends_one_part_per_published_frame():
    with LiveServer(port=0) as server:
        conn, resp = open_stream(server)
        try:
            with Publisher(server, index_frame, period=0.03) as pub:
                indices = [index_of(read_part(resp)) for _ in range(6)]
                published = pub.count
        finally:
            conn.close()
    assert 1 <= indices[0] and indices[-1] <= published
    # each part is a newer picture than the one before (no repeats, no going back): content changes
    assert all(a < b for a, b in zip(indices, indices[1:])), indices


def test_slow_client_skips_to_the_newest_frame():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8)  # ~0.7 MB per JPEG: buffers fill
    with LiveServer(port=0) as server:
        server.publish(noise)
        conn, resp = open_stream(server)
        try:
            n = 40
            for i in range(1, n + 1):  # the client reads nothing meanwhile
                server.publish(np.roll(noise, 8 * i, axis=1))
            newest = get(server.url + "frame.jpg")[2]
            parts = []
            while (part := read_part(resp)) != newest:
                assert part is not None and len(parts) <= n
                parts.append(part)
        finally:
            conn.close()
    # a backlog would deliver all n + 1 pictures; only what the socket buffers held arrives before the newest
    assert len(parts) + 1 <= 15, len(parts)


def test_close_ends_streams_promptly_and_frees_the_port():
    rng = np.random.default_rng(1)
    big = rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    server = LiveServer(port=0).start()
    port = server.port
    reader = stalled = None
    try:
        server.publish(index_frame(1))
        reader, stream = open_stream(server)
        assert index_of(read_part(stream)) == 1
        stalled, _ = open_stream(server)  # never reads: its server thread blocks in a write
        idle = socket.create_connection(("127.0.0.1", port), timeout=5)  # sends no request at all
        for i in range(12):
            server.publish(np.roll(big, i, axis=0))
        part = read_part(stream)
        assert part is not None and decode_rgb(part).shape == big.shape
        assert "fastviz-serve-client" in serve_threads()
        started = time.monotonic()
        server.close()
        took = time.monotonic() - started
        assert took < 1.0, f"close took {took:.2f} s"
        assert serve_threads() == []
        # the reading client sees the stream end (after at most the parts already on the way)
        ended = time.monotonic()
        while read_part(stream) is not None:
            assert time.monotonic() - ended < 5
        assert idle.recv(1) == b""
        idle.close()
    finally:
        server.close()
        for conn in (reader, stalled):
            if conn is not None:
                conn.close()
    with LiveServer(port=port) as again:  # the port can be bound again at once
        assert again.port == port
        again.publish(index_frame(7), {"shown": 7})
        assert json.loads(get(again.url + "stats.json")[2]) == {"shown": 7}
    assert serve_threads() == []


# --------------------------------------------------------------------------- addresses


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:8000", ("127.0.0.1", 8000)),
    (":8000", ("127.0.0.1", 8000)),
    ("8000", ("127.0.0.1", 8000)),
    (" 8080 ", ("127.0.0.1", 8080)),
    ("[::1]:8000", ("::1", 8000)),
    ("0.0.0.0:8000", ("0.0.0.0", 8000)),
    ("localhost:0", ("localhost", 0)),
    ("my-host.example:65535", ("my-host.example", 65535)),
])
def test_parse_address(text, expected):
    assert parse_address(text) == expected


@pytest.mark.parametrize("text, words", [
    (":notaport", ["notaport", "not a number"]),
    ("70000", ["70000", "outside 0..65535"]),
    ("127.0.0.1:65536", ["65536"]),
    ("host:", ["the port is missing"]),
    ("", ["the port is missing"]),
    ("127.0.0.1:-1", ["'-1'"]),
    ("::1:8000", ["brackets"]),
    ("[::1]", ["a port is needed"]),
    ("[::1:8000", ["unclosed"]),
    ("[nothost]:80", ["not an IPv6 address"]),
    ("bad host:80", ["'bad host'"]),
    ("localhost", ["'localhost' is not a number"]),
])
def test_parse_address_rejects(text, words):
    with pytest.raises(InputError) as err:
        parse_address(text)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_unservable_addresses_are_input_errors():
    with LiveServer(port=0) as first:
        with pytest.raises(InputError) as err:
            LiveServer("127.0.0.1", first.port).start()
        assert str(err.value) == f"cannot serve on 127.0.0.1:{first.port}: address already in use"
    assert serve_threads() == []
    with pytest.raises(InputError, match=r"cannot serve on 192\.0\.2\.1:0: address not available"):
        LiveServer("192.0.2.1", 0).start()  # TEST-NET-1: not an address of this machine
    for kwargs, word in [({"port": 70000}, "port"), ({"port": -1}, "port"), ({"port": True}, "port"),
                         ({"host": ""}, "host"), ({"quality": 0}, "quality"), ({"quality": 101}, "quality")]:
        with pytest.raises(InputError, match=word):
            LiveServer(**kwargs)


def test_ipv6_loopback():
    if not socket.has_ipv6:
        pytest.skip("no IPv6 support")
    try:
        server = LiveServer("::1", 0).start()
    except InputError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    with server:  # already started: entering does not start it again
        assert server.url == f"http://[::1]:{server.port}/"
        server.publish(index_frame(3))
        assert index_of(get(server.url + "frame.jpg")[2]) == 3


# --------------------------------------------------------------------------- browser

#: The mean RGB of the live image.
MEAN_RGB = mean_rgb("live", "naturalWidth", "naturalHeight")

SHOWN = "() => document.querySelector('#stats tr[data-key=\"shown\"] td').textContent"


def colour_frame(i: int) -> np.ndarray:
    """Solid (7 i mod 256, 128, 255 - that): consecutive reads 1 to 36 frames apart differ."""
    r = (7 * i) % 256
    frame = np.empty((120, 160, 3), np.uint8)
    frame[:] = (r, 128, 255 - r)
    return frame


def colour_stats(i: int) -> dict:
    return {"frames_in": i + 1, "shown": i, "dropped": 1, "fps": 20.0, "latency_ms_p50": 11.6,
            "latency_ms_p95": 20.0, "latency_ms_p99": None, "method": "colours", "source": "a test",
            "batch_size": 3}


def test_page_shows_the_stream_and_statistics_in_chromium():
    sync_playwright = _browser()
    with LiveServer(port=0, title="fastviz live: test") as server, \
            Publisher(server, colour_frame, period=0.05, stats=colour_stats) as pub, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000)
        try:
            page = browser.new_page()
            page.set_default_timeout(15_000)
            page.goto(server.url)
            assert page.title() == "fastviz live: test"
            page.wait_for_function("document.getElementById('live').naturalWidth > 0")
            size = page.evaluate("() => { const v = document.getElementById('live'); "
                                 "return [v.naturalWidth, v.naturalHeight]; }")
            assert size == [160, 120]
            page.wait_for_function("() => document.querySelector('#stats tr[data-key=\"shown\"]') !== null")

            first, shown_first = page.evaluate(MEAN_RGB), int(page.evaluate(SHOWN))
            page.wait_for_timeout(600)
            second, shown_second = page.evaluate(MEAN_RGB), int(page.evaluate(SHOWN))
            for rgb in (first, second):  # a whole published picture: (r, 128, 255 - r)
                assert abs(rgb[1] - 128) < 4 and abs(rgb[0] + rgb[2] - 255) < 8, rgb
            assert abs(second[0] - first[0]) > 5, (first, second)  # the image runs on
            assert 0 < shown_first < shown_second <= pub.count  # and so do the statistics

            panel = page.inner_text("#stats")
            assert "colours" in panel and "a test" in panel
            assert page.evaluate("() => document.querySelector('#stats tr[data-key=\"fps\"] td').textContent") == "20.0"
            assert page.evaluate("() => document.querySelector('#stats tr[data-key=\"latency_ms\"] td').textContent") \
                == "12 / 20 / - ms"
            assert page.evaluate("() => document.querySelector('#stats tr[data-key=\"batch_size\"]').innerText") \
                == "batch size\t3"
            assert page.inner_text("#status") == "live"
        finally:
            browser.close()
    assert serve_threads() == []
