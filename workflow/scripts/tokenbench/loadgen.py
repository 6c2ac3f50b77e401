"""The load generator: a streaming OpenAI-compatible client driving the phases of a load test.

Timing: every timestamp is ``time.monotonic_ns()`` (CLOCK_MONOTONIC, shared by all processes on
the host, so the telemetry sampler's samples line up with request events). Per request we record
the scheduled send, the actual send, response headers, first body byte, first *content* token
(an empty role-only delta is not a token), every content chunk, and the end.

Nothing lost: each request that was sent gets exactly one record with a status
(ok, http_error, timeout, disconnect, protocol_error, cancelled). Records are appended to a
JSONL journal as each request finishes, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

import aiohttp

from .prompts import PromptStream

now_ns = time.monotonic_ns

# Idle pooled connections are dropped after this long. Servers close idle keep-alive connections
# themselves (llama-server's cpp-httplib after 5 s); reusing one the server already closed fails
# with "Can not write request body" before the request reaches the server.
KEEPALIVE_S = 2.0

STATUSES = ("ok", "http_error", "timeout", "disconnect", "protocol_error", "cancelled")


class _NoResponse(Exception):
    """The connection failed before any response byte arrived."""


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
    target: dict[str, Any]


class Client:
    """One streaming request against an OpenAI-compatible server."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, route_prefix: str,
                 served_model: str, request: dict[str, Any], capabilities: set[str]):
        self.session = session
        self.endpoint = request["endpoint"]
        path = "/chat/completions" if self.endpoint == "chat" else "/completions"
        self.url = base_url.rstrip("/") + route_prefix + path
        self.model = served_model
        self.request = request
        self.caps = capabilities
        self._fresh: aiohttp.ClientSession | None = None
        if self.endpoint not in self.caps:
            raise ValueError(f"engine does not serve the '{self.endpoint}' endpoint")

    def payload(self, prompt: str, max_tokens: int | None = None) -> dict[str, Any]:
        r = self.request
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": max_tokens or r["max_tokens"],
            "temperature": r["temperature"],
            "stream": True,
        }
        if self.endpoint == "chat":
            msgs = [{"role": "system", "content": r["system_prompt"]}] if r.get("system_prompt") else []
            body["messages"] = msgs + [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = (r["system_prompt"] + "\n\n" if r.get("system_prompt") else "") + prompt
        if "stream_usage" in self.caps:
            body["stream_options"] = {"include_usage": True}
        if r.get("ignore_eos") and "ignore_eos" in self.caps:  # only where the engine accepts it
            body["ignore_eos"] = True
        return body

    async def send(self, rec: RequestRecord, prompt: str, timeout_s: float) -> RequestRecord:
        rec.max_tokens = rec.max_tokens or self.request["max_tokens"]  # record what was asked for
        body = self.payload(prompt, rec.max_tokens)
        rec.sent_ns = now_ns()
        while True:
            rec.attempts += 1
            try:
                # a resend goes over a new connection: the pool may hold more stale ones
                session = self.session if rec.attempts == 1 else self._fresh_session()
                return await self._attempt(session, rec, body, timeout_s)
            except _NoResponse as exc:
                # The connection dropped before a single response byte. On a pooled keep-alive
                # connection this is the server having closed it (llama-server does so right after
                # some streamed responses): resend once on a fresh connection, as browsers do for
                # a reused socket (RFC 9112 9.3.1). A second failure is recorded as it happened.
                if rec.attempts == 1:
                    continue
                rec.end_ns, rec.status, rec.error = now_ns(), "disconnect", str(exc.__cause__ or exc)[:300]
                return rec

    def _fresh_session(self) -> aiohttp.ClientSession:
        if self._fresh is None:
            self._fresh = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True),
                                                headers=self.session.headers, auto_decompress=False)
        return self._fresh

    async def close(self) -> None:
        if self._fresh is not None:
            await self._fresh.close()

    async def _attempt(self, session, rec: RequestRecord, body: dict[str, Any], timeout_s: float) -> RequestRecord:
        chat = self.endpoint == "chat"
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        parts: list[str] = []  # content received, kept whatever way the request ends
        try:
            async with session.post(self.url, json=body, timeout=timeout) as resp:
                rec.headers_ns = now_ns()
                rec.http_status = resp.status
                if resp.status != 200:
                    text = await resp.text(errors="replace")
                    rec.end_ns = now_ns()
                    rec.status, rec.error = "http_error", f"HTTP {resp.status}: {text[:300]}"
                    return rec
                done = False
                async for raw in resp.content:
                    t = now_ns()
                    if rec.first_byte_ns is None:
                        rec.first_byte_ns = t
                    line = raw.strip()
                    if not line or line.startswith(b":"):
                        continue  # keep-alive / SSE comment
                    if not line.startswith(b"data:"):
                        continue  # "event:" / "id:" fields
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        done = True
                        break
                    obj = json.loads(data)
                    if "error" in obj:
                        rec.end_ns = now_ns()
                        rec.status, rec.error = "protocol_error", f"error event: {json.dumps(obj['error'])[:300]}"
                        return rec
                    usage = obj.get("usage")
                    if usage:  # in a `choices: []` chunk or on the finish chunk
                        rec.prompt_tokens = usage.get("prompt_tokens")
                        rec.output_tokens = usage.get("completion_tokens")
                        rec.output_tokens_source = "usage"
                    for ch in obj.get("choices") or ():
                        text = (ch.get("delta") or {}).get("content") if chat else ch.get("text")
                        if text:
                            rec.chunk_ns.append(t)
                            parts.append(text)
                            if rec.first_token_ns is None:
                                rec.first_token_ns = t
                        if ch.get("finish_reason"):
                            rec.finish_reason = ch["finish_reason"]
                rec.end_ns = now_ns()
                if not done and rec.finish_reason is None:
                    rec.status, rec.error = "disconnect", "stream ended before a finish_reason or [DONE]"
                    return rec
                if rec.output_tokens is None:
                    rec.output_tokens, rec.output_tokens_source = len(rec.chunk_ns), "chunks"
                rec.status = "ok"
        except asyncio.TimeoutError:
            rec.end_ns, rec.status, rec.error = now_ns(), "timeout", f"no complete response within {timeout_s:g} s"
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            if rec.headers_ns is None and not isinstance(exc, aiohttp.ClientConnectorError):
                raise _NoResponse(f"{type(exc).__name__}: {exc}") from exc
            rec.end_ns, rec.status, rec.error = now_ns(), "disconnect", f"{type(exc).__name__}: {exc}"[:300]
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            rec.end_ns, rec.status, rec.error = now_ns(), "disconnect", f"{type(exc).__name__}: {exc}"[:300]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            rec.end_ns, rec.status, rec.error = now_ns(), "protocol_error", f"{type(exc).__name__}: {exc}"[:300]
        except asyncio.CancelledError:
            rec.end_ns, rec.status, rec.error = now_ns(), "cancelled", "run interrupted"
            raise
        finally:
            rec.output_text = "".join(parts)
            rec.output_chars = len(rec.output_text)
        return rec


