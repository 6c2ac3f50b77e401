import asyncio
import json
import time

import pytest

from tokenbench.load.http_stream import StreamPool

BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True,
                   "max_tokens": 64, "stream_options": {"include_usage": True}}).encode()
CHAT = "/v1/chat/completions"


def collect():
    events = []
    return events, lambda t, d: events.append((t, d))


def post(port, n=1, timeout_s=5.0, pause_s=StreamPool.RIPE_NS / 1e9, **pool_kw):
    """n sequential requests on one pool; returns (results, events per request, pool). ``pause_s``
    between them: long enough for a used connection to be reused on a server not yet seen keeping
    one alive (StreamPool.RIPE_NS)."""

    async def main():
        pool = StreamPool("127.0.0.1", port, **pool_kw)
        out = []
        for i in range(n):
            if i:
                await asyncio.sleep(pause_s)
            ev, cb = collect()
            out.append((await pool.post_sse(CHAT, BODY, cb, timeout_s), ev))
        await pool.close()
        return out, pool

    out, pool = asyncio.run(main())
    return [r for r, _ in out], [e for _, e in out], pool


def contents(events):
    out = []
    for _, d in events:
        if d != b"[DONE]":
            for ch in json.loads(d)["choices"]:
                if ch.get("delta", {}).get("content"):
                    out.append(ch["delta"]["content"])
    return out


