import asyncio
import io
import json

import pytest

from tokenbench.loadgen import LoadTest, session_factory
from tokenbench.prompts import PromptStream, builtin_prompts

CAPS = {"chat", "completions", "stream_usage", "ignore_eos"}
REQ = {"endpoint": "chat", "max_tokens": 8, "temperature": 0.0, "ignore_eos": True, "system_prompt": None}


def phase(name="p", mode="closed", **kw):
    base = {"name": name, "mode": mode, "warmup": False, "timeout_s": 5, "drain_timeout_s": 5}
    return {**base, **kw}


def run(url, phases, request=REQ, caps=CAPS, seed=0):
    journal = io.StringIO()
    test = LoadTest(session_factory(url, "/v1", "m", request, caps), PromptStream(builtin_prompts(), seed),
                    journal=journal, seed=seed)
    asyncio.run(test.run(phases))
    return test, [json.loads(l) for l in journal.getvalue().splitlines()]


def test_closed_loop_records_every_request_once(fake_server):
    srv = fake_server(tokens=8, ttft_ms=5, itl_ms=1)
    test, journal = run(srv.url, [phase(users=3, duration_s=0.5)])
    recs = test.records
    assert len(recs) == srv.requests  # the server saw exactly what the client recorded
    assert len({r.request_id for r in recs}) == len(recs) == len(journal)
    assert {r.status for r in recs} == {"ok"}
    assert {r.user for r in recs} == {0, 1, 2}
    for r in recs:
        assert r.output_tokens == 8 and r.output_tokens_source == "usage"
        assert len(r.chunk_ns) == 8
        assert r.sent_ns <= r.headers_ns <= r.first_byte_ns <= r.first_token_ns <= r.chunk_ns[-1] <= r.end_ns


def test_ttft_is_first_content_token_not_first_byte(fake_server):
    srv = fake_server(tokens=4, ttft_ms=50, role_chunk=True)
    test, _ = run(srv.url, [phase(users=1, duration_s=0.01)])
    r = test.records[0]
    # the empty role chunk arrives at once; the first content token ~50 ms later
    assert (r.first_byte_ns - r.sent_ns) / 1e6 < 40
    assert (r.first_token_ns - r.sent_ns) / 1e6 >= 49


def test_injected_timing_is_measured(fake_server):
    srv = fake_server(tokens=6, ttft_ms=30, itl_ms=10)
    test, _ = run(srv.url, [phase(users=1, duration_s=0.01)])
    r = test.records[0]
    gaps = [(b - a) / 1e6 for a, b in zip(r.chunk_ns, r.chunk_ns[1:])]
    assert all(9 <= g < 25 for g in gaps), gaps
    assert 29 <= (r.first_token_ns - r.sent_ns) / 1e6 < 60


@pytest.mark.parametrize("kw, source", [({"usage_on_finish_chunk": True}, "usage"), ({"no_usage": True}, "chunks")])
def test_usage_on_finish_chunk_or_missing(fake_server, kw, source):
    srv = fake_server(tokens=5, **kw)
    test, _ = run(srv.url, [phase(users=1, duration_s=0.01)])
    r = test.records[0]
    assert r.status == "ok" and r.output_tokens == 5 and r.output_tokens_source == source


def test_http_errors_are_recorded_not_retried(fake_server):
    srv = fake_server(status=503)
    test, journal = run(srv.url, [phase(users=2, duration_s=0.2)])
    assert len(test.records) == srv.requests > 0
    assert {r.status for r in test.records} == {"http_error"}
    assert all(r.http_status == 503 and "503" in r.error for r in test.records)


def test_disconnect_mid_stream_is_recorded(fake_server):
    srv = fake_server(tokens=10, fail_after=3)
    test, _ = run(srv.url, [phase(users=1, duration_s=0.05)])
    assert len(test.records) == srv.requests
    r = test.records[0]
    assert r.status == "disconnect" and len(r.chunk_ns) == 3 and r.end_ns is not None


def test_timeout_is_recorded(fake_server):
    srv = fake_server(tokens=3, ttft_ms=2000)
    test, _ = run(srv.url, [phase(users=1, duration_s=0.01, timeout_s=0.2)])
    assert [r.status for r in test.records] == ["timeout"]


