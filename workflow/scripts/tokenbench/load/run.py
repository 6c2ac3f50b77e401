"""One cell's load test: launch the server, sample telemetry, run the load, tear down, record."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pandas as pd
import pyarrow as pa

from tokenbench import provenance, records
from tokenbench.config import CellEngine, CellSettings, ConfigError, canonical_hash, is_loopback, rep_name
from tokenbench.engines import catalog as engines
from tokenbench.engines import promscrape
from tokenbench.engines.server import (NotReady, Server, ServerError, die_with_parent, free_port, gpu_idle_check,
                                       grep_log, pick_port, probe_ready)
from tokenbench.load import journal as request_journal
from tokenbench.load.generator import LoadTest, event_loop_name, loop_lag_by_phase, run_async
from tokenbench.load.shards import ClientSpec, ShardedLoadTest, load_test
from tokenbench.load.progress import Progress, interval_from_env, shown, terminal
from tokenbench.model_formats import weights_info
from tokenbench.load.prompts import load_prompts, prompt_set_hash
from tokenbench.load.tokenizer import EngineTokenizer
from tokenbench.telemetry import hardware

class Interrupted(Exception):
    pass


class LoadStopped(Exception):
    """The load test's breaker stopped it: the server stopped answering (or its process is gone)."""


class Telemetry:
    """The sampler subprocess (``python -m tokenbench.telemetry.sampler``)."""

    def __init__(self, out: Path, interval_s: float, pid: int | None = None, devices: list[int] | None = None,
                 server_grace_s: float = 10.0):
        self.out = out
        pkg_parent = str(Path(__file__).resolve().parents[2])  # so the child imports this tokenbench
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [pkg_parent, os.environ.get("PYTHONPATH")]))}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tokenbench.telemetry.sampler", "--out", str(out), "--interval", str(interval_s),
             "--pid-stdin", "--orphan-grace", str(server_grace_s)]
            + (["--pid", str(pid)] if pid else [])
            + (["--devices", ",".join(map(str, devices))] if devices is not None else []),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
            # a SIGKILLed load test must not leave a sampler running, nor (the sampler reaps it) an engine
            preexec_fn=functools.partial(die_with_parent, os.getpid()),
        )
        line = self.proc.stdout.readline().strip()  # blocks until the first sample is taken
        if line != "ready":
            err = self.proc.stderr.read()
            raise RuntimeError(f"telemetry sampler failed to start: {err[-2000:]}")

    def track(self, pid: int) -> None:
        """From now on, record the CPU and memory of the process tree under ``pid`` (the server, launched
        after the sampler started so that the baseline and the start-up are sampled)."""
        self._tell(str(pid))

    def add_client(self, pid: int) -> None:
        """Count ``pid`` (a load-generator worker process) as the client's, not as foreign CPU."""
        self._tell(f"client {pid}")

    def _tell(self, line: str) -> None:
        """One line on the sampler's stdin (``follow_pids`` reads them), while it runs."""
        if self.proc.poll() is None:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()

    def info(self) -> dict[str, Any]:
        """The sampler's sidecar (devices, sensors, achieved interval), once it has stopped."""
        side = self.out.with_suffix(".json")
        if not side.exists():
            return {}
        doc = json.loads(side.read_text())
        side.unlink()
        return doc

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:  # an orderly stop, told apart from the death signal this process's death would send
                self.proc.stdin.write("stop\n")
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError, ValueError):
                pass
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def count_output_tokens(batch, tokenizer) -> list[int | None]:
    """Client-side output token counts of a journal batch: each ok response's text through the
    model's tokenizer (None for the others)."""
    cols = batch.select(["status", "output_text"]).to_pydict()
    ok = [i for i, st in enumerate(cols["status"]) if st == "ok"]
    out: list[int | None] = [None] * batch.num_rows
    for i, n in zip(ok, tokenizer.count_many([cols["output_text"][i] for i in ok])):
        out[i] = n
    return out