def test_normal_stream_against_the_aiohttp_fake_server(fake_server):
    srv = fake_server(tokens=5, ttft_ms=20, itl_ms=2)
    t0 = time.monotonic_ns()
    (res,), (ev,), pool = post(srv.port)
    assert res.status == 200 and res.error is None and res.headers["content-type"] == "text/event-stream"
    assert res.headers.get("transfer-encoding") == "chunked"
    assert ev[-1][1] == b"[DONE]"
    assert contents(ev) == ["t0 ", "t1 ", "t2 ", "t3 ", "t4 "]
    assert json.loads(ev[0][1])["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert json.loads(ev[-2][1])["usage"]["completion_tokens"] == 5
    times = [t for t, _ in ev]
    assert t0 < res.headers_ns <= res.first_byte_ns <= times[0] <= times[-1] <= res.end_ns
    assert times == sorted(times)
    # the role chunk comes at once, the first content chunk after the injected 20 ms
    assert (times[1] - times[0]) / 1e6 >= 15
    assert res.events == len(ev) == 8


@pytest.mark.parametrize("content_length", [False, True])
def test_chunked_and_content_length_bodies_give_the_same_events(fast_server, content_length):
    srv = fast_server(tokens=7, content_length=content_length)
    (r1, r2), (e1, e2), pool = post(srv.port, n=2)
    framing = "content-length" if content_length else "transfer-encoding"
    assert framing in r1.headers and r1.status == 200 and r1.error is None
    assert contents(e1) == contents(e2) == [f"t{i} " for i in range(7)]
    assert e1[-1][1] == b"[DONE]" and r1.events == 10  # role + 7 + usage + [DONE]
    assert r2.reused and pool.connections_opened == 1  # the body was read to its end: reusable


def test_keep_alive_reuses_one_connection(fast_server):
    srv = fast_server(tokens=3)
    results, events, pool = post(srv.port, n=20)
    assert all(r.status == 200 and r.error is None for r in results)
    assert pool.connections_opened == 1
    assert srv.stats.connections == 1 and srv.stats.requests == 20
    assert [r.reused for r in results] == [False] + [True] * 19


def test_http_error_keeps_the_body_and_delivers_no_events(fake_server):
    srv = fake_server(status=503)
    (r1, r2), (e1, e2), pool = post(srv.port, n=2)
    assert r1.status == 503 and r1.error is None and not e1
    assert json.loads(r1.body) == {"error": {"message": "injected failure"}}
    assert r2.status == 503 and r2.reused  # a fully read error response leaves the connection usable


def test_a_used_connection_is_reused_at_once_only_once_the_server_has_kept_one_alive(fast_server):
    srv = fast_server(tokens=2)
    results, _, pool = post(srv.port, n=60, pause_s=0)
    kinds = [r.connection for r in results]
    # back to back: the 2nd cannot yet trust the 1st's connection (the server may be closing it), so
    # it opens one; once the oldest idle one has ripened, it is reused, which proves keep-alive; from
    # then on every request reuses at once
    assert kinds[:2] == ["new", "new"] and "reused" in kinds
    first = kinds.index("reused")
    assert set(kinds[first:]) == {"reused"} and pool.keepalive_seen
    assert pool.connections_opened == first


def test_warm_opens_connections_ahead_and_requests_take_them(fast_server):
    srv = fast_server(tokens=2)

    async def main():
        pool = StreamPool("127.0.0.1", srv.port)
        opened = await pool.warm(3)
        again = await pool.warm(3)  # already 3 idle: nothing to open
        ev, cb = collect()
        res = await pool.post_sse(CHAT, BODY, cb, 5.0)
        await pool.close()
        return opened, again, res, pool

    opened, again, res, pool = asyncio.run(main())
    assert (opened, again, pool.connections_opened) == (3, 0, 3)
    assert res.connection == "warm" and res.status == 200 and res.attempts == 1
    assert res.started_ns <= res.connected_ns <= res.written_ns


def test_an_idle_connection_past_the_servers_keep_alive_timeout_is_not_reused(fast_server):
    srv = fast_server(tokens=2)

    async def main():
        pool = StreamPool("127.0.0.1", srv.port)
        first = await pool.post_sse(CHAT, BODY, collect()[1], 5.0)
        pool.keepalive_timeout_ns = 30_000_000  # as if the server had said Keep-Alive: timeout=0.53
        await asyncio.sleep(0.05)
        second = await pool.post_sse(CHAT, BODY, collect()[1], 5.0)
        await pool.close()
        return first, second, pool

    first, second, pool = asyncio.run(main())
    assert second.connection == "new" and pool.connections_opened == 2


def test_the_keep_alive_header_sets_the_pools_idle_limit():
    pool = StreamPool("127.0.0.1", 9)
    pool._keepalive_timeout("timeout=5, max=100")
    assert pool.keepalive_timeout_ns == 4_500_000_000


def test_mid_stream_disconnect_delivers_what_came_and_is_not_reused(fast_server):
    srv = fast_server(tokens=10, fail_after=3)
    (r1, r2), (e1, e2), pool = post(srv.port, n=2)
    assert r1.error is not None and r1.error.startswith("disconnect: mid-response")
    assert contents(e1) == ["t0 ", "t1 ", "t2 "] and r1.end_ns is not None and r1.status == 200
    assert not r2.reused and pool.connections_opened == 2


def test_mid_stream_disconnect_aiohttp_server(fake_server):
    srv = fake_server(tokens=10, fail_after=3)
    (r1,), (e1,), _ = post(srv.port)
    assert r1.error.startswith("disconnect") and contents(e1) == ["t0 ", "t1 ", "t2 "]


def test_timeout_closes_the_connection(fast_server):
    srv = fast_server(tokens=3, ttft_ms=2000)

    async def main():
        pool = StreamPool("127.0.0.1", srv.port)
        ev, cb = collect()
        t0 = time.monotonic()
        res = await pool.post_sse(CHAT, BODY, cb, timeout_s=0.2)
        took = time.monotonic() - t0
        idle = len(pool._idle)
        await asyncio.sleep(0.05)
        server_conns = len(srv.server.conns)
        await pool.close()
        return res, ev, took, idle, server_conns

    res, ev, took, idle, server_conns = asyncio.run(main())
    assert res.error == "timeout" and 0.19 <= took < 1.0
    assert res.status == 200 and len(ev) == 1  # the role chunk came before the timeout
    assert idle == 0 and server_conns == 0  # closed, not parked in the pool


def test_cancellation_closes_the_connection_and_reraises(fast_server):
    srv = fast_server(tokens=50, itl_ms=20)

    async def main():
        pool = StreamPool("127.0.0.1", srv.port)
        ev, cb = collect()
        task = asyncio.create_task(pool.post_sse(CHAT, BODY, cb, timeout_s=10))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.05)
        state = len(pool._all), len(pool._idle), len(srv.server.conns)
        await pool.close()
        return ev, state

    ev, (n_all, n_idle, server_conns) = asyncio.run(main())
    assert 2 <= len(ev) < 20
    assert n_all == n_idle == 0 and server_conns == 0


def test_connection_refused_is_a_disconnect():
    (res,), (ev,), _ = post(9, timeout_s=2)  # discard port: nothing listens
    assert res.error.startswith("disconnect: connect:") and res.status is None and not ev


