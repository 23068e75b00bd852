"""The browser view of ``fastviz live --serve HOST:PORT``: an MJPEG stream of the rendered frames
on a small HTTP page with live statistics.

:class:`LiveServer` publishes what it is given and nothing else: the pipeline
(:mod:`fastviz.stream`, driven by :mod:`fastviz.live`) calls :meth:`LiveServer.publish` with
each rendered picture (``uint8 (H, W, 3)`` RGB) and the current statistics (a dict, e.g.
:meth:`fastviz.stream.StreamStats.as_dict`). Each picture is encoded to JPEG once; every
client sees the newest picture.

Routes
------
``/``
    The page: the stream in ``<img id="live" src="/stream.mjpg">`` and a statistics panel
    (``<table id="stats">``, one row ``<tr data-key="KEY">`` per statistic) refreshed from
    ``/stats.json`` every 500 ms. No external resources.
``/stream.mjpg``
    ``multipart/x-mixed-replace; boundary=frame``: one part (``Content-Type: image/jpeg``,
    ``Content-Length``) per published picture. A client that reads slower than pictures are
    published skips to the newest picture; it never builds a backlog. Each client's thread
    sleeps on a :class:`threading.Condition` until a picture is published.
``/frame.jpg``
    The newest picture (503 before the first).
``/stats.json``
    The newest statistics (503 before the first), ``Cache-Control: no-store``.

Anything else is 404. The server binds the loopback interface by default; binding
``0.0.0.0`` (or ``::``) exposes the stream and the statistics, without authentication, to
every machine that can reach this one.

Example
-------
>>> import numpy as np, json, urllib.request
>>> with LiveServer(port=0) as server:
...     server.publish(np.zeros((48, 64, 3), np.uint8), {"shown": 1})
...     json.load(urllib.request.urlopen(server.url + "stats.json"))
{'shown': 1}
"""

from __future__ import annotations

import errno
import html
import http.server
import ipaddress
import json
import logging
import math
import re
import select
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Mapping
from pathlib import PurePath

import cv2
import numpy as np

from .errors import InputError

log = logging.getLogger(__name__)

__all__ = ["LiveServer", "parse_address"]

#: The host a bare port (``"8000"``, ``":8000"``) binds: loopback only.
LOOPBACK = "127.0.0.1"
#: The multipart boundary of ``/stream.mjpg``.
BOUNDARY = "frame"
#: Seconds a client may stall a read or a write before its connection is dropped.
CLIENT_TIMEOUT_S = 10.0
#: Seconds an idle MJPEG client sleeps between checks that it is still connected.
IDLE_CHECK_S = 1.0
#: Seconds :meth:`LiveServer.close` waits for the server's threads.
JOIN_TIMEOUT_S = 2.0
#: ``serve_forever``'s poll interval in seconds: how long ``close`` may wait for the accept loop.
POLL_S = 0.05

_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")


