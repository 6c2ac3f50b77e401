rule compute_metrics:
    """Per-phase metrics of one cell: throughput, latency percentiles, MFU, energy, cost."""
    input:
        requests="data/runs/{engine}/{model}/{load}/requests.parquet",
        timeline="data/merged/{engine}/{model}/{load}/timeline.parquet",
        run="data/runs/{engine}/{model}/{load}/run.json",
        model="data/models/{model}/manifest.json",
        code=imports_of("compute_metrics"),
    output:
        metrics="data/metrics/{engine}/{model}/{load}/metrics.json",
        windows="data/metrics/{engine}/{model}/{load}/windows.parquet",
    log:
        "logs/compute_metrics/{engine}/{model}/{load}.log",
    conda:
        "../envs/tokenbench.yaml"
    threads: 2  # NumPy work split over two threads (tokenbench.joblog.threads)
    params:
        hardware=lambda wc: CFG.hardware.model_dump(),
        slo=lambda wc: CFG.slo.model_dump(),
        validity=lambda wc: CFG.validity.model_dump(),
    script:
        "../scripts/compute_metrics.py"


rule summarize_metrics:
    """One table, one row per (engine, model, load, phase), for charts and pages."""
    input:
        metrics=cell_paths("metrics", "metrics.json"),
        code=imports_of("summarize_metrics"),
    output:
        "data/analysis/summary.parquet",
    log:
        "logs/summarize_metrics.log",
    conda:
        "../envs/tokenbench.yaml"
    script:
        "../scripts/summarize_metrics.py"


rule fit_saturation:
    """Michaelis-Menten fit of throughput over the users sweep, with its degrees of freedom."""
    input:
        metrics=lambda wc: [
            f"data/metrics/{wc.engine}/{wc.model}/{l}/metrics.json"
            for l in sweep_loads()
        ],
        code=imports_of("fit_saturation"),
    output:
        "data/analysis/saturation/{engine}/{model}.json",
    log:
        "logs/fit_saturation/{engine}/{model}.log",
    conda:
        "../envs/tokenbench.yaml"
    params:
        loads=sweep_loads(),
        phases=[
            (CFG.sweep.phase or sweep_phase(CFG.loads[l]).name) for l in sweep_loads()
        ],
    script:
        "../scripts/fit_saturation.py"
