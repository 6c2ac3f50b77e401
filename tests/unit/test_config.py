import copy
import re
from pathlib import Path

import pytest
import yaml

from tokenbench.config import (CellSettings, ConfigError, canonical_hash, cell_settings, cells, compared_pairs,
                               config_warnings, load_config, reps, runs, validate)
from tokenbench.load.phases import ClosedPhase

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def raw():
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


LOADS = ["three_phase", "users-1", "users-2", "users-4", "users-8"]


def test_default_config_is_a_comparison_with_replicates(raw):
    cfg = validate(raw)
    assert cells(cfg) == [(e, "smollm2-135m", l) for e in ("llamacpp-batched", "llamacpp-serial") for l in LOADS]
    assert cfg.replicates >= 2 and reps(cfg) == [f"r{i}" for i in range(1, cfg.replicates + 1)]
    assert len(runs(cfg)) == len(cells(cfg)) * cfg.replicates
    assert compared_pairs(cfg) == [("smollm2-135m", "llamacpp-batched", "llamacpp-serial")]
    assert len(cfg.sweep.loads) >= 4  # a two-parameter fit keeps dof >= 2
    assert {h.name for h in cfg.hypotheses} >= {"batching-raises-throughput"}


def test_replicates_differ_only_in_their_number(raw):
    cfg = validate(raw)
    r1 = cell_settings(cfg, "llamacpp-batched", "smollm2-135m", "users-1", "r1").model_dump(mode="json")
    r2 = cell_settings(cfg, "llamacpp-batched", "smollm2-135m", "users-1", "r2").model_dump(mode="json")
    assert {k for k in r1 if r1[k] != r2[k]} == {"replicate"} and r2["replicate"] == 2
    with pytest.raises(ConfigError, match="not r1, r2"):
        cell_settings(cfg, "llamacpp-batched", "smollm2-135m", "users-1", "rep1")


def test_without_a_baseline_every_pair_is_compared_and_hypothesis_pairs_are_added(raw):
    raw["engines"]["third"] = dict(raw["engines"]["llamacpp-serial"], max_batch=2)
    raw["comparison"] = {}
    cfg = validate(raw)
    assert [p[1:] for p in compared_pairs(cfg)] == [("llamacpp-batched", "llamacpp-serial"),
                                                    ("llamacpp-batched", "third"), ("llamacpp-serial", "third")]
    raw["comparison"] = {"baseline": "third"}
    cfg = validate(raw)
    assert [p[1:] for p in compared_pairs(cfg)] == [("llamacpp-batched", "third"), ("llamacpp-serial", "third"),
                                                    ("llamacpp-batched", "llamacpp-serial")]  # the hypotheses' pair


@pytest.mark.parametrize("mutate, message", [
    (lambda h: h.update(a="nope"), "hypotheses\\[batching-raises-throughput\\].a: 'nope' is not an engine"),
    (lambda h: h.update(b=h["a"]), "a and b are both"),
    (lambda h: h.update(load="users-99"), "hypotheses\\[batching-raises-throughput\\].load: 'users-99' is not a load"),
    (lambda h: h.update(metric="mfu_pct"), "hypotheses\\[batching-raises-throughput\\].metric: 'mfu_pct' is not a compared figure"),
    (lambda h: h.update(phase="ramp2"), "hypotheses\\[batching-raises-throughput\\].phase: 'ramp2' is not a phase"),
    (lambda h: h.update(relation="more"), "hypotheses\\[batching-raises-throughput\\].relation: Input should be 'at_least' or 'at_most'; given 'more'"),
])
def test_bad_hypothesis_names_the_key(raw, mutate, message):
    mutate(raw["hypotheses"][0])
    with pytest.raises(ConfigError, match=message):
        validate(raw)


def test_replicates_must_be_positive(raw):
    raw["replicates"] = 0
    with pytest.raises(ConfigError, match="replicates"):
        validate(raw)


def test_every_shipped_config_validates():
    paths = sorted((ROOT / "config").glob("*.yaml"))
    assert {"config.yaml", "smoke.yaml", "load-modes.yaml", "seed-a40-llama3-8b.yaml",
            "seed-a100-llama3.yaml"} <= {p.name for p in paths}
    for path in paths:
        assert load_config(path).loads, path