def _format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_address(text: str) -> tuple[str, int]:
    """Parse ``--serve``'s ``HOST:PORT``.

    Accepted forms: ``"127.0.0.1:8000"``, ``"0.0.0.0:8000"`` (every interface: the stream is
    visible to the network), ``"localhost:8000"``, ``"[::1]:8000"`` (IPv6 in brackets),
    ``":8000"`` and ``"8000"`` (loopback, ``127.0.0.1``). Port ``0`` asks the system for a
    free port.

    Parameters
    ----------
    text : str
        The address.

    Returns
    -------
    (str, int)
        The host (without brackets) and the port in ``[0, 65535]``.

    Raises
    ------
    InputError
        Naming the text, for anything else: a missing or non-numeric port, a port outside
        ``[0, 65535]``, an empty or malformed host, an IPv6 address without brackets.

    Examples
    --------
    >>> parse_address(":8000"), parse_address("[::1]:8080")
    (('127.0.0.1', 8000), ('::1', 8080))
    """
    if not isinstance(text, str):
        raise InputError(f"address must be a string HOST:PORT, got {text!r}")
    s = text.strip()

    def bad(why: str) -> InputError:
        return InputError(f"bad address {text!r}: {why} (expected HOST:PORT, e.g. 127.0.0.1:8000, :8000 or [::1]:8000)")

    if s.startswith("["):
        end = s.find("]")
        if end < 0:
            raise bad("unclosed '['")
        host, rest = s[1:end], s[end + 1:]
        if not rest.startswith(":"):
            raise bad("a port is needed after the bracketed host")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise bad(f"{host!r} is not an IPv6 address") from None
    elif ":" in s:
        host, port_text = s.rsplit(":", 1)
        if ":" in host:
            raise bad("write an IPv6 host in brackets, e.g. [::1]:8000")
        if not host:
            host = LOOPBACK
        elif not _HOSTNAME.match(host):
            raise bad(f"{host!r} is not a host name or address")
    else:
        host, port_text = LOOPBACK, s
    if not port_text:
        raise bad("the port is missing")
    if not (port_text.isascii() and port_text.isdigit()):
        raise bad(f"port {port_text!r} is not a number")
    port = int(port_text)
    if port > 65535:
        raise bad(f"port {port} is outside 0..65535")
    return host, port


def _plain(value):
    """``value`` as plain JSON data: numpy scalars and arrays to Python, NaN and infinities to
    ``None``, paths and other objects to strings."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, PurePath):
        return str(value)
    return str(value)


def _disconnected(sock: socket.socket) -> bool:
    """Whether the peer of an idle connection has gone (EOF or an error), without blocking."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):  # closed or shut down under us
        return True


class _Handler(http.server.BaseHTTPRequestHandler):
    """One request; ``self.server.owner`` is the :class:`LiveServer`."""

    server_version = "fastviz"
    protocol_version = "HTTP/1.0"  # one request per connection: the MJPEG response ends with it
    timeout = CLIENT_TIMEOUT_S

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, code: int, body: bytes, content_type: str, no_store: bool = True) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if no_store:
            self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        owner: LiveServer = self.server.owner
        path = urllib.parse.urlsplit(self.path).path
        if path in ("/", "/index.html"):
            self._send(200, owner._page, "text/html; charset=utf-8")
        elif path == "/stream.mjpg":
            self._stream(owner)
        elif path == "/frame.jpg":
            jpeg = owner._latest()[1]
            if jpeg is None:
                self._send(503, b"no frame published yet\n", "text/plain; charset=utf-8")
            else:
                self._send(200, jpeg, "image/jpeg")
        elif path == "/stats.json":
            with owner._cond:
                stats = owner._stats_json
            if stats is None:
                self._send(503, b'{"error": "no statistics published yet"}\n', "application/json")
            else:
                self._send(200, stats, "application/json")
        else:
            self._send(404, f"not found: {path}\n".encode(), "text/plain; charset=utf-8")

    def _stream(self, owner: LiveServer) -> None:
        self.send_response(200)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Pragma", "no-cache")
        self.end_headers()
        seen = 0
        cond = owner._cond
        while True:
            with cond:
                fresh = cond.wait_for(lambda: owner._closed or owner._seq != seen, timeout=IDLE_CHECK_S)
                if owner._closed:
                    break
                seq, jpeg = owner._seq, owner._jpeg
            if not fresh:  # nothing new for a while: end if the client has gone
                if _disconnected(self.connection):
                    return
                continue
            seen = seq
            head = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode()
            self.wfile.write(head + jpeg + b"\r\n")  # blocks while the client is slow: it then skips
        try:
            self.wfile.write(f"--{BOUNDARY}--\r\n".encode())
        except OSError:  # the server shut the connection down first
            pass


