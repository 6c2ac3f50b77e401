"""A small, fast HTTP/1.1 client transport for streaming Server-Sent Events, on raw asyncio Protocols.

It does one thing: POST a JSON body to an OpenAI-compatible server (over loopback or a LAN) and
deliver each ``data:`` line of the ``text/event-stream`` response as it arrives. No aiohttp in the
hot path: one :class:`asyncio.Protocol` per connection parses the response incrementally inside
``data_received`` and calls ``on_event`` synchronously, so the timestamp of an event is the time of
the socket read that carried it, not the time a coroutine got around to it.

Timing: on Linux every socket read carries the kernel's receive timestamp (SO_TIMESTAMPNS: when
the bytes reached the socket, converted to CLOCK_MONOTONIC), so an event's time does not depend on
when the event loop got round to reading it; elsewhere ``time.monotonic_ns()`` is taken once per
read. Every event parsed from a read carries the read's time (TCP reports the newest bytes'). The result also records when the status line and headers
were complete (``headers_ns``), the first body byte (``first_byte_ns``) and the end (``end_ns``).

Framing: ``Content-Length`` bodies, ``Transfer-Encoding: chunked`` bodies (with trailers) and bodies
delimited by connection close. A connection goes back to the keep-alive pool only when its
response was read to the end and neither side asked to close; anything else closes it.

Errors are results, not exceptions: ``error`` is ``None``, ``'timeout'``, ``'disconnect: ...'``
(connection refused or dropped; every event received before the drop has been delivered) or
``'protocol: ...'`` (a response that is not valid HTTP/1.1). Cancelling the awaiting task closes
the connection and re-raises :class:`asyncio.CancelledError`.

    pool = StreamPool("127.0.0.1", 8000)
    res = await pool.post_sse("/v1/chat/completions", body, lambda t, data: ..., timeout_s=60)
    await pool.close()
"""

from __future__ import annotations

import asyncio
import collections
import platform
import socket
import struct
import sys
import time
from typing import Callable

from time import monotonic_ns as _now

__all__ = ["StreamResult", "StreamPool"]

MAX_HEAD = 64 * 1024  # status line + headers
MAX_LINE = 16 * 1024 * 1024  # one SSE line
MAX_ERROR_BODY = 64 * 1024  # kept of a non-2xx (or non-event-stream) body

# response body framing
_LENGTH, _CHUNKED, _UNTIL_CLOSE, _NONE = 0, 1, 2, 3
# chunked decoder states
_C_SIZE, _C_DATA, _C_DATA_END, _C_TRAILER = 0, 1, 2, 3


class StreamResult:
    """What one request got. Times are ``time.monotonic_ns()``; ``None`` where it never happened."""

    __slots__ = ("status", "headers", "started_ns", "connected_ns", "written_ns", "headers_ns", "first_byte_ns",
                 "end_ns", "body", "error", "events", "connection", "attempts", "first_attempt_ns")

    def __init__(self) -> None:
        self.status: int | None = None
        self.started_ns = _now()  # this attempt began: a connection is taken from the pool or opened
        self.connected_ns: int | None = None  # the connection was ready
        self.written_ns: int | None = None  # the last byte of the request was handed to the kernel
        self.headers: dict[str, str] = {}  # lower-cased names; a repeated header keeps its last value
        self.headers_ns: int | None = None
        self.first_byte_ns: int | None = None
        self.end_ns: int | None = None
        self.body: bytes = b""  # the raw body (capped) of a non-2xx or non-event-stream response
        self.error: str | None = None
        self.events = 0  # data: events delivered
        self.connection: str | None = None  # "new", "reused" (kept alive from an earlier request) or "warm"
        self.attempts = 1  # 2 when the pooled connection had been closed by the server and was replaced
        self.first_attempt_ns: int | None = None  # when the failed first attempt began (attempts == 2)

    @property
    def reused(self) -> bool:
        return self.connection == "reused"

    def __repr__(self) -> str:
        return (f"StreamResult(status={self.status}, events={self.events}, error={self.error!r}, "
                f"body={self.body[:80]!r})")


