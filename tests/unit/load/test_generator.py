import asyncio
import json
import tempfile

import pytest

from tokenbench.config import RequestSpec
from tokenbench.load.generator import LoadTest, session_factory
from tokenbench.load.journal import Journal, frame, read_records
from tokenbench.load.phases import ClosedPhase, ConstantPhase, IdlePhase, PoissonPhase, SweepPhase, TracePhase
from tokenbench.load.prompts import PromptStream, builtin_prompts

CAPS = {"chat", "completions", "stream_usage", "ignore_eos"}
REQ = RequestSpec(endpoint="chat", max_tokens=8, temperature=0.0, ignore_eos=True)
FAST = {"timeout_s": 5, "drain_timeout_s": 5}  # a test's requests finish in well under a second


def closed(name="p", **kw):
    return ClosedPhase(name=name, **{**FAST, **kw})


class Run:
    """A finished load test and its records, read back from its journal."""

    def __init__(self, test, path):
        self.test, self.path = test, path
        self.records = read_records(path)

    def __getattr__(self, name):
        return getattr(self.test, name)


def run(url, phases, request=REQ, caps=CAPS, seed=0):
    path = tempfile.mktemp(suffix=".arrows")
    test = LoadTest(session_factory(url, "/v1", "m", request, caps), PromptStream(builtin_prompts(), seed),
                    journal=Journal(path), seed=seed)
    asyncio.run(test.run(phases))
    r = Run(test, path)
    return r, frame(path)


def test_closed_loop_records_every_request_once(fake_server):
    srv = fake_server(tokens=8, ttft_ms=5, itl_ms=1)
    test, journal = run(srv.url, [closed(users=3, duration_s=0.5)])
    recs = test.records
    assert len(recs) == srv.requests  # the server saw exactly what the client recorded
    assert len({r.request_id for r in recs}) == len(recs) == len(journal)
    assert {r.status for r in recs} == {"ok"}
    assert {r.user for r in recs} == {0, 1, 2}
    assert (test.n_done, test.n_ok, test.n_chunks) == (len(recs), len(recs), 8 * len(recs))  # progress counters
    for r in recs:
        assert r.output_tokens == 8 and r.output_tokens_source == "usage"
        assert len(r.chunk_ns) == 8
        assert r.sent_ns <= r.headers_ns <= r.first_byte_ns <= r.first_token_ns <= r.chunk_ns[-1] <= r.end_ns


def test_ttft_is_first_content_token_not_first_byte(fake_server):
    srv = fake_server(tokens=4, ttft_ms=50, role_chunk=True)
    test, _ = run(srv.url, [closed(users=1, duration_s=0.01)])
    r = test.records[0]
    # the empty role chunk arrives at once; the first content token ~50 ms later
    assert (r.first_byte_ns - r.sent_ns) / 1e6 < 40
    assert (r.first_token_ns - r.sent_ns) / 1e6 >= 49


def test_injected_timing_is_measured(fake_server):
    srv = fake_server(tokens=6, ttft_ms=30, itl_ms=10)
    test, _ = run(srv.url, [closed(users=1, duration_s=0.01)])
    r = test.records[0]
    gaps = [(b - a) / 1e6 for a, b in zip(r.chunk_ns, r.chunk_ns[1:])]
    assert all(9 <= g < 50 for g in gaps), gaps
    assert 29 <= (r.first_token_ns - r.sent_ns) / 1e6 < 60


@pytest.mark.parametrize("kw, source", [({"usage_on_finish_chunk": True}, "usage"), ({"no_usage": True}, "chunks")])
def test_usage_on_finish_chunk_or_missing(fake_server, kw, source):
    srv = fake_server(tokens=5, **kw)
    test, _ = run(srv.url, [closed(users=1, duration_s=0.01)])
    r = test.records[0]
    assert r.status == "ok" and r.output_tokens == 5 and r.output_tokens_source == source


def test_http_errors_are_recorded_not_retried(fake_server):
    srv = fake_server(status=503)
    test, journal = run(srv.url, [closed(users=2, duration_s=0.2)])
    assert len(test.records) == srv.requests > 0
    assert {r.status for r in test.records} == {"http_error"}
    assert all(r.http_status == 503 and "503" in r.error for r in test.records)


