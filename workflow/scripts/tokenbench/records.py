"""Results files: Parquet tables and JSON documents that carry a schema version and provenance.

Every Parquet file tokenbench writes holds, in its schema metadata under the key ``tokenbench``,
a JSON object ``{"schema_version": N, "kind": ..., "provenance": {...}}``. JSON results carry the
same two keys at top level.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tokenbench import SCHEMA_VERSION

META_KEY = b"tokenbench"


class SchemaError(ValueError):
    pass


def write_table(df: pd.DataFrame, path: str | Path, kind: str, provenance: dict[str, Any],
                extra: dict[str, Any] | None = None) -> None:
    table = pa.Table.from_pandas(df, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[META_KEY] = json.dumps({"schema_version": SCHEMA_VERSION, "kind": kind,
                                 "provenance": provenance, **(extra or {})}, default=str).encode()
    table = table.replace_schema_metadata(meta)
    _atomic(path, lambda tmp: pq.write_table(table, tmp))


def read_meta(path: str | Path) -> dict[str, Any]:
    meta = pq.read_schema(path).metadata or {}
    if META_KEY not in meta:
        raise SchemaError(f"{path} is not a tokenbench results file (no '{META_KEY.decode()}' metadata)")
    doc = json.loads(meta[META_KEY])
    if doc.get("schema_version") != SCHEMA_VERSION:
        raise SchemaError(f"{path} has schema version {doc.get('schema_version')}, this tokenbench reads {SCHEMA_VERSION}; rerun its stage")
    return doc


def read_table(path: str | Path) -> pd.DataFrame:
    read_meta(path)
    return pd.read_parquet(path)


def write_json(doc: dict[str, Any], path: str | Path, kind: str, provenance: dict[str, Any] | None) -> None:
    out = {"schema_version": SCHEMA_VERSION, "kind": kind, "provenance": provenance, **doc}
    text = json.dumps(out, indent=2, default=str, allow_nan=False)
    _atomic(path, lambda tmp: Path(tmp).write_text(text + "\n"))


def read_json(path: str | Path) -> dict[str, Any]:
    doc = json.loads(Path(path).read_text())
    if doc.get("schema_version") != SCHEMA_VERSION:
        raise SchemaError(f"{path} has schema version {doc.get('schema_version')}, this tokenbench reads {SCHEMA_VERSION}; rerun its stage")
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
