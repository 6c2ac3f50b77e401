"""tokenbench.results (results as DataFrames) and `tokenbench results`: a real `tokenbench run`
directory, a pipeline data/ tree built from it, CSV export, and the schema version rules."""
import json
import shutil

import pandas as pd
import pytest

from tokenbench import SCHEMA_VERSION, records
from tokenbench.analysis.metrics import summarize_metrics
from tokenbench.cli import main
from tokenbench.config import RequestSpec
from tokenbench.load.endpoint import parse_profile, run_endpoint
from tokenbench.records import SchemaError
from tokenbench.results import ResultsError, load_results


@pytest.fixture
def run_dir(fake_server, tmp_path):
    """A real run: what `tokenbench run --out` writes, against the fake server."""
    srv = fake_server(tokens=5, itl_ms=2)
    out = tmp_path / "run"
    run_endpoint(srv.url, "fake", [parse_profile("closed:users=2,requests=6,warmup=true", 0),
                                   parse_profile("closed:users=2,requests=10", 1)],
                 RequestSpec(max_tokens=5), str(out), route_prefix="/v1", capabilities={"chat", "stream_usage"},
                 progress=None)
    return out


def _rewrite_cell(src, dst, cell):
    """A results JSON written again by records.write_json with another cell (as another run's)."""
    doc = records.read_json(src)
    body = {k: v for k, v in doc.items() if k not in ("schema_version", "kind", "provenance")}
    records.write_json({**body, "cell": cell}, dst, doc["kind"], doc["provenance"])


@pytest.fixture
def data_tree(run_dir, tmp_path):
    """The pipeline's layout (Snakefile path scheme) with two replicates of one cell and a summary."""
    data = tmp_path / "project" / "data"
    docs = []
    for rep in ("r1", "r2"):
        cell = {"engine": "eng", "model": "m", "load": "users-2", "rep": rep}
        runs, metrics = data / "runs/eng/m/users-2" / rep, data / "metrics/eng/m/users-2" / rep
        runs.mkdir(parents=True)
        metrics.mkdir(parents=True)
        shutil.copy(run_dir / "requests.parquet", runs / "requests.parquet")
        _rewrite_cell(run_dir / "run.json", runs / "run.json", cell)
        _rewrite_cell(run_dir / "metrics.json", metrics / "metrics.json", cell)
        docs.append(records.read_json(metrics / "metrics.json"))
    records.write_table(pd.DataFrame({"t_ns": [1, 2], "device": ["cpu", "cpu"]}),
                        data / "runs/eng/m/users-2/r1/telemetry.parquet", "telemetry", {})
    records.write_table(summarize_metrics(docs), data / "analysis/summary.parquet", "summary", {})
    return data


def test_a_run_directory_as_frames(run_dir):
    res = load_results(run_dir)
    assert res.layout == "run" and res.cells == [("endpoint", "fake", "cli")]
    runs = res.runs
    assert runs.to_dict("records")[0] | {"path": None} == {
        "engine": "endpoint", "model": "fake", "load": "cli", "rep": "r1", "complete": True,
        "schema_version": SCHEMA_VERSION, "requests": 16, "phases": 2, "metrics": True, "telemetry": False, "path": None}
    rec = res.records()
    assert len(rec) == 16 and list(rec.columns[:5]) == ["engine", "model", "load", "rep", "request_id"]
    assert (rec.status == "ok").all() and rec.groupby("phase").size().to_dict() == {"closed0": 6, "closed1": 10}
    m = res.metrics()
    assert list(m.phase) == ["closed0", "closed1"] and list(m.requests_sent) == [6, 10] and m.output_tok_s.gt(0).all()
    pd.testing.assert_frame_equal(res.summary(), m)  # no study summary: made from metrics.json
    ph = res.phases()
    assert list(ph.phase) == ["closed0", "closed1"] and list(ph.warmup) == [True, False]
    assert json.loads(ph.target[1]) == {"requests": 10, "users": 2, "ramp_s": 0.0, "think_s": 0.0}
    assert res.telemetry().empty and res.run_documents()[0]["complete"] is True


