"""A fast fake OpenAI-compatible streaming server on a raw asyncio Protocol (for client benchmarks).

Same behaviour knobs as :mod:`tests.fakes.fake_server` (its :class:`Behaviour`), same chunk format,
but several times cheaper per token than the aiohttp version, so that a benchmark of a *client*
measures the client and not the server. Extras for benchmarking:

- ``stamp``: every chunk carries ``"t_ns"``, the server's ``time.monotonic_ns()`` just before the
  write (CLOCK_MONOTONIC is shared by the processes of one host), so a client's timing error can be
  measured per chunk as arrival − send, free of the server's own scheduling jitter. The first
  content chunk also carries ``"rx_ns"``: the kernel's receive timestamp (SO_TIMESTAMPNS, converted
  to CLOCK_MONOTONIC) of the read that completed the request, i.e. when its last byte reached the
  server's socket, and ``"parsed_ns"``: when the handler had parsed it (user space). With ``stamp``
  the server reads its sockets with ``recvmsg`` to get those stamps (:class:`_StampedServerTransport`);
  where the kernel gives none, ``rx_ns`` is the user-space read time and ``"rx_kernel":false`` says so.
  The server's injected TTFT counts from ``rx_ns``, so ``t_ns`` of the first content chunk − ``rx_ns``
  is the TTFT the server really produced: the ground truth a client's TTFT is judged against.
- ``burst``: with zero delays, write each response in one ``write`` instead of one per token.
- ``GET /stats`` (``?reset=1`` clears): requests, tokens, and how late the server's injected TTFT
  and ITL really were (actual − configured), so a peer's reported TTFT/ITL can be judged against
  what the server actually did.
- precise timers: :class:`PreciseSelector` sleeps in select() (microsecond timeouts) until 0.3 ms
  before a timer and polls the rest, so injected delays land within tens of microseconds instead
  of up to 1 ms late (epoll's millisecond timeout rounds up). Give the server its own core.

Streaming responses use ``Transfer-Encoding: chunked`` like real engines; ``content_length=True``
(with zero delays) sends the same SSE body with a ``Content-Length`` instead.

    python -m tests.fakes.fast_fake_server --port 8000 --tokens 64 --ttft-ms 20 --itl-ms 5 --stamp
"""

from __future__ import annotations

import asyncio
import json
import selectors
import socket
import threading
from dataclasses import dataclass
from time import monotonic_ns as now_ns

from tokenbench.load.http_stream import SO_TIMESTAMPNS, kernel_receive_ns  # the client's own stamp decoding

from .fake_server import Behaviour, server_args


@dataclass
class FastBehaviour(Behaviour):
    stamp: bool = False
    burst: bool = False
    content_length: bool = False
    group: int = 1  # zero delays: tokens per write


class Stats:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.tokens = 0
        self.connections = 0
        self.ttft_late_ns: list[int] = []  # first content write − (receipt + ttft)
        self.itl_late_ns: list[int] = []  # token write − (previous token's write + itl)

    def summary(self) -> dict:
        def pct(xs, q):
            if not xs:
                return None
            s = sorted(xs)
            return s[min(len(s) - 1, int(q / 100 * len(s)))]
        return {"requests": self.requests, "tokens": self.tokens, "connections": self.connections,
                **{f"{name}_late_us_p{q}": (None if pct(xs, q) is None else pct(xs, q) / 1e3)
                   for name, xs in (("ttft", self.ttft_late_ns), ("itl", self.itl_late_ns)) for q in (50, 99)},
                "ttft_late_us_max": max(self.ttft_late_ns) / 1e3 if self.ttft_late_ns else None,
                "itl_late_us_max": max(self.itl_late_ns) / 1e3 if self.itl_late_ns else None}


def _frame(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


_SSE_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
             b"Transfer-Encoding: chunked\r\n\r\n")
_DONE = b"data: [DONE]\n\n"


