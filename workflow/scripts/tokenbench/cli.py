"""``tokenbench`` command line: helpers around the pipeline (the pipeline itself is Snakemake)."""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="tokenbench")
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("validate", help="check a config file and list its cells")
    v.add_argument("config")
    b = sub.add_parser("build-engine", help="build llama-server from source (cached) into DEST")
    b.add_argument("--dest", required=True)
    s = sub.add_parser("schema", help="write the config's JSON Schema (default) or its reference tables (--reference)")
    s.add_argument("--out", help="write here instead of stdout (config/tokenbench.schema.json)")
    s.add_argument("--reference", metavar="PATH", help="write the config reference (Markdown) to PATH "
                   "(docs/config-reference.md)")
    from tokenbench.load.endpoint import EXIT_CODES

    r = sub.add_parser("run", help="one load test against a running OpenAI-compatible endpoint",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Phases run in the order given, e.g. --profile poisson:rate_rps=2,duration_s=20,warmup=true "
                                   "--profile idle:duration_s=10 --profile closed:users=8,duration_s=60\n\n"
                                   "Every phase is checked against the validity bounds (the config schema's `validity` "
                                   "defaults, the pipeline's: at most 1 % errors, at least 20 requests and 10 s; "
                                   "change them with --validity or the --config's validity block). A load that "
                                   "keeps failing to connect (the server is gone) stops within a few seconds.",
                       epilog="exit codes:\n" + "\n".join(f"  {k}  {v}" for k, v in EXIT_CODES.items()))
    r.add_argument("--endpoint", required=True, help="base URL, e.g. http://127.0.0.1:8080 (loopback only by default)")
    r.add_argument("--model", required=True, help="the model name the server serves")
    r.add_argument("--profile", action="append", default=[], help="MODE:key=value,... (repeat for more phases)")
    r.add_argument("--config", help="take the phases from this config's --load instead of --profile")
    r.add_argument("--load", help="load name in --config")
    r.add_argument("--out", required=True, help="directory for requests.parquet, run.json, metrics.json")
    r.add_argument("--route-prefix", default="/v1")
    # request settings: left out, the config schema's defaults (tokenbench.config.RequestSpec)
    r.add_argument("--endpoint-type", choices=["chat", "completions"])
    r.add_argument("--max-tokens", type=int)
    r.add_argument("--temperature", type=float)
    r.add_argument("--ignore-eos", action="store_true", help="send ignore_eos (only if the server accepts it)")
    r.add_argument("--no-stream-usage", action="store_true", help="the server rejects stream_options")
    r.add_argument("--honour-retry-after", action="store_true",
                   help="closed loop: a user whose request got a 429/503 with Retry-After waits that long (off by "
                        "default, so that engines that shed load and engines that queue get the same offered load)")
    r.add_argument("--system-prompt")
    r.add_argument("--seed", type=int)
    r.add_argument("--api-key-env", help="name of the environment variable holding the API key")
    r.add_argument("--allow-remote", action="store_true", help="allow a non-loopback endpoint you are entitled to load")
    r.add_argument("--processes", type=int,
                   help="client processes, one event loop (core) each, sharing out users and arrivals; one core "
                        "streams ~1,000 requests/s (default: the --config load's `processes`, else 1)")
    r.add_argument("--validity", action="append", default=[], metavar="KEY=VALUE[,...]",
                   help="a validity bound instead of its default, e.g. min_duration_s=2,min_requests=5 "
                        "(keys: the config's `validity` block; repeatable)")
    r.add_argument("--ready-timeout", type=float, default=10.0, metavar="S",
                   help="seconds to wait for the endpoint's readiness probe to answer 2xx (default 10; a closed "
                        "port fails after 1 s; 0: no probe)")
    r.add_argument("--ready-path", metavar="PATH",
                   help="the readiness probe's path (default: ROUTE_PREFIX/models, e.g. /v1/models)")
    r.add_argument("--quiet", action="store_true", help="no progress display")
    r.add_argument("--progress-every", type=float, metavar="S",
                   help="seconds between progress lines when stderr is not a terminal (default: "
                        "$TOKENBENCH_PROGRESS_S, else 5)")
    res = sub.add_parser("results", help="what a run directory or the pipeline's data/ holds, as tables",
                         description="Loads the records, metrics, run documents and summary of a `tokenbench run --out` "
                                     "directory or of the pipeline's data/ tree (the Python API: "
                                     "tokenbench.results.load_results) and prints cells, phases and a summary table.")
    res.add_argument("dir", help="a run directory, the pipeline's data/ directory, or the project directory above it")
    res.add_argument("--csv", metavar="OUT", help="also write runs, phases, records, metrics and summary as CSV into OUT")
    args = ap.parse_args(argv)
    if args.cmd == "results":
        return _results(args)
    if args.cmd == "run":
        return _run(args)
    if args.cmd == "validate":
        from tokenbench.config import ConfigError, cells, config_warnings, load_config

        try:
            cfg = load_config(args.config)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 2
        for w in config_warnings(cfg):
            print(f"warning: {w}", file=sys.stderr)
        for e, m, l in cells(cfg):
            print(f"{e}\t{m}\t{l}")
        return 0
    if args.cmd == "schema":
        from tokenbench.config_reference import write_outputs

        return write_outputs(args.out, args.reference)
    if args.cmd == "build-engine":
        from tokenbench.engines.build import main as build_main

        return build_main(["--dest", args.dest])
    return 1


