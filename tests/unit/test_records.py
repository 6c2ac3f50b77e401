import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tokenbench import SCHEMA_VERSION
from tokenbench.records import SchemaError, read_json, read_meta, read_table, write_json, write_table


def test_parquet_carries_schema_version_and_provenance(tmp_path):
    df = pd.DataFrame({"t_ns": [1, 2], "power_w": [1.5, 2.5]})
    p = tmp_path / "x.parquet"
    write_table(df, p, "telemetry", {"config_hash": "abc"}, {"cell": {"load": "l"}})
    meta = read_meta(p)
    assert meta["schema_version"] == SCHEMA_VERSION and meta["kind"] == "telemetry"
    assert meta["provenance"]["config_hash"] == "abc" and meta["cell"] == {"load": "l"}
    pd.testing.assert_frame_equal(read_table(p), df)


def test_foreign_parquet_and_old_schema_are_rejected(tmp_path):
    p = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"a": [1]}), p)
    with pytest.raises(SchemaError, match="not a tokenbench results file"):
        read_table(p)
    j = tmp_path / "old.json"
    j.write_text(json.dumps({"schema_version": SCHEMA_VERSION - 1}))
    with pytest.raises(SchemaError, match="rerun"):
        read_json(j)


def test_json_refuses_nan(tmp_path):
    with pytest.raises(ValueError):
        write_json({"x": float("nan")}, tmp_path / "a.json", "k", {})
    assert not (tmp_path / "a.json").exists()


@pytest.mark.parametrize("group_rows", [7, 1 << 17])
def test_list_columns_read_as_one_arrow_buffer(tmp_path, monkeypatch, group_rows):
    import numpy as np

    from tokenbench import records

    monkeypatch.setattr(records, "ROW_GROUP_ROWS", group_rows)  # several row groups, read in parallel
    rng = np.random.default_rng(0)
    lists = [None if rng.random() < 0.05 else [int(x) for x in rng.integers(0, 10**15, rng.integers(0, 6))]
             for _ in range(200)]
    df = pd.DataFrame({"a": range(200), "s": pd.array(rng.choice(["ok", "x"], 200), dtype="string"), "chunk_ns": lists})
    p = tmp_path / "r.parquet"
    write_table(df, p, "requests", {})
    got = read_table(p, columns=["s", "chunk_ns"], arrow_lists=True)
    assert list(got.columns) == ["s", "chunk_ns"] and got["s"].equals(df["s"])
    assert isinstance(got["chunk_ns"].dtype, pd.ArrowDtype)
    assert [None if x is pd.NA else list(x) for x in got["chunk_ns"].array.tolist()] == lists
    assert [list(x) if x is not None else None for x in read_table(p)["chunk_ns"]] == lists  # the default: unchanged
