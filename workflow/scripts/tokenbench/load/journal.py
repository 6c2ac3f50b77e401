"""Request records, and the journal that streams them to disk as they finish.

A :class:`RequestRecord` lives only while its request is in flight (its chunk arrivals in an
``array('q')``, 8 bytes each, not a list of Python ints). When the request ends, the record's
fields are appended to column buffers. ``seal`` takes the buffered records out (the load test does
so every 0.1 s) and ``convert`` turns them into an Arrow record batch a few columns per call (the
load test gives it ~0.2 ms every 10 ms tick, so the event loop is never held for long); each batch
goes to a writer thread that appends it to an Arrow IPC stream (zstd-compressed). ``flush`` does
all of that at once, as does ``add`` every ``batch_rows`` records. The client's memory therefore
stays flat however long the run: what is resident is the requests in flight plus a few batches.

The journal is readable at any moment up to its last complete batch, so a run killed outright keeps
every record that finished more than ~0.2 s before; ``to_parquet`` turns it into
``requests.parquet`` a batch at a time.

A write that fails (a full disk: ENOSPC) stops the journal at its last complete batch: the writer
keeps nothing after it, drops what is handed to it later (counted as lost), calls ``on_error`` at
once from its thread (the load test stops its phase on it: tokenbench.load.run.cancellable), and
``close`` raises a :class:`JournalWriteError` naming the path, the free space left and where the
journal stops. Neither ``add`` nor ``seal`` raises: they run inside request tasks and the event
loop's monitor, which must not die of it.

The columns are declared once, by :class:`RequestRecord`'s annotations: ``int`` is int64, ``int |
None`` a nullable int64, ``str`` / ``str | None`` a string, ``array`` (chunk_ns) a list of int64.
"""

from __future__ import annotations

import collections
import queue
import shutil
import threading
import time
from array import array
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.ipc as ipc

from tokenbench import records

STATUSES = ("ok", "http_error", "timeout", "disconnect", "protocol_error", "cancelled")
CONNECTIONS = ("new", "reused", "warm")  # warm: opened by the phase's warm-up, used for the first time


@dataclass(slots=True)
class RequestRecord:
    """One request: what was sent and what came back. Times are ``time.monotonic_ns()``.

    The timeline of the attempt that produced the response (a request resent on a new connection
    keeps only its second attempt's times; ``first_attempt_ns`` says when the first began):
    scheduled -> sent (the client began: connection acquisition starts) -> connected (a pooled
    connection taken, or a new one open) -> written (the last request byte handed to the kernel)
    -> headers -> first byte -> first event (first SSE event with ``choices``: the role chunk) ->
    first token (of any kind: reasoning or content) -> first output token (content) -> end."""

    request_id: int
    phase: str
    user: int  # closed-loop user index; -1 for open-loop arrivals
    prompt_id: str
    scheduled_ns: int
    sent_ns: int = 0
    connected_ns: int | None = None
    written_ns: int | None = None
    headers_ns: int | None = None
    first_byte_ns: int | None = None
    first_event_ns: int | None = None
    first_token_ns: int | None = None  # first generated token of any kind (reasoning or content)
    first_output_token_ns: int | None = None  # first content token
    end_ns: int | None = None
    chunk_ns: array = field(default_factory=lambda: array("q"))  # arrival of each token-carrying chunk
    reasoning_chunks: int = 0  # how many of chunk_ns carried reasoning (reasoning_content / reasoning)
    prompt_tokens: int | None = None
    output_tokens: int | None = None  # completion tokens, reasoning included (usage), else chunk count
    output_tokens_source: str | None = None  # "usage" (server count) or "chunks" (fallback)
    reasoning_tokens: int | None = None  # usage.completion_tokens_details.reasoning_tokens where given
    output_chars: int = 0
    reasoning_chars: int = 0
    finish_reason: str | None = None
    status: str = "cancelled"
    http_status: int | None = None
    error: str | None = None
    connection: str | None = None  # CONNECTIONS: how the final attempt got its connection
    attempts: int = 0  # transport attempts: 2 when a pooled connection the server had closed was replaced
    first_attempt_ns: int | None = None  # when the first attempt began, if there was a second
    max_tokens: int | None = None  # per-request output cap (trace / dataset rows); None: the load's
    output_text: str = ""  # the streamed content, joined
    client_output_tokens: int | None = None  # output_text re-tokenized by the model's tokenizer
    retry_after_s: float | None = None  # a 429 / 503's Retry-After, in seconds (delay or HTTP date), if given


