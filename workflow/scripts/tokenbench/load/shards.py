"""One load test on several client processes, each with its own event loop (one core each).

A single event loop tops out near a thousand streamed requests a second on one core
(tests/perf/bench_client.py). ``ShardedLoadTest`` runs ``processes`` workers, each a full
:class:`~tokenbench.load.generator.LoadTest` over its own connection pool and journal, sending its
share of every phase (``LoadPhase.share``: closed-loop users and open-loop arrivals dealt out
round-robin, so the shares together send exactly the phase's users and arrival schedule, and the
schedule's statistics hold for the union). The parent keeps the phases in step: each worker warms
its connections and reports ready, and the parent hands all of them one start time a few
milliseconds ahead; CLOCK_MONOTONIC is shared by the processes of a host, so their records merge
on one time line. Request ids are interleaved (worker k of n: k, k + n, ...), journals stay one per
worker and are read one after the other.

The parent has the same surface as LoadTest for its callers: ``run``, ``marks``, ``journal_paths``,
``loop_lag``, ``requests_sent``, ``status_counts``, ``connection_counts``, ``resent``, and the live
progress counters ``current``, ``phase_start``, ``n_done``, ``n_ok``, ``n_chunks`` (summed from a
shared-memory array each worker refreshes every ``LIVE_EVERY_S``, and once more when it is ready for
a phase, so that the counters at a phase's start are exact).
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tokenbench.config import RequestSpec
from tokenbench.load.clock import now_ns
from tokenbench.load.generator import LoadTest, PhaseMark, PhaseStart, run_async, session_factory
from tokenbench.load.journal import Journal
from tokenbench.load.phases import LoadPhase
from tokenbench.load.prompts import PromptStream

START_AHEAD_NS = 20_000_000  # the shared start: far enough ahead for every worker to be waiting for it
LIVE_EVERY_S = 0.25  # how often a worker copies its progress counters into the shared array
_LIVE = ("requests_sent", "n_done", "n_ok", "n_chunks")  # a worker's slots in the shared array, in order


@dataclass(frozen=True)
class ClientSpec:
    """What a worker needs to build its client (plain, picklable data)."""
    base_url: str
    route_prefix: str
    served_model: str
    request: RequestSpec
    capabilities: frozenset[str]
    headers: dict[str, str] | None = None
    server_pid: int | None = None  # the engine's process: the run stops if it is gone (ProcessAlive)


class ProcessAlive:
    """A liveness callback for the load test's breaker (picklable, so each client process checks
    for itself): why the process ``pid`` is gone (exited, or a zombie not yet reaped), else None."""

    def __init__(self, pid: int):
        self.pid = pid

    def __call__(self) -> str | None:
        try:
            with open(f"/proc/{self.pid}/stat", "rb") as fh:
                state = fh.read().rsplit(b")", 1)[1].split()[0]
        except FileNotFoundError:
            return f"the server process (pid {self.pid}) has exited"
        except (OSError, IndexError):  # no /proc: ask the kernel whether the pid exists
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return f"the server process (pid {self.pid}) has exited"
            except PermissionError:
                pass
            return None
        return f"the server process (pid {self.pid}) has exited" if state in (b"Z", b"X") else None


def _test_for(client: ClientSpec, prompts, salt: str, seed: int, journal, shard: tuple[int, int]) -> LoadTest:
    """One process's LoadTest over its own connection pool (the shard salts its prompt order)."""
    factory = session_factory(client.base_url, client.route_prefix, client.served_model, client.request,
                              set(client.capabilities), client.headers)
    return LoadTest(factory, PromptStream(prompts, seed, salt), Journal(journal), seed=seed, shard=shard,
                    alive=ProcessAlive(client.server_pid) if client.server_pid else None,
                    honour_retry_after=client.request.honour_retry_after)


def shard_paths(journal: Path, n: int) -> list[Path]:
    """Worker k's journal: ``<name>.shard<k><suffix>`` beside the load test's journal."""
    return [journal.with_name(f"{journal.stem}.shard{k}{journal.suffix}") for k in range(n)]


def check_shardable(phases: list[LoadPhase], processes: int) -> None:
    if processes > 1:
        for p in phases:
            p.share(0, processes)  # raises for a phase that cannot be split


def _publish(test: LoadTest, live, k: int) -> None:
    for i, name in enumerate(_LIVE):
        live[k * len(_LIVE) + i] = getattr(test, name)


async def _live(test: LoadTest, live, k: int) -> None:
    while True:
        _publish(test, live, k)
        await asyncio.sleep(LIVE_EVERY_S)


