"""Load phases: one class per mode. Each class is that mode's config schema (``loads.<load>.phases``),
its human label, the target figures its PhaseMark records, and how it sends its requests.

The load test (tokenbench.load.generator.LoadTest) runs every phase the same way,
``await phase.run(test)``. A phase that is one window of the run (all but the sweep) sends through a
PhaseWindow: ``window.send(user, scheduled_ns, item)`` records and starts one request,
``window.more(t_ns)`` says whether the phase may still send at t_ns (its duration and request budget),
``window.sleep_until_end()`` waits out its duration. Adding a mode is one class here, added to
PHASE_CLASSES, plus its test.

Modes:

- ``closed``: N users, each sending its next request when the previous one ends (plus optional
  think time); users start spread evenly over ``ramp_s``.
- ``poisson`` / ``gamma`` / ``constant``: open-loop arrivals at ``rate_rps`` (gamma with shape
  ``burstiness``: 1 is Poisson, < 1 burstier, > 1 smoother), optional concurrency cap. Each
  request's scheduled send time is kept, so latency can be read from the schedule too.
- ``idle``: nothing sent (the seeds' cooldown valley).
- ``trace``: replay (timestamp, prompt[, output_tokens]) rows from a JSONL file.
- ``sweep``: GuideLLM's profile: synchronous (1 user), then throughput (``max_users``), then
  ``rates`` open-loop rates interpolated between the two, stopping once over-saturated.

A bounded phase runs for ``duration_s`` or until it has sent ``requests`` requests; then it drains.
"""

from __future__ import annotations

import asyncio
import json
import random
from abc import abstractmethod
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Union

from pydantic import Field, PrivateAttr, model_validator

from tokenbench.load.clock import now_ns, sleep_until, wait_precisely
from tokenbench.schema import Name, Strict

if TYPE_CHECKING:
    from tokenbench.load.generator import LoadTest, PhaseWindow


def is_connect_failure(rec) -> bool:
    """The request never reached a server: its connection could not be opened (refused, unreachable)."""
    return rec.status == "disconnect" and (rec.error or "").startswith("disconnect: connect:")


def is_bad_gateway(rec) -> bool:
    """A gateway or proxy answered for a server behind it that it could not reach (HTTP 502)."""
    return rec.status == "http_error" and rec.http_status == 502


def is_server_gone(rec) -> bool:
    """The request found no server to serve it: a failed connect, or a 502 from a gateway in front of it.
    (503 and 504 are not: an overloaded server answers them too.)"""
    return is_connect_failure(rec) or is_bad_gateway(rec)

Arrival = tuple[int, dict[str, Any] | None]  # (offset from the phase start in ns, a prompt item or None)


def _num(x: float) -> str:
    """A figure for a label: three significant digits below 100, whole numbers above."""
    return f"{x:.3g}" if x < 100 else f"{x:.0f}"


class LoadPhase(Strict):
    """What every phase has, and the interface the load test runs it through."""

    open_loop: ClassVar[bool] = False  # True only on OpenLoopPhase: the one place the open-loop set is defined
    name: Name = Field(description="The phase's name, unique within its load: it labels the phase's records, marks and figures.")
    warmup: bool = Field(False, description="A warm-up phase: its requests are recorded but kept out of steady-state figures.")
    # per request; None (auto): AutoTimeout's, from the run's own E2E so far (10 x p99, 10-120 s)
    timeout_s: float | None = Field(
        None, gt=0, description="Seconds one request may take, connect included; a request still going then is "
                                "recorded as `timeout`. null: 10 x the p99 end-to-end time of the run's requests so "
                                "far, 10-120 s (120 s until 20 have finished).")
    drain_timeout_s: float = Field(120, ge=0, description="Seconds to wait, once the phase stops sending, for its requests still in flight; those still going then are cancelled (recorded as `cancelled`). 0: wait without limit.")
    # open the connections the phase will use before it starts (none open mid-window, and a
    # request's connect time stays out of its latency): None is on for closed loops (one per user)
    # and off for open loops, where True needs max_concurrency (how many to open)
    warm_connections: bool | None = Field(None, description="Open the connections the phase will use before it starts, so none is opened mid-window. null: on for closed loops (one per user), off for open loops; true on an open loop needs `max_concurrency` (how many to open).")
    _shard: tuple[int, int] = PrivateAttr((0, 1))  # (k, n): this process sends the k-th of n shares

    def warm_count(self) -> int:
        """How many connections to open before the phase starts."""
        return 0

    def share(self, k: int, n: int) -> LoadPhase:
        """The k-th of n shares of this phase, for one of n client processes (tokenbench.load.shards):
        closed-loop users and open-loop arrivals are dealt out round-robin (user u, arrival i to
        share u mod n, i mod n), so the shares together send exactly the phase. Labels and targets
        stay the whole phase's."""
        if n > 1 and not self.shardable:
            raise ValueError(f"phase {self.name!r} ({self.mode}) cannot be split across client processes")
        part = self.model_copy()
        part._shard = (k, n)
        return part

    shardable: ClassVar[bool] = True

    def _mine(self, i: int) -> bool:
        k, n = self._shard
        return i % n == k

    def _count_share(self, total: int) -> int:
        """How many of ``total`` things dealt round-robin this share gets."""
        k, n = self._shard
        return total // n + (k < total % n)

    @property
    @abstractmethod
    def label(self) -> str:
        """What the phase offers, in words, for tables and charts."""

    @abstractmethod
    async def run(self, test: LoadTest) -> None:
        """Send this phase's requests through the load test, leaving its PhaseMark(s) there."""


