"""A seeded fault-injecting HTTP proxy in front of the moto S3 server, for the tests.

Each request is forwarded to the real (moto) server, except that a seeded share of them fails the
way S3 and networks fail in production:

* `slowdown`: 503 SlowDown before the request reaches the server (throttling);
* `lost_answer`: the request takes effect, then the answer is a 500 (the client must not take a
  retried PUT's 412 or a second DELETE for a failure of its own);
* `drop_before` / `drop_after`: the connection closes without an answer, before or after the
  request reached the server.

The proxy listens on 127.0.0.1 only and stops with `close()`. It counts what it did in `faults`.
"""

from __future__ import annotations

import http.client
import random
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
              "transfer-encoding", "upgrade", "expect"}
SLOWDOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
            b"<Message>Please reduce your request rate.</Message></Error>")
INTERNAL = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
            b"<Message>We encountered an internal error. Please try again.</Message></Error>")


class FaultProxy:
    """`FaultProxy(upstream_url, rate=0.11, seed=0)`; `.url` is the endpoint to give clients."""

    def __init__(self, upstream: str, *, rate: float = 0.11, seed: int = 0) -> None:
        target = urlsplit(upstream)
        self.host, self.port = target.hostname or "127.0.0.1", target.port or 80
        self.rate = rate
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.faults: Counter[str] = Counter()
        self.enabled = True
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _any(self) -> None:
                proxy.handle(self)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _fault(self) -> str | None:
        with self.lock:
            if not self.enabled or self.rng.random() >= self.rate:
                return None
            kind = self.rng.choice(["slowdown", "lost_answer", "drop_before", "drop_after"])
            self.faults[kind] += 1
            return kind

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        fault = self._fault()
        if fault == "slowdown":
            return self._reply(h, 503, {"Content-Type": "application/xml"}, SLOWDOWN)
        if fault == "drop_before":
            h.close_connection = True
            return
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            headers = {k: v for k, v in h.headers.items() if k.lower() not in HOP_BY_HOP}
            conn.request(h.command, h.path, body=body if length or h.command in ("PUT", "POST") else None,
                         headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            out_headers = {k: v for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP}
            status = resp.status
        finally:
            conn.close()
        if fault == "drop_after":
            h.close_connection = True
            return
        if fault == "lost_answer":
            return self._reply(h, 500, {"Content-Type": "application/xml"}, INTERNAL)
        self._reply(h, status, out_headers, data, head=h.command == "HEAD")

    @staticmethod
    def _reply(
        h: BaseHTTPRequestHandler, status: int, headers: dict[str, str], data: bytes, head: bool = False
    ) -> None:
        h.send_response(status)
        length = str(len(data))
        for k, v in headers.items():
            if k.lower() == "content-length":
                length = v if head else length  # a HEAD answer states the object's size, with no body
            elif k.lower() not in ("server", "date"):
                h.send_header(k, v)
        h.send_header("Content-Length", length)
        h.end_headers()
        if not head:
            h.wfile.write(data)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