def test_disconnect_mid_stream_is_recorded(fake_server):
    srv = fake_server(tokens=10, fail_after=3)
    test, _ = run(srv.url, [closed(users=1, duration_s=0.05)])
    assert len(test.records) == srv.requests
    r = test.records[0]
    assert r.status == "disconnect" and len(r.chunk_ns) == 3 and r.end_ns is not None


def test_timeout_is_recorded(fake_server):
    srv = fake_server(tokens=3, ttft_ms=2000)
    test, _ = run(srv.url, [closed(users=1, duration_s=0.01, timeout_s=0.2)])
    assert [r.status for r in test.records] == ["timeout"]


def test_dead_server_every_request_is_a_disconnect():
    test, journal = run("http://127.0.0.1:9", [closed(users=2, duration_s=0.1)])
    assert test.records and {r.status for r in test.records} == {"disconnect"}
    assert len(journal) == len(test.records)


def test_poisson_phase_is_seeded_and_records_schedule(fake_server):
    srv = fake_server(tokens=2)
    ph = [PoissonPhase(name="w", rate_rps=50, duration_s=0.6, warmup=True, **FAST)]
    a, _ = run(srv.url, ph, seed=3)
    b, _ = run(srv.url, ph, seed=3)
    offs = lambda t: [r.scheduled_ns - t.marks[0].start_ns for r in t.records]  # noqa: E731
    assert offs(a) == offs(b) and len(a.records) > 10
    assert [r.prompt_id for r in a.records] == [r.prompt_id for r in b.records]
    for r in a.records:
        assert r.user == -1 and r.sent_ns >= r.scheduled_ns


def test_idle_phase_sends_nothing_and_phases_are_marked(fake_server):
    srv = fake_server(tokens=2)
    test, _ = run(srv.url, [PoissonPhase(name="w", rate_rps=20, duration_s=0.3, **FAST),
                            IdlePhase(name="idle", duration_s=0.3),
                            closed("s", users=2, duration_s=0.3)])
    names = [m.name for m in test.marks]
    assert names == ["w", "idle", "s"]
    assert [(m.mode, m.open_loop, m.label) for m in test.marks] == [
        ("poisson", True, "Poisson 20 req/s"), ("idle", False, "idle 0.3 s"), ("closed", False, "2 users")]
    assert [m.target for m in test.marks] == [{"duration_s": 0.3, "rate_rps": 20, "arrivals": "poisson"},
                                              {"duration_s": 0.3}, {"duration_s": 0.3, "users": 2, "ramp_s": 0,
                                                                    "think_s": 0}]
    assert not [r for r in test.records if r.phase == "idle"]
    idle = test.marks[1]
    w = test.marks[0]
    assert (w.end_ns - w.start_ns) / 1e9 == pytest.approx(0.3, abs=0.015)  # full duration, not the last arrival
    assert (idle.end_ns - idle.start_ns) / 1e9 == pytest.approx(0.3, abs=0.05)
    # phases run in order, the drain of one before the start of the next
    assert test.marks[0].drained_ns <= idle.start_ns <= idle.end_ns <= test.marks[2].start_ns


def test_payload_sends_ignore_eos_only_where_supported(fake_server):
    from tokenbench.load.generator import Client

    c = Client(None, "http://x", "/v1", "m", REQ, CAPS)
    assert c.payload("hi")["ignore_eos"] is True and c.payload("hi")["stream_options"] == {"include_usage": True}
    c2 = Client(None, "http://x", "/v1", "m", REQ, {"chat"})
    assert "ignore_eos" not in c2.payload("hi") and "stream_options" not in c2.payload("hi")
    sys_req = REQ.model_copy(update={"system_prompt": "be brief"})
    assert Client(None, "http://x", "/v1", "m", sys_req, CAPS).payload("hi")["messages"][0] == {"role": "system", "content": "be brief"}


def test_completions_endpoint(fake_server):
    srv = fake_server(tokens=3)
    test, _ = run(srv.url, [closed(users=1, duration_s=0.01)], request=REQ.model_copy(update={"endpoint": "completions"}))
    assert test.records[0].status == "ok" and len(test.records[0].chunk_ns) == 3