class _Stream:
    """One streaming response being emitted."""

    __slots__ = ("conn", "b", "n", "i", "chat", "prefix", "usage", "t_recv", "t_parsed", "kernel", "t_next", "t_prev",
                 "handle", "frames")

    def __init__(self, conn, b: FastBehaviour, n: int, chat: bool, model: str, rid: int, t_recv: int,
                 t_parsed: int = 0, kernel: bool = False):
        self.conn, self.b, self.n, self.i, self.chat = conn, b, n, 0, chat
        obj = "chat.completion.chunk" if chat else "text_completion"
        self.prefix = ('{"id":"fake-%d","object":"%s","model":%s,"choices":[' % (rid, obj, json.dumps(model)))
        self.usage = '"usage":{"prompt_tokens":8,"completion_tokens":%d,"total_tokens":%d}' % (n, 8 + n)
        self.t_recv, self.t_parsed, self.kernel = t_recv, t_parsed, kernel
        self.t_prev = 0
        self.handle = None
        self.frames = None  # pre-rendered chunked frames (zero delays, no stamps)

    def chunk(self, i: int, t: int) -> bytes:
        b, last = self.b, i == self.n - 1
        fin = '"length"' if last else "null"
        if self.chat:
            choice = '{"index":0,"finish_reason":%s,"delta":{"content":"t%d "}}' % (fin, i)
        else:
            choice = '{"index":0,"finish_reason":%s,"text":"t%d "}' % (fin, i)
        s = self.prefix + choice + "]"
        if last and b.usage_on_finish_chunk and not b.no_usage:
            s += "," + self.usage
        if b.stamp:
            s += ',"t_ns":%d' % t
            if i == 0:  # when the request's last byte reached the socket (kernel), and when it was parsed
                s += ',"rx_ns":%d,"parsed_ns":%d' % (self.t_recv, self.t_parsed)
                if not self.kernel:
                    s += ',"rx_kernel":false'
        return b"data: " + s.encode() + b"}\n\n"

    def tail(self, t: int) -> bytes:
        out = b""
        if not self.b.no_usage and not self.b.usage_on_finish_chunk:
            s = self.prefix + "]," + self.usage
            if self.b.stamp:
                s += ',"t_ns":%d' % t
            out = b"data: " + s.encode() + b"}\n\n"
        return out + _DONE

    def role(self) -> bytes:
        return (b"data: " + (self.prefix + '{"index":0,"delta":{"role":"assistant","content":""}}]}').encode()
                + b"\n\n")


class _ServerConn(asyncio.Protocol):
    def __init__(self, server: FastFakeServer):
        self.server = server
        self.buf = b""
        self.transport = None
        self.stream: _Stream | None = None
        self.close_after = False
        self.rx_ns = 0  # receive time of the newest bytes read (kernel stamp where there is one)
        self.rx_kernel = False

    def connection_made(self, transport):
        self.transport = transport
        self.server.stats.connections += 1
        self.server.conns.add(self)

    def connection_lost(self, exc):
        self.server.conns.discard(self)
        if self.stream is not None and self.stream.handle is not None:
            self.stream.handle.cancel()
        self.stream = None

    def data_received(self, data, t: int | None = None):
        self.rx_ns, self.rx_kernel = (t, True) if t is not None else (now_ns(), False)
        self.buf += data
        if self.stream is None:
            self._next_request()

    def _next_request(self):
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = buf[:end].split(b"\r\n")
        method, path, _ = head[0].split(b" ", 2)
        hdrs = {}
        for ln in head[1:]:
            k, _, v = ln.partition(b":")
            hdrs[k.strip().lower()] = v.strip()
        n = int(hdrs.get(b"content-length", b"0"))
        if len(buf) < end + 4 + n:
            return
        body, self.buf = buf[end + 4:end + 4 + n], buf[end + 4 + n:]
        self.close_after = hdrs.get(b"connection", b"").lower() == b"close"
        self.server.handle(self, method, path.decode(), body)

    def respond(self, status: int, obj) -> None:
        body = json.dumps(obj).encode()
        reason = {200: "OK", 404: "Not Found"}.get(status, "Error")
        self.transport.write(b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                             % (status, reason.encode(), len(body), body))
        self.done()

    def done(self) -> None:
        self.stream = None
        if self.close_after:
            self.transport.close()
        elif self.buf:
            self._next_request()