_ARROW = {"int": pa.int64(), "int | None": pa.int64(), "str": pa.string(), "str | None": pa.string(),
          "float | None": pa.float64(), "array": pa.large_list(pa.int64())}
_PANDAS = {"int": "int64", "int | None": "Int64", "str": "string", "str | None": "string", "float | None": "Float64",
           "array": "object"}
FIELDS = [f.name for f in fields(RequestRecord)]
SCHEMA = pa.schema([pa.field(f.name, _ARROW[f.type], nullable=f.type.endswith("None") or f.type == "array")
                    for f in fields(RequestRecord)])
PANDAS_DTYPES = {f.name: _PANDAS[f.type] for f in fields(RequestRecord)}
_SCALARS = [n for n in FIELDS if n != "chunk_ns"]


def free_space(path: str | Path) -> str:
    """The free space on the filesystem holding ``path`` (its nearest existing folder), in words."""
    p = Path(path).absolute()
    while not p.is_dir() and p != p.parent:
        p = p.parent
    try:
        free = shutil.disk_usage(p).free
    except OSError as exc:
        return f"free space on {p} unknown ({exc.strerror or exc})"
    return f"{human_bytes(free)} free on {p}"


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


class JournalWriteError(OSError):
    """The journal could not be written: its message names the path, the free space and where the
    journal stops (its first ``written`` records are complete on disk; ``lost`` finished records are not)."""

    def __init__(self, path: Path, cause: BaseException, written: int, lost: int):
        self.path, self.cause, self.written, self.lost = path, cause, written, lost
        errno = getattr(cause, "errno", None)
        super().__init__(errno, f"request journal {path}: write failed: {cause} ({free_space(path)}); the journal "
                                f"stops after its first {written} records, {lost} finished records after them were not "
                                f"written")

    def __str__(self) -> str:
        return self.args[1]


class _Sealed:
    """Buffered records taken out of the journal's buffers, being converted to Arrow a few columns
    at a time (``step``) so that no single call holds the event loop for long."""

    __slots__ = ("cols", "values", "lengths", "arrays")

    def __init__(self, cols: dict[str, list], values: array, lengths: list[int]):
        self.cols, self.values, self.lengths = cols, values, lengths
        self.arrays: list[pa.Array] = []

    def step(self) -> bool:
        """Convert the next column; True once every column is converted."""
        name = FIELDS[len(self.arrays)]
        if name == "chunk_ns":
            offsets = np.zeros(len(self.lengths) + 1, dtype=np.int64)
            np.cumsum(self.lengths, out=offsets[1:])
            self.arrays.append(pa.LargeListArray.from_arrays(
                pa.array(offsets), pa.array(np.frombuffer(self.values, dtype=np.int64))))
        else:
            self.arrays.append(pa.array(self.cols[name], type=SCHEMA.field(name).type))
            self.cols[name] = None  # converted: its Python objects can go
        return len(self.arrays) == len(FIELDS)

    def batch(self) -> pa.RecordBatch:
        while len(self.arrays) < len(FIELDS):
            self.step()
        return pa.RecordBatch.from_arrays(self.arrays, schema=SCHEMA)


_WARM = False


def _warm_conversion() -> None:
    """Convert one made-up row, once per process: the first conversion of a process pays ~3 ms of
    one-time setup (measured), which would otherwise stall the event loop at the first flush of a
    phase, mid-stream (tokens read late share one read's kernel stamp)."""
    global _WARM
    if not _WARM:
        sample = {str: "x", int: 1}
        cols = {f.name: [sample[str] if f.type.startswith("str") else sample[int]] for f in fields(RequestRecord)
                if f.name != "chunk_ns"}
        _Sealed(cols, array("q", [1, 2]), [2]).batch()
        _WARM = True


