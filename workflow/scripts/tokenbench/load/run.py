"""One cell's load test: launch the server, sample telemetry, run the load, tear down, record."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd

from tokenbench import provenance, records
from tokenbench.engines import catalog as engines
from tokenbench.telemetry import hardware
from tokenbench.engines import promscrape
from tokenbench.config import canonical_hash
from tokenbench.load.generator import LoadTest, event_loop_name, loop_lag_by_phase, record_dict, run_async, session_factory
from tokenbench.load.prompts import PromptStream, load_prompts, prompt_set_hash
from tokenbench.engines.server import Server, free_port, gpu_idle_check, grep_log, pick_port, wait_endpoint_ready
from tokenbench.load.tokenizer import EngineTokenizer

REQUEST_COLUMNS = {  # column -> pandas dtype; timestamps are int ns on CLOCK_MONOTONIC
    "request_id": "int64", "phase": "string", "user": "int64", "prompt_id": "string",
    "scheduled_ns": "int64", "sent_ns": "int64", "headers_ns": "Int64", "first_byte_ns": "Int64",
    "first_token_ns": "Int64", "end_ns": "Int64", "chunk_ns": "object", "prompt_tokens": "Int64",
    "output_tokens": "Int64", "output_tokens_source": "string", "output_chars": "int64",
    "finish_reason": "string", "status": "string", "http_status": "Int64", "error": "string",
    "attempts": "int64", "max_tokens": "Int64", "output_text": "string", "client_output_tokens": "Int64",
}


class Interrupted(Exception):
    pass


def records_frame(recs) -> pd.DataFrame:
    df = pd.DataFrame([record_dict(r) for r in recs], columns=list(REQUEST_COLUMNS))
    return df.astype(REQUEST_COLUMNS)


class Telemetry:
    """The sampler subprocess (``python -m tokenbench.telemetry.sampler``)."""

    def __init__(self, out: Path, interval_s: float, pid: int | None):
        self.out = out
        pkg_parent = str(Path(__file__).resolve().parents[2])  # so the child imports this tokenbench
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [pkg_parent, os.environ.get("PYTHONPATH")]))}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tokenbench.telemetry.sampler", "--out", str(out), "--interval", str(interval_s)]
            + (["--pid", str(pid)] if pid else []),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        line = self.proc.stdout.readline().strip()  # blocks until the first sample is taken
        if line != "ready":
            err = self.proc.stderr.read()
            raise RuntimeError(f"telemetry sampler failed to start: {err[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def count_output_tokens(recs, tokenizer) -> None:
    """Client-side output token counts: each ok response's text through the model's tokenizer."""
    ok = [r for r in recs if r.status == "ok"]
    for r, n in zip(ok, tokenizer.count_many([r.output_text for r in ok])):
        r.client_output_tokens = n


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def api_key_headers(espec: dict[str, Any]) -> dict[str, str]:
    """Authorization header from the env var named in the config; the key itself is never stored."""
    var = espec.get("api_key_env")
    if not var:
        return {}
    key = os.environ.get(var)
    if not key:
        raise RuntimeError(f"engines.{espec['name']}.api_key_env names {var}, which is not set in the "
                           f"environment; export it before running")
    provenance.register_secret(var, key)
    return {"Authorization": f"Bearer {key}"}


def _check_loopback(espec: dict[str, Any], host: str) -> None:
    if host not in LOOPBACK and not espec.get("allow_remote"):
        raise RuntimeError(f"engines.{espec['name']}: load tests send traffic only to loopback; "
                           f"{host!r} needs allow_remote: true")


def run_load_test(settings: dict[str, Any], model_manifest: str, engine_probe: str,
                  out_requests: str, out_telemetry: str, out_run: str,
                  server_log: str, journal: str, out_engine_metrics: str | None = None,
                  nvml=None) -> dict[str, Any]:
    """Run one (engine, model, load) cell and write its records. Returns the run document."""
    manifest = records.read_json(model_manifest)
    probe = records.read_json(engine_probe)
    espec = dict(settings["engine"])
    pre = settings.get("preflight") or {}
    eng = engines.engine(espec["kind"])
    external = espec["kind"] == "external"
    headers = api_key_headers(espec)
    request_model = eng.request_model(manifest["served_name"], manifest["path"])
    route_prefix = espec.get("route_prefix") or eng.route_prefix
    health_path = espec.get("health_path") or eng.health_path
    caps = set(espec.get("capabilities") or eng.capabilities)
    metrics_paths = eng.metrics_paths if espec.get("metrics_paths") is None else tuple(espec["metrics_paths"])
    launch = None
    if external:
        from urllib.parse import urlsplit

        base_url = espec["url"].rstrip("/")
        _check_loopback(espec, urlsplit(base_url).hostname or "")
        command = ["(external endpoint)", base_url]
        port = urlsplit(base_url).port
    else:
        _check_loopback(espec, espec["host"])
        espec["binary"] = probe["binary"]
        espec["served_name"] = manifest["served_name"]
        port = pick_port(espec["host"], espec["port"])
        if eng.needs_aux_port:
            espec["aux_port"] = free_port(espec["host"])
        launch = eng.launch(espec, manifest["path"], port)
        command = launch.argv
        base_url = f"http://{espec['host']}:{port}"
    request = settings["request"]
    phases = settings["load"]["phases"]

    anchor = {"wall_ns": time.time_ns(), "monotonic_ns": time.monotonic_ns()}
    tel_tmp = Path(out_telemetry).with_suffix(".raw.parquet")
    Path(journal).parent.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "cell": {"engine": espec["name"], "model": manifest["name"], "load": settings["load"]["name"]},
        "settings": settings,
        "server_command": [provenance.scrub(str(c)) for c in command],
        "server_env": {k: provenance.scrub(v) for k, v in {**espec.get("env", {}), **(launch.env if launch else {})}.items()},
        "endpoint": {"base_url": provenance.scrub(base_url), "route_prefix": route_prefix, "health_path": health_path,
                     "request_model": provenance.scrub(request_model), "capabilities": sorted(caps),
                     "external": external, "api_key_env": espec.get("api_key_env")},
        "clock": {"timestamps": "CLOCK_MONOTONIC ns (time.monotonic_ns)", "anchor": anchor},
        "complete": False,
        "hardware": hardware.describe("auto"),  # detected where the load runs; peaks resolved later
    }

    def _on_term(*_):
        raise Interrupted("SIGTERM")

    old_term = signal.signal(signal.SIGTERM, _on_term)
    server = None
    telemetry = None
    scraper = None
    test = None
    prompts: list = []
    caught: dict[str, str] = {}
    try:
        if not external:
            if pre.get("gpu_idle", True):
                doc["preflight_gpu"] = gpu_idle_check(nvml, pre.get("max_gpu_util_pct", 5.0),
                                                      pre.get("max_foreign_gpu_mib", 256.0))
            env = {**os.environ, **espec.get("env", {}), **launch.env}
            server = Server(command, server_log, espec["host"], port, health_path, env=env, nvml=nvml,
                            gpu_tolerance_mib=pre.get("gpu_memory_tolerance_mib", 256.0))
            server.start()
            doc["server_pid"] = server.proc.pid
        telemetry = Telemetry(tel_tmp, settings["telemetry"]["interval_s"], server.proc.pid if server else None)
        t_launch_ns = time.monotonic_ns()
        if server:
            doc["server_ready_s"] = server.wait_ready(espec["ready_timeout_s"])
        else:
            doc["server_ready_s"] = wait_endpoint_ready(base_url + health_path, espec["ready_timeout_s"], headers)
        doc["server_ready_ns"] = time.monotonic_ns()
        doc["server_launch_ns"] = t_launch_ns
        tokenizer = EngineTokenizer(base_url) if "tokenize" in caps else None
        prompts, doc["prompt_source"] = load_prompts(request["prompts"], tokenizer, request["seed"])
        scraper = promscrape.Scraper(base_url, list(metrics_paths), list(eng.metric_names) or None,
                                     espec.get("metrics_interval_s", 1.0), headers).start()
        with open(journal, "w") as jf:
            factory = session_factory(base_url, route_prefix, request_model, request, caps, headers=headers or None)
            test = LoadTest(factory, PromptStream(prompts, request["seed"], settings["load"]["name"]),
                            journal=jf, seed=request["seed"])
            run_async(_cancellable(test.run(phases), caught))
            signal.signal(signal.SIGTERM, _on_term)  # the event loop's handlers are gone with it
        if tokenizer is not None and request.get("client_token_count", True):
            try:
                count_output_tokens(test.records, tokenizer)
            except Exception as exc:  # a check that failed must not cost the measured run
                doc["client_token_count_error"] = f"{type(exc).__name__}: {exc}"[:300]
        doc["server_exited_during_run"] = bool(server and server.proc.poll() is not None)
        doc["complete"] = True
    except (KeyboardInterrupt, Interrupted, asyncio.CancelledError) as exc:
        # Snakemake removes a failed job's outputs: what was measured goes next to the journal
        doc["interrupted"] = caught.get("signal") or type(exc).__name__
        partial = Path(journal).with_name(Path(journal).name.split(".")[0] + ".interrupted")
        out_requests, out_telemetry, out_run, out_engine_metrics = (
            str(partial / n) for n in ("requests.parquet", "telemetry.parquet", "run.json", "engine_metrics.parquet"))
        raise Interrupted(f"load test interrupted; what it measured is in {partial}") from None
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut teardown short
        try:
            if scraper is not None:
                scraper.stop()
                doc["engine_metrics"] = scraper.summary()
            if server is not None:
                doc["server_stop"] = server.stop(espec["stop_grace_s"])
                doc["engine_log_lines"] = [provenance.scrub(l) for l in grep_log(server_log, eng.log_patterns)]
            if telemetry is not None:
                telemetry.stop()
            _write_outputs(doc, test, settings, manifest, probe, prompts, tel_tmp,
                           out_requests, out_telemetry, out_run, scraper, out_engine_metrics)
        finally:
            signal.signal(signal.SIGTERM, old_term)
    return doc


async def _cancellable(coro, caught: dict | None = None):
    """Run coro; SIGTERM or SIGINT cancels it, so every in-flight request records 'cancelled'.
    The signal's name goes into caught['signal']."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(coro)

    def on_signal(sig):
        if caught is not None:
            caught["signal"] = sig.name
        task.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        return await task
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)



