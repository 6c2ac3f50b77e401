"""Each load mode's class: its schema, label, target figures and schedule; the open-loop set; the
loopback rule as every entry point applies it."""
import asyncio
import json
import random
import statistics

import pytest
from pydantic import TypeAdapter, ValidationError

from tokenbench.config import CellEngine, ConfigError, EngineSpec, is_loopback
from tokenbench.load import endpoint, run
from tokenbench.load.clock import now_ns
from tokenbench.load.generator import Breaker, PhaseWindow
from tokenbench.load.journal import RequestRecord
from tokenbench.load.phases import (PHASE_CLASSES, ClosedPhase, ConstantPhase, GammaPhase, IdlePhase, LoadPhase,
                                    OpenLoopPhase, Phase, PoissonPhase, SweepPhase, TracePhase, trace_schedule)


@pytest.fixture
def trace(tmp_path):
    path = tmp_path / "example.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"timestamp": 100.0, "prompt": "a", "output_tokens": 3},
        {"timestamp": 100.5, "prompt": "b", "output_tokens": 5, "id": "row-b"},
        {"timestamp": 100.2, "prompt": "c"}]) + "\n\n")
    return path


def test_every_mode_is_one_class_the_config_dispatches_to():
    adapter = TypeAdapter(Phase)
    required = {"closed": {"users": 2, "duration_s": 1}, "poisson": {"rate_rps": 1, "duration_s": 1},
                "gamma": {"rate_rps": 1, "duration_s": 1}, "constant": {"rate_rps": 1, "requests": 3},
                "idle": {"duration_s": 1}, "trace": {"path": "t.jsonl"}, "sweep": {"step_duration_s": 1}}
    modes = [cls.model_fields["mode"].default for cls in PHASE_CLASSES]
    assert sorted(modes) == sorted(required)
    for cls, mode in zip(PHASE_CLASSES, modes):
        phase = adapter.validate_python({"mode": mode, "name": "p", **required[mode]})
        assert type(phase) is cls and phase.mode == mode


def test_open_loop_is_defined_once_by_the_base_class():
    open_modes = {cls.model_fields["mode"].default for cls in PHASE_CLASSES if cls.open_loop}
    assert open_modes == {"poisson", "gamma", "constant", "trace"}
    assert all(issubclass(cls, OpenLoopPhase) == cls.open_loop for cls in PHASE_CLASSES)
    defining = {c.__name__ for cls in PHASE_CLASSES for c in cls.__mro__ if "open_loop" in vars(c)}
    assert defining == {"LoadPhase", "OpenLoopPhase"}  # the default, and the one place it is True
    assert LoadPhase.open_loop is False


@pytest.mark.parametrize("phase, label", [
    (ClosedPhase(name="p", users=8, ramp_s=5, duration_s=60), "8 users, ramp 5 s"),
    (ClosedPhase(name="p", users=1, requests=20), "1 user"),
    (ClosedPhase(name="p", users=4, think_s=0.5, duration_s=10), "4 users, think 0.5 s"),
    (PoissonPhase(name="p", rate_rps=2, duration_s=10), "Poisson 2 req/s"),
    (GammaPhase(name="p", rate_rps=4, burstiness=0.5, max_concurrency=32, duration_s=10),
     "gamma, burstiness 0.5, 4 req/s, cap 32"),
    (ConstantPhase(name="p", rate_rps=10 / 3, requests=5), "constant 3.33 req/s"),
    (ConstantPhase(name="p", rate_rps=250, requests=5), "constant 250 req/s"),
    (IdlePhase(name="p", duration_s=10), "idle 10 s"),
    (TracePhase(name="p", path="config/traces/example.jsonl", time_scale=2), "trace example.jsonl ×2"),
    (TracePhase(name="p", path="t.jsonl", requests=2, max_concurrency=4), "trace t.jsonl, first 2 rows, cap 4"),
    (SweepPhase(name="p", step_duration_s=10, max_users=16, rates=3), "sweep: 1 user, 16 users, then up to 3 Poisson rates"),
])
def test_labels(phase, label):
    assert phase.label == label