class WindowPhase(LoadPhase):
    """A phase that is one window of the run: it sends, drains, and leaves one PhaseMark."""

    async def run(self, test: LoadTest) -> None:
        await test.run_window(self)

    def bounds(self) -> tuple[float | None, int | None]:
        """(duration_s, requests): when the phase stops sending; None where it has no such bound."""
        return None, None

    @abstractmethod
    def target(self) -> dict[str, Any]:
        """The load it offers, as recorded in its PhaseMark (what the figures are read against)."""

    @abstractmethod
    async def send_requests(self, window: PhaseWindow) -> None:
        """Send until the window no longer allows it; the load test then drains and marks the phase."""


class BoundedPhase(WindowPhase):
    """A phase that sends requests: it runs for duration_s, or until it has sent `requests`."""

    duration_s: float | None = Field(None, gt=0, description="Seconds the phase sends for; give this or `requests`, not both.")
    requests: int | None = Field(None, ge=1, description="Requests the phase sends before it stops; give this or `duration_s`, not both.")

    @model_validator(mode="after")
    def _one_bound(self):
        if (self.duration_s is None) == (self.requests is None):
            raise ValueError("give exactly one of duration_s or requests")
        return self

    def bounds(self) -> tuple[float | None, int | None]:
        return self.duration_s, self._count_share(self.requests) if self.requests is not None else None

    def target(self) -> dict[str, Any]:
        return {k: v for k, v in (("duration_s", self.duration_s), ("requests", self.requests)) if v is not None}


class ClosedPhase(BoundedPhase):
    mode: Literal["closed"] = "closed"
    users: int = Field(ge=1, description="Closed-loop users (concurrent requests): each sends its next request when its last one ends.")
    ramp_s: float = Field(0.0, ge=0, description="Seconds over which the users start, spread evenly; shorter than `duration_s`.")
    think_s: float = Field(0.0, ge=0, description="Seconds a user pauses between the end of a request and its next.")

    @model_validator(mode="after")
    def _ramp_inside(self):
        if self.duration_s is not None and self.ramp_s >= self.duration_s:
            raise ValueError(f"ramp_s ({self.ramp_s}) must be shorter than duration_s ({self.duration_s})")
        return self

    def warm_count(self) -> int:
        return 0 if self.warm_connections is False else self._count_share(self.users)

    @property
    def label(self) -> str:
        parts = [f"{self.users} user{'s' if self.users != 1 else ''}"]
        if self.ramp_s:
            parts.append(f"ramp {self.ramp_s:g} s")
        if self.think_s:
            parts.append(f"think {self.think_s:g} s")
        return ", ".join(parts)

    def target(self) -> dict[str, Any]:
        return {**super().target(), "users": self.users, "ramp_s": self.ramp_s, "think_s": self.think_s}

    async def send_requests(self, window: PhaseWindow) -> None:
        users, ramp_ns, think = self.users, self.ramp_s * 1e9, self.think_s
        budget_spent = asyncio.Event()

        async def user(u: int) -> None:
            await sleep_until(window.start_ns + int(ramp_ns * u / users))
            while window.more(now_ns()):
                rec = await asyncio.shield(window.send(u, now_ns()))
                # a user does not spin on a dead server: it backs off while the breaker gathers evidence
                pause = window.breaker.backoff_s() if is_server_gone(rec) else 0.0
                if window.honour_retry_after and rec.retry_after_s:
                    pause = max(pause, rec.retry_after_s)  # the server asked this user to wait
                if think or pause:
                    await window.sleep(max(think, pause))
            if window.budget is not None and window.sent >= window.budget:
                budget_spent.set()

        workers = [asyncio.create_task(user(u)) for u in range(users) if self._mine(u)]
        try:
            await window.wait_stopped(window.end_ns, None if window.end_ns is not None else budget_spent)
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)


