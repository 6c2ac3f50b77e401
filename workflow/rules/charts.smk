rule plot_timeline:
    """Telemetry timeline of one cell with its phases shaded."""
    output:
        "data/charts/timeline/{engine}.{model}.{load}.vl.json",
    input:
        timeline="data/merged/{engine}/{model}/{load}/timeline.parquet",
        run="data/runs/{engine}/{model}/{load}/run.json",
        code=pkg("charts.py", "records.py"),
    log:
        "logs/plot_timeline/{engine}.{model}.{load}.log",
    conda:
        "../envs/tokenbench.yaml"
    script:
        "../scripts/plot_timeline.py"


rule plot_throughput:
    """Throughput vs users, measured points and the saturation fit."""
    output:
        "data/charts/throughput.vl.json",
    input:
        summary="data/analysis/summary.parquet",
        fits=[f"data/analysis/saturation/{e}/{m}.json" for e, m in PAIRS] if CFG.sweep else [],
        code=pkg("charts.py", "fit.py", "records.py"),
    params:
        loads=sweep_loads(),
    log:
        "logs/plot_throughput.log",
    conda:
        "../envs/tokenbench.yaml"
    script:
        "../scripts/plot_throughput.py"


rule plot_latency:
    """TTFT / E2E / TPOT percentiles vs users."""
    output:
        "data/charts/latency.vl.json",
    input:
        summary="data/analysis/summary.parquet",
        code=pkg("charts.py", "records.py"),
    params:
        loads=sweep_loads(),
    log:
        "logs/plot_latency.log",
    conda:
        "../envs/tokenbench.yaml"
    script:
        "../scripts/plot_latency.py"