def test_targets_keep_the_keys_the_figures_read(trace):
    assert ClosedPhase(name="p", users=8, ramp_s=5, duration_s=60).target() == {
        "duration_s": 60, "users": 8, "ramp_s": 5, "think_s": 0}
    assert PoissonPhase(name="p", rate_rps=2, requests=10).target() == {
        "requests": 10, "rate_rps": 2, "arrivals": "poisson"}
    assert GammaPhase(name="p", rate_rps=4, burstiness=0.5, max_concurrency=32, duration_s=10).target() == {
        "duration_s": 10, "rate_rps": 4, "arrivals": "gamma", "burstiness": 0.5, "max_concurrency": 32}
    assert ConstantPhase(name="p", rate_rps=1, duration_s=5, max_concurrency=2).target() == {
        "duration_s": 5, "rate_rps": 1, "arrivals": "constant", "max_concurrency": 2}
    assert IdlePhase(name="p", duration_s=10).target() == {"duration_s": 10}
    assert TracePhase(name="p", path=str(trace)).target() == {"trace": str(trace), "requests": 3}
    assert TracePhase(name="p", path=str(trace), requests=2).target() == {"trace": str(trace), "requests": 2}


@pytest.mark.parametrize("cls", [PoissonPhase, ConstantPhase])
def test_burstiness_is_gamma_only(cls):
    with pytest.raises(ValidationError, match="burstiness"):
        cls(name="p", rate_rps=1, duration_s=1, burstiness=0.5)
    assert GammaPhase(name="p", rate_rps=1, duration_s=1).burstiness == 1.0


def test_bounded_phases_need_exactly_one_bound():
    with pytest.raises(ValidationError, match="exactly one of duration_s or requests"):
        PoissonPhase(name="p", rate_rps=1)
    with pytest.raises(ValidationError, match="exactly one of duration_s or requests"):
        ClosedPhase(name="p", users=1, duration_s=1, requests=1)
    with pytest.raises(ValidationError, match="ramp_s"):
        ClosedPhase(name="p", users=2, ramp_s=5, duration_s=5)


def _gaps(phase, n=20000):
    gen = phase.arrival_offsets(random.Random(1))
    offs = [next(gen)[0] / 1e9 for _ in range(n)]
    return [b - a for a, b in zip([0.0] + offs, offs)]


@pytest.mark.parametrize("phase, cv", [
    (PoissonPhase(name="p", rate_rps=100, duration_s=1), 1.0),
    (GammaPhase(name="p", rate_rps=100, burstiness=0.25, duration_s=1), 2.0),
    (GammaPhase(name="p", rate_rps=100, burstiness=4.0, duration_s=1), 0.5),
    (ConstantPhase(name="p", rate_rps=100, duration_s=1), 0.0),
])
def test_arrival_processes_have_the_right_rate_and_burstiness(phase, cv):
    g = _gaps(phase)
    assert statistics.fmean(g) == pytest.approx(0.01, rel=0.03)
    assert statistics.pstdev(g) / statistics.fmean(g) == pytest.approx(cv, abs=0.06)


def test_constant_arrivals_are_k_over_rate_and_do_not_drift():
    gen = ConstantPhase(name="p", rate_rps=3, duration_s=1).arrival_offsets(random.Random(0))
    offs = [next(gen)[0] for _ in range(30000)]
    assert offs[2] == 1_000_000_000
    assert offs[-1] == 10_000 * 10**9  # 30000 arrivals at 3/s end at exactly 10 000 s


def test_random_schedules_are_seeded_by_run_seed_and_phase_name():
    first = lambda phase, seed: next(phase.schedule(seed))[0]  # noqa: E731
    a, b = PoissonPhase(name="a", rate_rps=5, duration_s=1), PoissonPhase(name="b", rate_rps=5, duration_s=1)
    assert first(a, 0) == first(a, 0)
    assert first(a, 0) != first(a, 1) and first(a, 0) != first(b, 0)


