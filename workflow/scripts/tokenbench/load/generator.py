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
import collections
import gc
import json
from collections import Counter
from dataclasses import dataclass
from typing import Any, Awaitable, Callable
from urllib.parse import urlsplit

from tokenbench.config import RequestSpec
from tokenbench.engines.catalog import fixed_length_fields, fixed_length_knob
from tokenbench.provenance import scrub_shapes
from tokenbench.load.clock import now_ns, sleep_until
from tokenbench.load.http_stream import StreamPool
from tokenbench.load.journal import Journal, RequestRecord
from tokenbench.load.phases import LoadPhase, WindowPhase, is_bad_gateway, is_server_gone
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
    # why it stopped before its end (the breaker: a dead server; "interrupted"), None: it ran its course
    stopped_reason: str | None = None
    not_sent_breaker_open: int = 0  # open loop: scheduled arrivals in the window not sent once it stopped
    timeout_s: float | None = None  # the per-request timeout it ran with (auto: the one its last request got)
    timeout_auto: bool = False  # the phase set none: AutoTimeout's, from the run's E2E


class AutoTimeout:
    """A phase's per-request timeout when it sets none (``timeout_s: null``, the default): ``factor``
    x the p99 end-to-end time of the run's last ``window`` ok requests, at least ``floor_s``, at most
    ``cap_s``; ``cap_s`` until ``min_seen`` requests have finished ok. A flat 120 s let one stalled
    stream hold a run of 2 s requests for two minutes; 10 x p99 stays clear of a loaded server's
    own tail (and of a later, heavier phase's: the estimate follows the run)."""

    def __init__(self, factor: float = 10.0, floor_s: float = 10.0, cap_s: float = 120.0, min_seen: int = 20,
                 window: int = 512):
        self.factor, self.floor_s, self.cap_s, self.min_seen = factor, floor_s, cap_s, min_seen
        self._e2e: collections.deque[int] = collections.deque(maxlen=window)
        self.seen = 0
        self._value_s, self._at = cap_s, 0

    def record(self, rec: RequestRecord) -> None:
        if rec.status == "ok" and rec.end_ns and rec.sent_ns:
            self._e2e.append(rec.end_ns - rec.sent_ns)
            self.seen += 1

    @property
    def value_s(self) -> float:
        """The timeout now: recomputed once enough requests are in, then every 16 more (a sort of at
        most ``window`` ints)."""
        if self.seen >= self.min_seen and (self._at < self.min_seen or self.seen - self._at >= 16):
            e2e = sorted(self._e2e)
            p99_s = e2e[int(0.99 * (len(e2e) - 1))] / 1e9
            self._value_s, self._at = min(max(self.factor * p99_s, self.floor_s), self.cap_s), self.seen
        return self._value_s


