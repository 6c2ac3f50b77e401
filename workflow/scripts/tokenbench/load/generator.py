"""The load generator: a streaming OpenAI-compatible client driving the phases of a load test
(tokenbench.load.phases says how each mode sends; this module records what was sent and got).

Timing: every timestamp is ``time.monotonic_ns()`` (tokenbench.load.clock). Per request we record
(tokenbench.load.journal.RequestRecord) the scheduled send, the start of the attempt, when its
connection was ready, when the request's last byte was handed to the kernel, response headers,
first body byte, the first SSE event, the first token of any kind (reasoning or content; an empty
role-only delta is not a token), the first output (content) token, every token chunk, and the end.

Nothing lost: each request that was sent gets exactly one record with a status
(ok, http_error, timeout, disconnect, protocol_error, cancelled). Records stream to the journal
(tokenbench.load.journal) as each request finishes, so memory stays flat and an interrupted run
keeps what it measured.
"""

from __future__ import annotations

import asyncio
import gc
import json
from collections import Counter
from dataclasses import dataclass
from typing import Any, Awaitable, Callable
from urllib.parse import urlsplit

from tokenbench.config import RequestSpec
from tokenbench.engines.catalog import fixed_length_fields
from tokenbench.load.clock import now_ns, sleep_until
from tokenbench.load.http_stream import StreamPool
from tokenbench.load.journal import Journal, RequestRecord
from tokenbench.load.phases import LoadPhase, WindowPhase
from tokenbench.load.prompts import PromptStream

try:  # 4x faster per chunk than json.loads(bytes); optional
    from orjson import loads as _loads
except ImportError:  # pragma: no cover - depends on the environment
    _decode = json.JSONDecoder().raw_decode

    def _loads(data: bytes):
        return _decode(data.decode())[0]

@dataclass
class PhaseMark:
    name: str
    mode: str
    warmup: bool
    start_ns: int
    end_ns: int  # when the phase stopped issuing requests
    drained_ns: int  # when its last request finished (or was cancelled)
    target: dict[str, Any]  # the load it offered (WindowPhase.target), plus what a sweep measured
    label: str  # the load it offered, in words (LoadPhase.label)
    open_loop: bool  # requests left on a schedule fixed in advance (OpenLoopPhase)
    warm_connections: int = 0  # connections opened ahead of the phase (its warm-up), before start_ns


@dataclass(frozen=True)
class PhaseStart:
    """A window's start and the run's counters then (its earlier phases drained): what a progress
    display subtracts to show this phase's own figures."""
    phase: LoadPhase
    start_ns: int
    sent: int
    done: int
    ok: int
    chunks: int


