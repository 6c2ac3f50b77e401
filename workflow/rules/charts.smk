# Charts: Altair -> Vega-Lite specs, each with its full data beside it as CSV and JSON
# ({stem}.vl.json, {stem}.csv, {stem}.json) for the pages' download links. Per run: timeline,
# engine /metrics and latency breakdown; over the users sweep: the frontier (with the
# iso-interactivity table), throughput and latency.


# (values and lambdas, not functions: snakemake --lint wants functions out of rule files)

# {chart name: spec path} for every chart of the config: render_pages embeds them; each spec's
# .csv and .json lie beside it
CHART_SPECS = {
    f"{kind}.{e}.{m}.{l}.{r}": f"data/charts/{kind}/{e}.{m}.{l}.{r}.vl.json"
    for e, m, l, r in RUNS
    for kind in ("timeline", "engine", "latency_breakdown")
} | {
    name: f"data/charts/{name}.vl.json"
    for name in (("frontier", "throughput", "latency") if CFG.sweep else ())
}
# a chart's three outputs: the spec and its data as CSV and JSON
chart_files = lambda stem: {
    "spec": f"{stem}.vl.json",
    "csv": f"{stem}.csv",
    "json": f"{stem}.json",
}
# {sweep load: the phase the sweep reads in it}
SWEEP_PHASES = {
    l: CFG.sweep.phase or sweep_phase(CFG.loads[l]).name for l in sweep_loads()
}


rule trace_frontiers:
    """Throughput against interactivity over the users sweep: points with intervals, each
    configuration's Pareto frontier, the iso-interactivity table against the baseline.
    """
    input:
        cells=[
            f"data/analysis/cells/{e}/{m}/{l}.json"
            for e, m in PAIRS
            for l in sweep_loads()
        ],
        metrics=[
            f"data/metrics/{e}/{m}/{l}/{r}/metrics.json"
            for e, m in PAIRS
            for l in sweep_loads()
            for r in REPS
        ],
        code=imports_of("trace_frontiers"),
    output:
        "data/analysis/frontiers.json",
    log:
        "logs/trace_frontiers.log",
    params:
        phases=SWEEP_PHASES,
        baseline=CFG.comparison.baseline,
        level=CFG.comparison.level,
    conda:
        "../envs/tokenbench.yaml"
    script:
        "../scripts/trace_frontiers.py"


rule plot_frontier:
    """Throughput vs interactivity with the frontiers, a median/p99 toggle and a y selector; the
    companion views; the iso-interactivity table's data."""
    input:
        frontiers="data/analysis/frontiers.json",
        code=imports_of("plot_frontier"),
    output:
        **chart_files("data/charts/frontier"),
        iso_csv="data/charts/iso.csv",
        iso_json="data/charts/iso.json",
    log:
        "logs/plot_frontier.log",
    conda:
        "../envs/tokenbench.yaml"
    script:
        "../scripts/plot_frontier.py"


rule plot_throughput:
    """Throughput vs users: means with t intervals, invalid points hollow, the saturation fit and its band."""
    input:
        frontiers="data/analysis/frontiers.json",
        fits=[f"data/analysis/saturation/{e}/{m}.json" for e, m in PAIRS],
        code=imports_of("plot_throughput"),
    output:
        **chart_files("data/charts/throughput"),
    log:
        "logs/plot_throughput.log",
    conda:
        "../envs/tokenbench.yaml"
    script:
        "../scripts/plot_throughput.py"


rule plot_latency:
    """TTFT / E2E / TPOT percentiles vs users."""
    input:
        summary="data/analysis/summary.parquet",
        code=imports_of("plot_latency"),
    output:
        **chart_files("data/charts/latency"),
    log:
        "logs/plot_latency.log",
    params:
        loads=sweep_loads(),
    conda:
        "../envs/tokenbench.yaml"
    script:
        "../scripts/plot_latency.py"


rule plot_timeline:
    """A run's telemetry on one time axis, phases marked (window, ramp, drain), concurrency overlaid."""
    input:
        timeline="data/merged/{engine}/{model}/{load}/{rep}/timeline.parquet",
        run="data/runs/{engine}/{model}/{load}/{rep}/run.json",
        code=imports_of("plot_timeline"),
    output:
        **chart_files("data/charts/timeline/{engine}.{model}.{load}.{rep}"),
    log:
        "logs/plot_timeline/{engine}.{model}.{load}.{rep}.log",
    conda:
        "../envs/tokenbench.yaml"
    script:
        "../scripts/plot_timeline.py"


rule plot_engine_metrics:
    """A run's engine /metrics series (counters as rates, gauges as values) on the timeline's axis."""
    input:
        engine_metrics="data/runs/{engine}/{model}/{load}/{rep}/engine_metrics.parquet",
        run="data/runs/{engine}/{model}/{load}/{rep}/run.json",
        code=imports_of("plot_engine_metrics"),
    output:
        **chart_files("data/charts/engine/{engine}.{model}.{load}.{rep}"),
    log:
        "logs/plot_engine_metrics/{engine}.{model}.{load}.{rep}.log",
    conda:
        "../envs/tokenbench.yaml"
    script:
        "../scripts/plot_engine_metrics.py"


rule plot_latency_breakdown:
    """Per measured phase of a run: scheduled-send lag, first byte, first token and decode, p50 and p99."""
    input:
        requests="data/runs/{engine}/{model}/{load}/{rep}/requests.parquet",
        run="data/runs/{engine}/{model}/{load}/{rep}/run.json",
        code=imports_of("plot_latency_breakdown"),
    output:
        **chart_files("data/charts/latency_breakdown/{engine}.{model}.{load}.{rep}"),
    log:
        "logs/plot_latency_breakdown/{engine}.{model}.{load}.{rep}.log",
    conda:
        "../envs/tokenbench.yaml"
    script:
        "../scripts/plot_latency_breakdown.py"