def api_key_headers(var: str | None, key: str) -> dict[str, str]:
    """Authorization header from the environment variable ``var`` names (the config or CLI ``key``
    that named it). The key is registered as a secret, so it is scrubbed from anything recorded."""
    if not var:
        return {}
    value = os.environ.get(var)
    if not value:
        raise ConfigError(f"{key} names {var}, which is not set in the environment; export it before running")
    provenance.register_secret(var, value)
    return {"Authorization": f"Bearer {value}"}


def check_loopback(engine: CellEngine, host: str) -> None:
    """The config's loopback rule again, on the host requests will go to (settings can be handmade)."""
    if not engine.allow_remote and not is_loopback(host):
        raise RuntimeError(f"engines.{engine.name}: load tests send traffic only to loopback; "
                           f"{host!r} needs allow_remote: true")


@dataclass
class Endpoint:
    """Where the load goes and how to talk to it: a server this job launches, or someone else's."""
    base_url: str
    command: list[str]  # the server's argv; for an external endpoint, a note naming it
    route_prefix: str
    health_path: str
    request_model: str  # the "model" field requests carry
    capabilities: set[str]
    metrics_paths: tuple[str, ...]
    headers: dict[str, str]
    launch: engines.Launch | None = None  # None: external, not launched here
    host: str | None = None
    port: int | None = None

    @property
    def external(self) -> bool:
        return self.launch is None


def resolve_endpoint(engine: CellEngine, entry: engines.Engine, manifest: dict, probe: dict) -> Endpoint:
    """The endpoint of a cell: the engine's own settings, else its catalog entry's."""
    common = {
        "route_prefix": engine.route_prefix or entry.route_prefix,
        "health_path": engine.health_path or entry.health_path,
        "request_model": entry.request_model(manifest["served_name"], manifest["path"]),
        "capabilities": set(engine.capabilities or entry.capabilities),
        "metrics_paths": entry.metrics_paths if engine.metrics_paths is None else tuple(engine.metrics_paths),
        "headers": api_key_headers(engine.api_key_env, f"engines.{engine.name}.api_key_env"),
    }
    if engine.kind == "external":
        base_url = engine.url.rstrip("/")
        check_loopback(engine, urlsplit(base_url).hostname or "")
        return Endpoint(base_url, ["(external endpoint)", base_url], **common)
    check_loopback(engine, engine.host)
    port = pick_port(engine.host, engine.port)
    spec = {**engine.model_dump(), "binary": probe["binary"], "served_name": manifest["served_name"]}
    if entry.needs_aux_port:
        spec["aux_port"] = free_port(engine.host)
    launch = entry.launch(spec, manifest["path"], port)
    return Endpoint(f"http://{engine.host}:{port}", launch.argv, **common, launch=launch, host=engine.host, port=port)


@dataclass(frozen=True)
class Outputs:
    """The files a cell's load test writes (engine_metrics: None where the rule asks for none)."""
    requests: str
    telemetry: str
    run: str
    engine_metrics: str | None

    @staticmethod
    def beside(journal: Path, why: str = "interrupted") -> Outputs:
        """Where an interrupted (or stopped, or failed: ``why``) run's records go: next to the journal,
        since Snakemake removes a failed job's outputs."""
        partial = journal.with_name(journal.name.split(".")[0] + "." + why)
        return Outputs(*(str(partial / n) for n in ("requests.parquet", "telemetry.parquet", "run.json",
                                                    "engine_metrics.parquet")))


def _raise_interrupted(*_) -> None:
    raise Interrupted("SIGTERM")


def run_load_test(settings: CellSettings, model_manifest: str, engine_probe: str,
                  out_requests: str, out_telemetry: str, out_run: str,
                  server_log: str, journal: str, out_engine_metrics: str | None = None,
                  nvml=None) -> dict[str, Any]:
    """Run one (engine, model, load) cell and write its records. Returns the run document."""
    cell = CellLoadTest(settings, records.read_json(model_manifest), records.read_json(engine_probe),
                        Outputs(out_requests, out_telemetry, out_run, out_engine_metrics), server_log, journal, nvml)
    return cell.run()


