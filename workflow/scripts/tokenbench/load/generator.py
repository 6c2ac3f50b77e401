"""The load generator: a streaming OpenAI-compatible client driving the phases of a load test
(tokenbench.load.phases says how each mode sends; this module records what was sent and got).

Timing: every timestamp is ``time.monotonic_ns()`` (tokenbench.load.clock). Per request we record
the scheduled send, the actual send, response headers, first body byte, first *content* token
(an empty role-only delta is not a token), every content chunk, and the end.

Nothing lost: each request that was sent gets exactly one record with a status
(ok, http_error, timeout, disconnect, protocol_error, cancelled). Records are appended to a
JSONL journal as each request finishes, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import asyncio
import gc
import json
from dataclasses import dataclass, field, fields
from typing import Any, TextIO
from urllib.parse import urlsplit

from tokenbench.config import RequestSpec
from tokenbench.load.clock import now_ns, sleep_until
from tokenbench.load.http_stream import StreamPool
from tokenbench.load.phases import LoadPhase, WindowPhase
from tokenbench.load.prompts import PromptStream

try:  # 4x faster per chunk than json.loads(bytes); optional
    from orjson import loads as _loads
except ImportError:  # pragma: no cover - depends on the environment
    _decode = json.JSONDecoder().raw_decode

    def _loads(data: bytes):
        return _decode(data.decode())[0]

STATUSES = ("ok", "http_error", "timeout", "disconnect", "protocol_error", "cancelled")


@dataclass
class RequestRecord:
    request_id: int
    phase: str
    user: int  # closed-loop user index; -1 for open-loop arrivals
    prompt_id: str
    scheduled_ns: int
    sent_ns: int = 0
    headers_ns: int | None = None
    first_byte_ns: int | None = None
    first_token_ns: int | None = None
    end_ns: int | None = None
    chunk_ns: list[int] = field(default_factory=list)  # arrival time of each content chunk
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    output_tokens_source: str | None = None  # "usage" (server count) or "chunks" (fallback)
    output_chars: int = 0
    finish_reason: str | None = None
    status: str = "cancelled"
    http_status: int | None = None
    error: str | None = None
    attempts: int = 0  # transport attempts: 2 when a pooled connection the server had closed was replaced
    # (the resend is http_stream.StreamPool's; see post_sse)
    max_tokens: int | None = None  # per-request output cap (trace / dataset rows); None: the load's
    output_text: str = ""  # the streamed content, joined
    client_output_tokens: int | None = None  # output_text re-tokenized by the model's tokenizer


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
        if r.ignore_eos and "ignore_eos" in self.caps:  # only where the engine accepts it
            body["ignore_eos"] = True
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
            for ch in obj.get("choices") or ():
                text = (ch.get("delta") or {}).get("content") if chat else ch.get("text")
                if text:
                    chunk_ns.append(t)
                    parts.append(text)
                    if rec.first_token_ns is None:
                        rec.first_token_ns = t
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
        rec.headers_ns, rec.first_byte_ns, rec.http_status = res.headers_ns, res.first_byte_ns, res.status
        rec.end_ns = res.end_ns or now_ns()
        rec.attempts = res.attempts
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


_RECORD_FIELDS = None


def record_dict(rec: "RequestRecord") -> dict[str, Any]:
    """A record as a plain dict, without dataclasses.asdict's deep copy (116 -> ~20 us a request)."""
    global _RECORD_FIELDS
    if _RECORD_FIELDS is None:
        _RECORD_FIELDS = [f.name for f in fields(RequestRecord)]
    return {name: getattr(rec, name) for name in _RECORD_FIELDS}


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

    def __init__(self, test: LoadTest, phase: WindowPhase):
        self._test = test
        self._name = phase.name
        self._timeout_s = phase.timeout_s
        self.seed = test.seed
        duration_s, self.budget = phase.bounds()  # budget: the request count, or None
        self.start_ns = now_ns()
        self.end_ns = self.start_ns + int(duration_s * 1e9) if duration_s else None
        self.sent = 0
        self.tasks: set[asyncio.Task] = set()

    def more(self, t_ns: int) -> bool:
        return (self.end_ns is None or t_ns < self.end_ns) and (self.budget is None or self.sent < self.budget)

    def send(self, user: int, scheduled_ns: int, item: dict[str, Any] | None = None) -> asyncio.Task:
        """Record one request (prompt ``item``, else the load's next) and start sending it."""
        test = self._test
        rec, text = test._new(self._name, user, scheduled_ns, item)
        self.sent += 1
        t = asyncio.create_task(test._one(rec, text, self._timeout_s))
        self.tasks.add(t)
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

    def __init__(self, client_factory, prompts: PromptStream, journal: TextIO | None = None, seed: int = 0):
        self.client_factory = client_factory
        self.prompts = prompts
        self.journal = journal
        self.seed = seed
        self.records: list[RequestRecord] = []
        self.marks: list[PhaseMark] = []
        self._next_id = 0
        self._inflight: set[asyncio.Task] = set()
        self._client: Client | None = None
        self.loop_lag: list[tuple[int, int]] = []  # (time, lag) in ns
        self.current: LoadPhase | None = None  # the phase running now (for progress displays)
        self.n_done = self.n_ok = self.n_chunks = 0  # finished requests, ok ones, their chunks: O(1) progress

    def _new(self, phase: str, user: int, scheduled_ns: int, item: dict[str, Any] | None = None):
        p = item or self.prompts.next()
        rec = RequestRecord(self._next_id, phase, user, p["id"], scheduled_ns, max_tokens=p.get("max_tokens"))
        self._next_id += 1
        self.records.append(rec)
        return rec, p["text"]

    def _finished(self, rec: RequestRecord) -> None:
        self.n_done += 1
        self.n_ok += rec.status == "ok"
        self.n_chunks += len(rec.chunk_ns)
        if self.journal is not None:  # flushed every 0.5 s by the lag monitor, and at the end
            self.journal.write(json.dumps(record_dict(rec)) + "\n")

    async def _one(self, rec: RequestRecord, text: str, timeout_s: float) -> None:
        try:
            await self._client.send(rec, text, timeout_s)
        finally:
            self._finished(rec)

    async def _lag_monitor(self, period_ns: int = 10_000_000) -> None:
        """Event-loop lag: how late a 10 ms timer fires. High lag means the client is the bottleneck.
        Also flushes the journal every 50 ticks (0.5 s), off the per-request path."""
        tick = 0
        while True:
            t0 = now_ns()
            await asyncio.sleep(period_ns / 1e9)
            t = now_ns()
            self.loop_lag.append((t, t - t0 - period_ns))
            tick += 1
            if self.journal is not None and tick % 50 == 0:
                self.journal.flush()

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
                if self.journal is not None:
                    self.journal.flush()

    async def run_window(self, phase: WindowPhase) -> PhaseMark:
        """Run one phase as a window of the run: send, drain, and mark it."""
        self.current = phase
        target = phase.target()  # before the window opens: a trace is read here, not on its clock
        window = PhaseWindow(self, phase)
        await phase.send_requests(window)
        stopped = now_ns()
        await window.drain(phase.drain_timeout_s)
        mark = PhaseMark(phase.name, phase.mode, phase.warmup, window.start_ns, stopped, now_ns(), target,
                         phase.label, phase.open_loop)
        self.marks.append(mark)
        return mark

    def completion_rate(self, mark: PhaseMark) -> float:
        """Requests of a phase that finished ok inside its window, per second."""
        dur = (mark.end_ns - mark.start_ns) / 1e9
        n = sum(1 for r in self.records if r.phase == mark.name and r.status == "ok"
                and r.end_ns is not None and r.end_ns < mark.end_ns)
        return n / dur if dur > 0 else 0.0


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
