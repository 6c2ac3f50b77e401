"""Results files: Parquet tables and JSON documents that carry a schema version and provenance.

Every Parquet file tokenbench writes holds, in its schema metadata under the key ``tokenbench``,
a JSON object ``{"schema_version": N, "kind": ..., "provenance": {...}}``. JSON results carry the
same two keys at top level.

Versions. ``schema_version`` is a plain integer and it is the layout's *major* version: it goes up
on every change to the columns or keys a reader could notice (a column added, removed, renamed or
redefined, a unit changed), and there is no minor version. Each reader says which majors it reads:
the pipeline's stages read only the current one (they compute on its columns: an older file means
"rerun the stage that wrote it"); ``tokenbench.results`` (results as DataFrames) reads every major
from ``OLDEST_READABLE`` up to the current one, each file as it was written. A file of any other
version is refused with an error naming the file, the version found and the versions read.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tokenbench import SCHEMA_VERSION, __version__
from tokenbench.joblog import threads

META_KEY = b"tokenbench"


OLDEST_READABLE = 1  # the first layout: every results file since carries the envelope above
CURRENT = frozenset({SCHEMA_VERSION})  # what the pipeline's stages read


class SchemaError(ValueError):
    pass


def check_version(path: str | Path, doc: dict[str, Any], reads: frozenset[int] = CURRENT) -> int:
    """The file's schema version if it is one of ``reads``, else a SchemaError naming the file, the
    version found, the versions read and what to do."""
    found = doc.get("schema_version")
    version = found if isinstance(found, int) and not isinstance(found, bool) else None
    if version in reads:
        return version
    lo, hi = min(reads), max(reads)
    span = f"version {lo}" if lo == hi else f"versions {lo} to {hi}"
    writer = ((doc.get("provenance") or {}).get("tool_version")
              if isinstance(doc.get("provenance"), dict) else None)
    by = f" (written by tokenbench {writer})" if writer else ""
    if version is not None and version > hi:
        todo = f"it is newer than this tokenbench ({__version__}); upgrade tokenbench to read it"
    elif version is not None and version >= OLDEST_READABLE:
        todo = "rerun the stage that wrote it"
    else:
        todo = "it is not a tokenbench results layout"
    raise SchemaError(f"{path}: results schema version {found!r}{by}; this reader reads {span}; {todo}")


def write_table(df: pd.DataFrame, path: str | Path, kind: str, provenance: dict[str, Any],
                extra: dict[str, Any] | None = None) -> None:
    table = pa.Table.from_pandas(df, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[META_KEY] = json.dumps({"schema_version": SCHEMA_VERSION, "kind": kind,
                                 "provenance": provenance, **(extra or {})}, default=str).encode()
    table = table.replace_schema_metadata(meta)
    _atomic(path, lambda tmp: pq.write_table(table, tmp, **_layout(table.schema)))


def write_table_batches(tables, schema: pa.Schema, path: str | Path, kind: str, provenance: dict[str, Any],
                        extra: dict[str, Any] | None = None) -> int:
    """``write_table`` for a table too big to hold at once: each of ``tables`` (an iterator of
    pyarrow Tables of ``schema``) becomes a row group as it comes. Returns the row count."""
    meta = dict(schema.metadata or {})
    meta[META_KEY] = json.dumps({"schema_version": SCHEMA_VERSION, "kind": kind,
                                 "provenance": provenance, **(extra or {})}, default=str).encode()
    schema = schema.with_metadata(meta)
    rows = 0

    def write(tmp: str) -> None:
        nonlocal rows
        with pq.ParquetWriter(tmp, schema, **{k: v for k, v in _layout(schema).items() if k != "row_group_size"}) as w:
            for t in tables:
                w.write_table(t.replace_schema_metadata(meta), row_group_size=max(len(t), 1))
                rows += len(t)
    _atomic(path, write)
    return rows


ROW_GROUP_ROWS = 1 << 17  # readers decode row groups in parallel (a million requests: 8 groups)


def _layout(schema: pa.Schema) -> dict[str, Any]:
    """Parquet options: integer lists (chunk_ns: ascending timestamps) delta-encoded and not
    compressed further, a third of their plain size and several times faster to decode; the
    other columns as pyarrow writes them by default (dictionary where it pays, snappy)."""
    int_lists = [f.name for f in schema
                 if (pa.types.is_list(f.type) or pa.types.is_large_list(f.type)) and pa.types.is_integer(f.type.value_type)]
    if not int_lists:
        return {"row_group_size": ROW_GROUP_ROWS}
    leaves = {f"{c}.list.element": "DELTA_BINARY_PACKED" for c in int_lists}
    others = [f.name for f in schema if f.name not in int_lists]
    return {"row_group_size": ROW_GROUP_ROWS, "use_dictionary": others, "column_encoding": leaves,
            "compression": {**{c: "snappy" for c in others}, **{leaf: "none" for leaf in leaves}}}


def read_meta(path: str | Path, reads: frozenset[int] = CURRENT) -> dict[str, Any]:
    """A results table's envelope (schema version, kind, provenance, extras); ``reads``: the schema
    versions accepted (see the module docstring)."""
    meta = pq.read_schema(path).metadata or {}
    if META_KEY not in meta:
        raise SchemaError(f"{path} is not a tokenbench results file (no '{META_KEY.decode()}' metadata)")
    doc = json.loads(meta[META_KEY])
    check_version(path, doc, reads)
    return doc


def read_table(path: str | Path, columns: list[str] | None = None, arrow_lists: bool = False,
               reads: frozenset[int] = CURRENT) -> pd.DataFrame:
    """A results table; ``columns``: only these. ``arrow_lists``: list columns (``chunk_ns``) as
    pandas' Arrow list dtype over one contiguous buffer, which ``tokenbench.chunks`` reads without a
    copy, instead of a NumPy array object per row (a million of them take seconds to make and GBs
    to hold)."""
    read_meta(path, reads)
    if not arrow_lists:
        return pd.read_parquet(path, columns=columns)
    schema = pq.read_schema(path)
    names = columns if columns is not None else schema.names
    nested = [c for c in names if pa.types.is_list(schema.field(c).type) or pa.types.is_large_list(schema.field(c).type)]
    df = pq.read_table(path, columns=[c for c in names if c not in nested], use_threads=threads() > 1).to_pandas()
    for c in nested:
        df[c] = pd.arrays.ArrowExtensionArray(_read_list_column(path, c))
    pa.default_memory_pool().release_unused()  # decoding's scratch, else kept by the allocator (~200 MB)
    return df[names]


def _read_list_column(path: str | Path, column: str, batch_rows: int = 1 << 16) -> pa.LargeListArray:
    """One list column as a single array, its row groups decoded in parallel and a batch at a time
    into one buffer sized from the file's metadata: memory for the column once, not its decoded
    chunks plus their concatenation."""
    md = pq.read_metadata(path)
    leaf = [i for i in range(md.num_columns) if md.schema.column(i).path.split(".")[0] == column]
    # per row group: where its values go (its leaf slots, empty lists included, bound its values)
    slots = np.array([sum(md.row_group(r).column(i).num_values for i in leaf) for r in range(md.num_row_groups)],
                     dtype=np.int64)
    at = np.concatenate([[0], np.cumsum(slots)])
    rows = np.concatenate([[0], np.cumsum([md.row_group(r).num_rows for r in range(md.num_row_groups)])])
    value_type = pq.read_schema(path).field(column).type.value_type
    values = np.empty(int(at[-1]), dtype=value_type.to_pandas_dtype())
    lengths = np.zeros(md.num_rows, dtype=np.int64)
    valid = np.ones(md.num_rows, dtype=bool)

    def read(r: int) -> int:
        f = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 23)
        pos, row = int(at[r]), int(rows[r])
        for batch in f.iter_batches(batch_size=batch_rows, row_groups=[r], columns=[column], use_threads=False):
            a = batch.column(0)
            if a.null_count:
                valid[row:row + len(a)] = np.asarray(a.is_valid())
                a = a.fill_null([])
            v = np.asarray(a.flatten().fill_null(0)) if a.values.null_count else \
                a.values.to_numpy(zero_copy_only=False)[a.offsets[0].as_py():a.offsets[-1].as_py()]
            values[pos:pos + len(v)] = v
            lengths[row:row + len(a)] = np.asarray(a.value_lengths(), dtype=np.int64)
            pos += len(v)
            row += len(a)
        return pos - int(at[r])

    workers = min(md.num_row_groups, threads())
    if workers > 1:
        with ThreadPoolExecutor(workers) as ex:
            counts = list(ex.map(read, range(md.num_row_groups)))
    else:
        counts = [read(r) for r in range(md.num_row_groups)]
    pos = 0
    for r, n in enumerate(counts):  # close the gaps the empty lists left between row groups
        if at[r] != pos:
            values[pos:pos + n] = values[at[r]:at[r] + n]
        pos += n
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    mask = None if valid.all() else pa.array(~valid)
    return pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values[:pos]), mask=mask)


def write_json(doc: dict[str, Any], path: str | Path, kind: str, provenance: dict[str, Any] | None) -> None:
    out = {"schema_version": SCHEMA_VERSION, "kind": kind, "provenance": provenance, **doc}
    text = json.dumps(out, indent=2, default=str, allow_nan=False)
    _atomic(path, lambda tmp: Path(tmp).write_text(text + "\n"))


def read_json(path: str | Path, reads: frozenset[int] = CURRENT) -> dict[str, Any]:
    doc = json.loads(Path(path).read_text())
    if not isinstance(doc, dict):
        raise SchemaError(f"{path} is not a tokenbench results document (a JSON {type(doc).__name__}, not an object)")
    check_version(path, doc, reads)
    return doc


def _atomic(path: str | Path, write) -> None:
    """Write to a temporary sibling then rename: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