class _ProtocolError(Exception):
    pass


class _Conn(asyncio.Protocol):
    """One HTTP/1.1 connection; handles one request at a time."""

    def __init__(self, pool: StreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle = False  # parked in the pool
        self.done: asyncio.Future | None = None  # set when the current response ends (or fails)
        self.res: StreamResult | None = None
        self.on_event: Callable[[int, bytes], None] | None = None
        self._lost_waiter: asyncio.Future | None = None
        self.uses = 0  # requests sent on this connection
        self.lost = False  # connection_lost has run
        self.warm = False  # opened ahead of a phase (StreamPool.warm), not for a request
        self.idle_since = 0  # when it went back to the pool

    # -- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes, t: int | None = None) -> None:
        if t is None:
            t = _now()
        res = self.res
        if res is None:  # bytes while idle: the server is talking out of turn; do not reuse
            self._close()
            return
        if res.written_ns is not None and t < res.written_ns:
            # the response's kernel receive stamp precedes the stamp taken after send() returned: the
            # server answered within microseconds and the written stamp came late; the request was
            # written no later than the first byte of its answer arrived
            res.written_ns = t
        try:
            if self._in_head:
                data = self._head(t, data)
                if data is None:
                    return
            if data:
                self._body(t, data)
        except _ProtocolError as exc:
            self._fail(t, f"protocol: {exc}")
        except Exception as exc:  # an on_event callback that raised: stop, close, report it
            self._fail(t, f"protocol: on_event raised {type(exc).__name__}: {exc}")

    def eof_received(self):
        return False  # close the transport; connection_lost does the rest

    def connection_lost(self, exc) -> None:
        self.closed = self.lost = True
        if self.idle:
            self.pool._forget_idle(self)
        if self.res is not None and self.done is not None and not self.done.done():
            t = _now()
            if not self._in_head and self._framing == _UNTIL_CLOSE:  # the close is the end of this body
                if self._sse and self._line:  # a last line without its newline
                    line, self._line = self._line, b""
                    try:
                        self._deliver(t, [line])
                    except Exception as err:  # noqa: BLE001 - on_event's own failure
                        self._fail(t, f"protocol: on_event raised {type(err).__name__}: {err}")
                if self.res is not None:
                    self._finish(t, reuse=False)
            else:
                where = "before the response" if self._in_head and not self._head_buf else "mid-response"
                why = f"{type(exc).__name__}: {exc}" if exc else "connection closed by the server"
                self._fail(t, f"disconnect: {where}: {why}")
        if self._lost_waiter is not None and not self._lost_waiter.done():
            self._lost_waiter.set_result(None)

    # -- request lifecycle --------------------------------------------------------------------
    def start(self, res: StreamResult, on_event, done: asyncio.Future, request: bytes) -> None:
        self.res, self.on_event, self.done = res, on_event, done
        self._in_head = True
        self._head_buf = b""
        self._framing = _NONE
        self._remaining = 0  # Content-Length left, or bytes left in the current chunk
        self._cstate = _C_SIZE
        self._cbuf = b""  # partial chunk-size / trailer line
        self._line = b""  # partial SSE line
        self._sse = True
        self._keep = True
        if self.transport.write(request) is not False:  # all of it handed to the kernel now
            res.written_ns = _now()

    def written(self) -> None:
        """The transport handed the rest of a request that did not fit the socket buffer at once."""
        if self.res is not None and self.res.written_ns is None:
            self.res.written_ns = _now()

    def _head(self, t: int, data: bytes):
        """Consume status line and headers; return the rest of ``data`` (body bytes) or None."""
        buf = self._head_buf + data if self._head_buf else data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    raise _ProtocolError("response head larger than 64 KiB")
                self._head_buf = buf
                return None
            head, buf = buf[:end], buf[end + 4:]
            lines = head.split(b"\r\n")
            parts = lines[0].split(b" ", 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
                raise _ProtocolError(f"bad status line {lines[0][:100]!r}")
            status = int(parts[1])
            if 100 <= status < 200 and status != 101:
                continue  # 100 Continue and friends: an interim head, the real one follows
            break
        res = self.res
        res.status = status
        res.headers_ns = t
        hdrs = res.headers
        for ln in lines[1:]:
            name, sep, value = ln.partition(b":")
            if not sep:
                raise _ProtocolError(f"bad header line {ln[:100]!r}")
            hdrs[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        conn = hdrs.get("connection", "").lower()
        if parts[0] == b"HTTP/1.0":
            self._keep = "keep-alive" in conn
        elif "close" in conn:
            self._keep = False
        te = hdrs.get("transfer-encoding", "").lower()
        if status in (204, 304):
            self._framing = _NONE
        elif te:
            if te.rsplit(",", 1)[-1].strip() != "chunked":
                raise _ProtocolError(f"unsupported Transfer-Encoding {te!r}")
            self._framing = _CHUNKED
        elif "content-length" in hdrs:
            try:
                self._remaining = int(hdrs["content-length"])
            except ValueError:
                raise _ProtocolError(f"bad Content-Length {hdrs['content-length']!r}") from None
            self._framing = _LENGTH
        else:
            self._framing = _UNTIL_CLOSE
            self._keep = False
        self._sse = 200 <= status < 300 and "text/event-stream" in hdrs.get("content-type", "")
        self._in_head = False
        self._head_buf = b""
        if self._framing == _NONE or (self._framing == _LENGTH and self._remaining == 0):
            if buf:
                raise _ProtocolError("bytes after a response without a body")
            self._finish(t, reuse=self._keep)
            return None
        return buf

    def _body(self, t: int, data: bytes) -> None:
        framing = self._framing
        if framing == _CHUNKED:
            payload, end, extra = self._dechunk(data)
        elif framing == _LENGTH:
            n = self._remaining
            if len(data) >= n:
                payload, extra = data[:n], len(data) - n
                self._remaining, end = 0, True
            else:
                payload, end, extra = data, False, 0
                self._remaining = n - len(data)
        else:  # until close
            payload, end, extra = data, False, 0
        res = self.res
        if payload:
            if res.first_byte_ns is None:
                res.first_byte_ns = t
            if self._sse:
                self._feed(t, payload)
            elif len(res.body) < MAX_ERROR_BODY:
                res.body = (res.body + payload)[:MAX_ERROR_BODY]
        if end:
            if extra:
                raise _ProtocolError(f"{extra} bytes after the end of the response")
            if self._sse and self._line:  # a last line without its newline
                line, self._line = self._line, b""
                self._deliver(t, [line])
            self._finish(t, reuse=self._keep)

    def _dechunk(self, data: bytes):
        """Decode chunked framing; return (payload, ended, extra_bytes_after_end)."""
        out = []
        pos, n = 0, len(data)
        state = self._cstate
        find = data.find
        while pos < n:
            if state == _C_SIZE:
                nl = find(b"\n", pos)
                if nl < 0:
                    self._stash(data[pos:])
                    break
                line = data[pos:nl]
                if self._cbuf:
                    line, self._cbuf = self._cbuf + line, b""
                pos = nl + 1
                try:
                    size = int(line.split(b";", 1)[0] if b";" in line else line, 16)  # int() strips the \r
                except ValueError:
                    raise _ProtocolError(f"bad chunk size {line[:40]!r}") from None
                if size < 0:
                    raise _ProtocolError(f"bad chunk size {line[:40]!r}")
                if not size:
                    state = _C_TRAILER
                    continue
                end = pos + size
                if end + 2 <= n and data[end:end + 2] == b"\r\n":  # the common case: all of it is here
                    out.append(data[pos:end])
                    pos = end + 2
                    continue
                self._remaining = size
                state = _C_DATA
            elif state == _C_DATA:
                take = self._remaining
                if n - pos >= take:
                    out.append(data[pos:pos + take])
                    pos += take
                    self._remaining = 0
                    state = _C_DATA_END
                else:
                    out.append(data[pos:])
                    self._remaining = take - (n - pos)
                    pos = n
            else:  # the CRLF after chunk data, or a trailer line (until an empty one)
                nl = find(b"\n", pos)
                if nl < 0:
                    self._stash(data[pos:])
                    break
                line = data[pos:nl]
                if self._cbuf:
                    line, self._cbuf = self._cbuf + line, b""
                pos = nl + 1
                if line.endswith(b"\r"):
                    line = line[:-1]
                if state == _C_DATA_END:
                    if line:
                        raise _ProtocolError("chunk data longer than its size")
                    state = _C_SIZE
                elif not line:
                    self._cstate = _C_SIZE
                    payload = out[0] if len(out) == 1 else b"".join(out)
                    return payload, True, n - pos
        self._cstate = state
        payload = out[0] if len(out) == 1 else b"".join(out)
        return payload, False, 0

    def _stash(self, part: bytes) -> None:
        self._cbuf += part
        if len(self._cbuf) > 4096:
            raise _ProtocolError("chunk-size line too long")

    def _feed(self, t: int, payload: bytes) -> None:
        if self._line:
            payload = self._line + payload
        lines = payload.split(b"\n")
        self._line = lines.pop()
        if len(self._line) > MAX_LINE:
            raise _ProtocolError("SSE line longer than 16 MiB")
        if lines:
            self._deliver(t, lines)

    def _deliver(self, t: int, lines) -> None:
        on_event = self.on_event
        k = 0
        try:
            for line in lines:
                if line.startswith(b"data:"):
                    data = line[6:] if line[5:6] == b" " else line[5:]
                    if data.endswith(b"\r"):
                        data = data[:-1]
                    k += 1
                    on_event(t, data)
                # everything else: blank separators, ":" comments, event:/id:/retry: fields
        finally:
            self.res.events += k

    def _finish(self, t: int, reuse: bool) -> None:
        res, done = self.res, self.done
        res.end_ns = t
        self.res = self.on_event = self.done = None
        if not reuse:
            self._close()
        if done is not None and not done.done():
            done.set_result(reuse and not self.closed)

    def _fail(self, t: int, error: str) -> None:
        res, done = self.res, self.done
        if res is not None:
            if res.error is None:
                res.error = error
            res.end_ns = t
        self.res = self.on_event = self.done = None
        self._close()
        if done is not None and not done.done():
            done.set_result(False)

    def _close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()  # no half-close games: the connection is not reusable

    async def wait_closed(self) -> None:
        if self.transport is None or self.lost:
            return
        self._lost_waiter = asyncio.get_running_loop().create_future()
        self._close()
        try:
            await asyncio.wait_for(self._lost_waiter, 1.0)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            pass


# Kernel receive timestamps: the time the bytes reached the socket, not the time the event loop got
# round to reading them. When 512 streams each receive a token in the same instant, the last read
# of that burst happens milliseconds later; its kernel timestamp does not.
# TCP reports the arrival time of the newest bytes in the read (loopback coalesces segments).
# Python's socket module does not export the constant: SO_TIMESTAMPNS(_OLD) is 35 on Linux's
# asm-generic architectures (and SCM_TIMESTAMPNS is the same number).
_GENERIC_LINUX = {"x86_64", "aarch64", "arm64", "riscv64", "ppc64le", "s390x"}
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", None) or (
    35 if sys.platform.startswith("linux") and platform.machine() in _GENERIC_LINUX else None)
_SCM_TIMESTAMPNS = SO_TIMESTAMPNS
_TS = struct.Struct("@qq")  # struct timespec on 64-bit Linux


def kernel_receive_ns(ancdata) -> int | None:
    """The kernel receive timestamp (SCM_TIMESTAMPNS) in a ``recvmsg``'s ancillary data, as
    CLOCK_MONOTONIC ns; None if it carries none."""
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == _SCM_TIMESTAMPNS and len(payload) >= _TS.size:
            sec, nsec = _TS.unpack_from(payload)
            # realtime -> monotonic, with the offset read now (immune to clock steps between reads)
            return sec * 1_000_000_000 + nsec - (time.time_ns() - _now())
    return None


class _StampedTransport:
    """The few transport methods _Conn uses, over a non-blocking TCP socket read with recvmsg,
    handing each read's kernel receive timestamp (converted to CLOCK_MONOTONIC) to the protocol."""

    def __init__(self, loop, sock: socket.socket, protocol: _Conn):
        self._loop, self._sock, self._protocol = loop, sock, protocol
        self._fd = sock.fileno()
        self._closing = False
        self._wbuf = bytearray()
        protocol.connection_made(self)
        loop.add_reader(self._fd, self._readable)

    def _readable(self) -> None:
        sock, proto = self._sock, self._protocol
        while not self._closing:
            try:
                data, anc, _, _ = sock.recvmsg(262144, 64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._lost(exc)
                return
            if not data:
                self._lost(None)
                return
            proto.data_received(data, kernel_receive_ns(anc))

    def _writable(self) -> None:
        try:
            n = self._sock.send(self._wbuf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(exc)
            return
        del self._wbuf[:n]
        if not self._wbuf:
            self._loop.remove_writer(self._fd)
            self._protocol.written()

    def write(self, data: bytes) -> bool:
        """Send ``data``; True if the kernel took all of it now, False if the rest waits for the
        socket to drain (the protocol's ``written`` is called when it has gone)."""
        if self._closing:
            return False
        if not self._wbuf:
            try:
                n = self._sock.send(data)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as exc:
                self._lost(exc)
                return False
            if n == len(data):
                return True
            data = data[n:]
            self._loop.add_writer(self._fd, self._writable)
        self._wbuf += data
        return False

    def peer_closed(self) -> bool:
        """Has the peer closed (or talked out of turn on) this idle connection? A non-blocking
        MSG_PEEK: an EOF (or bytes) already in the kernel, before the event loop has seen it."""
        if self._closing:
            return True
        try:
            self._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)  # b"": EOF; bytes: out of turn
            return True
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True

    def is_closing(self) -> bool:
        return self._closing

    def _lost(self, exc) -> None:
        if self._closing:
            return
        self._closing = True
        self._loop.remove_reader(self._fd)
        self._loop.remove_writer(self._fd)
        self._sock.close()
        self._loop.call_soon(self._protocol.connection_lost, exc)

    def abort(self) -> None:
        self._lost(None)

    close = abort


async def _open_stamped(loop, host: str, port: int, protocol: _Conn) -> _StampedTransport:
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    family, type_, proto, _, addr = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        await loop.sock_connect(sock, addr)
    except BaseException:
        sock.close()
        raise
    return _StampedTransport(loop, sock, protocol)


class StreamPool:
    """A keep-alive pool of HTTP/1.1 connections to one (host, port), for streaming POSTs.

    ``limit`` caps the number of open connections (``None``: unbounded, one per concurrent request);
    requests beyond it wait for a free connection, and that wait counts towards their timeout.
    """

    # A server that closes a connection after each streamed response without saying so (llama-server
    # does) delivers its FIN 0.07-0.3 ms after the response's last byte on an idle loopback host, later
    # on a busy one (tests/perf/keepalive_probe.py): a connection reused sooner may be one the server
    # is closing. Until the server has kept one alive for a second request, an idle connection is
    # reused only once it has been idle this long (a wide margin: on a busy host the FIN comes later).
    RIPE_NS = 20_000_000

    def __init__(self, host: str, port: int, headers: dict[str, str] | None = None, limit: int | None = None,
                 kernel_timestamps: bool = True):
        self.host, self.port = host, port
        # SO_TIMESTAMPNS where the OS has it (Linux); else each read is stamped when it is read
        self.kernel_timestamps = kernel_timestamps and SO_TIMESTAMPNS is not None
        self.limit = limit
        self._idle: collections.deque[_Conn] = collections.deque()
        self._all: set[_Conn] = set()
        self._waiters: collections.deque[asyncio.Future] = collections.deque()
        self._connecting = 0
        self.connections_opened = 0  # how many TCP connections this pool has made
        self.keepalive_seen = False  # the server answered a request on a reused connection
        self.keepalive_timeout_ns: int | None = None  # from the server's Keep-Alive header, less a margin
        hostport = host if port == 80 else f"{host}:{port}"
        if ":" in host and not host.startswith("["):  # IPv6 literal
            hostport = f"[{host}]" if port == 80 else f"[{host}]:{port}"
        h = {"Host": hostport, "User-Agent": "tokenbench", "Accept": "text/event-stream",
             "Content-Type": "application/json"}
        for k, v in (headers or {}).items():  # caller's headers win, case-insensitively
            for old in [o for o in h if o.lower() == k.lower()]:
                del h[old]
            h[k] = v
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in h.items()).encode("latin-1")
        self._closed = False

    # -- connections ---------------------------------------------------------------------
    def _take_idle(self) -> _Conn | None:
        """An idle connection fit to carry a request, most recently used first (the warmest), or None.

        Fit: still open by every sign the kernel gives (a peek finds no EOF), inside the server's
        ``Keep-Alive: timeout``, and either never used (warm), or idle long enough for a server that
        closes after each response to have been seen doing so (``RIPE_NS``), or on a server that
        has already kept a connection alive for a second request. Unfit closed ones are dropped;
        unripe ones wait in the pool."""
        if not self._idle:
            return None
        now = _now()
        for i in range(len(self._idle) - 1, -1, -1):
            conn = self._idle[i]
            if conn.closed or conn.transport.is_closing() or self._stale(conn, now):
                del self._idle[i]
                conn.idle = False
                conn._close()
                self._all.discard(conn)
                continue
            if not conn.uses or self.keepalive_seen or now - conn.idle_since >= self.RIPE_NS:
                del self._idle[i]
                conn.idle = False
                return conn
        return None

    def _stale(self, conn: _Conn, now: int) -> bool:
        if self.keepalive_timeout_ns is not None and now - conn.idle_since > self.keepalive_timeout_ns:
            return True
        peek = getattr(conn.transport, "peer_closed", None)
        return peek is not None and peek()

    async def _acquire(self) -> _Conn:
        conn = self._take_idle()
        if conn is not None:
            return conn
        if self.limit is not None and len(self._all) + self._connecting >= self.limit:
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                conn = await fut
            except BaseException:
                if fut.done() and not fut.cancelled():  # handed a connection as we were cancelled
                    self._release(fut.result(), True)
                else:
                    try:
                        self._waiters.remove(fut)
                    except ValueError:
                        pass
                raise
            if conn is not None:
                return conn
            return await self._acquire()  # a slot freed up: open (or take) one
        return await self._connect()

    async def _connect(self) -> _Conn:
        if self._closed:
            raise RuntimeError("StreamPool is closed")
        self._connecting += 1
        try:
            loop = asyncio.get_running_loop()
            if self.kernel_timestamps:
                conn = _Conn(self)
                await _open_stamped(loop, self.host, self.port, conn)
            else:
                _, conn = await loop.create_connection(lambda: _Conn(self), self.host, self.port)
        finally:
            self._connecting -= 1
        self.connections_opened += 1
        self._all.add(conn)
        return conn

    def _release(self, conn: _Conn, reuse: bool) -> None:
        if not reuse or conn.closed or self._closed:
            conn._close()
            self._all.discard(conn)
            while self._waiters:  # a slot is free: wake one waiter to open a connection
                fut = self._waiters.popleft()
                if not fut.done():
                    fut.set_result(None)
                    break
            return
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(conn)
                return
        conn.idle = True
        conn.idle_since = _now()
        self._idle.append(conn)

    def _forget_idle(self, conn: _Conn) -> None:
        conn.idle = False
        try:
            self._idle.remove(conn)
        except ValueError:
            pass
        self._all.discard(conn)

    # -- the API -----------------------------------------------------------------------------
    async def post_sse(self, path: str, body: bytes, on_event: Callable[[int, bytes], None],
                       timeout_s: float) -> StreamResult:
        """POST ``body`` (JSON) to ``path``; call ``on_event(arrival_ns, data)`` for each ``data:`` line.

        Returns when the response has ended, failed, or ``timeout_s`` (connect included) ran out.
        A pooled connection (kept alive, or opened ahead by ``warm``) that drops before a single
        response byte is one the server had already closed (llama-server closes after each streamed
        response, without saying so): the request got no answer, so it is resent once over a new
        connection, as browsers do for a reused socket (RFC 9112 9.3.1). ``attempts`` says so, and the
        result's timeline is the second attempt's; nothing else is retried. ``_take_idle`` keeps
        such resends rare: it peeks for the server's EOF and waits for a connection to ripen.
        """
        res = await self._post(path, body, on_event, timeout_s, fresh=False)
        if res.connection in ("reused", "warm") and res.first_byte_ns is None and \
                (res.error or "").startswith("disconnect"):
            first = res.started_ns
            res = await self._post(path, body, on_event, timeout_s, fresh=True)
            res.attempts, res.first_attempt_ns = 2, first  # the timeline is the second attempt's
        return res

    async def warm(self, n: int, timeout_s: float = 10.0) -> int:
        """Open connections until ``n`` are idle in the pool (ahead of a phase, so that its first
        requests do not all open connections at once); returns how many were opened."""
        need = n - len(self._idle)
        if self.limit is not None:
            need = min(need, self.limit - len(self._all) - self._connecting)
        if need <= 0:
            return 0
        async with asyncio.timeout(timeout_s):
            conns = await asyncio.gather(*(self._connect() for _ in range(need)), return_exceptions=True)
        opened = 0
        for conn in conns:
            if isinstance(conn, _Conn):
                conn.warm = True
                self._release(conn, True)
                opened += 1
        return opened

    async def _post(self, path: str, body: bytes, on_event, timeout_s: float, fresh: bool) -> StreamResult:
        res = StreamResult()
        request = b"".join((b"POST ", path.encode("latin-1"), b" HTTP/1.1\r\n", self._fixed,
                            b"Content-Length: ", str(len(body)).encode(), b"\r\n\r\n", body))
        conn = None
        try:
            async with asyncio.timeout(timeout_s):
                try:
                    conn = await (self._connect() if fresh else self._acquire())
                except OSError as exc:
                    res.end_ns = _now()
                    res.error = f"disconnect: connect: {type(exc).__name__}: {exc}"
                    return res
                res.connected_ns = _now()
                res.connection = "reused" if conn.uses else "warm" if conn.warm else "new"
                conn.uses += 1
                done = asyncio.get_running_loop().create_future()
                conn.start(res, on_event, done, request)
                reuse = await done
                if res.connection == "reused" and res.status is not None:
                    self.keepalive_seen = True
                if reuse and self.keepalive_timeout_ns is None:
                    self._keepalive_timeout(res.headers.get("keep-alive"))
                self._release(conn, reuse)
                conn = None
        except TimeoutError:
            res.end_ns = _now()
            res.error = "timeout"
            if conn is not None:
                conn._fail(res.end_ns, "timeout")
                self._release(conn, False)
            return res
        except BaseException:  # CancelledError (or worse): this connection's state is unknown
            if conn is not None:
                conn._fail(_now(), "cancelled")
                self._release(conn, False)
            raise
        return res

    def _keepalive_timeout(self, value: str | None) -> None:
        """``Keep-Alive: timeout=5, max=100``: reuse an idle connection only within timeout - 0.5 s."""
        for part in (value or "").split(","):
            name, _, v = part.strip().partition("=")
            if name.lower() == "timeout":
                try:
                    self.keepalive_timeout_ns = max(int((float(v) - 0.5) * 1e9), 0)
                except ValueError:
                    pass

    async def close(self) -> None:
        """Close every connection (idle or busy) and wait briefly for them to go."""
        self._closed = True
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.cancel()
        conns = list(self._all)
        self._idle.clear()
        self._all.clear()
        if conns:
            await asyncio.gather(*(c.wait_closed() for c in conns), return_exceptions=True)

    async def __aenter__(self) -> StreamPool:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