def loop_lag_by_phase(lag: list[tuple[int, int]], marks: list[PhaseMark]) -> dict[str, dict[str, float]]:
    """p99 and max event-loop lag (ms) inside each phase's window, and over the whole run."""
    def summary(vals):
        vals = sorted(vals)
        return {"p99_ms": vals[int(0.99 * (len(vals) - 1))] / 1e6, "max_ms": vals[-1] / 1e6} if vals else None
    out = {m.name: summary([v for t, v in lag if m.start_ns <= t < m.drained_ns]) for m in marks}
    out["(run)"] = summary([v for _, v in lag])
    return out


class LoadTest:
    """Runs the phases of one load (sequentially) and keeps every request's record.

    Phase modes:
    - ``closed``: N users, each sending its next request when the previous one ends (plus optional
      think time); users start spread evenly over ``ramp_s``.
    - ``poisson`` / ``gamma`` / ``constant``: open-loop arrivals at ``rate_rps`` (gamma with shape
      ``burstiness``: 1 is Poisson, < 1 burstier, > 1 smoother), optional concurrency cap. Each
      request's scheduled send time is kept, so latency can be read from the schedule too.
    - ``idle``: nothing sent (the seeds' cooldown valley).
    - ``trace``: replay (timestamp, prompt[, output_tokens]) rows from a JSONL file.
    - ``sweep``: GuideLLM's profile: synchronous (1 user), then throughput (``max_users``), then
      ``rates`` open-loop rates interpolated between the two, stopping once over-saturated.
    A phase runs for ``duration_s`` or until it has sent ``requests`` requests; then it drains.
    """

    def __init__(self, client_factory, prompts: PromptStream, journal: TextIO | None = None, seed: int = 0):
        self.client_factory = client_factory
        self.prompts = prompts
        self.journal = journal
        self.seed = seed
        self.records: list[RequestRecord] = []
        self.marks: list[PhaseMark] = []
        self._next_id = 0
        self._inflight: set[asyncio.Task] = set()
        self.loop_lag: list[tuple[int, int]] = []  # (time, lag) in ns
        self.current: dict[str, Any] | None = None  # the phase running now (for progress displays)

    def _new(self, phase: str, user: int, scheduled_ns: int, item: dict[str, Any] | None = None):
        p = item or self.prompts.next()
        rec = RequestRecord(self._next_id, phase, user, p["id"], scheduled_ns, max_tokens=p.get("max_tokens"))
        self._next_id += 1
        self.records.append(rec)
        return rec, p["text"]

    def _finished(self, rec: RequestRecord) -> None:
        if self.journal is not None:
            self.journal.write(json.dumps(asdict(rec)) + "\n")
            self.journal.flush()

    async def _one(self, client: Client, rec: RequestRecord, text: str, timeout_s: float) -> None:
        try:
            await client.send(rec, text, timeout_s)
        finally:
            self._finished(rec)

    async def _lag_monitor(self, period_ns: int = 10_000_000) -> None:
        """Event-loop lag: how late a 10 ms timer fires. High lag means the client is the bottleneck."""
        while True:
            t0 = now_ns()
            await asyncio.sleep(period_ns / 1e9)
            t = now_ns()
            self.loop_lag.append((t, t - t0 - period_ns))

    async def run(self, phases: list[dict[str, Any]]) -> None:
        async with self.client_factory() as client:
            monitor = asyncio.create_task(self._lag_monitor())
            try:
                for ph in phases:
                    if ph["mode"] == "sweep":
                        await self._sweep(client, ph)
                    else:
                        await self._phase(client, ph)
            finally:
                monitor.cancel()
                if self._inflight:  # interrupted: cancel what is in flight; each records "cancelled"
                    for t in list(self._inflight):
                        t.cancel()
                    await asyncio.gather(*self._inflight, return_exceptions=True)

    # ------------------------------------------------------------------ phases
    async def _phase(self, client: Client, ph: dict[str, Any]) -> PhaseMark:
        mode, name = ph["mode"], ph["name"]
        self.current = ph
        start = now_ns()
        end = start + int(ph["duration_s"] * 1e9) if ph.get("duration_s") else None
        budget = ph.get("requests")  # fixed request count, or None
        tasks: set[asyncio.Task] = set()
        sent = 0

        def spawn(rec, text):
            nonlocal sent
            sent += 1
            t = asyncio.create_task(self._one(client, rec, text, ph["timeout_s"]))
            tasks.add(t)
            self._inflight.add(t)
            t.add_done_callback(self._inflight.discard)
            return t

        def more(t_ns: int) -> bool:
            return (end is None or t_ns < end) and (budget is None or sent < budget)

        target: dict[str, Any] = {k: ph[k] for k in ("duration_s", "requests") if ph.get(k) is not None}
        if mode == "idle":
            await _sleep_until(end)
        elif mode in ("poisson", "gamma", "constant", "trace"):
            cap = ph.get("max_concurrency")
            sem = asyncio.Semaphore(cap) if cap else None
            if mode == "trace":
                schedule = trace_schedule(ph["path"], ph.get("time_scale", 1.0))
                target.update(trace=ph["path"], requests=len(schedule))
                budget = len(schedule) if budget is None else min(budget, len(schedule))
            else:
                rate = ph["rate_rps"]
                target.update(rate_rps=rate, arrivals=mode)
                if mode == "gamma":
                    target["burstiness"] = ph.get("burstiness", 1.0)
                schedule = arrival_offsets(mode, rate, ph.get("burstiness", 1.0),
                                           random.Random(f"{self.seed}:{name}:arrivals"))
            if cap:
                target["max_concurrency"] = cap
            for offset, item in schedule:
                t_sched = start + offset
                if not more(t_sched):
                    break
                await _sleep_until(t_sched)
                if sem is not None:
                    await sem.acquire()  # the wait is queueing: latency from the schedule shows it
                rec, text = self._new(name, -1, t_sched, item)
                task = spawn(rec, text)
                if sem is not None:
                    task.add_done_callback(lambda _t: sem.release())
            if end is not None:
                await _sleep_until(end)  # the phase lasts its full duration, not until its last arrival
        elif mode == "closed":
            users, ramp, think = ph["users"], ph.get("ramp_s", 0.0), ph.get("think_s", 0.0)
            target.update(users=users, ramp_s=ramp, think_s=think)
            done = asyncio.Event()

            async def user(u: int) -> None:
                await _sleep_until(start + int(ramp * 1e9 * u / users))
                while more(now_ns()):
                    rec, text = self._new(name, u, now_ns())
                    await asyncio.shield(spawn(rec, text))
                    if think:
                        await asyncio.sleep(think)
                if budget is not None and sent >= budget:
                    done.set()

            workers = [asyncio.create_task(user(u)) for u in range(users)]
            try:
                if end is not None:
                    await _sleep_until(end)
                else:
                    await done.wait()
            finally:
                for w in workers:
                    w.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
        else:  # pragma: no cover - the config schema rejects it first
            raise ValueError(f"unknown phase mode {mode!r}")
        stopped = now_ns()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=ph["drain_timeout_s"] or None)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        mark = PhaseMark(name, mode, bool(ph.get("warmup")), start, stopped, now_ns(), target)
        self.marks.append(mark)
        return mark

    def _completion_rate(self, mark: PhaseMark) -> float:
        """Requests of a phase that finished ok inside its window, per second."""
        dur = (mark.end_ns - mark.start_ns) / 1e9
        n = sum(1 for r in self.records if r.phase == mark.name and r.status == "ok"
                and r.end_ns is not None and r.end_ns < mark.end_ns)
        return n / dur if dur > 0 else 0.0

    async def _sweep(self, client: Client, ph: dict[str, Any]) -> None:
        """GuideLLM-style sweep: synchronous, throughput, then interpolated rates until saturated."""
        base = {k: ph[k] for k in ("timeout_s", "drain_timeout_s", "warmup")}
        step = {"duration_s": ph["step_duration_s"]}
        name = ph["name"]
        sync = await self._phase(client, {**base, **step, "name": f"{name}-sync", "mode": "closed", "users": 1})
        peak = await self._phase(client, {**base, **step, "name": f"{name}-max", "mode": "closed",
                                          "users": ph["max_users"]})
        r_sync, r_max = self._completion_rate(sync), self._completion_rate(peak)
        sync.target["measured_rps"], peak.target["measured_rps"] = r_sync, r_max
        n = ph["rates"]
        for i in range(1, n + 1):
            rate = r_sync + (r_max - r_sync) * i / (n + 1)
            if rate <= 0:
                break
            mark = await self._phase(client, {**base, **step, "name": f"{name}-r{i}", "mode": ph["arrivals"],
                                              "rate_rps": rate})
            achieved = self._completion_rate(mark)
            mark.target["measured_rps"] = achieved
            if achieved < ph["saturation_ratio"] * rate:
                mark.target["saturated"] = True  # the server no longer keeps up: stop the sweep
                break


