"""The config loader under random input: whatever YAML or mapping it is given, it answers with a
ConfigError carrying a message (or a valid Config), never another exception."""
import copy
from pathlib import Path

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from tokenbench.config import Config, ConfigError, load_config, validate  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
BASE = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
KEYS = ["study", "models", "engines", "loads", "phases", "mode", "users", "duration_s", "requests", "name", "kind",
        "max_batch", "source", "path", "rate_rps", "sweep", "hypotheses", "request", "prompts", "file", "api_key_env",
        "url", "replicates", "comparison", "baseline", "telemetry", "interval_s", "processes", "max_tokens"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=20), st.sampled_from(["closed", "poisson", "idle", "trace", "sweep", "local",
                                                           "hub", "llama.cpp", "external", "r1", "-1", "1e999"]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8), st.integers(-3, 3)), inner, max_size=5)),
    max_leaves=25)


def _ok(call) -> None:
    try:
        result = call()
    except ConfigError as exc:
        assert str(exc).strip(), "a ConfigError without a message"
        return
    assert isinstance(result, Config)


def _paths(doc, prefix=()):
    """Every path into a nested dict/list document."""
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, prefix + (i,))


PATHS = [p for p in _paths(BASE) if p]
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                        HealthCheck.function_scoped_fixture])


@FUZZ
@given(values)
def test_any_document_gives_a_config_or_a_config_error(doc):
    _ok(lambda: validate(doc))


@FUZZ
@given(st.sampled_from(PATHS), values)
def test_the_default_config_with_one_value_replaced_gives_a_config_or_a_config_error(path, value):
    doc = copy.deepcopy(BASE)
    node = doc
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    _ok(lambda: validate(doc))


@FUZZ
@given(st.sampled_from(PATHS), st.sampled_from(KEYS), values)
def test_the_default_config_with_a_key_added_gives_a_config_or_a_config_error(path, key, value):
    doc = copy.deepcopy(BASE)
    node = doc
    for part in path:
        child = node[part]
        if not isinstance(child, (dict, list)):
            break
        node = child
    if isinstance(node, dict):
        node[key] = value
    _ok(lambda: validate(doc))


@FUZZ
@given(st.one_of(st.text(max_size=200), values.map(lambda v: yaml.safe_dump(v, default_flow_style=None))))
def test_any_file_text_gives_a_config_or_a_config_error(tmp_path, text):
    f = tmp_path / "c.yaml"
    f.write_text(text, encoding="utf-8", errors="surrogatepass")
    _ok(lambda: load_config(f))


@FUZZ
@given(st.binary(max_size=100))
def test_any_file_bytes_give_a_config_or_a_config_error(tmp_path, data):
    f = tmp_path / "c.yaml"
    f.write_bytes(data)
    _ok(lambda: load_config(f))