class Journal:
    """Finished records, streamed to an Arrow IPC file a batch at a time by a writer thread."""

    MAX_SEALED = 4  # sealed buffers awaiting conversion before ``seal`` converts them all at once

    def __init__(self, path: str | Path, batch_rows: int = 2048,
                 on_error: Callable[[JournalWriteError], None] | None = None):
        self.path = Path(path)
        self.batch_rows = batch_rows
        self.rows = 0  # records written or buffered
        self.written = 0  # records on disk, in complete batches
        self._lost = [0, 0]  # finished records not written after a write failed: dropped by the loop, by the writer
        self.on_error = on_error  # called once, from the writer thread, when a write fails
        self._cols: dict[str, list] = {n: [] for n in _SCALARS}
        self._values = array("q")  # the buffered records' chunk_ns, end to end
        self._lengths: list[int] = []
        self._sealed: collections.deque[_Sealed] = collections.deque()  # taken out of the buffers, being converted
        self._queue: queue.Queue = queue.Queue(maxsize=8)  # batches for the writer; bounded: memory stays flat
        self._error: JournalWriteError | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._sink = pa.OSFile(str(self.path), "wb")  # unbuffered: a batch is on disk once written
            self._writer = ipc.new_stream(self._sink, SCHEMA, options=ipc.IpcWriteOptions(compression="zstd"))
        except (OSError, pa.ArrowException) as exc:
            raise JournalWriteError(self.path, exc, 0, 0) from exc
        self._thread = threading.Thread(target=self._write_batches, name="journal-writer", daemon=True)
        self._thread.start()
        _warm_conversion()

    @property
    def lost(self) -> int:
        """Finished records that were not written, once a write failed."""
        return sum(self._lost)

    @property
    def error(self) -> JournalWriteError | None:
        """The write failure that stopped the journal, if one did."""
        return self._error

    def add(self, rec: RequestRecord) -> None:
        self.rows += 1
        if self._error is not None:  # the journal has stopped: nothing more reaches the disk
            self._lost[0] += 1
            return
        cols = self._cols
        for name in _SCALARS:
            cols[name].append(getattr(rec, name))
        self._values.extend(rec.chunk_ns)
        self._lengths.append(len(rec.chunk_ns))
        if len(self._lengths) >= self.batch_rows:
            self.flush()

    def seal(self) -> None:
        """Take the buffered records out of the buffers, for ``convert`` to turn into a batch a few
        columns at a time (the event loop's way: see LoadTest's lag monitor)."""
        if self._error is not None:  # stopped: drop what is buffered or sealed (lost, and counted)
            self._lost[0] += len(self._lengths) + sum(len(x.lengths) for x in self._sealed)
            self._cols, self._values, self._lengths = {n: [] for n in _SCALARS}, array("q"), []
            self._sealed.clear()
            return
        if self._lengths:
            self._sealed.append(_Sealed(self._cols, self._values, self._lengths))
            self._cols, self._values, self._lengths = {n: [] for n in _SCALARS}, array("q"), []
        if len(self._sealed) > self.MAX_SEALED:  # conversion fell behind: catch up now, memory stays bounded
            self._convert_all()

    def convert(self, budget_ns: int = 200_000) -> None:
        """Convert sealed records, column by column, for about ``budget_ns`` (at least one column);
        each finished batch goes to the writer."""
        t0 = time.monotonic_ns()
        while self._sealed:
            head = self._sealed[0]
            if head.step():
                self._queue.put(head.batch())
                self._sealed.popleft()
            if time.monotonic_ns() - t0 >= budget_ns:
                return

    def _convert_all(self) -> None:
        while self._sealed:
            self._queue.put(self._sealed.popleft().batch())

    def flush(self) -> None:
        """Hand every buffered record to the writer now (they reach the file within milliseconds)."""
        self.seal()
        self._convert_all()

    def _write_batches(self) -> None:
        while True:
            batch = self._queue.get()
            if batch is None:
                return
            if self._error is not None:
                self._lost[1] += batch.num_rows
                continue
            try:
                self._writer.write_batch(batch)
                self.written += batch.num_rows
            except BaseException as exc:  # noqa: BLE001 - reported through on_error and by close
                self._fail(exc, batch.num_rows)

    def _fail(self, exc: BaseException, lost: int) -> None:
        self._lost[1] += lost
        self._error = JournalWriteError(self.path, exc, self.written, self.lost)
        self._error.__cause__ = exc
        if self.on_error is not None:
            try:
                self.on_error(self._error)
            except Exception:  # noqa: BLE001 - the failure is still raised by close
                pass

    def close(self) -> None:
        """Write what is buffered and close the file (idempotent)."""
        if self._thread.is_alive():
            try:
                self.flush()
            finally:
                self._queue.put(None)
                self._thread.join()
                for done in (self._writer.close, self._sink.close):  # the file is closed, whatever
                    try:
                        done()
                    except (OSError, pa.ArrowException) as exc:
                        if self._error is None:
                            self._fail(exc, 0)
        if self._error is not None:  # with the final counts (later records dropped since the failure)
            raise JournalWriteError(self.path, self._error.cause, self.written, self.lost) from self._error.cause