def test_trace_schedule_sorts_scales_and_keeps_output_lengths(trace):
    rows = trace_schedule(str(trace), 2.0)
    assert [o for o, _ in rows] == [0, 100_000_000, 250_000_000]
    assert [item for _, item in rows] == [{"id": "trace-1", "text": "a", "max_tokens": 3},
                                          {"id": "trace-3", "text": "c"},
                                          {"id": "row-b", "text": "b", "max_tokens": 5}]
    phase = TracePhase(name="t", path=str(trace), time_scale=2.0, requests=2)
    assert list(phase.schedule(seed=0)) == rows[:2]  # only the first `requests` rows


def test_bad_trace_row_names_the_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"timestamp": 1, "prompt": "a"}\n{"prompt": "b"}\n')
    with pytest.raises(ValueError, match=r"t.jsonl:2: a trace row needs 'timestamp'"):
        trace_schedule(str(path), 1.0)
    path.write_text("\n")
    with pytest.raises(ValueError, match="empty trace"):
        trace_schedule(str(path), 1.0)


def test_sweep_builds_typed_steps():
    sweep = SweepPhase(name="sw", step_duration_s=15, max_users=16, rates=3, arrivals="constant", warmup=True,
                       timeout_s=30, drain_timeout_s=5)
    sync = sweep.closed_step("sync", 1)
    assert isinstance(sync, ClosedPhase) and (sync.name, sync.users, sync.duration_s) == ("sw-sync", 1, 15)
    assert (sync.warmup, sync.timeout_s, sync.drain_timeout_s) == (True, 30, 5)
    step = sweep.rate_step(2, 7.5)
    assert isinstance(step, ConstantPhase) and (step.name, step.rate_rps, step.duration_s) == ("sw-r2", 7.5, 15)
    assert isinstance(sweep.model_copy(update={"arrivals": "poisson"}).rate_step(1, 2), PoissonPhase)
    assert sweep.step_rates(10, 50) == [20, 30, 40]  # evenly strictly between the two measured rates
    assert sweep.step_rates(0, 0) == []


class FakeWindow:
    """A PhaseWindow without a server: records what a phase sends and when (the waits and the
    breaker are PhaseWindow's own). ``trip_after``: the breaker trips once that many are sent."""

    def __init__(self, duration_s=None, budget=None, seed=0, trip_after=None):
        self.seed, self.budget, self.sent = seed, budget, 0
        self.start_ns = now_ns()
        self.end_ns = self.start_ns + int(duration_s * 1e9) if duration_s else None
        self.sends: list[tuple[int, int, dict | None]] = []
        self.breaker, self.honour_retry_after, self.not_sent = Breaker(), False, 0
        self.trip_after = trip_after

    stopped_reason = PhaseWindow.stopped_reason
    allows = PhaseWindow.allows
    more = PhaseWindow.more
    wait_stopped = PhaseWindow.wait_stopped
    sleep_until_end = PhaseWindow.sleep_until_end
    sleep = PhaseWindow.sleep

    def send(self, user, scheduled_ns, item=None):
        self.sent += 1
        self.sends.append((user, scheduled_ns, item))
        if self.sent == self.trip_after:
            self.breaker.trip("the server is gone")

        async def answer():
            await asyncio.sleep(0)
            return RequestRecord(self.sent, "p", user, "x", scheduled_ns, status="ok")
        return asyncio.ensure_future(answer())


def test_open_loop_phase_sends_on_its_schedule_until_its_budget():
    phase = ConstantPhase(name="c", rate_rps=200, requests=5)
    window = FakeWindow(budget=5)
    asyncio.run(phase.send_requests(window))
    assert [(u, t - window.start_ns) for u, t, _ in window.sends] == [(-1, k * 5_000_000) for k in range(1, 6)]


def test_trace_phase_sends_its_rows_with_their_prompts(trace):
    window = FakeWindow()
    asyncio.run(TracePhase(name="t", path=str(trace), time_scale=10).send_requests(window))
    assert [item["text"] for _, _, item in window.sends] == ["a", "c", "b"]