class CellLoadTest:
    """One cell's load test as named steps. ``run`` is their order and what an interrupt keeps:
    whatever happens, the started parts are torn down in order and what was measured is written."""

    def __init__(self, settings: CellSettings, manifest: dict, probe: dict, outputs: Outputs,
                 server_log: str, journal: str, nvml=None):
        self.settings, self.engine = settings, settings.engine
        self.entry = engines.engine(self.engine.kind)
        self.manifest, self.probe = manifest, probe
        self.outputs = outputs
        self.server_log, self.journal = server_log, Path(journal)
        self.nvml = nvml
        self.endpoint = resolve_endpoint(self.engine, self.entry, manifest, probe)
        self.raw_telemetry = Path(outputs.telemetry).with_suffix(".raw.parquet")
        self.server: Server | None = None
        self.telemetry: Telemetry | None = None
        self.scraper: promscrape.Scraper | None = None
        self.tokenizer: EngineTokenizer | None = None
        self.test: LoadTest | ShardedLoadTest | None = None
        self.client_counts: list[pa.Array] | None = None  # per journal batch, from count_tokens
        self.prompts: list[dict[str, Any]] = []
        self.caught: dict[str, str] = {}  # the signal that cancelled the load, if one did
        self.journal.parent.mkdir(parents=True, exist_ok=True)
        self.doc = self.run_document()

    def run_document(self) -> dict[str, Any]:
        """run.json as known before launch; the steps add to it."""
        ep, launch = self.endpoint, self.endpoint.launch
        anchor = {"wall_ns": time.time_ns(), "monotonic_ns": time.monotonic_ns()}
        return {
            "cell": {"engine": self.engine.name, "model": self.manifest["name"], "load": self.settings.load.name,
                     "rep": rep_name(self.settings.replicate)},
            "settings": self.settings.model_dump(mode="json"),
            "weights": weights_info(self.manifest),  # format and precision this engine ran
            "server_command": [provenance.scrub(str(c)) for c in ep.command],
            "server_env": {k: provenance.scrub(v) for k, v in {
                **({} if "CUDA_DEVICE_ORDER" in os.environ else {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}),
                **self.engine.env, **(launch.env if launch else {})}.items()},
            "endpoint": {"base_url": provenance.scrub(ep.base_url), "route_prefix": ep.route_prefix,
                         "health_path": ep.health_path, "request_model": provenance.scrub(ep.request_model),
                         "capabilities": sorted(ep.capabilities), "external": ep.external,
                         "api_key_env": self.engine.api_key_env},
            "clock": {"timestamps": "CLOCK_MONOTONIC ns (time.monotonic_ns)", "anchor": anchor},
            "complete": False,
            "hardware": self.describe_hardware(),  # the engine's GPUs, detected where the load runs
        }

    def describe_hardware(self) -> dict[str, Any]:
        """hardware.describe of the GPUs this engine was given: CUDA_VISIBLE_DEVICES in its environment
        and its tensor-parallel size (unset: every GPU it can see); an external endpoint's are unknown,
        so every GPU on the host counts."""
        from tokenbench.telemetry import devices
        from tokenbench.telemetry.sampler import load_nvml

        nv = load_nvml(self.nvml)
        if nv is None or nv.nvmlDeviceGetCount() == 0:
            return hardware.describe("auto", nvml=self.nvml)
        uuids, parents = devices.nvml_inventory(nv)
        if self.endpoint.external:
            return {**hardware.describe("auto", nvml=self.nvml), "gpus_from": "every GPU on the host (external endpoint)"}
        env = self.server_env()
        try:
            gpus = devices.engine_gpus_from_env(uuids, self.engine.tensor_parallel, env, parents)
        except ValueError as exc:
            raise ConfigError(f"engines.{self.engine.name}: {exc}") from None
        desc = hardware.describe("auto", nvml=self.nvml, gpu_indices=gpus.indices)
        desc["gpus_from"] = (f"CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES', '(unset)')}, "
                             f"tensor_parallel={self.engine.tensor_parallel or '(unset: every visible GPU)'}")
        if gpus.note:
            desc["gpus_note"] = gpus.note
        return desc

    def run(self) -> dict[str, Any]:
        # before anything starts: a disk too full for the load's records (a full disk mid-run loses them)
        self.doc["preflight_disk"] = check_disk_space(self.settings, self.journal, Path(self.outputs.run).parent)
        old_term = signal.signal(signal.SIGTERM, _raise_interrupted)
        try:
            try:
                self.measure()
            except (KeyboardInterrupt, Interrupted, asyncio.CancelledError) as exc:
                self.doc["interrupted"] = self.caught.get("signal") or type(exc).__name__
                self.doc["stopped_reason"] = f"interrupted ({self.doc['interrupted']})"
                self.outputs = Outputs.beside(self.journal)
                raise Interrupted(f"load test interrupted; what it measured is in "
                                  f"{Path(self.outputs.run).parent}") from None
            except LoadStopped as exc:  # the job fails, after writing what it measured where Snakemake keeps it
                self.doc["server_exited_during_run"] = bool(self.server and self.server.proc.poll() is not None)
                self.outputs = Outputs.beside(self.journal, "stopped")
                raise LoadStopped(f"load test stopped early: {exc}; what it measured is in "
                                  f"{Path(self.outputs.run).parent}") from None
            except Exception as exc:
                self.doc["stopped_reason"] = f"{type(exc).__name__}: {provenance.scrub(str(exc))}"[:2000]
                if self.test is not None:  # the load had started: keep what it measured where Snakemake leaves it
                    self.outputs = Outputs.beside(self.journal, "failed")
                raise
            finally:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut teardown short
                self.teardown()
                self.write_outputs_or_say_why()
        finally:
            signal.signal(signal.SIGTERM, old_term)
        return self.doc

    def measure(self) -> None:
        self.preflight()
        self.start_telemetry()
        self.baseline()
        self.launch()
        self.wait_ready()
        self.load_prompts()
        self.start_scraper()
        self.run_load()
        if self.test.stopped_reason is not None:
            self.doc["stopped_reason"] = self.test.stopped_reason
            raise LoadStopped(self.test.stopped_reason)
        self.count_tokens()
        self.doc["server_exited_during_run"] = bool(self.server and self.server.proc.poll() is not None)
        self.doc["complete"] = True

    def preflight(self) -> None:
        """Refuse a GPU another process is using: its work would skew this cell's numbers."""
        pre = self.settings.preflight
        if not self.endpoint.external and pre.gpu_idle:
            self.doc["preflight_gpu"] = gpu_idle_check(self.nvml, pre.max_gpu_util_pct, pre.max_foreign_gpu_mib)

    def server_env(self) -> dict[str, str]:
        """The engine's environment. CUDA_DEVICE_ORDER defaults to PCI_BUS_ID, so that CUDA's device
        indices are NVML's (nvidia-smi's) and the sampled GPUs are the ones the engine uses."""
        return {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", **os.environ, **self.engine.env,
                **(self.endpoint.launch.env if self.endpoint.launch else {})}

    def launch(self) -> None:
        ep = self.endpoint
        if ep.external:
            return
        self.server = Server(ep.command, self.server_log, ep.host, ep.port, ep.health_path, env=self.server_env(),
                             nvml=self.nvml, gpu_tolerance_mib=self.settings.preflight.gpu_memory_tolerance_mib)
        self.doc["server_launch_ns"] = time.monotonic_ns()
        self.server.start()
        self.doc["server_pid"] = self.server.proc.pid
        self.telemetry.track(self.server.proc.pid)

    def start_telemetry(self) -> None:
        """The sampler, on the engine's GPUs only (an 8-GPU host running a 2-GPU engine samples 2)."""
        gpus = self.doc["hardware"].get("gpu_indices")
        self.telemetry = Telemetry(self.raw_telemetry, self.settings.telemetry.interval_s,
                                   devices=gpus if self.doc["hardware"].get("gpus") else None,
                                   server_grace_s=self.engine.stop_grace_s)

    def baseline(self) -> None:
        """telemetry.baseline_s of the host with no engine, before the launch: what net energy subtracts.
        None for an external endpoint (its server is already running)."""
        seconds = self.settings.telemetry.baseline_s
        if self.endpoint.external or seconds <= 0:
            return
        start = time.monotonic_ns()
        time.sleep(seconds)
        self.doc["baseline"] = {"start_ns": start, "end_ns": time.monotonic_ns(), "seconds": seconds}

    def wait_ready(self) -> None:
        ep, timeout_s = self.endpoint, self.engine.ready_timeout_s
        self.doc.setdefault("server_launch_ns", time.monotonic_ns())
        if self.server:
            self.doc["server_ready_s"] = self.server.wait_ready(timeout_s)
        else:
            try:  # fails fast on a closed port, and says what the endpoint answered
                self.doc["server_ready_s"] = probe_ready(ep.base_url + ep.health_path, timeout_s, ep.headers)
            except NotReady as exc:
                raise ServerError(f"engines.{self.engine.name}: external endpoint not ready: {exc}") from None
        self.doc["server_ready_ns"] = time.monotonic_ns()

    def load_prompts(self) -> None:
        """The request's prompt set; synthetic prompts need the engine's tokenizer, so the server is up first."""
        request = self.settings.request
        self.tokenizer = EngineTokenizer(self.endpoint.base_url) if "tokenize" in self.endpoint.capabilities else None
        self.prompts, self.doc["prompt_source"] = load_prompts(request.prompts, self.tokenizer, request.seed)

    def start_scraper(self) -> None:
        ep = self.endpoint
        self.scraper = promscrape.Scraper(ep.base_url, list(ep.metrics_paths), list(self.entry.metric_names) or None,
                                          self.engine.metrics_interval_s, ep.headers).start()

    def run_load(self) -> None:
        ep, request, load = self.endpoint, self.settings.request, self.settings.load
        # the engine's process, where this job launched it: the load stops if it is gone (the breaker)
        client = ClientSpec(ep.base_url, ep.route_prefix, ep.request_model, request, frozenset(ep.capabilities),
                            ep.headers or None, server_pid=self.server.proc.pid if self.server else None)
        self.test = load_test(load.processes, client, self.prompts, load.name, request.seed, self.journal)
        if isinstance(self.test, ShardedLoadTest) and self.telemetry is not None:
            self.test.on_worker = self.telemetry.add_client  # the workers' CPU is the client's, not foreign
        journals = [self.test.journal] if isinstance(self.test, LoadTest) else []  # a sharded test's workers watch their own
        run_async(cancellable(shown(self.test.run(load.phases), self.progress()), self.caught, journals))
        signal.signal(signal.SIGTERM, _raise_interrupted)  # the event loop's handlers are gone with it

    def progress(self) -> Progress | None:
        """Plain lines in the job's log (stderr, every $TOKENBENCH_PROGRESS_S, default 5 s) and, where
        the job's own stderr is a terminal (Snakemake's), a progress bar there too."""
        c = self.doc["cell"]
        label = f"{c['engine']} / {c['model']} / {c['load']} / {c['rep']}"
        try:
            every_s = interval_from_env()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if getattr(sys.stderr, "isatty", lambda: False)():
            lines_to, bar_to = None, sys.stderr
        else:
            lines_to, bar_to = sys.stderr, terminal()
        return Progress(self.test, label, list(self.settings.load.phases), lines_to=lines_to, bar_to=bar_to,
                        every_s=every_s)

    def count_tokens(self) -> None:
        if self.tokenizer is None or not self.settings.request.client_token_count:
            return
        try:  # a batch at a time, while the server (its tokenizer) is still up
            self.client_counts = [pa.array(count_output_tokens(b, self.tokenizer), type=pa.int64())
                                  for b in request_journal.batches(*self.test.journal_paths)]
        except Exception as exc:  # a check that failed must not cost the measured run
            self.doc["client_token_count_error"] = f"{type(exc).__name__}: {exc}"[:300]

    def teardown(self) -> None:
        """Stop what was started, the scraper before the server it reads, the sampler last."""
        if self.scraper is not None:
            self.scraper.stop()
            self.doc["engine_metrics"] = self.scraper.summary()
        if self.server is not None:
            self.doc["server_stop"] = self.server.stop(self.engine.stop_grace_s)
            self.doc["engine_log_lines"] = [provenance.scrub(line)
                                            for line in grep_log(self.server_log, self.entry.log_patterns)]
        if self.telemetry is not None:
            self.telemetry.stop()
            self.doc["telemetry"] = self.telemetry.info()

    def write_outputs_or_say_why(self) -> None:
        """write_outputs; a write that fails (a full disk) is raised naming the folder, its free space
        and where the request journal stops, the failure that stopped the run, if one did, before it."""
        try:
            self.write_outputs()
        except OSError as exc:
            folder = Path(self.outputs.run).parent
            journals = ", ".join(str(p) for p in self.test.journal_paths) if self.test else "none"
            why = f"; the run had stopped: {self.doc['stopped_reason']}" if "stopped_reason" in self.doc else ""
            raise OSError(exc.errno, f"could not write the load test's records to {folder}: {exc} "
                                     f"({request_journal.free_space(folder)}); its request journal ({journals}) "
                                     f"holds every record written before the failure{why}") from exc

    def write_outputs(self) -> None:
        prov = self.provenance()
        self.doc["phases"] = [asdict(m) for m in self.test.marks] if self.test else []
        self.doc["client"] = client_summary(self.test)
        extra = {"complete": self.doc["complete"], "cell": self.doc["cell"],
                 **({"stopped_reason": self.doc["stopped_reason"]} if "stopped_reason" in self.doc else {})}
        out = self.outputs
        counts = iter(self.client_counts) if self.client_counts else None
        # no load ran: no journals, an empty table (not a journal left by an earlier attempt)
        request_journal.to_parquet(self.test.journal_paths if self.test else [], out.requests, "requests", prov,
                                   extra, client_output_tokens=(lambda _batch: next(counts)) if counts else None)
        records.write_table(self.telemetry_frame(), out.telemetry, "telemetry", prov, extra)
        if out.engine_metrics is not None:
            em = self.scraper.frame() if self.scraper is not None else promscrape.frame([])
            records.write_table(em, out.engine_metrics, "engine_metrics", prov,
                                {**extra, "scrape": self.doc.get("engine_metrics")})
        records.write_json(self.doc, out.run, "run", prov)
        json.dumps(self.doc, default=str)  # fail loudly here, not in a later stage, if doc is not serialisable

    def provenance(self) -> dict[str, Any]:
        return provenance.block(
            config_hash=canonical_hash(self.doc["settings"]),
            engine={k: self.probe.get(k) for k in ("kind", "package", "version", "version_commit",
                                                   "entry_point", "binary_sha256")},
            model={"name": self.manifest["name"], "sha256": self.manifest["sha256"], "source": self.manifest["source"]},
            prompt_set_sha256=prompt_set_hash(self.prompts),
        )

    def telemetry_frame(self) -> pd.DataFrame:
        """The sampler's samples (an empty frame if it never started), its scratch file removed."""
        if not self.raw_telemetry.exists():
            return pd.DataFrame({"t_ns": pd.Series(dtype="int64"), "device": pd.Series(dtype="string")})
        tel = pd.read_parquet(self.raw_telemetry)
        self.raw_telemetry.unlink()
        return tel