@pytest.mark.parametrize("mutate, key", [
    (lambda r: r["loads"]["users-4"]["phases"][1].update(users=0), "loads.users-4.phases[steady].users: Input should be greater than or equal to 1; given 0"),
    (lambda r: r["loads"]["users-4"]["phases"][1].update(mode="burst"), "loads.users-4.phases[steady]: Input tag 'burst' found using 'mode' does not match any of the expected tags"),
    (lambda r: r["engines"]["llamacpp-batched"].update(kind="nope"), "engines.llamacpp-batched.kind"),
    (lambda r: r["engines"]["llamacpp-batched"].update(thread=2), "engines.llamacpp-batched.thread"),
    (lambda r: r["models"]["smollm2-135m"].pop("file"), "models.smollm2-135m"),
    (lambda r: r["sweep"]["loads"].append("users-99"), "sweep"),
    (lambda r: r["loads"]["three_phase"]["phases"].append({"name": "warmup", "mode": "idle", "duration_s": 1}),
     "loads.three_phase.phases"),
    (lambda r: r["loads"]["users-4"]["phases"][1].update(mode="poisson", rate_rps=2, burstiness=0.5),
     "loads.users-4.phases[steady].burstiness: unknown key (given 0.5); allowed here: drain_timeout_s, duration_s, "
     "max_concurrency, mode, name, rate_rps, requests, timeout_s, warm_connections, warmup"),  # burstiness is gamma's alone
    (lambda r: r["engines"]["llamacpp-batched"].update(host="10.0.0.1"), "engines.llamacpp-batched"),
])
def test_bad_config_names_the_key_to_fix(raw, mutate, key):
    mutate(raw)
    with pytest.raises(ConfigError) as exc:
        validate(raw, "config.yaml")
    assert key in str(exc.value)


def test_hub_model_needs_a_pinned_revision(raw):
    raw["models"]["m"] = {"source": "hub", "repo_id": "org/model", "revision": "main"}
    with pytest.raises(ConfigError, match="not pinned"):
        validate(raw)
    raw["models"]["m"]["revision"] = "a" * 40
    validate(raw)


def test_sweep_load_must_have_closed_steady_phase(raw):
    raw["sweep"]["loads"] = ["three_phase", "users-1"]
    validate(raw)  # three_phase's last steady phase is closed-loop stress
    raw["loads"]["three_phase"]["phases"][-1] = {"name": "stress", "mode": "poisson", "rate_rps": 1, "duration_s": 5}
    with pytest.raises(ConfigError, match="closed-loop"):
        validate(raw)


def test_cell_settings_change_only_for_the_changed_load(raw):
    cfg = validate(raw)
    before = {l: canonical_hash(cell_settings(cfg, "llamacpp-batched", "smollm2-135m", l).model_dump(mode="json"))
              for l in cfg.loads}
    raw2 = copy.deepcopy(raw)
    raw2["loads"]["users-4"]["phases"][1]["duration_s"] = 31
    cfg2 = validate(raw2)
    after = {l: canonical_hash(cell_settings(cfg2, "llamacpp-batched", "smollm2-135m", l).model_dump(mode="json"))
             for l in cfg2.loads}
    assert [l for l in before if before[l] != after[l]] == ["users-4"]


def test_load_request_override(raw):
    raw["loads"]["users-1"]["request"] = {"max_tokens": 8}
    cfg = validate(raw)
    assert cell_settings(cfg, "llamacpp-batched", "smollm2-135m", "users-1").request.max_tokens == 8
    assert cell_settings(cfg, "llamacpp-batched", "smollm2-135m", "users-4").request.max_tokens == 32


def test_cell_settings_travel_as_json_and_come_back_typed(raw):
    # the Snakefile hands the job the JSON dump; the wrapper validates it back into the same settings
    settings = cell_settings(validate(raw), "llamacpp-batched", "smollm2-135m", "users-4")
    dumped = settings.model_dump(mode="json")
    assert yaml.safe_load(yaml.safe_dump(dumped)) == dumped  # plain data
    back = CellSettings.model_validate(dumped)
    assert back == settings
    assert (back.engine.name, back.model.name, back.load.name) == ("llamacpp-batched", "smollm2-135m", "users-4")
    steady = back.load.phases[1]
    assert isinstance(steady, ClosedPhase) and steady.users == 4
    assert back.preflight.max_gpu_util_pct == 5.0 and back.telemetry.interval_s == 0.05  # defaults, written once


def test_loopback_hosts_are_accepted_and_others_need_allow_remote(raw):
    raw["engines"]["llamacpp-batched"]["host"] = "127.0.0.2"
    validate(raw)
    raw["engines"]["llamacpp-batched"]["host"] = "10.0.0.1"
    with pytest.raises(ConfigError, match="host '10.0.0.1' is not loopback"):
        validate(raw)
    raw["engines"]["llamacpp-batched"]["allow_remote"] = True
    validate(raw)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("study: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_a_yaml_error_names_the_file_line_and_column(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("study:\n  title: x\nmodels:\n  m: {source: local\n  path: y\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(bad))}:5:7: not valid YAML: while parsing a flow mapping "
                                          r"\(opened at line 4, column 6\); expected ',' or '}', but got ':'"):
        load_config(bad)
    tab = tmp_path / "tab.yaml"
    tab.write_text("study:\n\ttitle: x\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(tab))}:2:1: not valid YAML"):
        load_config(tab)