def test_dead_server_every_request_is_a_disconnect():
    test, journal = run("http://127.0.0.1:9", [phase(users=2, duration_s=0.1)])
    assert test.records and {r.status for r in test.records} == {"disconnect"}
    assert len(journal) == len(test.records)


def test_poisson_phase_is_seeded_and_records_schedule(fake_server):
    srv = fake_server(tokens=2)
    ph = [phase("w", "poisson", rate_rps=50, duration_s=0.6, warmup=True)]
    a, _ = run(srv.url, ph, seed=3)
    b, _ = run(srv.url, ph, seed=3)
    offs = lambda t: [r.scheduled_ns - t.marks[0].start_ns for r in t.records]  # noqa: E731
    assert offs(a) == offs(b) and len(a.records) > 10
    assert [r.prompt_id for r in a.records] == [r.prompt_id for r in b.records]
    for r in a.records:
        assert r.user == -1 and r.sent_ns >= r.scheduled_ns


def test_idle_phase_sends_nothing_and_phases_are_marked(fake_server):
    srv = fake_server(tokens=2)
    test, _ = run(srv.url, [phase("w", "poisson", rate_rps=20, duration_s=0.3),
                            {"name": "idle", "mode": "idle", "duration_s": 0.3, "warmup": False},
                            phase("s", users=2, duration_s=0.3)])
    names = [m.name for m in test.marks]
    assert names == ["w", "idle", "s"]
    assert not [r for r in test.records if r.phase == "idle"]
    idle = test.marks[1]
    w = test.marks[0]
    assert (w.end_ns - w.start_ns) / 1e9 == pytest.approx(0.3, abs=0.015)  # full duration, not the last arrival
    assert (idle.end_ns - idle.start_ns) / 1e9 == pytest.approx(0.3, abs=0.05)
    # phases run in order, the drain of one before the start of the next
    assert test.marks[0].drained_ns <= idle.start_ns <= idle.end_ns <= test.marks[2].start_ns


def test_payload_sends_ignore_eos_only_where_supported(fake_server):
    from tokenbench.loadgen import Client

    c = Client(None, "http://x", "/v1", "m", REQ, CAPS)
    assert c.payload("hi")["ignore_eos"] is True and c.payload("hi")["stream_options"] == {"include_usage": True}
    c2 = Client(None, "http://x", "/v1", "m", REQ, {"chat"})
    assert "ignore_eos" not in c2.payload("hi") and "stream_options" not in c2.payload("hi")
    sys_req = {**REQ, "system_prompt": "be brief"}
    assert Client(None, "http://x", "/v1", "m", sys_req, CAPS).payload("hi")["messages"][0] == {"role": "system", "content": "be brief"}


def test_completions_endpoint(fake_server):
    srv = fake_server(tokens=3)
    test, _ = run(srv.url, [phase(users=1, duration_s=0.01)], request={**REQ, "endpoint": "completions"})
    assert test.records[0].status == "ok" and len(test.records[0].chunk_ns) == 3


def test_idle_gap_longer_than_server_keepalive_loses_nothing(fake_server):
    # the server closes idle keep-alive connections after 0.5 s (llama-server: 5 s); the idle phase
    # outlasts that, and the next phase must not reuse a connection the server already closed
    srv = fake_server(tokens=2, keepalive_timeout=0.5)
    test, _ = run(srv.url, [phase("a", users=4, duration_s=0.3),
                            {"name": "idle", "mode": "idle", "duration_s": 2.6, "warmup": False},
                            phase("b", users=4, duration_s=0.3)])
    assert {r.status for r in test.records} == {"ok"}, [r.error for r in test.records if r.status != "ok"][:3]
    assert len(test.records) == srv.requests


def test_connection_closed_by_server_after_response_is_replaced_not_lost(fake_server):
    # llama-server was seen closing keep-alive connections right after a streamed response; a request
    # written to such a connection never reaches the server and is resent once on a fresh one
    srv = fake_server(tokens=2, close_after_response=True)
    test, _ = run(srv.url, [phase(users=4, duration_s=0.5)])
    assert {r.status for r in test.records} == {"ok"}, [r.error for r in test.records if r.status != "ok"][:3]
    assert len(test.records) == srv.requests
    assert all(r.attempts in (1, 2) for r in test.records)
    assert any(r.attempts == 2 for r in test.records)  # the stale-connection path was exercised