STREAM_TOKENS_PER_S = 1000  # the fastest one request's tokens are taken to arrive: bounds a closed-loop user's rate
RECORD_BYTES = 512  # a request record's fixed columns, uncompressed (ids, stamps, status, prompt id...)
TOKEN_BYTES = 16  # per output token: its 8-byte chunk stamp and ~4 characters of text, with room to spare
DISK_RESERVE_BYTES = 8 << 20  # the logs, run.json and telemetry besides


def expected_requests(phases, max_tokens: int) -> int:
    """An upper estimate of the requests a load sends: a bounded phase's `requests`, an open loop's
    rate x duration, a closed loop's users x duration at one request per max(10 ms, max_tokens at
    STREAM_TOKENS_PER_S); a trace's rows; a sweep's steps as closed loops of up to max_users."""
    per_user_rps = 1 / max(0.01, max_tokens / STREAM_TOKENS_PER_S)
    n = 0.0
    for p in phases:
        requests, duration = getattr(p, "requests", None), getattr(p, "duration_s", None)
        if p.mode == "idle":
            continue
        if requests is not None:
            n += requests
        elif p.mode == "trace":
            with open(p.path, "rb") as fh:
                n += sum(1 for line in fh if line.strip())
        elif p.mode == "sweep":
            n += p.step_duration_s * per_user_rps * (1 + p.max_users * (1 + p.rates))
        elif p.mode == "closed":
            n += p.users * duration * per_user_rps
        else:
            n += p.rate_rps * duration
    return int(n) + 1