class _StampedServerTransport:
    """An accepted socket read with ``recvmsg``, handing each read's kernel receive timestamp
    (CLOCK_REALTIME converted to CLOCK_MONOTONIC) to ``protocol.data_received(data, t)``; the write
    side is the few methods :class:`_ServerConn` uses (write, close after flushing, abort)."""

    def __init__(self, loop, sock: socket.socket, protocol: _ServerConn):
        self._loop, self._sock, self._protocol = loop, sock, protocol
        self._fd = sock.fileno()
        self._closing = self._close_when_flushed = False
        self._wbuf = bytearray()
        protocol.connection_made(self)
        loop.add_reader(self._fd, self._readable)

    def _readable(self) -> None:
        while not self._closing:
            try:
                data, anc, _, _ = self._sock.recvmsg(262144, 64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                return self._lost(exc)
            if not data:
                return self._lost(None)
            self._protocol.data_received(data, kernel_receive_ns(anc))

    def write(self, data: bytes) -> None:
        if self._closing:
            return
        if not self._wbuf:
            try:
                n = self._sock.send(data)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as exc:
                return self._lost(exc)
            if n == len(data):
                return
            data = data[n:]
            self._loop.add_writer(self._fd, self._writable)
        self._wbuf += data

    def _writable(self) -> None:
        try:
            n = self._sock.send(self._wbuf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            return self._lost(exc)
        del self._wbuf[:n]
        if not self._wbuf:
            self._loop.remove_writer(self._fd)
            if self._close_when_flushed:
                self._lost(None)

    def is_closing(self) -> bool:
        return self._closing or self._close_when_flushed

    def close(self) -> None:
        """Close once what was written has gone (as asyncio's transports do)."""
        if self._wbuf:
            self._close_when_flushed = True
        else:
            self._lost(None)

    def abort(self) -> None:
        self._lost(None)

    def _lost(self, exc) -> None:
        if self._closing:
            return
        self._closing = True
        self._loop.remove_reader(self._fd)
        self._loop.remove_writer(self._fd)
        self._sock.close()
        self._loop.call_soon(self._protocol.connection_lost, exc)


class _StampedListener:
    """Accepts connections on a listening socket and wraps each in a :class:`_StampedServerTransport`.
    SO_TIMESTAMPNS is set on the listener too, so a request that lands before the accept is stamped
    (accepted sockets inherit the flag)."""

    def __init__(self, loop, sock: socket.socket, factory):
        self._loop, self._sock, self._factory = loop, sock, factory
        self.sockets = [sock]
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        loop.add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        for _ in range(256):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            _StampedServerTransport(self._loop, conn, self._factory())

    def close(self) -> None:
        if self._sock.fileno() >= 0:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()

    async def wait_closed(self) -> None:
        return None


class FastFakeServer:
    def __init__(self, behaviour: FastBehaviour | None = None):
        self.b = behaviour or FastBehaviour()
        self.stats = Stats()
        self.conns: set[_ServerConn] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._frames: dict = {}

    def frames(self, chat: bool, n: int, model: str) -> list[bytes]:
        """The token frames of a response, rendered once (the id is the same for every response);
        the last one carries the usage chunk, [DONE] and the terminating zero-size chunk."""
        key = (chat, n, model)
        if key not in self._frames:
            st = _Stream(None, self.b, n, chat, model, 0, 0)
            fr = [_frame(st.chunk(i, 0)) for i in range(n)]
            fr[-1] = _frame(st.chunk(n - 1, 0) + st.tail(0)) + b"0\r\n\r\n"
            self._frames[key] = fr
        return self._frames[key]

    def handle(self, conn: _ServerConn, method: bytes, path: str, body: bytes) -> None:
        if method == b"GET":
            if path == "/health":
                return conn.respond(200, {"status": "ok"})
            if path == "/v1/models":  # some peers ask which model is served
                return conn.respond(200, {"object": "list", "data": [{"id": "fake", "object": "model"}]})
            if path.startswith("/stats"):
                s = self.stats.summary()
                if "reset=1" in path:
                    self.stats.reset()
                return conn.respond(200, s)
            return conn.respond(404, {"error": "not found"})
        if path not in ("/v1/chat/completions", "/v1/completions"):
            return conn.respond(404, {"error": "not found"})
        t_parsed = now_ns()
        t_recv = conn.rx_ns or t_parsed  # the read that completed the request (kernel stamp where there is one)
        self.stats.requests += 1
        b = self.b
        if b.status != 200:
            return conn.respond(b.status, {"error": {"message": "injected failure"}})
        try:
            req = json.loads(body)
        except ValueError:
            return conn.respond(400, {"error": {"message": "bad json"}})
        n = min(b.tokens, int(req.get("max_tokens") or b.tokens))
        chat = path.endswith("/chat/completions")
        st = _Stream(conn, b, n, chat, req.get("model", "fake"), self.stats.requests, t_recv, t_parsed, conn.rx_kernel)
        conn.stream = st
        w = conn.transport.write
        if b.content_length or (b.burst and not b.ttft_ms and not b.itl_ms and b.fail_after is None):
            t = now_ns()
            parts = [st.role()] if chat and b.role_chunk else []
            parts += [st.chunk(i, t) for i in range(n)]
            parts.append(st.tail(t))
            self.stats.tokens += n
            payload = b"".join(parts)
            if b.content_length:
                w(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n\r\n%s"
                  % (len(payload), payload))
            else:
                w(_SSE_HEAD + _frame(payload) + b"0\r\n\r\n")
            return conn.done()
        w(_SSE_HEAD + (_frame(st.role()) if chat and b.role_chunk else b""))
        if n == 0:
            w(_frame(st.tail(now_ns())) + b"0\r\n\r\n")
            return conn.done()
        if not (b.stamp or b.ttft_ms or b.itl_ms or b.fail_after is not None):
            st.frames = self.frames(chat, n, req.get("model", "fake"))
            st.handle = self.loop.call_soon(self._emit_fast, st)
            return
        if b.ttft_ms:
            st.t_next = t_recv + int(b.ttft_ms * 1e6)
            st.handle = self.loop.call_at(st.t_next / 1e9, self._emit, st)
        else:
            st.t_next = t_recv
            st.handle = self.loop.call_soon(self._emit, st)

    def _emit_fast(self, st: _Stream) -> None:
        conn = st.conn
        if conn.stream is not st or conn.transport.is_closing():
            return
        i = st.i
        j = min(i + self.b.group, st.n)
        conn.transport.write(st.frames[i] if j == i + 1 else b"".join(st.frames[i:j]))
        self.stats.tokens += j - i
        st.i = j
        if j == st.n:
            return conn.done()
        st.handle = self.loop.call_soon(self._emit_fast, st)

    def _emit(self, st: _Stream) -> None:
        conn, b = st.conn, self.b
        if conn.stream is not st or conn.transport.is_closing():
            return
        i = st.i
        if b.fail_after is not None and i >= b.fail_after:
            conn.stream = None
            conn.transport.close()  # abrupt disconnect (after flushing what was written), as when a server dies
            return
        t = now_ns()
        if i == 0:
            if b.ttft_ms:
                self.stats.ttft_late_ns.append(t - st.t_next)
        elif b.itl_ms:
            self.stats.itl_late_ns.append(t - st.t_next)
        data = st.chunk(i, t)
        self.stats.tokens += 1
        st.i = i + 1
        if st.i == st.n:
            conn.transport.write(_frame(data + st.tail(t)) + b"0\r\n\r\n")
            return conn.done()
        conn.transport.write(_frame(data))
        if b.itl_ms:
            # the next token is due itl after this one was actually sent: lateness does not accumulate
            # into the next gap, so each measured ITL should be itl + (this chunk's lateness delta)
            st.t_next = t + int(b.itl_ms * 1e6)
            st.handle = self.loop.call_at(st.t_next / 1e9, self._emit, st)
        else:
            st.handle = self.loop.call_soon(self._emit, st)

    async def start(self, host: str = "127.0.0.1", port: int = 0, sock: socket.socket | None = None):
        self.loop = asyncio.get_running_loop()
        if self.b.stamp and SO_TIMESTAMPNS is not None:  # kernel receive stamps: our own accept loop
            if sock is None:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((host, port))
                sock.listen(4096)
            self.srv = _StampedListener(self.loop, sock, lambda: _ServerConn(self))
        else:
            kw = {"sock": sock} if sock is not None else {"host": host, "port": port}
            self.srv = await self.loop.create_server(lambda: _ServerConn(self), backlog=4096, reuse_address=True, **kw)
        self.port = self.srv.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self.srv.close()
        for c in list(self.conns):
            c.transport.abort()
        await self.srv.wait_closed()


class PreciseSelector(selectors.SelectSelector):
    """select() with its microsecond timeout, returning 0.3 ms before a timer is due, then polling.

    asyncio passes the time to the next timer as the select timeout. epoll (the default) rounds it
    *up* to whole milliseconds, so timers fire 0-1 ms late; select() takes microseconds, and the
    last 0.3 ms are polled to absorb the wake-up latency. Measured on a busy 2-core VM (a timer
    2.37 ms ahead, 300 times): epoll p50/p99 830/3250 us late, this 28/316 us. Spinning for the
    whole last 1.5 ms did better at p50 (24 us) but worse at p99 (1.6 ms): a process that never
    sleeps loses the scheduler's favour on a shared core. select() handles fds below 1024 only,
    plenty for a benchmark's few hundred connections.
    """

    def select(self, timeout=None):
        if timeout is not None and timeout > 0:
            timeout = timeout - 0.0003 if timeout > 0.0003 else 0
        return super().select(timeout)


def new_loop(precise: bool) -> asyncio.AbstractEventLoop:
    """An event loop whose clock is time.monotonic (as asyncio's is), precise timers optional."""
    return asyncio.SelectorEventLoop(PreciseSelector()) if precise else asyncio.new_event_loop()


def _check_clock() -> None:
    # loop.call_at takes loop.time() seconds; this module schedules with monotonic_ns()/1e9, which
    # is the same clock as asyncio's default loop.time() (time.monotonic)
    import time
    assert abs(time.monotonic() - now_ns() / 1e9) < 0.01


class ThreadedFastFakeServer:
    """A FastFakeServer on a background thread (for tests): ``.port``, ``.url``, ``.stats``, ``.close()``."""

    def __init__(self, behaviour: FastBehaviour, precise: bool = False):
        self.server = FastFakeServer(behaviour)
        self.loop = new_loop(precise)
        ready = threading.Event()

        def serve():
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.server.start())
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()
        ready.wait(10)
        self.port = self.server.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def stats(self) -> Stats:
        return self.server.stats

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def main(argv=None) -> None:
    ap = server_args("python -m tests.fakes.fast_fake_server")
    ap.add_argument("--stamp", action="store_true", help="put the server's send time (monotonic ns) in each chunk")
    ap.add_argument("--burst", action="store_true", help="zero delays: one write per response")
    ap.add_argument("--group", type=int, default=1, help="zero delays: tokens per write (default 1)")
    ap.add_argument("--no-role-chunk", action="store_true")
    ap.add_argument("--precise", action="store_true", help="precise timers: select() with microsecond timeouts, polling the last 0.3 ms")
    ap.add_argument("--cpu", type=int, default=None, help="pin to this CPU (Linux)")
    a = ap.parse_args(argv)
    if a.cpu is not None:
        import os
        os.sched_setaffinity(0, {a.cpu})
    _check_clock()
    b = FastBehaviour(tokens=a.tokens, ttft_ms=a.ttft_ms, itl_ms=a.itl_ms, role_chunk=not a.no_role_chunk,
                      stamp=a.stamp, burst=a.burst, group=a.group)
    loop = new_loop(a.precise)
    asyncio.set_event_loop(loop)
    srv = FastFakeServer(b)
    loop.run_until_complete(srv.start(a.host, a.port))
    print(f"listening on http://{a.host}:{srv.port}", flush=True)
    try:
        loop.run_forever()
    except KeyboardInterrupt:
        pass
    finally:
        loop.run_until_complete(srv.stop())
        loop.close()


if __name__ == "__main__":
    main()