def _write_outputs(doc, test, settings, manifest, probe, prompts, tel_tmp, out_requests, out_telemetry, out_run,
                   scraper=None, out_engine_metrics=None):
    prov = provenance.block(
        config_hash=canonical_hash(settings),
        engine={k: probe.get(k) for k in ("kind", "version", "version_commit", "binary_sha256")},
        model={"name": manifest["name"], "sha256": manifest["sha256"], "source": manifest["source"]},
        prompt_set_sha256=prompt_set_hash(prompts),
    )
    recs = test.records if test else []
    doc["phases"] = [asdict(m) for m in test.marks] if test else []
    lag = loop_lag_by_phase(test.loop_lag, test.marks) if test else {}
    run_lag = lag.get("(run)") or {}
    doc["client"] = {
        "event_loop_lag_p99_ms": run_lag.get("p99_ms"),
        "event_loop_lag_max_ms": run_lag.get("max_ms"),
        "event_loop_lag_by_phase": {k: v for k, v in lag.items() if k != "(run)"},
        "event_loop": event_loop_name(),
        "requests_sent": len(recs),
        "status_counts": pd.Series([r.status for r in recs], dtype="string").value_counts().to_dict(),
    }
    extra = {"complete": doc["complete"], "cell": doc["cell"]}
    records.write_table(records_frame(recs), out_requests, "requests", prov, extra)
    if tel_tmp.exists():
        tel = pd.read_parquet(tel_tmp)
        tel_tmp.unlink()
    else:
        tel = pd.DataFrame({"t_ns": pd.Series(dtype="int64"), "device": pd.Series(dtype="string")})
    records.write_table(tel, out_telemetry, "telemetry", prov, extra)
    if out_engine_metrics is not None:
        em = scraper.frame() if scraper is not None else promscrape.frame([])
        records.write_table(em, out_engine_metrics, "engine_metrics", prov,
                            {**extra, "scrape": doc.get("engine_metrics")})
    records.write_json(doc, out_run, "run", prov)
    json.dumps(doc, default=str)  # fail loudly here, not in a later stage, if doc is not serialisable
