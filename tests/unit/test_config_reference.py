import json
import typing

import jsonschema
import pytest
import yaml

from tokenbench import config_reference as ref
from tokenbench.cli import main
from tokenbench.load.phases import PHASE_CLASSES


def _rows():
    return [(sec, r) for sec in ref.sections() for r in sec.rows]


def _is_phase(sec) -> bool:
    return sec.model in PHASE_CLASSES


def test_every_config_key_outside_the_phases_has_a_description():
    missing = [r["key"] for sec, r in _rows() if not _is_phase(sec) and not r["description"]]
    assert not missing, f"keys without Field(description=...): {missing}"
    assert len([1 for sec, _ in _rows() if not _is_phase(sec)]) > 100  # the walk reached every block


def test_every_phase_key_has_a_description():
    missing = [r["key"] for sec, r in _rows() if _is_phase(sec) and not r["description"] and not r["key"].endswith(".mode")]
    assert not missing


def test_each_block_is_listed_once_with_alternatives_told_apart():
    paths = [sec.path for sec in ref.sections()]
    assert len(paths) == len(set(paths))
    assert {"request.prompts (file)", "request.prompts (dataset)", "request.prompts (synthetic)",
            "request.prompts.synthetic", "loads.<name>.phases[] (every mode)",
            "loads.<name>.phases[] (mode: closed)", "loads.<name>.phases[] (mode: sweep)"} <= set(paths)
    # a block used in two places is described once and referred to from the other
    row = next(r for _, r in _rows() if r["key"] == "loads.<name>.request")
    assert row["type"] == "mapping (`request`) or null" and "loads.<name>.request.max_tokens" not in [r["key"] for _, r in _rows()]
    # keys every phase mode shares sit in the shared block only
    closed = next(s for s in ref.sections() if s.path == "loads.<name>.phases[] (mode: closed)")
    assert [r["key"] for r in closed.rows][0] == "loads.<name>.phases[].mode"
    assert "loads.<name>.phases[].warmup" not in [r["key"] for r in closed.rows]


def test_rows_show_type_bounds_default_and_unit():
    rows = {r["key"]: r for _, r in _rows()}
    assert rows["telemetry.interval_s"] == {
        "key": "telemetry.interval_s", "type": "number (> 0, ≤ 10)", "default": "`0.05`",
        "description": "Seconds between telemetry samples (0.05 s = 20 Hz, as in the seed reports)."}
    assert rows["study.title"]["default"] == "required" and rows["hardware"]["default"] == "its keys' defaults"
    assert rows["engines.<name>.dtype"]["type"] == "one of `auto`, `float16`, `bfloat16`, `float32` or null"
    assert rows["models"]["type"] == "mapping of name to mapping (`models.<name>`) (at least 1)"
    # a number's unit is in its key's name; the keys without one are counts or ratios, listed here so
    # that a new key is either named with its unit or added to this list on purpose
    units = ("_s", "_ms", "_pct", "_mib", "_rps", "_usd_per_hour", "_usd_per_kwh", "_tokens")
    unitless = {"replicates", "min_requests", "max_error_rate", "min_rate_ratio", "max_gpu_contended_share",
                "max_halves_change", "temperature", "seed", "limit", "count", "port", "max_context", "max_batch",
                "kv_cache_fraction", "tensor_parallel", "threads", "processes", "requests", "users",
                "max_concurrency", "burstiness", "time_scale", "max_users", "rates", "saturation_ratio", "level",
                "alpha", "resolve_difference", "bootstrap_resamples", "factor"}
    numeric = [k for k, r in rows.items() if r["type"].startswith(("number", "integer"))]
    assert len(numeric) > 40
    assert [k for k in numeric if not k.endswith(units) and k.rsplit(".", 1)[-1] not in unitless] == []


def test_markdown_escapes_pipes_and_has_one_table_per_block():
    md = ref.reference_markdown()
    assert md.count("| key | type | default | description |") == len(ref.sections())
    assert "turbomind \\| pytorch" in md


def test_json_schema_carries_descriptions_defaults_and_forbids_unknown_keys():
    schema = ref.json_schema()
    v = schema["$defs"]["ValiditySpec"]
    assert v["properties"]["min_requests"]["default"] == 20 and v["additionalProperties"] is False
    assert "at least this many requests" in v["properties"]["min_requests"]["description"]
    validator = jsonschema.Draft202012Validator(schema)
    good = {"study": {"title": "t"}, "models": {"m": {"source": "local", "path": "/x"}},
            "engines": {"e": {"kind": "llama.cpp"}},
            "loads": {"l": {"phases": [{"name": "p", "mode": "closed", "users": 1, "duration_s": 1}]}}}
    assert not list(validator.iter_errors(good))
    typo = json.loads(json.dumps(good))
    typo["engines"]["e"]["max_bacth"] = 4
    assert any("max_bacth" in e.message for e in validator.iter_errors(typo))
    bad = json.loads(json.dumps(good))
    bad["loads"]["l"]["phases"][0]["users"] = 0
    assert list(validator.iter_errors(bad))


def test_cli_schema_prints_the_schema_and_writes_the_reference(tmp_path, capsys):
    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out) == ref.json_schema()
    assert main(["schema", "--out", str(tmp_path / "s.json"), "--reference", str(tmp_path / "r.md")]) == 0
    assert (tmp_path / "s.json").read_text() == ref.schema_text()
    assert (tmp_path / "r.md").read_text().startswith("# Config reference\n")
    assert capsys.readouterr().out == ""


def test_type_text_of_nested_generics():
    assert ref.type_text(typing.Optional[list[str]], {}) == "list of string or null"
    assert ref.type_text(dict[str, int], {}) == "mapping of name to integer"
    assert yaml.safe_dump  # (yaml is what configs are written in; the schema applies to the parsed mapping)
