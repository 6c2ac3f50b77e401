"""Fuzzing the response parser (http_stream._Conn) and the stream-chunk parser (generator.StreamEvents)
with hypothesis: whatever bytes a server sends, a request ends with a record whose status is one of
the journal's, and a malformed stream is a protocol error that says what was wrong, never a crash."""

from __future__ import annotations

import asyncio
import json

from hypothesis import HealthCheck, given, settings, strategies as st

from tokenbench.load.generator import StreamEvents, classify
from tokenbench.load.http_stream import StreamResult, _Conn
from tokenbench.load.journal import STATUSES, RequestRecord

HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n", )
FRAMINGS = {
    "chunked": b"Transfer-Encoding: chunked\r\n\r\n",
    "close": b"\r\n",
}


class _Transport:
    def __init__(self):
        self.closing = False

    def write(self, data):
        return True

    def abort(self):
        self.closing = True

    close = abort

    def is_closing(self):
        return self.closing


class _Pool:
    def _forget_idle(self, conn):
        pass


def _drive(pieces: list[bytes], chat: bool = True, lost: bool = True) -> RequestRecord:
    """Feed ``pieces`` to a connection as successive socket reads; the peer then closes."""
    loop = asyncio.new_event_loop()
    try:
        conn = _Conn(_Pool())
        conn.connection_made(_Transport())
        res = StreamResult()
        rec = RequestRecord(0, "p", 0, "x", 0)
        events = StreamEvents(rec, chat)
        done = loop.create_future()
        conn.start(res, events.on_event, done, b"POST / HTTP/1.1\r\n\r\n")
        t = 1_000
        for piece in pieces:
            t += 1_000
            conn.data_received(piece, t)  # must never raise
        if lost:
            conn.connection_lost(None)
        assert done.done(), "the request never ended"
        assert res.error is None or res.error.startswith(("protocol: ", "disconnect: ")), res.error
        res.end_ns = res.end_ns or t
        classify(rec, res.status, res.error, res.body, events.finished, 1.0)
        assert rec.status in STATUSES and rec.status != "cancelled"
        if rec.status != "ok":
            assert rec.error, "a failed request says why"
        return rec
    finally:
        loop.close()


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    cuts = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=400), st.lists(st.integers(0, 400), max_size=6))
def test_arbitrary_bytes_from_the_first_byte_are_never_a_crash(data, cuts):
    _drive(_split(data, cuts))


@FUZZ
@given(st.sampled_from(sorted(FRAMINGS)), st.binary(max_size=400), st.lists(st.integers(0, 400), max_size=6))
def test_an_arbitrary_body_after_a_valid_head_is_never_a_crash(framing, body, cuts):
    _drive(_split(HEAD[0] + FRAMINGS[framing] + body, cuts))


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                        st.sampled_from(["choices", "delta", "content", "text", "usage", "finish_reason",
                                         "completion_tokens", "prompt_tokens", "reasoning_content", "error",
                                         "completion_tokens_details", "reasoning_tokens", "x"]), inner, max_size=4),
                    max_leaves=12)


@FUZZ
@given(st.lists(JSON | st.text(max_size=20), min_size=1, max_size=5), st.booleans(), st.booleans())
def test_arbitrary_events_are_parsed_or_a_clear_protocol_error(events, chat, done):
    lines = b"".join(b"data: " + (json.dumps(e) if not isinstance(e, str) else e).encode() + b"\n\n"
                     for e in events) + (b"data: [DONE]\n\n" if done else b"")
    rec = _drive([HEAD[0] + FRAMINGS["close"] + lines], chat=chat)
    if rec.status == "protocol_error":  # says what was wrong with the stream
        assert rec.error.startswith(("on_event raised ValueError: an event that is not",
                                     "on_event raised ValueError: error event", "on_event raised ValueError: a ")), rec.error


def test_a_well_formed_stream_is_ok():
    chunk = {"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}],
             "usage": {"prompt_tokens": 3, "completion_tokens": 1}}
    rec = _drive([HEAD[0] + FRAMINGS["close"] + b"data: " + json.dumps(chunk).encode() + b"\n\ndata: [DONE]\n\n"])
    assert rec.status == "ok" and rec.output_tokens == 1 and len(rec.chunk_ns) == 1 and rec.finish_reason == "stop"