def _worker(conn, k: int, n: int, client: ClientSpec, prompts: list[dict[str, Any]], salt: str, seed: int,
            journal: str, phases: list[LoadPhase], live, parent: int | None = None) -> None:
    """A worker process: its share of each phase, in step with the others through ``conn``."""
    from tokenbench.engines.server import die_with_parent
    from tokenbench.load.run import cancellable  # the same SIGTERM handling as a single-process run

    die_with_parent(parent)  # SIGTERM (cancel, record, close the journal) when the load test dies
    test = _test_for(client, prompts, f"{salt}:shard{k}/{n}", seed, journal, (k, n))

    async def gate(phase) -> int:
        _publish(test, live, k)  # the counters as the previous phase left them (drained)
        conn.send(("ready", phase.name))
        start = await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        if isinstance(start, str):  # another process stopped the run: this one stops too (its phase sends nothing)
            test.breaker.trip(start)
            return now_ns()
        return start

    test.start_gate = gate

    async def main():
        ticker = asyncio.create_task(_live(test, live, k))
        try:
            await test.run([p.share(k, n) for p in phases])
        finally:
            ticker.cancel()
            _publish(test, live, k)

    error = None
    try:
        run_async(cancellable(main(), None, [test.journal]))  # a journal write failure stops this worker at once
    except (asyncio.CancelledError, KeyboardInterrupt):
        error = "interrupted"
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it
        error = f"{type(exc).__name__}: {exc}"
    try:
        conn.send(("done", {"marks": [asdict(m) for m in test.marks], "loop_lag": test.loop_lag,
                            "status": dict(test.status_counts),
                            "connections": dict(test.connection_counts), "resent": test.resent,
                            "stopped_reason": test.stopped_reason, "error": error}))
    except (BrokenPipeError, OSError):
        pass


class ShardedLoadTest:
    """A LoadTest's phases on ``processes`` worker processes (see the module docstring)."""

    def __init__(self, processes: int, client: ClientSpec, prompts: list[dict[str, Any]], salt: str, seed: int,
                 journal: Path):
        self.processes, self.client, self.prompts, self.salt, self.seed = processes, client, prompts, salt, seed
        self.journal_paths = shard_paths(Path(journal), processes)
        self.marks: list[PhaseMark] = []
        self.loop_lag: list[tuple[int, int]] = []
        self.resent = 0
        self.status_counts: Counter[str] = Counter()
        self.connection_counts: Counter[str] = Counter()
        self.current: LoadPhase | None = None
        self.phase_start: PhaseStart | None = None
        self._live = mp.get_context("spawn").RawArray("q", len(_LIVE) * processes)  # written by the workers
        self._final: dict[str, int] | None = None  # the workers' own totals, once they have reported
        self.stopped_reason: str | None = None  # why a worker's breaker stopped the run, if one did
        self.on_worker: Callable[[int], None] | None = None  # told each worker's pid as it starts (telemetry)

    def _count(self, name: str) -> int:
        if self._final is not None:
            return self._final[name]
        i = _LIVE.index(name)
        return sum(self._live[k * len(_LIVE) + i] for k in range(self.processes))

    requests_sent = property(lambda self: self._count("requests_sent"))
    n_done = property(lambda self: self._count("n_done"))
    n_ok = property(lambda self: self._count("n_ok"))
    n_chunks = property(lambda self: self._count("n_chunks"))

    async def run(self, phases: list[LoadPhase]) -> None:
        check_shardable(phases, self.processes)
        ctx = mp.get_context("spawn")  # a clean interpreter: no inherited event loop or threads
        pipes, procs = [], []
        for k, path in enumerate(self.journal_paths):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, name=f"tokenbench-client-{k}", daemon=True,
                               args=(child, k, self.processes, self.client, self.prompts, self.salt, self.seed,
                                     str(path), phases, self._live, os.getpid()))
            proc.start()
            if self.on_worker is not None:
                self.on_worker(proc.pid)
            child.close()
            pipes.append(parent)
            procs.append(proc)
        loop = asyncio.get_running_loop()
        inbox: list[asyncio.Queue] = [asyncio.Queue() for _ in pipes]
        for c, q in zip(pipes, inbox):  # each worker's messages, read as they arrive (never by a stray thread)
            loop.add_reader(c.fileno(), _receive, c, q)
        done: list[dict[str, Any] | None] = [None] * self.processes
        try:
            while True:
                active = [i for i in range(self.processes) if done[i] is None]
                if not active:
                    break
                msgs = await _next_from_each(inbox, done, active)  # raises at once when a process failed
                ready = [i for i, (kind, _) in msgs.items() if kind == "ready"]
                if not ready:
                    continue
                stopped = next((d["stopped_reason"] for d in done if d and d.get("stopped_reason")), None)
                if stopped:  # one process's breaker stopped the run (the server is gone): so do the others
                    for i in ready:
                        pipes[i].send(f"{stopped} (seen by another client process)")
                    continue
                if len(ready) != len(msgs):
                    raise RuntimeError(f"a client process stopped early: {[b for _, b in msgs.values() if b]}")
                self.current = next((p for p in phases if p.name == msgs[ready[0]][1]), None)
                start = now_ns() + START_AHEAD_NS
                if self.current is not None:
                    self.phase_start = PhaseStart(self.current, start, *(self._count(n) for n in _LIVE))
                for c in pipes:
                    c.send(start)
        except BaseException:
            for p in procs:  # SIGTERM: each worker cancels its requests (recorded) and closes its journal
                if p.is_alive():
                    p.terminate()
            for i, q in enumerate(inbox):
                while done[i] is None:
                    try:
                        kind, body = await asyncio.shield(asyncio.wait_for(q.get(), 30))
                    except (TimeoutError, asyncio.TimeoutError):
                        break
                    if kind == "eof":
                        break
                    if kind == "done":
                        done[i] = body
            raise
        finally:
            for c in pipes:
                loop.remove_reader(c.fileno())
            for p in procs:
                p.join(10)
                if p.is_alive():
                    p.kill()
            self._merge([d for d in done if d is not None])
        errors = [d["error"] for d in done if d and d["error"]]
        if errors:
            raise RuntimeError(f"client process failed: {errors[0]}")

    def _merge(self, reports: list[dict[str, Any]]) -> None:
        """The workers' figures as one load test's: each phase's mark spans all its shares."""
        # each worker publishes its counters once more as it ends (one killed outright: its last ones)
        self._final = {name: self._count(name) for name in _LIVE}
        for r in reports:
            self.loop_lag += [tuple(x) for x in r["loop_lag"]]
            self.status_counts.update(r["status"])
            self.connection_counts.update(r["connections"])
            self.resent += r["resent"]
        self.loop_lag.sort()
        by_name: dict[str, list[dict[str, Any]]] = {}
        for r in reports:
            for m in r["marks"]:
                by_name.setdefault(m["name"], []).append(m)
        for name, ms in by_name.items():
            first = ms[0]
            self.marks.append(PhaseMark(**{**first, "start_ns": min(m["start_ns"] for m in ms),
                                           "end_ns": max(m["end_ns"] for m in ms),
                                           "drained_ns": max(m["drained_ns"] for m in ms),
                                           "warm_connections": sum(m["warm_connections"] for m in ms),
                                           "stopped_reason": next((m["stopped_reason"] for m in ms
                                                                   if m["stopped_reason"]), None),
                                           "not_sent_breaker_open": sum(m["not_sent_breaker_open"] for m in ms),
                                           "timeout_s": max((m["timeout_s"] for m in ms if m["timeout_s"]),
                                                            default=None)}))
        self.stopped_reason = next((r["stopped_reason"] for r in reports if r.get("stopped_reason")), None)
        self.marks.sort(key=lambda m: m.start_ns)


