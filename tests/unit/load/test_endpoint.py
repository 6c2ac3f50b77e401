
import pytest

from tokenbench import provenance
from tokenbench.cli import main
from tokenbench.config import ConfigError, RequestSpec, SloSpec
from tokenbench.load.endpoint import check_loopback, parse_profile, run_endpoint
from tokenbench.load.phases import GammaPhase
from tokenbench.records import read_json, read_meta, read_table


def test_parse_profile_validates_against_the_phase_schema():
    p = parse_profile("gamma:rate_rps=5,burstiness=0.5,duration_s=10,warmup=true", 0)
    assert isinstance(p, GammaPhase) and p.rate_rps == 5 and p.burstiness == 0.5 and p.warmup is True
    assert p.name == "gamma0"
    with pytest.raises(ConfigError, match="burstiness"):
        parse_profile("poisson:rate_rps=5,burstiness=0.5,duration_s=10", 1)  # burstiness is gamma's alone
    with pytest.raises(ConfigError, match="users"):
        parse_profile("closed:users=0,duration_s=1", 1)
    with pytest.raises(ConfigError, match="exactly one of duration_s or requests"):
        parse_profile("closed:users=2", 1)
    with pytest.raises(ConfigError, match="not key=value"):
        parse_profile("closed:users", 1)


@pytest.mark.parametrize("url", ["http://10.1.2.3:8000", "http://192.168.0.5", "http://example.com:80"])
def test_non_loopback_endpoints_are_refused(url):
    with pytest.raises(ConfigError, match="not a loopback address"):
        check_loopback(url, allow_remote=False)
    check_loopback(url, allow_remote=True)


def test_loopback_forms_are_accepted():
    for url in ("http://127.0.0.1:8000", "http://127.0.0.5", "http://localhost:1", "http://[::1]:8000"):
        check_loopback(url, allow_remote=False)


def test_run_endpoint_writes_records_and_metrics(fake_server, tmp_path, monkeypatch):
    srv = fake_server(tokens=6, ttft_ms=5)
    monkeypatch.setenv("MY_KEY", "sk-test-secret")
    phases = [parse_profile("constant:rate_rps=40,duration_s=0.5", 0), parse_profile("closed:users=3,requests=9", 1)]
    m = run_endpoint(srv.url, "fake", phases, RequestSpec(max_tokens=6), str(tmp_path), route_prefix="/v1",
                     capabilities={"chat", "completions", "stream_usage"}, api_key_env="MY_KEY",
                     slo=SloSpec(ttft_ms=1000), progress=None)
    req = read_table(tmp_path / "requests.parquet")
    assert len(req) == srv.requests and (req.status == "ok").all()
    from tests.fakes.fake_server import STATE

    assert srv.app[STATE]["authorization"] == "Bearer sk-test-secret"
    assert [p["phase"] for p in m["phases"]] == ["constant0", "closed1"]
    assert m["phases"][1]["requests_sent"] == 9 and m["phases"][0]["slo_attainment"] == 1.0
    assert read_meta(tmp_path / "requests.parquet")["complete"] is True
    assert sorted(f.name for f in tmp_path.iterdir()) == ["metrics.json", "requests.parquet", "run.json"]  # journal gone
    for f in tmp_path.iterdir():
        assert "sk-test-secret" not in f.read_bytes().decode(errors="replace")
    run_doc = read_json(tmp_path / "run.json")
    assert run_doc["complete"] is True
    assert provenance.scrub("key sk-test-secret") == "key <MY_KEY>"  # registered as a secret, as in the pipeline
    assert run_doc["client"]["requests_sent"] == len(req) and run_doc["client"]["status_counts"] == {"ok": len(req)}
    assert [(p["label"], p["open_loop"]) for p in run_doc["phases"]] == [("constant 40 req/s", True), ("3 users", False)]


