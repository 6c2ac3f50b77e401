from array import array

import pyarrow as pa
import pytest

from tokenbench import records
from tokenbench.load.journal import SCHEMA, Journal, RequestRecord, batches, frame, read_records, to_parquet


def rec(i: int, chunks: int = 3, status: str = "ok") -> RequestRecord:
    r = RequestRecord(i, "p", 0, f"prompt-{i}", 1_000 * i, sent_ns=1_000 * i + 5, status=status,
                      output_text=f"text {i}", output_tokens=chunks)
    r.chunk_ns = array("q", [10_000 * i + k for k in range(chunks)])
    return r


def test_records_stream_in_batches_and_read_back_exactly(tmp_path):
    path = tmp_path / "j.arrows"
    j = Journal(path, batch_rows=4)
    for i in range(10):
        j.add(rec(i, chunks=i % 4))
    j.flush()
    j.close()
    assert [b.num_rows for b in batches(path)] == [4, 4, 2]
    back = read_records(path)
    assert [r.request_id for r in back] == list(range(10))
    assert [list(r.chunk_ns) for r in back] == [[10_000 * i + k for k in range(i % 4)] for i in range(10)]
    assert back[3].output_text == "text 3" and back[3].connection is None and back[3].reasoning_chunks == 0
    df = frame(path)
    assert len(df) == 10 and str(df["first_token_ns"].dtype) == "Int64"


def test_sealed_records_are_converted_a_column_at_a_time_in_order(tmp_path):
    from tokenbench.load.journal import FIELDS

    path = tmp_path / "j.arrows"
    j = Journal(path)
    for i in range(3):
        j.add(rec(i))
    j.seal()
    for i in range(3, 5):  # records finishing while the sealed ones are converted
        j.add(rec(i))
    for _ in range(len(FIELDS) - 1):
        j.convert(budget_ns=0)  # one column per call
    assert j._queue.qsize() == 0  # one column still to go: nothing handed to the writer yet
    j.convert(budget_ns=0)
    assert j._queue.qsize() == 1
    j.seal()
    j.convert(budget_ns=10**9)  # a generous budget converts the second batch whole
    j.close()
    assert [b.num_rows for b in batches(path)] == [3, 2]
    assert [r.request_id for r in read_records(path)] == [0, 1, 2, 3, 4]


def test_a_backlog_of_sealed_records_is_converted_at_once(tmp_path):
    path = tmp_path / "j.arrows"
    j = Journal(path)
    for i in range(Journal.MAX_SEALED):  # sealed, never converted
        j.add(rec(i))
        j.seal()
    assert len(j._sealed) == Journal.MAX_SEALED
    j.add(rec(Journal.MAX_SEALED))
    j.seal()  # one more: it catches up
    assert not j._sealed
    j.close()
    assert [r.request_id for r in read_records(path)] == list(range(Journal.MAX_SEALED + 1))


def test_a_journal_cut_mid_batch_keeps_every_complete_batch(tmp_path):
    path = tmp_path / "j.arrows"
    j = Journal(path, batch_rows=5)
    for i in range(12):
        j.add(rec(i, chunks=50))
    j.close()
    data = path.read_bytes()
    cut = tmp_path / "cut.arrows"
    cut.write_bytes(data[: len(data) - 200])  # a run killed while the last batch was being written
    assert [b.num_rows for b in batches(cut)] == [5, 5]
    assert list(batches(tmp_path / "never-written.arrows")) == []