class OpenLoopPhase(WindowPhase):
    """Requests leave on a schedule fixed in advance, whatever the server does (open loop).

    A request whose turn comes while ``max_concurrency`` are in flight waits for a slot; its
    scheduled time is kept, so latency measured from the schedule shows the queueing."""

    open_loop: ClassVar[bool] = True
    max_concurrency: int | None = Field(None, ge=1, description="Most requests in flight at once; a request due while this many are in flight waits for one to end (its scheduled time is kept, so the queueing shows). null: no cap.")

    @model_validator(mode="after")
    def _warm_needs_cap(self):
        if self.warm_connections and not self.max_concurrency:
            raise ValueError("warm_connections on an open-loop phase needs max_concurrency (how many to open)")
        return self

    def warm_count(self) -> int:
        return self._cap() if self.warm_connections else 0

    def _cap(self) -> int | None:
        """This share's concurrency cap (at least 1 of the phase's max_concurrency)."""
        return max(self._count_share(self.max_concurrency), 1) if self.max_concurrency else None

    @abstractmethod
    def schedule(self, seed: int) -> Iterator[Arrival]:
        """Arrivals in order of offset; the phase stops at the first one its window no longer allows."""

    def _cap_label(self) -> str:
        return f", cap {self.max_concurrency}" if self.max_concurrency else ""

    def _cap_target(self) -> dict[str, Any]:
        return {"max_concurrency": self.max_concurrency} if self.max_concurrency else {}

    async def send_requests(self, window: PhaseWindow) -> None:
        cap = self._cap()
        sem = asyncio.Semaphore(cap) if cap else None
        start = window.start_ns
        arrivals = enumerate(self.schedule(window.seed))
        for i, (offset, item) in arrivals:
            if not self._mine(i):
                continue
            t_sched = start + offset
            if not window.allows(t_sched):
                break
            if window.stopped_reason is None:
                if t_sched - now_ns() > 20_000_000:  # a long gap: the breaker may stop the phase meanwhile
                    await window.wait_stopped(t_sched - 2_000_000)
                await wait_precisely(t_sched)
                if sem is not None:
                    await sem.acquire()  # the wait is queueing: latency from the schedule shows it
            if window.stopped_reason is not None:  # the breaker: the schedule's arrivals are counted, not sent
                window.not_sent = 1 + self._arrivals_left(arrivals, window)
                break
            task = window.send(-1, t_sched, item)
            if sem is not None:
                task.add_done_callback(lambda _t: sem.release())
        await window.sleep_until_end()  # the phase lasts its full duration, not until its last arrival

    def _arrivals_left(self, arrivals, window: PhaseWindow) -> int:
        """How many of this share's remaining arrivals the window's bounds would still have let go."""
        n = 0
        for i, (offset, _) in arrivals:
            if not self._mine(i):
                continue
            if not window.allows(window.start_ns + offset, window.sent + n + 1):
                break
            n += 1
        return n


class RatePhase(BoundedPhase, OpenLoopPhase):
    """Open-loop arrivals at a mean rate; each mode draws the gaps its own way."""

    rate_rps: float = Field(gt=0, description="Arrivals per second, on average.")

    @abstractmethod
    def arrival_offsets(self, rng: random.Random) -> Iterator[Arrival]:
        """Endless (offset_ns, None) arrivals."""

    def schedule(self, seed: int) -> Iterator[Arrival]:
        return self.arrival_offsets(random.Random(f"{seed}:{self.name}:arrivals"))

    def target(self) -> dict[str, Any]:
        return {**super().target(), "rate_rps": self.rate_rps, "arrivals": self.mode, **self._cap_target()}