# validity bounds a few-second test run on a shared 2-core host can meet: only the error rate stays
LAX = ("min_duration_s=0,min_requests=1,max_halves_change=100,max_loop_lag_p99_ms=10000,"
       "max_send_lag_p99_ms=10000,min_rate_ratio=0.01")


def test_cli_run_prints_a_summary(fake_server, tmp_path, capsys):
    srv = fake_server(tokens=4)
    rc = main(["run", "--endpoint", srv.url, "--model", "fake", "--out", str(tmp_path), "--quiet",
               "--profile", "closed:users=2,requests=4", "--validity", LAX])
    out = capsys.readouterr().out
    assert rc == 0 and "closed0" in out and "valid" in out and "verdict: valid" in out
    assert main(["run", "--endpoint", srv.url, "--model", "f", "--out", str(tmp_path)]) == 2


def test_cli_run_applies_the_pipelines_validity_defaults(fake_server, tmp_path, capsys):
    # one policy: a 4-request run is below ValiditySpec's min_requests and min_duration_s, so it is
    # not valid, and the exit code says so
    srv = fake_server(tokens=4)
    rc = main(["run", "--endpoint", srv.url, "--model", "fake", "--out", str(tmp_path), "--quiet",
               "--profile", "closed:users=2,requests=4"])
    captured = capsys.readouterr()
    assert rc == 3, captured
    assert "sent 4 requests < min_requests 20" in captured.out and "verdict: NOT valid" in captured.err
    assert read_json(tmp_path / "metrics.json")["validity_bounds"]["max_error_rate"] == 0.01


def test_cli_run_without_its_api_key_in_the_environment_is_a_config_error(fake_server, tmp_path, monkeypatch, capsys):
    srv = fake_server(tokens=4)
    monkeypatch.delenv("TB_NO_SUCH_KEY", raising=False)
    rc = main(["run", "--endpoint", srv.url, "--model", "fake", "--out", str(tmp_path), "--quiet",
               "--api-key-env", "TB_NO_SUCH_KEY", "--profile", "closed:users=1,requests=1"])
    assert rc == 2 and "--api-key-env names TB_NO_SUCH_KEY, which is not set" in capsys.readouterr().err
    assert srv.requests == 0


def test_cli_run_on_two_client_processes_records_every_request_once(fake_server, tmp_path, capsys):
    srv = fake_server(tokens=4, ttft_ms=2)
    rc = main(["run", "--endpoint", srv.url, "--model", "fake", "--out", str(tmp_path), "--processes", "2",
               "--profile", "closed:users=3,requests=9", "--profile", "poisson:rate_rps=60,duration_s=0.4",
               "--validity", LAX])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    req = read_table(tmp_path / "requests.parquet")
    assert len(req) == srv.requests and req.request_id.is_unique and (req.status == "ok").all()
    assert sum(req.phase == "closed0") == 9 and set(req[req.phase == "closed0"].user) == {0, 1, 2}
    assert sorted(f.name for f in tmp_path.iterdir()) == ["metrics.json", "requests.parquet", "run.json"]  # shards gone
    doc = read_json(tmp_path / "run.json")
    assert doc["settings"]["load"]["processes"] == 2 and doc["client"]["requests_sent"] == len(req)


def test_cli_processes_out_of_bounds_or_with_a_sweep_is_a_config_error(fake_server, tmp_path, capsys):
    srv = fake_server(tokens=4)
    base = ["run", "--endpoint", srv.url, "--model", "fake", "--out", str(tmp_path), "--quiet"]
    assert main(base + ["--processes", "0", "--profile", "closed:users=1,requests=1"]) == 2
    assert "--processes 0" in capsys.readouterr().err
    assert main(base + ["--processes", "2", "--profile", "sweep:step_duration_s=1"]) == 2
    err = capsys.readouterr().err
    assert "--processes 2" in err and "sweep0" in err and "one client process" in err
    assert srv.requests == 0