@pytest.mark.parametrize("limit, conns", [(None, 200), (16, 16)])
def test_many_concurrent_streams(fast_server, limit, conns):
    srv = fast_server(tokens=20, itl_ms=2)

    async def main():
        pool = StreamPool("127.0.0.1", srv.port, limit=limit)
        evs = [collect() for _ in range(200)]
        res = await asyncio.gather(*(pool.post_sse(CHAT, BODY, cb, 30) for _, cb in evs))
        await pool.close()
        return res, [e for e, _ in evs], pool

    res, evs, pool = asyncio.run(main())
    assert all(r.status == 200 and r.error is None for r in res)
    for ev in evs:
        assert contents(ev) == [f"t{i} " for i in range(20)] and ev[-1][1] == b"[DONE]"
        ids = {json.loads(d)["id"] for _, d in ev[:-1]}
        assert len(ids) == 1  # no interleaving of two responses on one callback
    assert pool.connections_opened == conns and srv.stats.connections == conns


# -- framing edge cases, from a scripted server ---------------------------------------------------

class Scripted:
    """Answers each request on a connection with the next script: a list of (delay_s, bytes) writes;
    None as the bytes closes the connection."""

    def __init__(self, scripts):
        self.scripts = list(scripts)
        self.connections = 0

    async def __aenter__(self):
        async def handle(reader, writer):
            self.connections += 1
            try:
                while self.scripts:
                    head = await reader.readuntil(b"\r\n\r\n")
                    n = int([ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")][0]
                            .split(b":")[1])
                    await reader.readexactly(n)
                    for delay, data in self.scripts.pop(0):
                        await asyncio.sleep(delay)
                        if data is None:
                            writer.close()
                            return
                        writer.write(data)
                        await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            writer.close()

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self.server.close()


def scripted(scripts, n=None, timeout_s=5, pause_s=StreamPool.RIPE_NS / 1e9):
    """Sequential requests against scripted connections, ``pause_s`` apart (as in ``post``)."""
    async def main():
        async with Scripted(scripts) as srv:
            pool = StreamPool("127.0.0.1", srv.port)
            out = []
            for i in range(n or len(scripts)):
                if i:
                    await asyncio.sleep(pause_s)
                ev, cb = collect()
                out.append((await pool.post_sse("/x", b"{}", cb, timeout_s), ev))
            await pool.close()
            return out, srv.connections

    return asyncio.run(main())


SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def chunked(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def test_byte_at_a_time_crlf_lines_comments_and_fields():
    body = (b": keep-alive comment\r\nevent: message\r\nid: 7\r\ndata: {\"a\":1}\r\n\r\n"
            b"data:{\"b\":2}\n\nretry: 10\ndata: [DONE]\n\n")
    wire = SSE_HEAD + chunked(body[:17]) + chunked(body[17:]) + b"0\r\nX-Trailer: 1\r\n\r\n"
    (((res, ev),), conns) = scripted([[(0, wire[i:i + 1]) for i in range(len(wire))] + [(0.05, None)]], n=1)
    assert res.error is None and res.status == 200
    assert [d for _, d in ev] == [b'{"a":1}', b'{"b":2}', b"[DONE]"]


def test_one_timestamp_per_read():
    head = SSE_HEAD + chunked(b"data: 1\n\ndata: 2\n\n")
    later = chunked(b"data: 3\n\n") + b"0\r\n\r\n"
    (((res, ev),), _) = scripted([[(0, head), (0.05, later)]])
    (t1, d1), (t2, d2), (t3, d3) = ev
    assert (d1, d2, d3) == (b"1", b"2", b"3")
    assert t1 == t2 == res.headers_ns == res.first_byte_ns  # one read: one stamp
    assert (t3 - t2) / 1e6 >= 40 and t3 == res.end_ns


def test_close_delimited_body_and_connection_close():
    close_delim = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata: a\n\ndata: b"  # last line: no newline
    with_close = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n"
                  b"Content-Length: 9\r\n\r\ndata: c\n\n")
    ok = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: 9\r\n\r\ndata: d\n\n"
    (((r1, e1), (r2, e2), (r3, e3)), conns) = scripted([[(0, close_delim), (0.02, None)], [(0, with_close)], [(0, ok)]])
    assert r1.error is None and [d for _, d in e1] == [b"a", b"b"]  # the close ends the body: not an error
    assert r2.error is None and [d for _, d in e2] == [b"c"]
    assert r3.error is None and [d for _, d in e3] == [b"d"]
    assert conns == 3 and not r2.reused and not r3.reused  # neither connection could be reused


def test_protocol_errors():
    bad_status = b"SPDY/9 OK\r\n\r\n"
    bad_chunk = SSE_HEAD + b"zz\r\ndata: x\n\n\r\n"
    short_size = SSE_HEAD + b"3\r\ndata: x\n\n\r\n0\r\n\r\n"  # the data is longer than its declared size
    (((r1, _), (r2, _), (r3, e3)), conns) = scripted([[(0, bad_status)], [(0, bad_chunk)], [(0, short_size)]])
    assert r1.error.startswith("protocol: bad status line")
    assert r2.error.startswith("protocol: bad chunk size")
    assert r3.error == "protocol: chunk data longer than its size" and not e3
    assert conns == 3  # a connection with a protocol error is never reused


def test_100_continue_then_the_real_response():
    wire = (b"HTTP/1.1 100 Continue\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: 9\r\n\r\ndata: z\n\n")
    (((res, ev),), _) = scripted([[(0, wire)]])
    assert res.status == 200 and [d for _, d in ev] == [b"z"]


def test_non_event_stream_2xx_keeps_the_body():
    wire = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}'
    (((res, ev),), _) = scripted([[(0, wire)]])
    assert res.status == 200 and not ev and res.body == b'{"ok":true}'