def _accumulated(gap_s) -> Iterator[Arrival]:
    """Arrivals from random gaps (seconds): accumulated in float seconds, rounded to ns once each."""
    t = 0.0
    while True:
        t += gap_s()
        yield round(t * 1e9), None


class PoissonPhase(RatePhase):
    mode: Literal["poisson"] = "poisson"

    @property
    def label(self) -> str:
        return f"Poisson {_num(self.rate_rps)} req/s{self._cap_label()}"

    def arrival_offsets(self, rng: random.Random) -> Iterator[Arrival]:
        """Exponential gaps of mean 1 / rate."""
        return _accumulated(lambda: rng.expovariate(self.rate_rps))


class GammaPhase(RatePhase):
    mode: Literal["gamma"] = "gamma"
    burstiness: float = Field(1.0, gt=0, description="Shape of the gamma distribution of the gaps between arrivals: 1 is Poisson, below 1 burstier, above 1 smoother.")

    @property
    def label(self) -> str:
        return f"gamma, burstiness {self.burstiness:g}, {_num(self.rate_rps)} req/s{self._cap_label()}"

    def target(self) -> dict[str, Any]:
        return {**super().target(), "burstiness": self.burstiness}

    def arrival_offsets(self, rng: random.Random) -> Iterator[Arrival]:
        """Gamma gaps of shape `burstiness` and mean 1 / rate (coefficient of variation 1 / sqrt(shape))."""
        shape, scale = self.burstiness, 1.0 / (self.rate_rps * self.burstiness)
        return _accumulated(lambda: rng.gammavariate(shape, scale))


class ConstantPhase(RatePhase):
    mode: Literal["constant"] = "constant"

    @property
    def label(self) -> str:
        return f"constant {_num(self.rate_rps)} req/s{self._cap_label()}"

    def arrival_offsets(self, rng: random.Random) -> Iterator[Arrival]:
        """Arrival k at exactly k / rate (no accumulated rounding)."""
        k = 0
        while True:
            k += 1
            yield round(k / self.rate_rps * 1e9), None


class IdlePhase(WindowPhase):
    mode: Literal["idle"] = "idle"
    duration_s: float = Field(gt=0, description="Seconds of nothing sent.")

    @property
    def label(self) -> str:
        return f"idle {self.duration_s:g} s"

    def bounds(self) -> tuple[float | None, int | None]:
        return self.duration_s, None

    def target(self) -> dict[str, Any]:
        return {"duration_s": self.duration_s}

    async def send_requests(self, window: PhaseWindow) -> None:
        await window.sleep_until_end()


class TracePhase(OpenLoopPhase):
    mode: Literal["trace"] = "trace"
    path: str = Field(description="The trace: a JSONL file of rows `{\"timestamp\": s, \"prompt\": str[, \"output_tokens\": n][, \"id\": str]}`, relative to the working directory; checked to exist at validation.")
    time_scale: float = Field(1.0, gt=0, description="Replay speed: the trace's gaps are divided by this (2 replays twice as fast).")
    requests: int | None = Field(None, ge=1, description="Replay only the trace's first N rows; null: every row.")

    @property
    def label(self) -> str:
        speed = f" ×{self.time_scale:g}" if self.time_scale != 1 else ""
        first = f", first {self.requests} rows" if self.requests else ""
        return f"trace {Path(self.path).name}{speed}{first}{self._cap_label()}"

    @cached_property
    def rows(self) -> list[Arrival]:
        """The arrivals replayed: the trace's first `requests` rows (all without it), read once."""
        rows = trace_schedule(self.path, self.time_scale)
        return rows[: self.requests] if self.requests else rows

    def target(self) -> dict[str, Any]:
        return {"trace": self.path, "requests": len(self.rows), **self._cap_target()}

    def schedule(self, seed: int) -> Iterator[Arrival]:
        return iter(self.rows)