def _results(args) -> int:
    from tokenbench.records import SchemaError
    from tokenbench.results import ResultsError, describe, export_csv, load_results

    try:
        res = load_results(args.dir)
        print("\n".join(describe(res)))
        if args.csv:
            files = export_csv(res, args.csv)
            print(f"\nCSV: {', '.join(str(f) for f in files)}")
    except (ResultsError, SchemaError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _option_error(option: str, value, exc) -> str:
    """A pydantic ValidationError as one line naming the option, its value and what is allowed."""
    return f"{option} {value}: " + "; ".join(
        (f"{'.'.join(map(str, e['loc']))}: " if e.get("loc") and len(exc.errors()) > 1 else "")
        + e["msg"].removeprefix("Value error, ") for e in exc.errors())


def _validity(pairs: list[str], base):
    """The --validity key=value pairs over ``base`` (a ValiditySpec), checked by its schema."""
    from pydantic import ValidationError

    from tokenbench.config import ConfigError, ValiditySpec

    given: dict[str, str] = {}
    for arg in pairs:
        for kv in filter(None, (p.strip() for p in arg.split(","))):
            key, eq, value = kv.partition("=")
            if not eq:
                raise ConfigError(f"--validity {arg!r}: '{kv}' is not key=value")
            if key.strip() not in ValiditySpec.model_fields:
                raise ConfigError(f"--validity {arg!r}: unknown key {key.strip()!r}; the keys are "
                                  f"{', '.join(ValiditySpec.model_fields)}")
            given[key.strip()] = value.strip()
    try:
        return ValiditySpec.model_validate({**base.model_dump(), **given})
    except ValidationError as exc:
        raise ConfigError(_option_error("--validity", ",".join(pairs), exc)) from None


def _run(args) -> int:
    from tokenbench.config import ConfigError, RequestSpec, ValiditySpec, load_config
    from tokenbench.load.endpoint import (EXIT_BAD_INPUT, EXIT_INTERRUPTED, NotReady, parse_profile, run_endpoint,
                                          summary_lines, verdict)
    from tokenbench.records import read_json

    from pydantic import ValidationError

    from tokenbench.config import LoadSpec

    processes = LoadSpec.model_fields["processes"].default  # the config schema's default, not a second one
    validity = ValiditySpec()
    try:
        if args.config:
            cfg = load_config(args.config, check_files=False)  # only its load and validity are used here
            if args.load not in cfg.loads:
                raise ConfigError(f"--load {args.load!r} is not a load of {args.config}; it has {sorted(cfg.loads)}")
            phases = list(cfg.loads[args.load].phases)
            processes = cfg.loads[args.load].processes
            validity = cfg.validity
        else:
            if not args.profile:
                raise ConfigError("give at least one --profile (or --config and --load)")
            phases = [parse_profile(p, i) for i, p in enumerate(args.profile)]
        if args.processes is not None:  # checked by the config schema's own rules (bounds, phases that split)
            try:
                processes = LoadSpec(phases=phases, processes=args.processes).processes
            except ValidationError as exc:
                raise ConfigError(f"--processes {args.processes}: "
                                  + "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())) from None
        caps = {"chat", "completions"} | (set() if args.no_stream_usage else {"stream_usage"})
        if args.ignore_eos:
            caps.add("ignore_eos")
        given = {"endpoint": args.endpoint_type, "max_tokens": args.max_tokens, "temperature": args.temperature,
                 "system_prompt": args.system_prompt, "seed": args.seed}
        given = {k: v for k, v in given.items() if v is not None}
        try:
            request = RequestSpec(ignore_eos=args.ignore_eos, honour_retry_after=args.honour_retry_after, **given)
        except ValidationError as exc:  # name the option the user gave, not the schema's field
            e = exc.errors()[0]
            field = str(e["loc"][0]) if e.get("loc") else ""
            opt = {"endpoint": "--endpoint-type"}.get(field, "--" + field.replace("_", "-"))
            raise ConfigError(f"{opt} {given.get(field, '')}: {e['msg']}") from None
        validity = _validity(args.validity, validity)
        if args.ready_timeout < 0:
            raise ConfigError(f"--ready-timeout {args.ready_timeout:g}: give seconds >= 0 (0: no probe)")
        metrics = run_endpoint(args.endpoint, args.model, phases, request, args.out, route_prefix=args.route_prefix,
                               capabilities=caps, api_key_env=args.api_key_env, allow_remote=args.allow_remote,
                               progress=None if args.quiet else sys.stderr, processes=processes,
                               progress_every_s=args.progress_every, validity=validity,
                               ready_path=args.ready_path, ready_timeout_s=args.ready_timeout)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except NotReady as exc:
        print(f"error: {exc}; nothing was sent", file=sys.stderr)
        from tokenbench.load.endpoint import EXIT_NOT_READY

        return EXIT_NOT_READY
    print("\n".join(summary_lines(metrics)))
    print(f"records: {args.out}/requests.parquet  metrics: {args.out}/metrics.json")
    try:
        run_doc = read_json(f"{args.out}/run.json")
    except Exception:  # noqa: BLE001 - the verdict needs it; without it, the run did not finish writing
        return EXIT_INTERRUPTED
    code, line = verdict(metrics, run_doc)
    print(line, file=sys.stderr if code else sys.stdout)
    return code


if __name__ == "__main__":
    sys.exit(main())