def batches(*paths: str | Path) -> Iterator[pa.RecordBatch]:
    """The journals' record batches, one journal after the other (a load test on several client
    processes keeps one each), each up to its last complete batch (a killed run's file ends mid-batch)."""
    for path in paths:
        try:
            reader = ipc.open_stream(str(path))
        except (pa.ArrowInvalid, OSError):  # empty: nothing was ever written
            continue
        while True:
            try:
                yield reader.read_next_batch()
            except StopIteration:
                break
            except (pa.ArrowInvalid, OSError):  # a truncated last batch
                break


def frame(path: str | Path) -> pd.DataFrame:
    """The whole journal as a DataFrame (for small runs and tests: it holds every record at once)."""
    bs = list(batches(path))
    table = pa.Table.from_batches(bs, schema=SCHEMA)
    df = table.to_pandas()
    return df.astype({k: v for k, v in PANDAS_DTYPES.items() if k != "chunk_ns"})


def read_records(path: str | Path) -> list[RequestRecord]:
    """The journal as RequestRecords (small runs and tests: every record in memory at once)."""
    out = []
    for batch in batches(path):
        cols = batch.to_pydict()
        for i in range(batch.num_rows):
            rec = RequestRecord(**{n: cols[n][i] for n in FIELDS if n != "chunk_ns"})
            rec.chunk_ns = array("q", cols["chunk_ns"][i] or ())
            out.append(rec)
    return out


def to_parquet(paths: str | Path | list, out: str | Path, kind: str, provenance: dict[str, Any], extra: dict[str, Any],
               client_output_tokens: Callable[[pa.RecordBatch], list[int | None]] | None = None,
               group_rows: int = 1 << 14) -> int:
    """Write the journal(s) as a results table (records.write_parquet_batches), ``group_rows`` per row
    group; ``client_output_tokens``: per batch, the re-tokenized count of each row (else kept as is).
    Returns the number of rows."""
    def tables() -> Iterator[pa.Table]:
        pending: list[pa.RecordBatch] = []
        n = 0
        for batch in batches(*(paths if isinstance(paths, list) else [paths])):
            if client_output_tokens is not None:
                i = SCHEMA.get_field_index("client_output_tokens")
                batch = batch.set_column(i, SCHEMA.field(i), pa.array(client_output_tokens(batch), type=pa.int64()))
            pending.append(batch)
            n += batch.num_rows
            if n >= group_rows:
                yield pa.Table.from_batches(pending, schema=SCHEMA)
                pending, n = [], 0
        if pending or n == 0:
            yield pa.Table.from_batches(pending, schema=SCHEMA)

    return records.write_table_batches(tables(), SCHEMA, out, kind, provenance, extra)
