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

    def payload(self, prompt: str) -> dict[str, Any]:
        r = self.request
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": r["max_tokens"],
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
        body = self.payload(prompt)
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
                            rec.output_chars += len(text)
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
        return rec


class LoadTest:
    """Runs the phases of one load (sequentially) and keeps every request's record."""

    def __init__(self, client_factory, prompts: PromptStream, journal: TextIO | None = None, seed: int = 0):
        self.client_factory = client_factory
        self.prompts = prompts
        self.journal = journal
        self.seed = seed
        self.records: list[RequestRecord] = []
        self.marks: list[PhaseMark] = []
        self._next_id = 0
        self._inflight: set[asyncio.Task] = set()
        self.loop_lag_ns: list[int] = []

    def _new(self, phase: str, user: int, scheduled_ns: int) -> tuple[RequestRecord, str]:
        p = self.prompts.next()
        rec = RequestRecord(self._next_id, phase, user, p["id"], scheduled_ns)
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
            self.loop_lag_ns.append(now_ns() - t0 - period_ns)

    async def run(self, phases: list[dict[str, Any]]) -> None:
        async with self.client_factory() as client:
            monitor = asyncio.create_task(self._lag_monitor())
            try:
                for ph in phases:
                    await self._phase(client, ph)
            finally:
                monitor.cancel()
                if self._inflight:  # interrupted: cancel what is in flight; each records "cancelled"
                    for t in self._inflight:
                        t.cancel()
                    await asyncio.gather(*self._inflight, return_exceptions=True)

    async def _phase(self, client: Client, ph: dict[str, Any]) -> None:
        mode, name = ph["mode"], ph["name"]
        start = now_ns()
        end = start + int(ph["duration_s"] * 1e9)
        tasks: set[asyncio.Task] = set()

        def spawn(rec, text):
            t = asyncio.create_task(self._one(client, rec, text, ph["timeout_s"]))
            tasks.add(t)
            self._inflight.add(t)
            t.add_done_callback(self._inflight.discard)
            return t

        target: dict[str, Any] = {"duration_s": ph["duration_s"]}
        if mode == "idle":
            await _sleep_until(end)
        elif mode == "poisson":
            rate = ph["rate_rps"]
            target["rate_rps"] = rate
            cap = ph.get("max_concurrency")
            sem = asyncio.Semaphore(cap) if cap else None
            rng = random.Random(f"{self.seed}:{name}:arrivals")
            t_sched = start
            while True:
                t_sched += int(rng.expovariate(rate) * 1e9)
                if t_sched >= end:
                    break
                await _sleep_until(t_sched)
                if sem is not None:
                    await sem.acquire()
                rec, text = self._new(name, -1, t_sched)
                task = spawn(rec, text)
                if sem is not None:
                    task.add_done_callback(lambda _t: sem.release())
            await _sleep_until(end)  # the phase lasts its full duration, not until its last arrival
        elif mode == "closed":
            target["users"] = ph["users"]

            async def user(u: int) -> None:
                while now_ns() < end:
                    rec, text = self._new(name, u, now_ns())
                    await asyncio.shield(spawn(rec, text))

            users = [asyncio.create_task(user(u)) for u in range(ph["users"])]
            try:
                await _sleep_until(end)
            finally:
                for u in users:
                    u.cancel()
                await asyncio.gather(*users, return_exceptions=True)
        else:  # pragma: no cover - the config schema rejects it first
            raise ValueError(f"unknown phase mode {mode!r}")
        stopped = now_ns()
        if tasks:
            done, pending = await asyncio.wait(tasks, timeout=ph["drain_timeout_s"] or None)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        self.marks.append(PhaseMark(name, mode, bool(ph.get("warmup")), start, stopped, now_ns(), target))


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