def test_to_parquet_writes_the_results_table_a_row_group_per_batch_group(tmp_path):
    path = tmp_path / "j.arrows"
    j = Journal(path, batch_rows=3)
    for i in range(8):
        j.add(rec(i, status="ok" if i % 2 else "timeout"))
    j.close()
    out = tmp_path / "requests.parquet"

    def counts(batch: pa.RecordBatch):  # what the tokenizer would give: one per ok row
        return pa.array([7 if s == "ok" else None for s in batch.column(SCHEMA.get_field_index("status")).to_pylist()],
                        type=pa.int64())

    n = to_parquet(path, out, "requests", {"p": 1}, {"complete": True}, client_output_tokens=counts, group_rows=4)
    assert n == 8
    df = records.read_table(out)
    assert records.read_meta(out)["complete"] is True
    assert list(df["request_id"]) == list(range(8))
    assert [list(c) for c in df["chunk_ns"]] == [[10_000 * i + k for k in range(3)] for i in range(8)]
    assert list(df["client_output_tokens"].astype("Float64").fillna(-1)) == [-1, 7] * 4
    import pyarrow.parquet as pq
    assert pq.ParquetFile(out).metadata.num_row_groups == 2  # 3+3 rows, then 2


def test_an_empty_journal_gives_an_empty_table_with_every_column(tmp_path):
    path = tmp_path / "j.arrows"
    Journal(path).close()
    out = tmp_path / "requests.parquet"
    assert to_parquet(path, out, "requests", {}, {}) == 0
    assert list(records.read_table(out).columns) == SCHEMA.names


def test_a_write_failure_is_raised_not_swallowed(tmp_path):
    j = Journal(tmp_path / "j.arrows", batch_rows=1)
    j._sink.close()  # the disk went away under the writer
    j.add(rec(0))
    from tokenbench.load.journal import JournalWriteError

    with pytest.raises(JournalWriteError, match="request journal .*j.arrows: write failed: .* free on "):
        j.close()


def test_a_full_disk_stops_the_journal_says_where_and_tells_at_once(tmp_path, monkeypatch):
    """ENOSPC from the writer: on_error fires from the writer thread with the path and the free
    space; add and seal keep going without raising (they run in request tasks); close raises a
    JournalWriteError that says how many records the journal holds, and it holds exactly those."""
    import errno
    import threading

    from tokenbench.load.journal import JournalWriteError

    j = Journal(tmp_path / "j.arrows", batch_rows=2)
    seen, fired = [], threading.Event()
    j.on_error = lambda exc: (seen.append(exc), fired.set())
    real, calls = j._writer.write_batch, []

    def full_disk(batch):
        calls.append(batch.num_rows)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(batch)

    monkeypatch.setattr(j, "_writer", type("W", (), {"write_batch": staticmethod(full_disk),
                                                     "close": real.__self__.close})())
    for i in range(6):
        j.add(rec(i))
    assert fired.wait(5), "the failure was not reported"
    err = seen[0]
    assert isinstance(err, JournalWriteError) and err.errno == errno.ENOSPC
    assert str(tmp_path / "j.arrows") in str(err) and "free on" in str(err) and "first 4 records" in str(err)
    for i in range(6, 9):  # requests still finishing: no exception in their tasks
        j.add(rec(i))
    j.seal()
    j.convert()
    with pytest.raises(JournalWriteError, match=r"stops after its first 4 records, 5 finished records") as info:
        j.close()
    assert info.value.written == 4 and info.value.lost == 5 and j.rows == 9
    assert [r.request_id for r in read_records(tmp_path / "j.arrows")] == [0, 1, 2, 3]


def _tiny_tmpfs(tmp_path, size: str = "64k"):
    import subprocess

    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root / CAP_SYS_ADMIN): {r.stderr.strip()}")
    return mnt


def test_a_real_full_disk_fills_the_journal_to_its_last_whole_batch(tmp_path):
    import subprocess

    from tokenbench.load.journal import JournalWriteError

    mnt = _tiny_tmpfs(tmp_path)
    try:
        j = Journal(mnt / "j.arrows", batch_rows=8)
        for i in range(400):  # ~200 KiB of chunk stamps: more than the 64 KiB disk
            j.add(rec(i, chunks=64))
        with pytest.raises(JournalWriteError, match=r"No space left on device.*free on .*tiny") as info:
            j.close()
        e = info.value
        assert 0 < e.written < 400 and e.written + e.lost == 400 and e.written % 8 == 0
        assert len(read_records(mnt / "j.arrows")) == e.written
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)  # lazy: a file a failed write left open