class Client:
    """One streaming request against an OpenAI-compatible server, over http_stream's pool.

    Each SSE event is stamped with the time of the socket read that carried it (not when a
    coroutine got round to it) and parsed synchronously as it arrives."""

    def __init__(self, pool: StreamPool | None, base_url: str, route_prefix: str, served_model: str,
                 request: RequestSpec, capabilities: set[str]):
        self.pool = pool
        self.endpoint = request.endpoint
        path = "/chat/completions" if self.endpoint == "chat" else "/completions"
        self.url = base_url.rstrip("/") + route_prefix + path
        self.path = urlsplit(self.url).path
        self.model = served_model
        self.request = request
        self.caps = capabilities
        if self.endpoint not in self.caps:
            raise ValueError(f"engine does not serve the '{self.endpoint}' endpoint")

    def payload(self, prompt: str, max_tokens: int | None = None) -> dict[str, Any]:
        r = self.request
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": max_tokens or r.max_tokens,
            "temperature": r.temperature,
            "stream": True,
        }
        if self.endpoint == "chat":
            msgs = [{"role": "system", "content": r.system_prompt}] if r.system_prompt else []
            body["messages"] = msgs + [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = (r.system_prompt + "\n\n" if r.system_prompt else "") + prompt
        if "stream_usage" in self.caps:
            body["stream_options"] = {"include_usage": True}
        if r.ignore_eos:  # fixed lengths through the knob the engine has (none: the config refused it)
            body.update(fixed_length_fields(self.caps, body["max_tokens"]))
        return body

    async def send(self, rec: RequestRecord, prompt: str, timeout_s: float) -> RequestRecord:
        rec.max_tokens = rec.max_tokens or self.request.max_tokens  # record what was asked for
        body = json.dumps(self.payload(prompt, rec.max_tokens)).encode()
        rec.sent_ns = now_ns()
        chat = self.endpoint == "chat"
        parts: list[str] = []  # content received, kept whatever way the request ends
        chunk_ns = rec.chunk_ns
        done = False

        def on_event(t: int, data: bytes) -> None:
            nonlocal done
            if data == b"[DONE]":
                done = True
                return
            obj = _loads(data)
            if "error" in obj:
                raise ValueError(f"error event: {json.dumps(obj['error'])[:300]}")
            usage = obj.get("usage")
            if usage:  # in a `choices: []` chunk or on the finish chunk
                rec.prompt_tokens = usage.get("prompt_tokens")
                rec.output_tokens = usage.get("completion_tokens")
                rec.output_tokens_source = "usage"
                details = usage.get("completion_tokens_details")
                if details and details.get("reasoning_tokens") is not None:
                    rec.reasoning_tokens = details["reasoning_tokens"]
            choices = obj.get("choices")
            if not choices:
                return
            if rec.first_event_ns is None:
                rec.first_event_ns = t
            for ch in choices:
                if chat:
                    delta = ch.get("delta") or {}
                    text = delta.get("content")
                    # reasoning models stream their thinking first: vLLM / SGLang / llama.cpp say
                    # reasoning_content, newer vLLM and OpenRouter say reasoning
                    thought = delta.get("reasoning_content") or delta.get("reasoning")
                else:
                    text, thought = ch.get("text"), None
                if thought or text:
                    chunk_ns.append(t)
                    if rec.first_token_ns is None:
                        rec.first_token_ns = t
                    if thought:
                        rec.reasoning_chunks += 1
                        rec.reasoning_chars += len(thought)
                    if text:
                        parts.append(text)
                        if rec.first_output_token_ns is None:
                            rec.first_output_token_ns = t
                if ch.get("finish_reason"):
                    rec.finish_reason = ch["finish_reason"]

        try:
            res = await self.pool.post_sse(self.path, body, on_event, timeout_s)
        except asyncio.CancelledError:
            rec.end_ns, rec.status, rec.error = now_ns(), "cancelled", "run interrupted"
            raise
        finally:
            rec.output_text = "".join(parts)
            rec.output_chars = len(rec.output_text)
        rec.sent_ns, rec.connected_ns, rec.written_ns = res.started_ns, res.connected_ns, res.written_ns
        rec.headers_ns, rec.first_byte_ns, rec.http_status = res.headers_ns, res.first_byte_ns, res.status
        rec.end_ns = res.end_ns or now_ns()
        rec.connection, rec.attempts, rec.first_attempt_ns = res.connection, res.attempts, res.first_attempt_ns
        err = res.error
        finished = done or rec.finish_reason is not None
        if err == "timeout":
            rec.status, rec.error = "timeout", f"no complete response within {timeout_s:g} s"
        elif err and err.startswith("protocol"):
            rec.status, rec.error = "protocol_error", err.removeprefix("protocol: ")[:300]
        elif res.status is not None and res.status != 200:
            rec.status, rec.error = "http_error", f"HTTP {res.status}: {res.body[:300].decode('utf-8', 'replace')}"
        elif err and not finished:
            rec.status, rec.error = "disconnect", err[:300]
        elif not finished:
            rec.status, rec.error = "disconnect", "stream ended before a finish_reason or [DONE]"
        else:
            if rec.output_tokens is None:
                rec.output_tokens, rec.output_tokens_source = len(rec.chunk_ns), "chunks"
            rec.status, rec.error = "ok", None
        return rec


def loop_lag_by_phase(lag: list[tuple[int, int]], marks: list[PhaseMark]) -> dict[str, dict[str, float]]:
    """p99 and max event-loop lag (ms) inside each phase's window, and over the whole run."""
    def summary(vals):
        vals = sorted(vals)
        return {"p99_ms": vals[int(0.99 * (len(vals) - 1))] / 1e6, "max_ms": vals[-1] / 1e6} if vals else None
    out = {m.name: summary([v for t, v in lag if m.start_ns <= t < m.drained_ns]) for m in marks}
    out["(run)"] = summary([v for _, v in lag])
    return out


class PhaseWindow:
    """One window of a load test: a phase's start, when it must stop sending, and what it sent.

    What a phase's ``send_requests`` sends through: ``send`` records one request and starts it,
    ``more`` says whether the phase may still send at a given time."""

    def __init__(self, test: LoadTest, phase: WindowPhase, start_ns: int | None = None):
        self._test = test
        self._name = phase.name
        self._timeout_s = phase.timeout_s
        self.seed = test.seed
        duration_s, self.budget = phase.bounds()  # budget: the request count, or None
        self.start_ns = start_ns or now_ns()  # a given start may be ahead: the phase's sends wait for it
        self.end_ns = self.start_ns + int(duration_s * 1e9) if duration_s else None
        self.stopped_ns: int | None = None  # when it stopped sending
        self.sent = 0
        self.ok = 0  # requests that finished ok before the window stopped sending
        self.tasks: set[asyncio.Task] = set()

    def more(self, t_ns: int) -> bool:
        return (self.end_ns is None or t_ns < self.end_ns) and (self.budget is None or self.sent < self.budget)

    def send(self, user: int, scheduled_ns: int, item: dict[str, Any] | None = None) -> asyncio.Task:
        """Record one request (prompt ``item``, else the load's next) and start sending it."""
        test = self._test
        rec, text = test._new(self._name, user, scheduled_ns, item)
        self.sent += 1
        t = asyncio.create_task(test._one(rec, text, self._timeout_s, self))
        self.tasks.add(t)  # only while in flight: a finished task (~1 KiB) must not stay for the run
        t.add_done_callback(self.tasks.discard)
        test._inflight.add(t)
        t.add_done_callback(test._inflight.discard)
        return t

    async def sleep_until_end(self) -> None:
        if self.end_ns is not None:
            await sleep_until(self.end_ns)

    async def drain(self, timeout_s: float) -> None:
        """Wait for the requests still in flight; cancel (and so record) those still going after timeout_s."""
        if not self.tasks:
            return
        _, pending = await asyncio.wait(self.tasks, timeout=timeout_s or None)
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)