def test_idle_gap_longer_than_server_keepalive_loses_nothing(fake_server):
    # the server closes idle keep-alive connections after 0.5 s (llama-server: 5 s); the idle phase
    # outlasts that, and the next phase must not reuse a connection the server already closed
    srv = fake_server(tokens=2, keepalive_timeout=0.5)
    test, _ = run(srv.url, [closed("a", users=4, duration_s=0.3),
                            IdlePhase(name="idle", duration_s=2.6),
                            closed("b", users=4, duration_s=0.3)])
    assert {r.status for r in test.records} == {"ok"}, [r.error for r in test.records if r.status != "ok"][:3]
    assert len(test.records) == srv.requests


def test_a_server_that_closes_after_each_response_costs_no_resends(fake_server):
    # llama-server closes the connection after each streamed response without "Connection: close";
    # its FIN lands ~0.1-0.3 ms later. The pool peeks for it and lets a used connection ripen before
    # reusing it on a server not yet seen keeping one alive: no request is written to a dying socket
    srv = fake_server(tokens=2, close_after_response=True)
    test, _ = run(srv.url, [closed(users=6, duration_s=1.0)])
    assert {r.status for r in test.records} == {"ok"}, [r.error for r in test.records if r.status != "ok"][:3]
    assert len(test.records) == srv.requests > 30
    assert test.resent == 0 and {r.attempts for r in test.records} == {1}
    assert {r.connection for r in test.records} <= {"new", "warm"}


def test_a_request_lost_to_a_closing_connection_is_resent_and_timed_from_its_second_attempt(fake_server):
    srv = fake_server(tokens=2, drop_on_reuse=True)
    test, _ = run(srv.url, [closed(users=2, duration_s=0.6)])
    assert {r.status for r in test.records} == {"ok"}, [r.error for r in test.records if r.status != "ok"][:3]
    resent = [r for r in test.records if r.attempts == 2]
    assert resent and test.resent == len(resent)
    for r in resent:  # the timeline is the attempt that got the answer, on a new connection
        assert r.connection == "new"
        # (not written <= headers: this in-process server can answer before the client's thread has the
        # GIL back to stamp its write)
        assert r.first_attempt_ns < r.sent_ns <= r.connected_ns <= r.written_ns and r.sent_ns < r.headers_ns <= r.end_ns


def test_closed_loops_open_their_connections_before_the_window(fake_server):
    srv = fake_server(tokens=2)
    test, _ = run(srv.url, [closed("w", users=5, requests=5), closed("cold", users=3, requests=3, warm_connections=False)])
    assert [m.warm_connections for m in test.marks] == [5, 0]
    w = [r for r in test.records if r.phase == "w"]
    assert {r.connection for r in w} == {"warm"}
    cold = [r for r in test.records if r.phase == "cold"]
    assert "warm" not in {r.connection for r in cold}  # the pool's idle ones are reused, or new ones opened
    for r in w + cold:
        assert r.sent_ns <= r.connected_ns <= r.written_ns and r.sent_ns < r.first_byte_ns


def test_reasoning_tokens_are_tokens_but_not_output(fake_server):
    srv = fake_server(tokens=3, reasoning_tokens=4, itl_ms=5, ttft_ms=20)
    test, _ = run(srv.url, [closed(users=1, requests=1)])
    r = test.records[0]
    assert r.reasoning_chunks == 4 and len(r.chunk_ns) == 7 and r.reasoning_tokens == 4
    assert r.output_tokens == 7 and r.output_text == "t0 t1 t2 " and r.reasoning_chars == len("r0 r1 r2 r3 ")
    assert r.first_event_ns <= r.first_token_ns == r.chunk_ns[0] < r.first_output_token_ns == r.chunk_ns[4]
    assert (r.first_output_token_ns - r.first_token_ns) / 1e6 >= 4 * 5 - 1


def test_hidden_reasoning_is_counted_by_the_server_only(fake_server):
    srv = fake_server(tokens=3, reasoning_tokens=4, hide_reasoning=True)
    test, _ = run(srv.url, [closed(users=1, requests=1)])
    r = test.records[0]
    assert (r.reasoning_chunks, len(r.chunk_ns), r.reasoning_tokens, r.output_tokens) == (0, 3, 4, 7)
    assert r.first_token_ns == r.first_output_token_ns


