"""One load test against an already-running OpenAI-compatible endpoint, outside Snakemake.

``tokenbench run --endpoint http://127.0.0.1:8080 --model m --profile closed:users=4,duration_s=30``
drives the same load generator, records and metrics as the pipeline, with its progress display.
"""

from __future__ import annotations

import asyncio
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import TypeAdapter, ValidationError

from tokenbench import provenance, records
from tokenbench.analysis.metrics import compute_metrics
from tokenbench.analysis.registry import Column
from tokenbench.config import (ConfigError, HardwareSpec, Phase, RequestSpec, SloSpec, ValiditySpec, canonical_hash,
                               is_loopback)
from tokenbench.load.generator import run_async
from tokenbench.load.phases import PHASE_CLASSES, LoadPhase
from tokenbench.load.progress import Progress, interval_from_env, shown
from tokenbench.load.prompts import load_prompts, prompt_set_hash
from tokenbench.load import journal as request_journal
from tokenbench.load.run import api_key_headers, cancellable, client_summary
from tokenbench.load.shards import ClientSpec, load_test
from tokenbench.engines.server import NotReady, probe_ready
from tokenbench.telemetry import hardware
from tokenbench.telemetry.merge import merge_telemetry

_PHASE = TypeAdapter(Phase)


def parse_profile(spec: str, index: int) -> LoadPhase:
    """'closed:users=4,duration_s=30' -> a validated phase (name defaults to mode + index)."""
    mode, _, rest = spec.partition(":")
    fields: dict[str, Any] = {"mode": mode.strip(), "name": f"{mode.strip()}{index}"}
    for kv in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = kv.partition("=")
        if not eq:
            raise ConfigError(f"--profile {spec!r}: '{kv}' is not key=value")
        fields[key.strip()] = value.strip()
    modes = [c.model_fields["mode"].default for c in PHASE_CLASSES]
    if fields["mode"] not in modes:
        raise ConfigError(f"--profile {spec!r}: unknown mode {fields['mode']!r}; the modes are {', '.join(modes)} "
                          "(MODE:key=value,...)")
    try:
        return _PHASE.validate_python(fields)
    except ValidationError as exc:
        errs = "; ".join(f"{'.'.join(map(str, e['loc'][1:])) or '.'.join(map(str, e['loc'])) or 'phase'}: {e['msg']}"
                         for e in exc.errors())
        raise ConfigError(f"--profile {spec!r}: {errs}") from None


def check_loopback(url: str, allow_remote: bool) -> urllib.parse.ParseResult:
    u = urllib.parse.urlparse(url)
    if u.scheme != "http" or not u.hostname:
        raise ConfigError(f"--endpoint {url!r}: give an http://host:port URL")
    if not allow_remote and not is_loopback(u.hostname):
        raise ConfigError(f"--endpoint {url!r} is not a loopback address; load tests send traffic only to "
                          "127.0.0.0/8, ::1 or localhost unless you pass --allow-remote for a server you are "
                          "entitled to load")
    return u


# what to check when the readiness probe fails, in the CLI's words
CLI_HINTS = {"auth": "check --api-key-env", "path": "check --route-prefix or --ready-path",
             "timeout": "--ready-timeout"}

# exit codes of ``tokenbench run`` (its --help and the README list them)
EXIT_VALID, EXIT_INTERRUPTED, EXIT_BAD_INPUT, EXIT_INVALID, EXIT_NOT_READY = 0, 1, 2, 3, 4
EXIT_CODES = {EXIT_VALID: "the run completed and every steady phase passed its validity checks",
              EXIT_INTERRUPTED: "interrupted (Ctrl-C, SIGTERM) or failed inside the client; what ran is written",
              EXIT_BAD_INPUT: "bad input: an option, profile, config or environment variable; nothing was sent",
              EXIT_INVALID: "the run ended but is not valid: a phase failed a validity check (error rate, "
                            "minimum requests or duration, ...), or the load stopped early because the server "
                            "stopped answering (the breaker)",
              EXIT_NOT_READY: "the endpoint did not answer the readiness probe; nothing was sent"}