def arrival_offsets(mode: str, rate: float, burstiness: float, rng: random.Random):
    """Endless (offset_ns, None) arrivals: Poisson, gamma (shape = burstiness) or constant.

    Constant arrivals are k / rate exactly (no accumulated rounding); random ones accumulate
    their gaps in float seconds and are rounded to ns once."""
    t = 0.0
    k = 0
    while True:
        k += 1
        if mode == "constant":
            t = k / rate
        elif mode == "gamma":
            t += rng.gammavariate(burstiness, 1.0 / (rate * burstiness))
        else:
            t += rng.expovariate(rate)
        yield round(t * 1e9), None


def trace_schedule(path: str, time_scale: float = 1.0) -> list[tuple[int, dict[str, Any]]]:
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


async def _sleep_until(t_ns: int) -> None:
    delay = t_ns - now_ns()
    if delay > 0:
        await asyncio.sleep(delay / 1e9)


def session_factory(base_url: str, route_prefix: str, served_model: str, request: dict[str, Any],
                    capabilities: set[str], headers: dict[str, str] | None = None):
    """An async context manager yielding a Client over one keep-alive connection pool."""

    class _Ctx:
        async def __aenter__(self):
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=None, keepalive_timeout=KEEPALIVE_S),
                headers=headers, auto_decompress=False,
            )
            self.client = Client(self.session, base_url, route_prefix, served_model, request, capabilities)
            return self.client

        async def __aexit__(self, *exc):
            await self.client.close()
            await self.session.close()

    return _Ctx