def test_a_pipeline_data_tree_as_frames(data_tree):
    for where in (data_tree, data_tree.parent):  # data/ or the project directory above it
        res = load_results(where)
        assert res.layout == "pipeline" and res.cells == [("eng", "m", "users-2")]
        assert list(res.runs.rep) == ["r1", "r2"] and list(res.runs.telemetry) == [True, False]
    rec = res.records(["request_id", "status"])
    assert len(rec) == 32 and rec.groupby("rep").size().to_dict() == {"r1": 16, "r2": 16}
    assert list(rec.columns) == ["engine", "model", "load", "rep", "request_id", "status"]
    assert len(res.metrics()) == 4 and set(res.metrics().rep) == {"r1", "r2"}
    summary = res.summary()  # the study's own summary.parquet
    assert len(summary) == 4 and records.read_meta(data_tree / "analysis/summary.parquet")["kind"] == "summary"
    tel = res.telemetry()
    assert list(tel.columns[:4]) == ["engine", "model", "load", "rep"] and len(tel) == 2
    one = load_results(data_tree / "runs/eng/m/users-2/r2")  # one run inside the tree finds its metrics
    assert one.layout == "run" and one.runs.rep[0] == "r2" and len(one.metrics()) == 2


def test_cli_prints_cells_phases_summary_and_exports_csv(data_tree, tmp_path, capsys):
    out = tmp_path / "csv"
    assert main(["results", str(data_tree), "--csv", str(out)]) == 0
    text = capsys.readouterr().out
    assert "pipeline data tree, 2 runs in 1 cell" in text
    assert "eng / m / users-2: r1, r2; 32 requests" in text
    assert "closed0 (2 users, warm-up" in text and "closed1 (2 users" in text
    table = text[text.index("summary (mean over replicates"):].splitlines()
    assert "output tok/s" in table[1] and "closed1" in table[2] and "closed0" not in "\n".join(table[2:3])
    assert sorted(p.name for p in out.iterdir()) == ["metrics.csv", "phases.csv", "records.csv", "runs.csv",
                                                     "summary.csv"]
    rec = pd.read_csv(out / "records.csv")
    assert len(rec) == 32 and "chunk_ns" not in rec.columns and "first_token_ns" in rec.columns  # lists stay in Parquet
    assert len(pd.read_csv(out / "summary.csv")) == 4


def test_cli_on_a_directory_without_results(tmp_path, capsys):
    assert main(["results", str(tmp_path)]) == 2
    assert "holds no results" in capsys.readouterr().err
    assert main(["results", str(tmp_path / "nope")]) == 2
    assert "no such directory" in capsys.readouterr().err
    with pytest.raises(ResultsError, match="runs holds no run"):
        (tmp_path / "runs").mkdir()
        load_results(tmp_path)


def test_a_newer_major_version_is_refused_naming_file_version_and_versions_read(run_dir, monkeypatch, capsys):
    monkeypatch.setattr(records, "SCHEMA_VERSION", SCHEMA_VERSION + 1)  # as a newer tokenbench would stamp it
    _rewrite_cell(run_dir / "run.json", run_dir / "run.json", {"engine": "endpoint", "model": "fake", "load": "cli"})
    monkeypatch.undo()
    with pytest.raises(SchemaError) as err:
        load_results(run_dir)
    msg = str(err.value)
    assert str(run_dir / "run.json") in msg and f"results schema version {SCHEMA_VERSION + 1}" in msg
    assert f"this reader reads versions 1 to {SCHEMA_VERSION}" in msg and "upgrade tokenbench" in msg
    assert main(["results", str(run_dir)]) == 2 and "upgrade tokenbench" in capsys.readouterr().err


def test_an_older_major_is_read_as_written_but_the_pipeline_asks_for_a_rerun(run_dir, monkeypatch):
    old = SCHEMA_VERSION - 1
    monkeypatch.setattr(records, "SCHEMA_VERSION", old)
    df = records.read_table(run_dir / "requests.parquet").drop(columns=["first_token_ns"])  # a column it lacked
    records.write_table(df, run_dir / "requests.parquet", "requests", {"tool_version": "0.0.9"})
    monkeypatch.undo()
    res = load_results(run_dir)
    assert len(res.records()) == 16 and "first_token_ns" not in res.records().columns
    with pytest.raises(SchemaError, match=rf"version {old} \(written by tokenbench 0\.0\.9\); this reader reads "
                                          rf"version {SCHEMA_VERSION}; rerun the stage that wrote it"):
        records.read_table(run_dir / "requests.parquet")  # the pipeline's stages read the current major only


def test_a_document_without_a_version_is_not_a_results_layout(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"cell": {}}))
    with pytest.raises(SchemaError, match="results schema version None; .* not a tokenbench results layout"):
        load_results(tmp_path)
