#!/usr/bin/env python3
"""Does a server close its keep-alive connection after a streamed response, and how soon?

Sends ``--requests`` streamed chat completions, each on a fresh connection, reads each response to
its terminating chunk, then polls the socket with a non-blocking MSG_PEEK until the server's FIN
(EOF) arrives or ``--wait-ms`` pass. Prints the response's Connection / Keep-Alive headers and the
delay from the response's end to the FIN (p50, max). This is what tokenbench.load.http_stream's
``StreamPool.RIPE_NS`` is set against: llama-server b11434 on this machine closed every streamed
response's connection without ``Connection: close``, its FIN 0.07-0.28 ms after the last chunk
(60 requests, idle host).

    python tests/perf/keepalive_probe.py --url http://127.0.0.1:8080 --model m --requests 20
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import time
from urllib.parse import urlsplit


def probe(host: str, port: int, model: str, wait_ms: float) -> tuple[dict[str, str], float | None]:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8,
                       "stream": True}).encode()
    req = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
           f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    with socket.create_connection((host, port)) as s:
        s.sendall(req)
        buf = b""
        while b"\r\n\r\n" not in buf or not buf.endswith(b"\r\n0\r\n\r\n"):  # chunked: the last-chunk marker
            data = s.recv(65536)
            if not data:
                break
            buf += data
        end = time.monotonic_ns()
        head = buf.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head)}
        while (time.monotonic_ns() - end) / 1e6 < wait_ms:
            try:
                s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)  # b"": the FIN is here
                return headers, (time.monotonic_ns() - end) / 1e6
            except BlockingIOError:
                time.sleep(0.00002)
        return headers, None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--model", default="m")
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--wait-ms", type=float, default=100.0, help="how long to wait for the FIN")
    a = ap.parse_args()
    u = urlsplit(a.url)
    delays, headers = [], {}
    for _ in range(a.requests):
        headers, d = probe(u.hostname, u.port or 80, a.model, a.wait_ms)
        delays.append(d)
    closed = [d for d in delays if d is not None]
    print(f"server headers: Connection={headers.get('connection', '(none)')!r} "
          f"Keep-Alive={headers.get('keep-alive', '(none)')!r}")
    print(f"closed after the response: {len(closed)} of {len(delays)} (waited up to {a.wait_ms:g} ms)")
    if closed:
        print(f"FIN after the response's end: p50 {statistics.median(closed):.3f} ms, min {min(closed):.3f} ms, "
              f"max {max(closed):.3f} ms")


if __name__ == "__main__":
    main()