class _HTTPServer(http.server.ThreadingHTTPServer):
    """``ThreadingHTTPServer`` with named client threads that :class:`LiveServer` tracks, no
    reverse DNS lookup at bind time, and client disconnects logged at debug level only."""

    daemon_threads = True

    def __init__(self, sockaddr, family: int, owner: LiveServer) -> None:
        self.address_family = family
        self.owner = owner
        super().__init__(sockaddr, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would call socket.getfqdn(host): a DNS lookup that can hang
        # without a network
        http.server.socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def process_request(self, request, client_address) -> None:
        thread = threading.Thread(target=self.process_request_thread, args=(request, client_address),
                                  name="fastviz-serve-client", daemon=True)
        self.owner._track(thread, request)
        thread.start()

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.owner._untrack(request)

    def handle_error(self, request, client_address) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)) or (isinstance(exc, OSError) and self.owner._closed):
            log.debug("client %s went away: %s", client_address, exc)  # normal for a live view
        else:
            log.error("error serving %s", client_address, exc_info=True)


class LiveServer:
    """An HTTP page with an MJPEG stream of the published pictures and their statistics.

    Parameters
    ----------
    host : str
        The interface to bind: ``"127.0.0.1"`` (default, this machine only), ``"::1"``, a
        host name, or ``"0.0.0.0"`` / ``"::"`` (every interface: the stream is then visible,
        without authentication, to the network).
    port : int
        TCP port in ``[0, 65535]``; ``0`` lets the system pick a free one (see :attr:`url`
        after :meth:`start`).
    quality : int
        JPEG quality in ``[1, 100]``.
    title : str
        The page's title (shown as text; HTML is escaped).

    Raises
    ------
    InputError
        For a host that is not a non-empty string, a port or quality out of range.

    Notes
    -----
    :meth:`publish` is thread-safe and cheap for the caller beyond one JPEG encoding; clients
    are served by their own threads (``fastviz-serve-client``), the accept loop by
    ``fastviz-serve``. All of them are daemon threads and :meth:`close` joins them.
    """

    def __init__(self, host: str = LOOPBACK, port: int = 8000, *, quality: int = 85,
                 title: str = "fastviz live") -> None:
        if not isinstance(host, str) or not host.strip():
            raise InputError(f"host must be a non-empty string, got {host!r}")
        if isinstance(port, bool) or not isinstance(port, (int, np.integer)) or not 0 <= port <= 65535:
            raise InputError(f"port must be an integer in 0..65535, got {port!r}")
        if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) or not 1 <= quality <= 100:
            raise InputError(f"quality must be an integer in 1..100, got {quality!r}")
        self.host, self.port, self.quality, self.title = host.strip(), int(port), int(quality), str(title)
        self._page = _page(self.title).encode()
        self._cond = threading.Condition()
        self._seq = 0  # pictures published
        self._jpeg: bytes | None = None
        self._stats_json: bytes | None = None
        self._closed = False
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._clients: dict = {}  # connection socket -> its thread
        self._clients_lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> LiveServer:
        """Bind and serve in a daemon thread named ``fastviz-serve``.

        Returns
        -------
        LiveServer
            ``self``, so that ``server = LiveServer(...).start()`` works.

        Raises
        ------
        InputError
            Naming the address when it cannot be served: ``"cannot serve on 127.0.0.1:8000:
            address already in use"``, an unknown host, an address not on this machine, a
            port that needs privileges.
        RuntimeError
            If the server was started before or is closed.
        """
        if self._closed:
            raise RuntimeError("this LiveServer is closed; make a new one")
        if self._httpd is not None:
            raise RuntimeError("this LiveServer is already started")
        where = _format_address(self.host, self.port)
        try:
            infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except (socket.gaierror, UnicodeError) as exc:
            reason = exc.strerror if isinstance(exc, socket.gaierror) and exc.strerror else str(exc)
            raise InputError(f"cannot serve on {where}: unknown host ({reason})") from None
        family, _, _, _, sockaddr = infos[0]
        try:
            httpd = _HTTPServer(sockaddr, family, self)
        except OSError as exc:
            reasons = {errno.EADDRINUSE: "address already in use",
                       errno.EADDRNOTAVAIL: "address not available on this machine",
                       errno.EACCES: "permission denied (ports below 1024 need privileges)"}
            reason = reasons.get(exc.errno, exc.strerror or str(exc))
            raise InputError(f"cannot serve on {where}: {reason}") from None
        self._httpd = httpd
        self.port = httpd.server_address[1]
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": POLL_S},
                                        name="fastviz-serve", daemon=True)
        self._thread.start()
        log.info("serving %s", self.url)
        return self

    def close(self) -> None:
        """Stop serving: end the open MJPEG responses (each gets its closing boundary), cut the
        remaining connections, close the socket and join the threads (at most
        :data:`JOIN_TIMEOUT_S` seconds). Idempotent; safe before :meth:`start`."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()  # MJPEG clients end their response
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()  # the accept loop ends (within POLL_S): no new clients
        httpd.server_close()
        with self._clients_lock:
            clients = dict(self._clients)
        for sock in clients:  # unblocks reads of idle clients and writes to stalled ones
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        for thread in [self._thread, *clients.values()]:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in [self._thread, *clients.values()] if t.is_alive()]
        if alive:
            log.warning("fastviz serve: %d thread(s) still running after close: %s", len(alive), alive)
        log.info("stopped serving %s", self.url)

    def __enter__(self) -> LiveServer:
        """Start (unless started already: ``with LiveServer(...).start() as s`` works too)."""
        return self if self._httpd is not None else self.start()

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.close()
        return False

    def _track(self, thread: threading.Thread, sock: socket.socket) -> None:
        with self._clients_lock:
            self._clients[sock] = thread

    def _untrack(self, sock: socket.socket) -> None:
        with self._clients_lock:
            self._clients.pop(sock, None)

    def _latest(self) -> tuple[int, bytes | None]:
        with self._cond:
            return self._seq, self._jpeg

    # ------------------------------------------------------------------ public

    @property
    def url(self) -> str:
        """``"http://HOST:PORT/"`` (IPv6 hosts in brackets); the bound port once started."""
        return f"http://{_format_address(self.host, self.port)}/"

    @property
    def published(self) -> int:
        """Pictures published so far."""
        with self._cond:
            return self._seq

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def publish(self, frame: np.ndarray, stats: Mapping | None = None) -> None:
        """Make ``frame`` the newest picture and ``stats`` the newest statistics; wake every
        client.

        The picture is encoded to JPEG once, here (in the caller's thread), and the statistics
        to JSON once. Publishing after :meth:`close` does nothing.

        Parameters
        ----------
        frame : np.ndarray
            ``uint8 (H, W, 3)`` RGB, any strides.
        stats : mapping, optional
            JSON-able statistics, e.g. :meth:`fastviz.stream.StreamStats.as_dict`; numpy
            scalars become numbers, NaN and infinities ``null``, other objects strings.
            ``None`` keeps the statistics published before.

        Raises
        ------
        InputError
            If ``frame`` is not a ``uint8 (H, W, 3)`` array (naming its dtype and shape), or
            ``stats`` is neither a mapping nor ``None``.
        """
        if not isinstance(frame, np.ndarray):
            raise InputError(f"frame must be a uint8 (H, W, 3) RGB numpy array, got {type(frame).__name__}")
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3 or 0 in frame.shape:
            raise InputError(f"frame must be a uint8 (H, W, 3) RGB array, got {frame.dtype} {tuple(frame.shape)}")
        if stats is not None and not isinstance(stats, Mapping):
            raise InputError(f"stats must be a dict or None, got {type(stats).__name__}")
        if self._closed:
            return
        bgr = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR)
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            raise InputError(f"cannot encode a frame of shape {tuple(frame.shape)} as JPEG")
        jpeg = buf.tobytes()
        stats_json = None if stats is None else json.dumps(_plain(stats), allow_nan=False).encode()
        with self._cond:
            self._seq += 1
            self._jpeg = jpeg
            if stats_json is not None:
                self._stats_json = stats_json
            self._cond.notify_all()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "serving" if self._httpd is not None else "not started"
        return f"LiveServer({self.url!r}, {state})"


# --------------------------------------------------------------------------- the page

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
  body {{ margin: 0; font: 14px/1.4 system-ui, sans-serif; background: #111; color: #ddd; }}
  header {{ padding: 8px 16px; background: #1c1c1c; display: flex; gap: 16px; align-items: baseline; }}
  h1 {{ font-size: 16px; margin: 0; font-weight: 600; }}
  #status {{ color: #999; }}
  #status.live {{ color: #6c6; }}
  #status.lost {{ color: #e66; }}
  main {{ display: flex; flex-wrap: wrap; gap: 16px; padding: 16px; align-items: flex-start; }}
  #live {{ max-width: 100%; background: #000; min-width: 200px; min-height: 66px; }}
  #stats {{ border-collapse: collapse; min-width: 260px; }}
  #stats th {{ text-align: left; font-weight: normal; color: #999; padding: 2px 12px 2px 0; }}
  #stats td {{ text-align: right; font-variant-numeric: tabular-nums; padding: 2px 0; }}
  #stats tr.extra th, #stats tr.extra td {{ color: #888; font-size: 12px; }}
</style>
</head>
<body>
<header><h1>{title}</h1><span id="status">waiting for the first frame</span></header>
<main>
  <img id="live" src="/stream.mjpg" alt="live saliency overlay">
  <table id="stats" aria-label="statistics"><tbody></tbody></table>
</main>
<script>
"use strict";
// Known statistics, in this order: [key, label, format]; others follow generically.
const num = (d) => (v) => (typeof v === "number" ? v.toFixed(d) : "-");
const KNOWN = [
  ["method", "method", String],
  ["source", "source", String],
  ["frames_in", "frames in", num(0)],
  ["shown", "shown", num(0)],
  ["dropped", "dropped", num(0)],
  ["processed", "processed", num(0)],
  ["fps", "fps", num(1)],
];
const LATENCY = ["latency_ms_p50", "latency_ms_p95", "latency_ms_p99"];
function generic(v) {{
  if (v === null || v === undefined) return "-";
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toFixed(3).replace(/0+$/, "");
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}}
function row(body, key, label, text, extra) {{
  const tr = document.createElement("tr");
  tr.dataset.key = key;
  if (extra) tr.className = "extra";
  const th = document.createElement("th"), td = document.createElement("td");
  th.textContent = label; td.textContent = text;
  tr.append(th, td); body.append(tr);
}}
function render(stats) {{
  const body = document.createElement("tbody");
  const done = new Set();
  for (const [key, label, fmt] of KNOWN) {{
    if (key in stats) {{ row(body, key, label, fmt(stats[key])); done.add(key); }}
  }}
  if (LATENCY.some((k) => k in stats)) {{
    const ms = LATENCY.map((k) => (typeof stats[k] === "number" ? stats[k].toFixed(0) : "-"));
    row(body, "latency_ms", "latency p50 / p95 / p99", ms.join(" / ") + " ms");
    LATENCY.forEach((k) => done.add(k));
  }}
  for (const [key, value] of Object.entries(stats)) {{
    if (!done.has(key)) row(body, key, key.replace(/_/g, " "), generic(value), true);
  }}
  document.querySelector("#stats tbody").replaceWith(body);
}}
const status = document.getElementById("status");
function setStatus(text, cls) {{ status.textContent = text; status.className = cls; }}
async function poll() {{
  try {{
    const r = await fetch("/stats.json", {{ cache: "no-store" }});
    if (r.ok) {{ render(await r.json()); setStatus("live", "live"); }}
    else if (r.status === 503) setStatus("waiting for the first frame", "");
    else setStatus("statistics unavailable (HTTP " + r.status + ")", "lost");
  }} catch (e) {{
    setStatus("connection lost, retrying", "lost");
  }}
  setTimeout(poll, 500);
}}
// The stream ends when the server stops: try again now and then (a restarted server resumes).
const img = document.getElementById("live");
img.addEventListener("error", () => setTimeout(() => {{ img.src = "/stream.mjpg?t=" + Date.now(); }}, 1000));
poll();
</script>
</body>
</html>
"""


def _page(title: str) -> str:
    return _PAGE.format(title=html.escape(title))