def run_endpoint(endpoint: str, model: str, phases: list[LoadPhase], request: RequestSpec, out_dir: str, *,
                 route_prefix: str, capabilities: set[str], api_key_env: str | None = None,
                 allow_remote: bool = False, slo: SloSpec | None = None, validity: ValiditySpec | None = None,
                 progress=sys.stderr, processes: int = 1, progress_every_s: float | None = None,
                 ready_path: str | None = None, ready_timeout_s: float = 10.0) -> dict[str, Any]:
    """Run the phases against the endpoint on ``processes`` client processes (tokenbench.load.shards);
    write requests.parquet, run.json and metrics.json to out_dir. ``progress``: where the progress
    display goes (tokenbench.load.progress: a bar on a terminal, else a line every
    ``progress_every_s``, default ``$TOKENBENCH_PROGRESS_S`` or 5 s); None: none.

    First a readiness probe: GET ``ready_path`` (default: the models route, ``<route_prefix>/models``)
    until a 2xx, for at most ``ready_timeout_s`` (0: no probe); NotReady if it never comes.
    ``validity``: the bounds every phase is checked against; None: ValiditySpec's defaults, the
    pipeline's (one policy for both)."""
    check_loopback(endpoint, allow_remote)
    headers = api_key_headers(api_key_env, "--api-key-env") or None
    validity = validity or ValiditySpec()
    ready_url = endpoint.rstrip("/") + (ready_path if ready_path is not None else route_prefix + "/models")
    ready_s = probe_ready(ready_url, ready_timeout_s, headers, hints=CLI_HINTS) if ready_timeout_s > 0 else None
    prompts, _ = load_prompts(request.prompts, None, request.seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"endpoint": endpoint, "model": model, "request": request.model_dump(mode="json"),
                "load": {"name": "cli", "phases": [p.model_dump(mode="json") for p in phases],
                         "processes": processes}}
    doc: dict[str, Any] = {"cell": {"engine": "endpoint", "model": model, "load": "cli", "rep": "r1"}, "settings": settings,
                           "server_command": [f"(external endpoint {endpoint})"], "complete": False,
                           "clock": {"timestamps": "CLOCK_MONOTONIC ns", "anchor": {"wall_ns": time.time_ns(),
                                                                                    "monotonic_ns": time.monotonic_ns()}},
                           "hardware": hardware.describe("auto"), "server_ready_s": ready_s,
                           "validity": validity.model_dump(mode="json")}
    journal = out / "requests.arrows"
    test = load_test(processes, ClientSpec(endpoint, route_prefix, model, request, frozenset(capabilities), headers),
                     prompts, "cli", request.seed, journal)

    try:
        every_s = interval_from_env() if progress_every_s is None else progress_every_s
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if every_s < 0:
        raise ConfigError(f"--progress-every {every_s}: give seconds between progress lines, >= 0 (0: none)")
    shown_on = Progress.for_stream(test, f"endpoint {model}", phases, progress, every_s)

    try:
        run_async(cancellable(shown(test.run(phases), shown_on)))
        doc["complete"] = test.stopped_reason is None  # the breaker stopped it: not every phase ran its course
    except (KeyboardInterrupt, asyncio.CancelledError):
        doc["interrupted"] = True
    if test.stopped_reason is not None:
        doc["stopped_reason"] = test.stopped_reason
    prov = provenance.block(config_hash=canonical_hash(settings), prompt_set_sha256=prompt_set_hash(prompts))
    doc["phases"] = [m.__dict__ for m in test.marks]
    doc["client"] = client_summary(test)
    doc["provenance"] = prov
    request_journal.to_parquet(test.journal_paths, out / "requests.parquet", "requests", prov,
                               {"complete": doc["complete"]})
    for path in test.journal_paths:
        Path(path).unlink(missing_ok=True)
    req_df = records.read_table(out / "requests.parquet")
    records.write_json({k: v for k, v in doc.items() if k != "provenance"}, out / "run.json", "run", prov)
    tl = merge_telemetry(req_df, pd.DataFrame({"t_ns": pd.Series(dtype="int64"), "device": pd.Series(dtype="string")}), doc)
    metrics, _ = compute_metrics(req_df, tl, doc, {"name": model, "figures": {}}, HardwareSpec(), slo, validity)
    records.write_json(metrics, out / "metrics.json", "metrics", prov)
    return metrics


def summary_lines(metrics: dict[str, Any]) -> list[str]:
    """The CLI's per-phase summary: registry headers and precision, each column as wide as its widest cell."""
    columns = (Column("requests_sent"), Column("success_rate"), Column("output_tok_s"), Column("request_rps"),
               Column("ttft_ms", ("p50",)), Column("ttft_ms", ("p99",)), Column("tpot_ms", ("p50",)),
               Column("e2e_ms", ("p99",)))
    rows = [("phase", [c.header() for c in columns], "valid")]
    for ph in metrics["phases"]:
        if ph["mode"] == "idle":
            rows.append((ph["phase"], ["(idle)"], ""))
            continue
        v = ph.get("validity") or {}
        rows.append((ph["phase"], [c.cell(ph) for c in columns],
                     "yes" if v.get("valid") else "no: " + "; ".join(v.get("failed_checks", []))))
    name_w = max(len(name) for name, _, _ in rows)
    widths = [max(len(cells[i]) for _, cells, _ in rows if i < len(cells)) for i in range(len(columns))]
    lines = [" ".join([name.ljust(name_w), *(cell.rjust(w) for cell, w in zip(cells, widths))])
             + (f"  {valid}" if valid else "") for name, cells, valid in rows]
    if not metrics["phases"]:
        lines.append("(no phase ran)")
    return lines


def verdict(metrics: dict[str, Any], run: dict[str, Any]) -> tuple[int, str]:
    """``tokenbench run``'s exit code (EXIT_CODES) and its verdict line."""
    if run.get("interrupted"):
        return EXIT_INTERRUPTED, "verdict: interrupted; the phases that ran are above and in metrics.json"
    if metrics.get("valid"):
        return EXIT_VALID, "verdict: valid"
    why = []
    if run.get("stopped_reason"):
        why.append(f"stopped early: {run['stopped_reason']}")
    bad = [p["phase"] for p in metrics["phases"] if p["mode"] != "idle" and not p["warmup"]
           and not (p.get("validity") or {}).get("valid")]
    if bad:
        why.append(f"invalid phase{'s' if len(bad) > 1 else ''}: {', '.join(bad)} (reasons above; bounds: "
                   "--validity key=value, or the --config's validity block)")
    return EXIT_INVALID, "verdict: NOT valid: " + ("; ".join(why) or "see metrics.json")