@pytest.mark.parametrize("text, message", [
    ("", "the config file is empty"),
    ("# only a comment\n", "the config file is empty"),
    ("- a\n- b\n", "the config must be a mapping of keys .* the file holds a list at the top level"),
    ("just words\n", "the config must be a mapping .* holds a str at the top level"),
])
def test_an_empty_or_shapeless_config_file_says_so(tmp_path, text, message):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(f))}: {message}"):
        load_config(f)


def test_an_error_names_the_phase_by_name_the_value_and_what_is_allowed(raw):
    raw["loads"]["users-4"]["phases"][1].update(ramp_s=-2, think_s="long")
    raw["engines"]["llamacpp-batched"]["kindd"] = "x"
    with pytest.raises(ConfigError) as exc:
        validate(raw, "c.yaml")
    text = str(exc.value)
    assert "  - loads.users-4.phases[steady].ramp_s: Input should be greater than or equal to 0; given -2" in text
    assert "  - loads.users-4.phases[steady].think_s: Input should be a valid number, unable to parse string as a " \
           "number; given 'long'" in text
    assert "  - engines.llamacpp-batched.kindd: unknown key (given 'x'); allowed here: allow_remote, api_key_env, " in text
    raw = copy.deepcopy(raw)
    raw["loads"]["users-4"]["phases"][1] = {"mode": "closed", "users": 0, "duration_s": 1}  # no name: its index
    with pytest.raises(ConfigError, match=r"loads\.users-4\.phases\[1\]\.name: required, not given"):
        validate(raw)


def test_load_config_checks_what_the_config_refers_to(tmp_path, monkeypatch, raw):
    from tokenbench.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TB_NOT_SET", raising=False)
    (tmp_path / "here.jsonl").write_text('{"timestamp": 0, "prompt": "hi"}\n')
    raw["models"]["local"] = {"source": "local", "path": "weights/missing.gguf"}
    raw["engines"]["ext"] = {"kind": "external", "url": "http://127.0.0.1:9", "api_key_env": "TB_NOT_SET",
                             "capabilities": ["chat", "ignore_eos"], "models": ["local"]}
    raw["loads"]["users-1"]["request"] = {"prompts": {"file": "prompts.csv"}}
    raw["loads"]["trace"] = {"phases": [{"name": "replay", "mode": "trace", "path": "nope.jsonl"},
                                        {"name": "again", "mode": "trace", "path": "here.jsonl"}]}
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(raw))
    validate(raw)  # the schema alone is satisfied
    with pytest.raises(ConfigError) as exc:
        load_config(f)
    lines = str(exc.value).splitlines()
    assert lines[0] == "the config refers to what is not there:"
    assert [l.split(":")[0] for l in lines[1:]] == ["  - models.local.path", "  - engines.ext.api_key_env",
                                                    "  - loads.users-1.request.prompts.file",
                                                    "  - loads.trace.phases[replay].path"]
    assert "TB_NOT_SET is not set" in lines[2]
    assert main(["validate", str(f)]) == 2
    monkeypatch.setenv("TB_NOT_SET", "k")
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "missing.gguf").write_bytes(b"")
    (tmp_path / "prompts.csv").write_text("prompt\nhi\n")
    (tmp_path / "nope.jsonl").write_text('{"timestamp": 0, "prompt": "hi"}\n')
    assert load_config(f).loads["trace"]


def test_max_batch_below_the_users_is_a_stated_warning_not_an_error(raw, capsys, tmp_path):
    from tokenbench.cli import main

    cfg = validate(raw)  # the default config's serial baseline: max_batch 1 against up to 8 users
    warnings = config_warnings(cfg)
    assert len(warnings) == 1  # one line per engine
    assert warnings[0].startswith("engines.llamacpp-serial.max_batch is 1, below the users of: loads.three_phase."
                                  "phases[ramp].users = 8, phases[stress].users = 8; loads.users-2.phases[ramp].users = 2")
    assert "loads.users-8.phases[ramp].users = 8, phases[steady].users = 8. Requests beyond 1 at a time queue inside " \
           "the engine and their latency includes the wait" in warnings[0]
    assert "loads.users-1" not in warnings[0]  # 1 user: nothing queues
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(raw))
    assert main(["validate", str(f)]) == 0
    assert capsys.readouterr().err.startswith("warning: engines.llamacpp-serial.max_batch is 1, below the users of")