def check_disk_space(settings: CellSettings, journal: Path, out_dir: Path) -> dict[str, Any]:
    """Refuse (ConfigError) a load whose records cannot fit: the journal and the requests table
    (each about expected_requests x (RECORD_BYTES + TOKEN_BYTES x max_tokens)) plus DISK_RESERVE_BYTES
    on each filesystem they go to. TOKENBENCH_DISK_CHECK=0 skips it (the estimate is an upper one)."""
    max_tokens = settings.request.max_tokens
    n = expected_requests(settings.load.phases, max_tokens)
    per_copy = n * (RECORD_BYTES + TOKEN_BYTES * max_tokens)
    if os.environ.get("TOKENBENCH_DISK_CHECK", "1") == "0":
        return {"checked": False, "reason": "TOKENBENCH_DISK_CHECK=0", "expected_requests": n}
    need: dict[str, list] = {}  # filesystem's folder -> [bytes, free, what]
    for path, what in ((journal.parent, f"request journal {journal}"), (out_dir, f"records in {out_dir}")):
        p = path.absolute()
        while not p.is_dir() and p != p.parent:
            p = p.parent
        dev = str(os.stat(p).st_dev)
        entry = need.setdefault(dev, [DISK_RESERVE_BYTES, shutil.disk_usage(p).free, [], p])
        entry[0] += per_copy
        entry[2].append(what)
    for bytes_, free, what, p in need.values():
        if bytes_ > free:
            hb = request_journal.human_bytes
            raise ConfigError(
                f"not enough disk space for loads.{settings.load.name}: {hb(free)} free on {p}, and its "
                f"{' and '.join(what)} need up to {hb(bytes_)} (about {n} requests x "
                f"({RECORD_BYTES} + {TOKEN_BYTES} x {max_tokens} max_tokens) bytes each, plus "
                f"{hb(DISK_RESERVE_BYTES)}); free some space, or move data/ and logs/ to a larger disk "
                f"(TOKENBENCH_DISK_CHECK=0 skips this upper estimate)")
    return {"checked": True, "expected_requests": n, "bytes_per_copy": per_copy,
            "free_bytes": {str(p): free for _, free, _, p in need.values()}}