class LoadTest:
    """Runs the phases of one load (sequentially) and keeps every request's record.

    Each phase runs itself (``await phase.run(self)``, tokenbench.load.phases); a phase that is one
    window of the run does so through ``run_window``, which leaves its PhaseMark."""

    def __init__(self, client_factory, prompts: PromptStream, journal: Journal, seed: int = 0,
                 shard: tuple[int, int] = (0, 1)):
        self.client_factory = client_factory
        self.prompts = prompts
        self.journal = journal  # where every finished record goes (closed when the run ends)
        self.seed = seed
        self.marks: list[PhaseMark] = []
        # one of n client processes (tokenbench.load.shards): its request ids are k, k + n, k + 2n...
        self.shard = shard
        self._sent = 0
        # called once a phase's connections are warm; returns the phase's start (shared by the processes)
        self.start_gate: Callable[[WindowPhase], Awaitable[int]] | None = None
        self._inflight: set[asyncio.Task] = set()
        self._client: Client | None = None
        self.loop_lag: list[tuple[int, int]] = []  # (time, lag) in ns
        self.current: LoadPhase | None = None  # the phase running now (for progress displays)
        self.phase_start: PhaseStart | None = None  # the running window's start and counters then
        self.n_done = self.n_ok = self.n_chunks = 0  # finished requests, ok ones, their chunks: O(1) progress
        self.status_counts: Counter[str] = Counter()
        self.connection_counts: Counter[str] = Counter()  # how requests got their connection (journal.CONNECTIONS)
        self.resent = 0  # requests resent once because their pooled connection had been closed
        self.ok_in_window: dict[str, int] = {}  # per phase: ok requests finished before it stopped sending
        self.on_finished: list[Callable[[RequestRecord], None]] = []  # called with each record as it ends

    @property
    def requests_sent(self) -> int:
        return self._sent

    @property
    def journal_paths(self) -> list:
        return [self.journal.path]

    def _new(self, phase: str, user: int, scheduled_ns: int, item: dict[str, Any] | None = None):
        p = item or self.prompts.next()
        k, n = self.shard
        rec = RequestRecord(k + n * self._sent, phase, user, p["id"], scheduled_ns, max_tokens=p.get("max_tokens"))
        self._sent += 1
        return rec, p["text"]

    def _finished(self, rec: RequestRecord, window: PhaseWindow) -> None:
        self.n_done += 1
        ok = rec.status == "ok"
        self.n_ok += ok
        self.n_chunks += len(rec.chunk_ns)
        self.status_counts[rec.status] += 1
        self.connection_counts[rec.connection or "none"] += 1
        self.resent += rec.attempts > 1
        if ok and (window.stopped_ns is None or (rec.end_ns or 0) < window.stopped_ns):
            window.ok += 1
        for hook in self.on_finished:
            hook(rec)
        self.journal.add(rec)  # buffered; handed to the writer every 0.1 s by the lag monitor

    async def _one(self, rec: RequestRecord, text: str, timeout_s: float, window: PhaseWindow) -> None:
        try:
            await self._client.send(rec, text, timeout_s)
        finally:
            self._finished(rec, window)

    async def _lag_monitor(self, period_ns: int = 10_000_000) -> None:
        """Event-loop lag: how late a 10 ms timer fires. High lag means the client is the bottleneck.
        Also keeps the journal moving, off the per-request path: every 10 ticks (0.1 s) it seals the
        finished records, and every tick converts them to Arrow for ~0.2 ms, a few columns at a time
        (converting a batch at once held the loop ~1 ms, long enough for two tokens of a fast stream
        to share one read's kernel stamp)."""
        tick = 0
        while True:
            t0 = now_ns()
            await asyncio.sleep(period_ns / 1e9)
            t = now_ns()
            self.loop_lag.append((t, t - t0 - period_ns))
            tick += 1
            if tick % 10 == 0:
                self.journal.seal()
            self.journal.convert()

    async def run(self, phases: list[LoadPhase]) -> None:
        # The cyclic garbage collector's full passes over thousands of live records stall the
        # event loop for milliseconds; reference counting frees almost everything anyway, so the
        # collector waits until the run is over (objects alive now are frozen out of its scans).
        gc_was = gc.isenabled()
        gc.freeze()
        gc.disable()
        try:
            await self._run(phases)
        finally:
            gc.unfreeze()
            if gc_was:
                gc.enable()

    async def _run(self, phases: list[LoadPhase]) -> None:
        async with self.client_factory() as client:
            self._client = client
            monitor = asyncio.create_task(self._lag_monitor())
            try:
                for phase in phases:
                    await phase.run(self)
            finally:
                monitor.cancel()
                if self._inflight:  # interrupted: cancel what is in flight; each records "cancelled"
                    for t in list(self._inflight):
                        t.cancel()
                    await asyncio.gather(*self._inflight, return_exceptions=True)
                self.journal.close()

    async def run_window(self, phase: WindowPhase) -> PhaseMark:
        """Run one phase as a window of the run: send, drain, and mark it."""
        self.current = phase
        target = phase.target()  # before the window opens: a trace is read here, not on its clock
        warmed = await self._client.pool.warm(phase.warm_count()) if phase.warm_count() else 0
        start = await self.start_gate(phase) if self.start_gate is not None else None
        window = PhaseWindow(self, phase, start)
        self.phase_start = PhaseStart(phase, window.start_ns, self._sent, self.n_done, self.n_ok, self.n_chunks)
        await phase.send_requests(window)
        window.stopped_ns = stopped = now_ns()
        await window.drain(phase.drain_timeout_s)
        self.ok_in_window[phase.name] = window.ok
        mark = PhaseMark(phase.name, phase.mode, phase.warmup, window.start_ns, stopped, now_ns(), target,
                         phase.label, phase.open_loop, warmed)
        self.marks.append(mark)
        return mark

    def completion_rate(self, mark: PhaseMark) -> float:
        """Requests of a phase that finished ok inside its window, per second."""
        dur = (mark.end_ns - mark.start_ns) / 1e9
        return self.ok_in_window.get(mark.name, 0) / dur if dur > 0 else 0.0


def event_loop_name() -> str:
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    return f"uvloop {uvloop.__version__}"


def run_async(coro):
    """asyncio.run on uvloop's event loop where installed: at 64 streams it cut the client's
    timing error p99 from 1.6 ms to 0.4 ms in tests/perf/bench_client.py."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def session_factory(base_url: str, route_prefix: str, served_model: str, request: RequestSpec,
                    capabilities: set[str], headers: dict[str, str] | None = None):
    """An async context manager yielding a Client over one keep-alive connection pool."""

    class _Ctx:
        async def __aenter__(self):
            u = urlsplit(base_url)
            self.pool = StreamPool(u.hostname, u.port or 80, headers=headers)
            return Client(self.pool, base_url, route_prefix, served_model, request, capabilities)

        async def __aexit__(self, *exc):
            await self.pool.close()

    return _Ctx
