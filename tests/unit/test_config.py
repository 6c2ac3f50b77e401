import copy
from pathlib import Path

import pytest
import yaml

from tokenbench.config import (CellSettings, ConfigError, canonical_hash, cell_settings, cells, compared_pairs,
                               load_config, reps, runs, validate)
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
    (lambda h: h.update(a="nope"), "hypotheses.0.a: 'nope' is not an engine"),
    (lambda h: h.update(b=h["a"]), "a and b are both"),
    (lambda h: h.update(load="users-99"), "hypotheses.0.load: 'users-99' is not a load"),
    (lambda h: h.update(metric="mfu_pct"), "hypotheses.0.metric: 'mfu_pct' is not a compared figure"),
    (lambda h: h.update(phase="ramp2"), "hypotheses.0.phase: 'ramp2' is not a phase"),
    (lambda h: h.update(relation="more"), "hypotheses.0.relation"),
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
    (lambda r: r["loads"]["users-4"]["phases"][1].update(users=0), "loads.users-4.phases.1.closed.users"),
    (lambda r: r["loads"]["users-4"]["phases"][1].update(mode="burst"), "loads.users-4.phases.1"),
    (lambda r: r["engines"]["llamacpp-batched"].update(kind="nope"), "engines.llamacpp-batched.kind"),
    (lambda r: r["engines"]["llamacpp-batched"].update(thread=2), "engines.llamacpp-batched.thread"),
    (lambda r: r["models"]["smollm2-135m"].pop("file"), "models.smollm2-135m"),
    (lambda r: r["sweep"]["loads"].append("users-99"), "sweep"),
    (lambda r: r["loads"]["three_phase"]["phases"].append({"name": "warmup", "mode": "idle", "duration_s": 1}),
     "loads.three_phase.phases"),
    (lambda r: r["loads"]["users-4"]["phases"][1].update(mode="poisson", rate_rps=2, burstiness=0.5),
     "loads.users-4.phases.1.poisson.burstiness"),  # burstiness is gamma's alone
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