# ---------------------------------------------------------------- load modes
def test_fixed_request_count_phases(fake_server):
    srv = fake_server(tokens=2)
    test, _ = run(srv.url, [closed("c", users=3, requests=7), ConstantPhase(name="o", rate_rps=200, requests=9, **FAST)])
    by = {m.name: [r for r in test.records if r.phase == m.name] for m in test.marks}
    assert len(by["c"]) == 7 and len(by["o"]) == 9 and srv.requests == 16


def test_ramp_spreads_user_starts_and_think_time_spaces_requests(fake_server):
    srv = fake_server(tokens=2)
    test, _ = run(srv.url, [closed(users=4, duration_s=0.8, ramp_s=0.6, think_s=0.2)])
    start = test.marks[0].start_ns
    first = {u: min(r.sent_ns for r in test.records if r.user == u) - start for u in range(4)}
    for u in range(4):
        assert first[u] / 1e9 == pytest.approx(0.15 * u, abs=0.03)
    u0 = sorted((r.sent_ns, r.end_ns) for r in test.records if r.user == 0)
    assert all((b[0] - a[1]) / 1e9 >= 0.19 for a, b in zip(u0, u0[1:]))
    assert test.marks[0].target == {"duration_s": 0.8, "users": 4, "ramp_s": 0.6, "think_s": 0.2}


def test_trace_replay_keeps_schedule_and_output_lengths(fake_server, tmp_path):
    trace = tmp_path / "t.jsonl"
    trace.write_text("\n".join(json.dumps(r) for r in [
        {"timestamp": 100.0, "prompt": "a", "output_tokens": 3},
        {"timestamp": 100.5, "prompt": "b", "output_tokens": 5},
        {"timestamp": 100.2, "prompt": "c"}]))
    srv = fake_server(tokens=8)
    test, _ = run(srv.url, [TracePhase(name="t", path=str(trace), **FAST)])
    recs = sorted(test.records, key=lambda r: r.scheduled_ns)
    assert [r.output_tokens for r in recs] == [3, 8, 5]  # 8: no output_tokens in the row -> the load's cap
    assert [r.max_tokens for r in recs] == [3, 8, 5]
    offs = [(r.scheduled_ns - test.marks[0].start_ns) / 1e6 for r in recs]
    assert offs == pytest.approx([0, 200, 500], abs=1)
    mark = test.marks[0]
    assert (mark.mode, mark.open_loop, mark.label) == ("trace", True, "trace t.jsonl")
    assert mark.target == {"trace": str(trace), "requests": 3}


def test_open_loop_concurrency_cap_queues_and_latency_from_schedule_shows_it(fake_server):
    srv = fake_server(tokens=2, ttft_ms=100)
    test, _ = run(srv.url, [ConstantPhase(name="o", rate_rps=50, duration_s=0.4, max_concurrency=2, **FAST)])
    lags = sorted((r.sent_ns - r.scheduled_ns) / 1e6 for r in test.records)
    assert lags[-1] > 100  # later arrivals waited for a free slot
    assert test.marks[0].target["max_concurrency"] == 2


def test_sweep_runs_sync_max_then_rates_and_stops_when_saturated(fake_server):
    # the server generates at most 2 requests at once, ~50 ms each: ~40 req/s capacity
    srv = fake_server(tokens=5, itl_ms=10, capacity=2)
    test, _ = run(srv.url, [SweepPhase(name="sw", step_duration_s=0.6, max_users=8, rates=6, arrivals="constant",
                                       saturation_ratio=0.9, **FAST)])
    names = [m.name for m in test.marks]
    assert names[:3] == ["sw-sync", "sw-max", "sw-r1"]
    assert [(m.mode, m.open_loop) for m in test.marks[:3]] == [("closed", False), ("closed", False), ("constant", True)]
    assert [m.label for m in test.marks[:2]] == ["1 user", "8 users"]
    assert test.marks[2].label.startswith("constant ") and test.marks[2].label.endswith(" req/s")
    sync, peak = test.marks[0].target["measured_rps"], test.marks[1].target["measured_rps"]
    assert 10 < sync < 30 and peak > 1.3 * sync  # 1 user: ~20 req/s; 8 users: the 2 slots are full
    rates = [m.target["rate_rps"] for m in test.marks[2:]]
    assert rates == sorted(rates) and all(sync < r < peak for r in rates)
    assert len(rates) <= 6