def trace_schedule(path: str, time_scale: float) -> list[Arrival]:
    """Rows of a JSONL trace: {"timestamp": s, "prompt": str[, "output_tokens": n][, "id": str]}.

    Timestamps are relative to the first row and divided by time_scale (2 replays twice as fast)."""
    rows = []
    with open(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                ts = float(row["timestamp"])
                text = row["prompt"]
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{lineno}: a trace row needs 'timestamp' (seconds) and 'prompt' ({exc})") from None
            item = {"id": str(row.get("id", f"trace-{lineno}")), "text": text}
            if row.get("output_tokens") is not None:
                item["max_tokens"] = int(row["output_tokens"])
            rows.append((ts, item))
    if not rows:
        raise ValueError(f"{path}: empty trace")
    rows.sort(key=lambda r: r[0])
    t0 = rows[0][0]
    return [(int((ts - t0) / time_scale * 1e9), item) for ts, item in rows]


class SweepPhase(LoadPhase):
    """GuideLLM's sweep: synchronous, throughput, then `rates` interpolated open-loop rates.

    Not one window: it runs a closed-loop step with 1 user, one with ``max_users``, then open-loop
    steps at rates between the two measured completion rates, each step its own PhaseMark
    (``<name>-sync``, ``<name>-max``, ``<name>-r<i>``) carrying ``measured_rps``."""

    mode: Literal["sweep"] = "sweep"
    shardable: ClassVar[bool] = False  # each step's rates come from the steps before: one process decides
    step_duration_s: float = Field(gt=0, description="Seconds each sweep step runs (the synchronous, the throughput and each rate step).")
    max_users: int = Field(64, ge=2, description="Closed-loop users of the throughput step (the sweep's top concurrency).")
    rates: int = Field(5, ge=1, description="How many open-loop rates, spread between the synchronous and the throughput steps' completion rates, are run after them.")
    arrivals: Literal["poisson", "constant"] = Field("poisson", description="Arrivals of the rate steps: Poisson or evenly spaced.")
    saturation_ratio: float = Field(0.95, gt=0, le=1, description="The sweep stops once a rate step achieves less than this fraction of its target rate (over-saturated).")

    @property
    def label(self) -> str:
        return (f"sweep: 1 user, {self.max_users} users, then up to {self.rates} "
                f"{'Poisson' if self.arrivals == 'poisson' else 'constant'} rates")

    def _step(self) -> dict[str, Any]:
        return {"warmup": self.warmup, "timeout_s": self.timeout_s, "drain_timeout_s": self.drain_timeout_s,
                "duration_s": self.step_duration_s}

    def closed_step(self, suffix: str, users: int) -> ClosedPhase:
        return ClosedPhase(name=f"{self.name}-{suffix}", users=users, warm_connections=self.warm_connections,
                           **self._step())

    def rate_step(self, index: int, rate_rps: float) -> PoissonPhase | ConstantPhase:
        step_class = PoissonPhase if self.arrivals == "poisson" else ConstantPhase
        return step_class(name=f"{self.name}-r{index}", rate_rps=rate_rps, **self._step())

    def step_rates(self, sync_rps: float, max_rps: float) -> list[float]:
        """`rates` rates spread evenly strictly between the two measured rates (none if both are 0)."""
        n = self.rates
        rates = [sync_rps + (max_rps - sync_rps) * i / (n + 1) for i in range(1, n + 1)]
        return [r for r in rates if r > 0]

    async def run(self, test: LoadTest) -> None:
        sync = await test.run_window(self.closed_step("sync", 1))
        if test.stopped_reason is not None:
            return
        peak = await test.run_window(self.closed_step("max", self.max_users))
        if test.stopped_reason is not None:
            return
        sync_rps, max_rps = test.completion_rate(sync), test.completion_rate(peak)
        sync.target["measured_rps"], peak.target["measured_rps"] = sync_rps, max_rps
        for i, rate in enumerate(self.step_rates(sync_rps, max_rps), 1):
            mark = await test.run_window(self.rate_step(i, rate))
            if test.stopped_reason is not None:
                return
            achieved = test.completion_rate(mark)
            mark.target["measured_rps"] = achieved
            if achieved < self.saturation_ratio * rate:
                mark.target["saturated"] = True  # the server no longer keeps up: stop the sweep
                break


PHASE_CLASSES = (ClosedPhase, PoissonPhase, GammaPhase, ConstantPhase, IdlePhase, TracePhase, SweepPhase)
Phase = Annotated[Union[PHASE_CLASSES], Field(discriminator="mode")]