async def _next_from_each(inbox: list[asyncio.Queue], done: list, active: list[int]) -> dict[int, tuple[str, Any]]:
    """The next message of every active worker (a "done" one's report goes into ``done``). A worker
    that fails or goes away raises at once, without waiting for the others' next message: their
    phase may have minutes to run, and the load test must stop now (the caller terminates them).
    A worker done without an error (its breaker stopped it) is not a failure: the others are told
    at their next gate."""
    gets = {i: asyncio.ensure_future(inbox[i].get()) for i in active}
    try:
        pending = set(gets.values())
        while pending:
            finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            failed = []
            for i, t in gets.items():
                if t not in finished:
                    continue
                kind, body = t.result()
                if kind == "done":
                    done[i] = body
                if kind == "eof" or (kind == "done" and body.get("error")):
                    failed.append(f"client process {i}: {body['error'] if body else 'exited without a report'}")
            if failed:
                raise RuntimeError(f"client process failed: {'; '.join(failed)}")
        return {i: t.result() for i, t in gets.items()}
    finally:
        for t in gets.values():
            t.cancel()


def _receive(conn, inbox: asyncio.Queue) -> None:
    """One message from a worker into its inbox; ("eof", None) once it has gone."""
    try:
        inbox.put_nowait(conn.recv())
    except (EOFError, OSError):
        asyncio.get_running_loop().remove_reader(conn.fileno())
        inbox.put_nowait(("eof", None))


def load_test(processes: int, client: ClientSpec, prompts: list[dict[str, Any]], salt: str, seed: int,
              journal: Path) -> LoadTest | ShardedLoadTest:
    """The load test for ``processes`` client processes: this process's own event loop for 1."""
    if processes == 1:
        return _test_for(client, prompts, salt, seed, journal, (0, 1))
    return ShardedLoadTest(processes, client, prompts, salt, seed, journal)


