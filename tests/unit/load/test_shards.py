import asyncio

import pytest

from tokenbench.config import LoadSpec, RequestSpec
from tokenbench.load.journal import read_records
from tokenbench.load.phases import ClosedPhase, ConstantPhase, PoissonPhase, SweepPhase
from tokenbench.load.prompts import builtin_prompts
from tokenbench.load.shards import ClientSpec, ShardedLoadTest, load_test

REQ = RequestSpec(endpoint="chat", max_tokens=4, temperature=0.0, ignore_eos=True)
FAST = {"timeout_s": 5, "drain_timeout_s": 5}


def run(url, phases, processes, tmp_path):
    client = ClientSpec(url, "/v1", "m", REQ, frozenset({"chat", "stream_usage", "ignore_eos"}))
    test = load_test(processes, client, builtin_prompts(), "l", 0, tmp_path / "j.arrows")
    asyncio.run(test.run(phases))
    recs = [r for p in test.journal_paths for r in read_records(p)]
    return test, recs


def test_users_are_dealt_out_and_every_request_is_recorded_once(fake_server, tmp_path):
    srv = fake_server(tokens=4, ttft_ms=5)
    test, recs = run(srv.url, [ClosedPhase(name="c", users=5, duration_s=0.6, **FAST),
                               ClosedPhase(name="n", users=3, requests=7, **FAST)], 2, tmp_path)
    assert isinstance(test, ShardedLoadTest) and len(test.journal_paths) == 2
    assert len(recs) == srv.requests == test.requests_sent
    assert len({r.request_id for r in recs}) == len(recs)  # interleaved ids: k, k + n, ...
    assert {r.user for r in recs if r.phase == "c"} == set(range(5))
    assert sum(r.phase == "n" for r in recs) == 7  # the budget split 4 + 3
    assert {r.status for r in recs} == {"ok"} and test.status_counts == {"ok": len(recs)}
    # the progress counters, summed from what the workers published
    assert test.n_done == test.n_ok == len(recs) and test.n_chunks == sum(len(r.chunk_ns) for r in recs) > 0
    assert [m.name for m in test.marks] == ["c", "n"]
    c = test.marks[0]
    assert c.warm_connections == 5 and c.label == "5 users" and c.target["users"] == 5
    in_c = [r for r in recs if r.phase == "c"]
    # one shared start: both processes' first requests leave within a few ms of it
    firsts = [min(r.sent_ns for r in in_c if r.user % 2 == k) for k in (0, 1)]
    assert all(abs(t - c.start_ns) / 1e6 < 5 for t in firsts), [(t - c.start_ns) / 1e6 for t in firsts]
    assert c.drained_ns <= test.marks[1].start_ns


def test_the_union_of_the_shares_is_the_one_process_schedule(fake_server, tmp_path):
    srv = fake_server(tokens=2)
    phase = PoissonPhase(name="p", rate_rps=150, duration_s=0.5, **FAST)
    one_test, one = run(srv.url, [phase], 1, tmp_path / "one")
    test, two = run(srv.url, [phase], 2, tmp_path / "two")
    offsets = lambda recs, start: sorted(r.scheduled_ns - start for r in recs)  # noqa: E731
    assert len(one) > 40
    # exactly the same seeded arrival offsets, split between the processes
    assert offsets(two, test.marks[0].start_ns) == offsets(one, one_test.marks[0].start_ns)
    assert {r.request_id % 2 for r in two} == {0, 1}


def test_capped_open_loop_splits_its_cap_and_warms_it(fake_server, tmp_path):
    srv = fake_server(tokens=2)
    test, recs = run(srv.url, [ConstantPhase(name="o", rate_rps=100, requests=20, max_concurrency=3,
                                             warm_connections=True, **FAST)], 2, tmp_path)
    assert len(recs) == 20 and test.marks[0].warm_connections == 3  # 2 + 1


def test_progress_counters_are_live_while_the_workers_run(fake_server, tmp_path):
    srv = fake_server(tokens=4, ttft_ms=5)
    client = ClientSpec(srv.url, "/v1", "m", REQ, frozenset({"chat", "stream_usage", "ignore_eos"}))
    test = load_test(2, client, builtin_prompts(), "l", 0, tmp_path / "j.arrows")
    seen = []

    async def main():
        task = asyncio.create_task(test.run([ClosedPhase(name="c", users=4, duration_s=1.5, **FAST)]))
        while not task.done():
            seen.append((test.current and test.current.name, test.requests_sent, test.n_done))
            await asyncio.sleep(0.1)
        await task

    asyncio.run(main())
    during = [s for s in seen if s[0] == "c" and 0 < s[2] < test.n_done]
    assert during, seen  # counts rose while the phase ran, not only at the end
    assert all(a[2] <= b[2] for a, b in zip(seen, seen[1:]))


def test_a_sweep_cannot_be_split_and_the_config_says_so():
    sweep = SweepPhase(name="sw", step_duration_s=1)
    with pytest.raises(ValueError, match="cannot be split"):
        sweep.share(0, 2)
    with pytest.raises(ValueError, match="processes is 2"):
        LoadSpec(phases=[sweep], processes=2)
    assert LoadSpec(phases=[sweep]).processes == 1


def test_an_interrupted_sharded_run_records_every_request_it_sent(fake_server, tmp_path):
    srv = fake_server(tokens=50, itl_ms=20)  # 1 s a request: some are in flight at the interrupt
    client = ClientSpec(srv.url, "/v1", "m", REQ.model_copy(update={"max_tokens": 50}),
                        frozenset({"chat", "stream_usage", "ignore_eos"}))
    test = load_test(2, client, builtin_prompts(), "l", 0, tmp_path / "j.arrows")

    async def main():
        task = asyncio.create_task(test.run([ClosedPhase(name="c", users=4, duration_s=60, **FAST)]))
        for _ in range(300):  # until some requests have finished (workers start slowly on a busy machine)
            await asyncio.sleep(0.1)
            if test.n_ok >= 2:
                break
        await asyncio.sleep(0.3)  # then interrupt with requests in flight
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    recs = [r for p in test.journal_paths for r in read_records(p)]
    assert len(recs) == srv.requests == test.requests_sent
    assert {r.status for r in recs} == {"ok", "cancelled"} and test.status_counts["cancelled"] == 4
    # as in one process: the interrupted phase keeps its mark, saying so (Ctrl-C reports the phases that ran)
    assert [(m.name, m.stopped_reason) for m in test.marks] == [("c", "interrupted")]
