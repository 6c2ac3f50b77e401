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
