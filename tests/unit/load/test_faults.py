"""The fault matrix (issue 13): `tokenbench run` against a fake server that fails in one way per case.

Each case checks the request accounting (every request sent has exactly one record, and the run's
counters agree), the status each fault maps to, the verdict and its reason, the CLI's exit code, a
bound on the wall time (a dead server costs the breaker's window, not the phase), and that no
client process is left behind."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tokenbench.cli import main
from tokenbench.records import read_json, read_table

from tests.unit.load.test_endpoint import LAX

KEY = "sk-proj-Zq8FAULTtestKEY0123456789abcdef"


def cli(url: str, out: Path, *args: str) -> tuple[int, float]:
    t0 = time.monotonic()
    rc = main(["run", "--endpoint", url, "--model", "fake", "--out", str(out), "--quiet", *args])
    return rc, time.monotonic() - t0


def accounted(out: Path):
    """The records and metrics, after checking that every request sent was recorded exactly once."""
    req = read_table(out / "requests.parquet")
    run = read_json(out / "run.json")
    metrics = read_json(out / "metrics.json")
    assert req.request_id.is_unique
    assert run["client"]["requests_sent"] == len(req)
    assert sum(run["client"]["status_counts"].values()) == len(req)
    assert sum(sum(p.get("status_counts", {}).values()) for p in metrics["phases"]) == len(req)
    assert multiprocessing.active_children() == []  # no client process left behind
    return req, run, metrics


def failed_checks(metrics) -> str:
    return " | ".join(c for p in metrics["phases"] for c in p["validity"]["failed_checks"])


CLOSED_50 = ["--profile", "closed:users=2,requests=50"]


@pytest.mark.parametrize("behaviour, status, count, reason", [
    (dict(status=500, fault_every=5), "http_error", 10, "error rate 20.0% > max_error_rate 1.0%"),
    (dict(status=429, retry_after="1.5", fault_every=5), "http_error", 10, "error rate 20.0%"),
    (dict(reset=True, fault_every=5), "disconnect", 10, "error rate 20.0%"),
    (dict(malformed_sse=True, fault_every=5), "protocol_error", 10, "error rate 20.0%"),
    (dict(ignore_max_tokens=True, tokens=16), "ok", 50,
     "server ignored max_tokens: up to 16 tokens returned for 4 asked in 50 requests"),
], ids=["500", "429", "reset", "malformed-sse", "ignores-max-tokens"])
def test_a_faulty_server_gives_an_invalid_run_and_exit_code_3(fake_server, tmp_path, capsys, behaviour, status,
                                                               count, reason):
    srv = fake_server(**{"tokens": 4, **behaviour})
    rc, wall = cli(srv.url, tmp_path, *CLOSED_50, "--max-tokens", "4", "--validity", LAX)
    captured = capsys.readouterr()
    req, run, metrics = accounted(tmp_path)
    assert rc == 3, captured.err
    assert len(req) == 50 and srv.requests == 50
    assert (req.status == status).sum() == count, req.status.value_counts()
    assert reason in failed_checks(metrics) and "verdict: NOT valid" in captured.err
    assert wall < 20
    if behaviour.get("status") == 429:  # Retry-After recorded on exactly the 429s
        assert sorted(req.retry_after_s.dropna().unique()) == [1.5]
        assert req.retry_after_s.notna().sum() == 10 and (req[req.http_status == 429].retry_after_s == 1.5).all()
    if status == "protocol_error":
        assert req[req.status == status].error.str.contains("JSON|json|unexpected|Expecting|decode").all()


def test_a_stalled_stream_times_out_at_the_phases_timeout(fake_server, tmp_path, capsys):
    srv = fake_server(tokens=4, stall_after=1, fault_every=5)
    rc, wall = cli(srv.url, tmp_path, "--profile", "closed:users=2,requests=20,timeout_s=0.5", "--validity", LAX)
    req, run, metrics = accounted(tmp_path)
    assert rc == 3
    assert (req.status == "timeout").sum() == 4 and (req.status == "ok").sum() == 16
    assert req[req.status == "timeout"].error.str.contains("within 0.5 s").all()
    assert metrics["phases"][0]["timeout_s"] == 0.5  # the timeout it ran with is in the metrics
    assert wall < 15  # 4 stalls of 0.5 s, not of the 120 s default


def test_a_server_without_usage_counts_is_still_valid(fake_server, tmp_path, capsys):
    srv = fake_server(tokens=4, no_usage=True)
    rc, _ = cli(srv.url, tmp_path, *CLOSED_50, "--validity", LAX)
    req, run, metrics = accounted(tmp_path)
    assert rc == 0, capsys.readouterr()
    assert (req.status == "ok").all() and (req.output_tokens_source == "chunks").all() and (req.output_tokens == 4).all()


def test_a_closed_port_fails_the_readiness_probe_fast(tmp_path, capsys):
    from tests.conftest import _free_port

    rc, wall = cli(f"http://127.0.0.1:{_free_port()}", tmp_path, *CLOSED_50)
    err = capsys.readouterr().err
    assert rc == 4 and wall < 5
    assert "nothing is listening" in err and "connection refused" in err and "nothing was sent" in err
    assert not (tmp_path / "requests.parquet").exists()


def test_a_probe_answering_503_shows_the_status_and_the_body(fake_server, tmp_path, capsys):
    srv = fake_server(models_status=503)
    rc, wall = cli(srv.url, tmp_path, *CLOSED_50, "--ready-timeout", "1")
    err = capsys.readouterr().err
    assert rc == 4 and 0.9 < wall < 5
    assert "HTTP 503" in err and "model is loading" in err and "--ready-timeout" in err
    assert srv.requests == 0


def test_a_probe_refused_for_its_key_fails_at_once_without_showing_the_key(fake_server, tmp_path, capsys,
                                                                         monkeypatch):
    srv = fake_server(api_key="the-right-key")
    monkeypatch.setenv("TB_FAULT_KEY", KEY)
    rc, wall = cli(srv.url, tmp_path, *CLOSED_50, "--api-key-env", "TB_FAULT_KEY")
    err = capsys.readouterr().err
    assert rc == 4 and wall < 5 and "HTTP 401" in err and "--api-key-env" in err and KEY not in err


@pytest.mark.parametrize("profile", ["closed:users=4,duration_s=20", "poisson:rate_rps=100,duration_s=20"])
@pytest.mark.parametrize("processes", ["1", "2"])
def test_a_server_that_dies_mid_run_stops_the_load_within_the_breakers_window(fake_server, tmp_path, capsys,
                                                                               profile, processes):
    srv = fake_server(tokens=4, itl_ms=1)
    first = threading.Event()
    died_at = []

    def kill():
        first.wait(30)
        time.sleep(1.0)
        srv.die()
        died_at.append(time.monotonic())

    threading.Thread(target=kill, daemon=True).start()

    def started():
        while srv.requests == 0:
            time.sleep(0.01)
        first.set()

    threading.Thread(target=started, daemon=True).start()
    rc, wall = cli(srv.url, tmp_path, "--profile", profile, "--processes", processes)
    ended_at = time.monotonic()
    captured = capsys.readouterr()
    req, run, metrics = accounted(tmp_path)
    assert rc == 3, captured.err
    # the breaker's window (~1 s) after the death, plus writing the records: not the rest of the 20 s
    # phase (timed from the death, so that client processes slow to start on a busy host do not count)
    assert ended_at - died_at[0] < 8
    assert "server unreachable" in run["stopped_reason"] and "stopped early" in captured.err
    ph = metrics["phases"][0]
    assert ph["stopped_reason"] and "stopped early: " in failed_checks(metrics)
    assert metrics["valid"] is False and metrics["stopped_reason"] == run["stopped_reason"]
    assert len(req) < 3000  # no hot loop: a few hundred at most (37,266 in 7 s before the breaker)
    assert (req.status == "ok").sum() <= srv.requests
    if profile.startswith("poisson"):  # the schedule's accounting: arrivals kept back are counted, not sent
        assert ph["not_sent_breaker_open"] > 1000
        assert ph["delivered_ratio"] < 0.5


def test_a_run_against_a_port_that_closes_before_it_starts_is_stopped_by_the_breaker(tmp_path, capsys):
    from tests.conftest import _free_port

    rc, wall = cli(f"http://127.0.0.1:{_free_port()}", tmp_path, "--profile", "closed:users=8,duration_s=30",
                   "--ready-timeout", "0")
    req, run, metrics = accounted(tmp_path)
    assert rc == 3 and wall < 6
    assert (req.status == "disconnect").all() and len(req) < 100  # users back off; no 37,266-record hot loop
    assert "server unreachable" in run["stopped_reason"]


def test_a_gateway_answering_502_for_a_dead_server_trips_the_breaker_but_503_does_not(fake_server, tmp_path, capsys):
    # a proxy in front of a dead engine answers 502 Bad Gateway at once: that is "no server" too
    srv = fake_server(tokens=4, status=502)
    rc, wall = cli(srv.url, tmp_path / "502", "--profile", "closed:users=4,duration_s=20", "--ready-timeout", "0")
    req, run, metrics = accounted(tmp_path / "502")
    assert rc == 3 and wall < 8, capsys.readouterr().err
    assert (req.http_status == 502).all() and len(req) < 200  # users back off as on a refused port
    assert "behind a gateway" in run["stopped_reason"] and "HTTP 502" in run["stopped_reason"]
    # 503 is what an overloaded (but present) server answers: the phase runs its course
    srv = fake_server(tokens=4, status=503)
    rc, wall = cli(srv.url, tmp_path / "503", "--profile", "closed:users=2,duration_s=2", "--ready-timeout", "0")
    req, run, metrics = accounted(tmp_path / "503")
    assert rc == 3 and wall >= 2 and not run.get("stopped_reason")
    assert (req.http_status == 503).all()


def test_a_server_echoing_the_key_does_not_get_it_recorded(fake_server, tmp_path, capsys, monkeypatch):
    srv = fake_server(tokens=4, echo_key=True)
    monkeypatch.setenv("TB_FAULT_KEY", KEY)
    rc, _ = cli(srv.url, tmp_path, "--profile", "closed:users=1,requests=5", "--api-key-env", "TB_FAULT_KEY",
                "--validity", LAX)
    captured = capsys.readouterr()
    req, run, metrics = accounted(tmp_path)
    assert rc == 3 and (req.status == "http_error").all() and (req.http_status == 401).all()
    assert req.error.str.contains("Incorrect API key provided: <secret>").all()
    for f in tmp_path.iterdir():
        assert KEY.encode() not in f.read_bytes(), f
    assert KEY not in captured.out + captured.err


def test_honouring_retry_after_spaces_a_users_requests(fake_server, tmp_path, capsys):
    srv = fake_server(tokens=4, status=429, retry_after="0.4")
    rc, _ = cli(srv.url, tmp_path, "--profile", "closed:users=1,duration_s=1.2", "--honour-retry-after")
    req, _, _ = accounted(tmp_path)
    assert rc == 3 and 3 <= len(req) <= 4 and (req.retry_after_s == 0.4).all()  # at 0, 0.4, 0.8 (and 1.2-)
    rc, _ = cli(srv.url, tmp_path / "not", "--profile", "closed:users=1,duration_s=0.5")
    req, _, _ = accounted(tmp_path / "not")
    assert len(req) > 20  # off by default: the same offered load whatever the engine answers


def test_an_interrupted_cli_run_reports_the_phases_that_ran(fake_server, tmp_path):
    srv = fake_server(tokens=4, itl_ms=2)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[3] / "workflow" / "scripts"),
                                                        os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "tokenbench.cli", "run", "--endpoint", srv.url, "--model", "fake",
                             "--out", str(tmp_path), "--quiet", "--profile", "closed:users=2,duration_s=30"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 30
    while srv.requests < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1, err
    assert "closed0" in out and "interrupted" in err
    req, run, metrics = accounted(tmp_path)
    assert run["interrupted"] and [p["phase"] for p in metrics["phases"]] == ["closed0"]
    assert metrics["phases"][0]["stopped_reason"] == "interrupted"
    assert metrics["phases"][0]["requests_sent"] == len(req) > 0


def test_cli_option_errors_name_the_option_and_exit_2(tmp_path, capsys):
    url = "http://127.0.0.1:9"
    assert cli(url, tmp_path, "--profile", "closedloop:users=2")[0] == 2
    err = capsys.readouterr().err
    assert "unknown mode 'closedloop'" in err and "closed, poisson" in err and "Traceback" not in err
    assert cli(url, tmp_path, *CLOSED_50, "--max-tokens", "0")[0] == 2
    err = capsys.readouterr().err
    assert "--max-tokens 0" in err and "greater than or equal to 1" in err and "Traceback" not in err
    assert cli(url, tmp_path, *CLOSED_50, "--validity", "max_error_rate=2")[0] == 2
    assert "--validity max_error_rate=2" in capsys.readouterr().err


def test_a_stall_under_the_auto_timeout_ends_at_10_x_the_runs_p99_not_120_s(fake_server, tmp_path, capsys):
    # no timeout_s: the first 20 requests set the auto timeout (10 x p99 E2E, at least 10 s); then
    # the 41st request stalls and is given up after 10 s, not the flat 120 s of before
    srv = fake_server(tokens=4, stall_after=1, fault_every=41)
    rc, wall = cli(srv.url, tmp_path, "--profile", "closed:users=1,requests=41", "--validity", LAX)
    req, run, metrics = accounted(tmp_path)
    assert rc == 3 and (req.status == "timeout").sum() == 1 and 10 <= wall < 20
    ph = metrics["phases"][0]
    assert ph["timeout_auto"] is True and ph["timeout_s"] == 10
    assert "1 timeout (timeout_s 10)" in failed_checks(metrics)
    assert req[req.status == "timeout"].error.iloc[0] == "no complete response within 10 s (timeout_s)"


def test_the_scrubber_takes_credential_shapes_and_leaves_names_alone():
    from tokenbench.provenance import scrub, scrub_shapes

    hf = "hf_" + "aB3" * 12
    text = (f"bad key sk-proj-{'x1' * 12} and {hf}; header was Authorization: Bearer abc.def-123 "
            "for model sk-llama-7b at /models/hf_cache/x")
    out = scrub_shapes(text, ("abc.def-123",))
    assert "sk-proj-x1" not in out and hf not in out and "abc.def-123" not in out
    assert out.count("<secret>") == 3 and "sk-llama-7b" in out and "hf_cache" in out
    assert scrub(f"echoed {hf}") == "echoed <secret>"
