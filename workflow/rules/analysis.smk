rule compute_metrics:
    """Per-phase metrics of one cell: throughput, latency percentiles, MFU, energy, cost."""
    input:
        requests="data/runs/{engine}/{model}/{load}/{rep}/requests.parquet",
        timeline="data/merged/{engine}/{model}/{load}/{rep}/timeline.parquet",
        run="data/runs/{engine}/{model}/{load}/{rep}/run.json",
        engine_metrics="data/runs/{engine}/{model}/{load}/{rep}/engine_metrics.parquet",
        model=get_model_manifest,  # the weights this engine ran (their precision sets bytes per parameter)
        code=imports_of("compute_metrics"),
    output:
        metrics="data/metrics/{engine}/{model}/{load}/{rep}/metrics.json",
        windows="data/metrics/{engine}/{model}/{load}/{rep}/windows.parquet",
    log:
        "logs/compute_metrics/{engine}/{model}/{load}/{rep}.log",
    params:
        hardware=lambda wc: CFG.hardware.model_dump(),
        slo=lambda wc: CFG.slo.model_dump(),
        validity=lambda wc: CFG.validity.model_dump(),
        level=CFG.comparison.level,
        resamples=CFG.comparison.bootstrap_resamples,
    threads: 2  # NumPy work split over two threads (tokenbench.joblog.threads)
    conda:
        "../envs/tokenbench.yaml"
    script:
        "../scripts/compute_metrics.py"


rule summarize_metrics:
    """One table, one row per (engine, model, load, rep, phase), for charts and pages."""
    input:
        metrics=run_paths("metrics", "metrics.json"),
        code=imports_of("summarize_metrics"),
    output:
        "data/analysis/summary.parquet",
    log:
        "logs/summarize_metrics.log",
    conda:
        "../envs/tokenbench.yaml"
    script:
        "../scripts/summarize_metrics.py"


rule combine_replicates:
    """A cell's replicate runs together: t intervals across runs, the within-run (block bootstrap)
    intervals beside them, and which source of variation dominates."""
    input:
        metrics=get_replicate_paths("metrics", "metrics.json"),
        code=imports_of("combine_replicates"),
    output:
        "data/analysis/cells/{engine}/{model}/{load}.json",
    log:
        "logs/combine_replicates/{engine}/{model}/{load}.log",
    params:
        level=CFG.comparison.level,
    conda:
        "../envs/tokenbench.yaml"
    script:
        "../scripts/combine_replicates.py"


rule compare_configurations:
    """Configurations against each other at each load level: difference and ratio with bootstrap
    intervals, Welch t and Mann-Whitney U, Cohen's d and Cliff's delta, Holm across the family.
    """
    input:
        metrics=run_paths("metrics", "metrics.json"),
        requests=run_paths("runs", "requests.parquet"),
        code=imports_of("compare_configurations"),
    output:
        "data/analysis/comparisons.json",
    log:
        "logs/compare_configurations.log",
    params:
        compared=COMPARED,
        comparison=CFG.comparison.model_dump(),
        slo=CFG.slo.model_dump(),
    conda:
        "../envs/tokenbench.yaml"
    script:
        "../scripts/compare_configurations.py"


rule evaluate_hypotheses:
    """Each configured hypothesis from the data: confirmed, rejected or not resolvable."""
    input:
        comparisons="data/analysis/comparisons.json",
        code=imports_of("evaluate_hypotheses"),
    output:
        "data/analysis/hypotheses.json",
    log:
        "logs/evaluate_hypotheses.log",
    params:
        hypotheses=hypotheses_of(),
    conda:
        "../envs/tokenbench.yaml"
    script:
        "../scripts/evaluate_hypotheses.py"


rule fit_saturation:
    """Saturation models fitted over the users sweep (every valid replicate point), compared by AICc."""
    input:
        metrics=get_sweep_metrics,
        code=imports_of("fit_saturation"),
    output:
        "data/analysis/saturation/{engine}/{model}.json",
    log:
        "logs/fit_saturation/{engine}/{model}.log",
    params:
        loads=[l for l in sweep_loads() for r in REPS],
        phases=[
            (CFG.sweep.phase or sweep_phase(CFG.loads[l]).name)
            for l in sweep_loads()
            for r in REPS
        ],
    conda:
        "../envs/tokenbench.yaml"
    script:
        "../scripts/fit_saturation.py"