def test_closed_phase_stops_at_its_budget_with_one_request_per_user_at_a_time():
    window = FakeWindow(budget=7)
    asyncio.run(ClosedPhase(name="c", users=3, requests=7).send_requests(window))
    assert len(window.sends) == 7 and {u for u, _, _ in window.sends} == {0, 1, 2}


def test_an_open_loop_stopped_by_the_breaker_counts_the_arrivals_it_did_not_send():
    window = FakeWindow(budget=20, trip_after=5)
    asyncio.run(ConstantPhase(name="o", rate_rps=1000, requests=20).send_requests(window))
    assert window.sent == 5 and window.not_sent == 15  # the budget's other 15: counted, not sent
    window = FakeWindow(duration_s=0.3, trip_after=10)
    t0 = now_ns()
    asyncio.run(ConstantPhase(name="o", rate_rps=100, duration_s=0.3).send_requests(window))
    assert window.sent == 10 and window.not_sent == 19  # 29 arrivals at 10 ms steps below 300 ms, 10 sent
    assert now_ns() - t0 < 0.25e9  # it stopped at the trip, not at the window's end


def test_a_closed_loop_stopped_by_the_breaker_ends_at_once():
    window = FakeWindow(duration_s=5, trip_after=6)
    t0 = now_ns()
    asyncio.run(ClosedPhase(name="c", users=3, duration_s=5).send_requests(window))
    assert window.sent == 6 and now_ns() - t0 < 1e9


def test_idle_phase_sends_nothing_for_its_duration():
    window = FakeWindow(duration_s=0.05)
    asyncio.run(IdlePhase(name="i", duration_s=0.05).send_requests(window))
    assert window.sends == [] and now_ns() >= window.end_ns


HOSTS = {"127.0.0.1": True, "127.0.0.2": True, "127.255.255.254": True, "localhost": True, "::1": True,
         "10.0.0.1": False, "192.168.1.5": False, "0.0.0.0": False, "example.com": False, "::2": False}


@pytest.mark.parametrize("host, loopback", HOSTS.items())
def test_every_entry_point_applies_the_same_loopback_rule(host, loopback):
    url = f"http://[{host}]:8000" if ":" in host else f"http://{host}:8000"

    def accepted(check) -> bool:
        try:
            check()
        except (ValueError, RuntimeError):  # ValidationError and ConfigError are ValueErrors
            return False
        return True

    engine = CellEngine(name="e", kind="llama.cpp")
    verdicts = {
        "is_loopback": is_loopback(host),
        "config engines.<name>.url": accepted(lambda: EngineSpec(kind="external", url=url)),
        "config engines.<name>.host": accepted(lambda: EngineSpec(kind="llama.cpp", host=host)),
        "tokenbench.load.run": accepted(lambda: run.check_loopback(engine, host)),
        "tokenbench run --endpoint": accepted(lambda: endpoint.check_loopback(url, allow_remote=False)),
    }
    assert verdicts == dict.fromkeys(verdicts, loopback)
    # allow_remote lets every one of them through
    EngineSpec(kind="external", url=url, allow_remote=True)
    EngineSpec(kind="llama.cpp", host=host, allow_remote=True)
    run.check_loopback(engine.model_copy(update={"allow_remote": True}), host)
    endpoint.check_loopback(url, allow_remote=True)


def test_loopback_refusals_name_the_key_and_the_value():
    with pytest.raises(ValidationError, match=r"url host '10.0.0.1' is not loopback .*allow_remote: true"):
        EngineSpec(kind="external", url="http://10.0.0.1:8000")
    with pytest.raises(RuntimeError, match=r"engines.e: .*'10.0.0.1' needs allow_remote: true"):
        run.check_loopback(CellEngine(name="e", kind="llama.cpp"), "10.0.0.1")
    with pytest.raises(ConfigError, match=r"--endpoint 'http://10.0.0.1:8000' is not a loopback address"):
        endpoint.check_loopback("http://10.0.0.1:8000", allow_remote=False)