@pytest.mark.parametrize("kernel", [True, False])
def test_events_carry_their_arrival_time_even_when_the_loop_is_busy(fake_server, kernel):
    # two tokens 50 ms apart; the client blocks its loop for 200 ms on the first one. With kernel
    # receive timestamps the second still reads ~50 ms later; stamped at read time, ~200 ms.
    # (TCP gives the arrival of the newest bytes of a read, so one token arrives during the block.)
    import time as _time

    from tokenbench.load.http_stream import StreamPool

    srv = fake_server(tokens=2, itl_ms=50, role_chunk=False)
    stamps = []

    def on_event(t, data):
        if data.startswith(b"{") and b'"content"' in data:
            stamps.append(t)
            if len(stamps) == 1:
                _time.sleep(0.2)

    async def go():
        host, port = srv.url.split("//")[1].split(":")
        pool = StreamPool(host, int(port), kernel_timestamps=kernel)
        body = json.dumps({"model": "m", "max_tokens": 2, "stream": True,
                           "messages": [{"role": "user", "content": "x"}]}).encode()
        res = await pool.post_sse("/v1/chat/completions", body, on_event, 5)
        await pool.close()
        return res

    res = asyncio.run(go())
    assert res.error is None and len(stamps) == 2
    gap_ms = (stamps[1] - stamps[0]) / 1e6
    if kernel:
        assert 40 < gap_ms < 80, gap_ms
    else:
        assert gap_ms >= 190, gap_ms


def test_a_pooled_connection_closed_by_the_server_is_replaced_once():
    # the server reads the second request on the kept-alive connection and closes it without a
    # byte of answer (as llama-server does with some connections): resent once, on a new connection
    body = b'data: {"choices":[{"delta":{"content":"hi"},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
    ok = [(0, b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: "
              + str(len(body)).encode() + b"\r\n\r\n" + body)]
    out, connections = scripted([ok, [(0, None)], ok], n=2)
    (first, _), (second, events) = out
    assert first.error is None and first.attempts == 1
    assert second.error is None and second.status == 200 and second.attempts == 2 and second.reused is False
    assert [d for _, d in events][-1] == b"[DONE]" and connections == 2


def test_the_request_written_stamp_and_token_arrivals_agree_with_the_servers_kernel_stamps(fast_server):
    # the server stamps, per request, the kernel receive time of its last byte (rx_ns) and each
    # chunk's send time (t_ns): written_ns comes after the kernel had the request (it is stamped once
    # send() returns), and each content chunk arrives after the server sent it
    srv = fast_server(tokens=4, ttft_ms=3, itl_ms=1, stamp=True)
    results, events, _ = post(srv.port, n=6)
    for res, ev in zip(results, events):
        chunks = [(t, json.loads(d)) for t, d in ev if d != b"[DONE]"]
        content = [(t, o) for t, o in chunks if o["choices"] and o["choices"][0]["delta"].get("content")]
        first = content[0][1]
        assert first.get("rx_kernel", True), "no kernel receive stamp on the server"
        assert first["rx_ns"] <= res.written_ns < first["rx_ns"] + 50_000_000
        assert first["rx_ns"] <= first["parsed_ns"] <= first["t_ns"]
        assert all(o["t_ns"] <= t for t, o in content)


def test_no_time_is_negative_against_a_server_that_answers_at_once(fast_server):
    # zero delays: the answer's kernel stamp can precede the stamp taken after send() returned
    srv = fast_server(tokens=2)
    results, events, _ = post(srv.port, n=30)
    for res, ev in zip(results, events):
        assert res.started_ns <= res.connected_ns <= res.written_ns <= res.headers_ns <= res.first_byte_ns
        assert all(t >= res.written_ns for t, _ in ev)