def client_summary(test: LoadTest | ShardedLoadTest | None) -> dict[str, Any]:
    """How the client itself did: event-loop lag (is the client the bottleneck?), what it sent, and
    how it got its connections."""
    lag = loop_lag_by_phase(test.loop_lag, test.marks) if test else {}
    run_lag = lag.get("(run)") or {}
    return {
        "event_loop_lag_p99_ms": run_lag.get("p99_ms"),
        "event_loop_lag_max_ms": run_lag.get("max_ms"),
        "event_loop_lag_by_phase": {k: v for k, v in lag.items() if k != "(run)"},
        "event_loop": event_loop_name(),
        "requests_sent": test.requests_sent if test else 0,
        "status_counts": dict(test.status_counts) if test else {},
        "connections": dict(test.connection_counts) if test else {},
        "resent": test.resent if test else 0,
        "processes": getattr(test, "processes", 1),
    }


async def cancellable(coro, caught: dict | None = None, journals=()):
    """Run coro; SIGTERM or SIGINT cancels it, so every in-flight request records 'cancelled'.
    The signal's name goes into caught['signal']. A write failure of one of ``journals`` (a full
    disk) cancels it too, at once: the load test then closes its journal, which raises the failure
    (tokenbench.load.journal.JournalWriteError) in place of the cancellation."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(coro)

    def on_journal_error(exc):
        if caught is not None:
            caught["journal_error"] = str(exc)
        task.cancel()

    for j in journals:
        j.on_error = lambda exc: loop.call_soon_threadsafe(on_journal_error, exc)

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