class Breaker:
    """Stops a load test that is sending into a dead server (a closed port, a killed engine).

    It trips when ``min_failures`` requests in a row found no server, over at least ``window_s``,
    with nothing else in between: a failed connect, or HTTP 502 from a gateway or proxy in front of
    a server it cannot reach. Any other response (even an HTTP error: 503 and 504 come from
    overloaded servers too) means a server is there and resets it. Without it a time-bounded phase
    keeps sending into a refused port until its end (37,266 records in 7 s in the run that
    motivated it). ``alive``: an optional liveness callback
    (the pipeline's engine process) returning why the server is gone, or None; it is polled every
    0.1 s and trips the breaker too."""

    def __init__(self, min_failures: int = 5, window_s: float = 1.0,
                 alive: Callable[[], str | None] | None = None):
        self.min_failures, self.window_ns = min_failures, int(window_s * 1e9)
        self.alive = alive
        self.failures = 0
        self.first_failure_ns: int | None = None
        self.reason: str | None = None
        self.tripped = asyncio.Event()

    def record(self, rec: RequestRecord) -> None:
        if self.reason is not None or rec.status == "cancelled":
            return
        if not is_server_gone(rec):
            self.failures, self.first_failure_ns = 0, None
            return
        t = rec.end_ns or now_ns()
        self.failures += 1
        if self.first_failure_ns is None:
            self.first_failure_ns = t
        if self.failures >= self.min_failures and t - self.first_failure_ns >= self.window_ns:
            over = f"over {(t - self.first_failure_ns) / 1e9:.1f} s"
            if is_bad_gateway(rec):
                self.trip(f"server unreachable behind a gateway: {self.failures} requests in a row answered "
                          f"HTTP 502 Bad Gateway {over} ({(rec.error or '')[:120]})")
            else:
                why = (rec.error or "").removeprefix("disconnect: connect: ")
                self.trip(f"server unreachable: {self.failures} requests in a row failed to connect {over} "
                          f"({why[:120]})")

    def poll(self) -> None:
        if self.reason is None and self.alive is not None:
            why = self.alive()
            if why:
                self.trip(why)

    def trip(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
            self.tripped.set()

    def backoff_s(self) -> float:
        """How long a closed-loop user waits after its request found no server: 50 ms doubling to
        1 s, so that a few users cannot spin on a refused port while the breaker gathers evidence."""
        return min(0.05 * 2 ** max(self.failures - 1, 0), 1.0)


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
        self.fixed_length = fixed_length_knob(capabilities)  # chosen once, not per request
        self.secrets: tuple[str, ...] = ()  # values scrubbed from every error recorded (the API key)
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
            body.update(fixed_length_fields(self.caps, body["max_tokens"], self.fixed_length))
        return body

    async def send(self, rec: RequestRecord, prompt: str, timeout_s: float) -> RequestRecord:
        rec.max_tokens = rec.max_tokens or self.request.max_tokens  # record what was asked for
        body = json.dumps(self.payload(prompt, rec.max_tokens)).encode()
        rec.sent_ns = now_ns()
        events = StreamEvents(rec, self.endpoint == "chat")
        try:
            res = await self.pool.post_sse(self.path, body, events.on_event, timeout_s)
        except asyncio.CancelledError:
            rec.end_ns, rec.status, rec.error = now_ns(), "cancelled", "run interrupted"
            raise
        finally:
            rec.output_text = "".join(events.parts)
            rec.output_chars = len(rec.output_text)
        rec.sent_ns, rec.connected_ns, rec.written_ns = res.started_ns, res.connected_ns, res.written_ns
        rec.headers_ns, rec.first_byte_ns, rec.http_status = res.headers_ns, res.first_byte_ns, res.status
        rec.end_ns = res.end_ns or now_ns()
        rec.connection, rec.attempts, rec.first_attempt_ns = res.connection, res.attempts, res.first_attempt_ns
        if res.status in (429, 503) and "retry-after" in res.headers:
            rec.retry_after_s = retry_after_s(res.headers["retry-after"])
        classify(rec, res.status, res.error, res.body, events.finished, timeout_s)
        if rec.error:  # a server may echo the key it was sent (OpenAI's 401 does): none of it is recorded
            rec.error = scrub_shapes(rec.error, self.secrets)
        return rec


def classify(rec: RequestRecord, status: int | None, err: str | None, body: bytes, finished: bool,
             timeout_s: float) -> None:
    """A finished request's status and error, from what its transport reported (StreamResult)."""
    if err == "timeout":
        rec.status, rec.error = "timeout", f"no complete response within {timeout_s:g} s (timeout_s)"
    elif err and err.startswith("protocol"):
        rec.status, rec.error = "protocol_error", err.removeprefix("protocol: ")[:300]
    elif status is not None and status != 200:
        rec.status, rec.error = "http_error", f"HTTP {status}: {body[:300].decode('utf-8', 'replace')}"
    elif err and not finished:
        rec.status, rec.error = "disconnect", err[:300]
    elif not finished:
        rec.status, rec.error = "disconnect", "stream ended before a finish_reason or [DONE]"
    else:
        if rec.output_tokens is None:
            rec.output_tokens, rec.output_tokens_source = len(rec.chunk_ns), "chunks"
        rec.status, rec.error = "ok", None


def retry_after_s(value: str) -> float | None:
    """A Retry-After header in seconds: delay-seconds, or an HTTP date (seconds from now); None if neither."""
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        from email.utils import parsedate_to_datetime
        import time as _time

        return max(parsedate_to_datetime(value).timestamp() - _time.time(), 0.0)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


class StreamEvents:
    """The SSE ``data:`` payloads of one streamed completion, parsed into its record as they arrive.

    ``on_event(t, data)`` raises (ValueError, TypeError, ...) on a payload that is not an OpenAI
    stream chunk; the transport then ends the request as a protocol error."""

    __slots__ = ("rec", "chat", "parts", "done")

    def __init__(self, rec: RequestRecord, chat: bool):
        self.rec, self.chat = rec, chat
        self.parts: list[str] = []  # content received, kept whatever way the request ends
        self.done = False  # [DONE] seen

    @property
    def finished(self) -> bool:
        return self.done or self.rec.finish_reason is not None

    def on_event(self, t: int, data: bytes) -> None:
        if data == b"[DONE]":
            self.done = True
            return
        try:
            obj = _loads(data)
        except ValueError as exc:
            raise ValueError(f"an event that is not JSON ({exc}): {data[:100]!r}") from None
        if not isinstance(obj, dict):
            raise ValueError(f"an event that is not a JSON object: {data[:100]!r}")
        if "error" in obj:
            raise ValueError(f"error event: {json.dumps(obj['error'])[:300]}")
        try:
            self._chunk(t, obj)
        except (AttributeError, TypeError, KeyError) as exc:  # a field of the wrong shape
            raise ValueError(f"an event that is not an OpenAI stream chunk ({exc}): {data[:100]!r}") from None

    def _chunk(self, t: int, obj: dict) -> None:
        rec = self.rec
        usage = obj.get("usage")
        if usage:  # in a `choices: []` chunk or on the finish chunk
            rec.prompt_tokens = _count(usage.get("prompt_tokens"))
            rec.output_tokens = _count(usage.get("completion_tokens"))
            rec.output_tokens_source = "usage"
            details = usage.get("completion_tokens_details")
            if details and details.get("reasoning_tokens") is not None:
                rec.reasoning_tokens = _count(details["reasoning_tokens"])
        choices = obj.get("choices")
        if not choices:
            return
        if rec.first_event_ns is None:
            rec.first_event_ns = t
        for ch in choices:
            if self.chat:
                delta = ch.get("delta") or {}
                text = delta.get("content")
                # reasoning models stream their thinking first: vLLM / SGLang / llama.cpp say
                # reasoning_content, newer vLLM and OpenRouter say reasoning
                thought = delta.get("reasoning_content") or delta.get("reasoning")
            else:
                text, thought = ch.get("text"), None
            if thought or text:
                if not isinstance(text or "", str) or not isinstance(thought or "", str):
                    raise ValueError(f"a delta whose text is not a string: {data[:100]!r}")
                rec.chunk_ns.append(t)
                if rec.first_token_ns is None:
                    rec.first_token_ns = t
                if thought:
                    rec.reasoning_chunks += 1
                    rec.reasoning_chars += len(thought)
                if text:
                    self.parts.append(text)
                    if rec.first_output_token_ns is None:
                        rec.first_output_token_ns = t
            if ch.get("finish_reason"):
                rec.finish_reason = str(ch["finish_reason"])


def _count(v) -> int | None:
    """A token count from a usage block: an int (or None); anything else is a protocol error."""
    if v is None or (isinstance(v, int) and not isinstance(v, bool)):
        return v
    raise ValueError(f"a usage count that is not an integer: {v!r}")


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
        self.not_sent = 0  # open loop: arrivals its schedule had in the window, not sent because it stopped
        self.timeout_last_s = 0.0  # the per-request timeout it gave its last request
        self.tasks: set[asyncio.Task] = set()
        self.breaker = test.breaker
        self.honour_retry_after = test.honour_retry_after

    @property
    def stopped_reason(self) -> str | None:
        """Why the window stopped early (the breaker tripped), else None."""
        return self.breaker.reason

    def allows(self, t_ns: int, sent: int | None = None) -> bool:
        """Whether the phase's bounds (duration, request budget) allow a request at t_ns."""
        sent = self.sent if sent is None else sent
        return (self.end_ns is None or t_ns < self.end_ns) and (self.budget is None or sent < self.budget)

    def more(self, t_ns: int) -> bool:
        return self.breaker.reason is None and self.allows(t_ns)

    def send(self, user: int, scheduled_ns: int, item: dict[str, Any] | None = None) -> asyncio.Task:
        """Record one request (prompt ``item``, else the load's next) and start sending it."""
        test = self._test
        rec, text = test._new(self._name, user, scheduled_ns, item)
        self.sent += 1
        timeout_s = self._timeout_s or test.auto_timeout.value_s
        self.timeout_last_s = timeout_s
        t = asyncio.create_task(test._one(rec, text, timeout_s, self))
        self.tasks.add(t)  # only while in flight: a finished task (~1 KiB) must not stay for the run
        t.add_done_callback(self.tasks.discard)
        test._inflight.add(t)
        t.add_done_callback(test._inflight.discard)
        return t

    async def sleep_until_end(self) -> None:
        """Until the window's end (none: at once), or until the breaker stops it."""
        if self.end_ns is not None:
            await self.wait_stopped(self.end_ns)

    async def wait_stopped(self, until_ns: int | None = None, also: asyncio.Event | None = None) -> None:
        """Until ``until_ns`` (None: no time bound), ``also`` is set, or the breaker trips."""
        if self.breaker.reason is not None:
            return
        waits = [asyncio.ensure_future(self.breaker.tripped.wait())]
        if until_ns is not None:
            waits.append(asyncio.ensure_future(sleep_until(until_ns)))
        if also is not None:
            waits.append(asyncio.ensure_future(also.wait()))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def sleep(self, seconds: float) -> None:
        """A user's pause (think time, back-off, Retry-After): cut short by the window's end or the breaker."""
        until = now_ns() + int(seconds * 1e9)
        await self.wait_stopped(until if self.end_ns is None else min(until, self.end_ns))

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
                 shard: tuple[int, int] = (0, 1), alive: Callable[[], str | None] | None = None,
                 honour_retry_after: bool = False):
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
        self.breaker = Breaker(alive=alive)  # stops the run when the server is gone (see Breaker)
        self.auto_timeout = AutoTimeout()  # per-request timeout of the phases that set none
        self.honour_retry_after = honour_retry_after  # closed-loop users wait out a 429's Retry-After

    @property
    def stopped_reason(self) -> str | None:
        """Why the run stopped before its last phase ended (the server is gone), else None."""
        return self.breaker.reason

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
        self.breaker.record(rec)
        self.auto_timeout.record(rec)
        if ok and (window.stopped_ns is None or (rec.end_ns or 0) < window.stopped_ns):
            window.ok += 1
        for hook in self.on_finished:
            hook(rec)
        self.journal.add(rec)  # buffered; handed to the writer every 0.1 s by the lag monitor

    async def _one(self, rec: RequestRecord, text: str, timeout_s: float, window: PhaseWindow) -> RequestRecord:
        try:
            await self._client.send(rec, text, timeout_s)
        finally:
            self._finished(rec, window)
        return rec

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
                self.breaker.poll()
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
                    if self.breaker.reason is not None:  # the server is gone: the later phases are not run
                        break
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

        def mark(stopped: int, reason: str | None) -> PhaseMark:
            m = PhaseMark(phase.name, phase.mode, phase.warmup, window.start_ns, stopped, now_ns(), target,
                          phase.label, phase.open_loop, warmed, reason, window.not_sent,
                          phase.timeout_s or window.timeout_last_s or None, phase.timeout_s is None)
            self.marks.append(m)
            return m

        try:
            await phase.send_requests(window)
        except asyncio.CancelledError:  # interrupted: the phase's mark says how far it got
            mark(window.stopped_ns or now_ns(), "interrupted")
            raise
        window.stopped_ns = stopped = now_ns()
        try:
            await window.drain(phase.drain_timeout_s)
        except asyncio.CancelledError:
            mark(stopped, "interrupted")
            raise
        self.ok_in_window[phase.name] = window.ok
        return mark(stopped, window.stopped_reason)

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
            client = Client(self.pool, base_url, route_prefix, served_model, request, capabilities)
            client.secrets = tuple(v.split(" ", 1)[-1] for k, v in (headers or {}).items()
                                   if k.lower() in ("authorization", "api-key", "x-api-key"))
            return client

        async def __aexit__(self, *exc):
            await self.pool.close()

    return _Ctx
