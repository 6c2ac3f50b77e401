rule merge_telemetry:
    """Telemetry onto the request timeline: rates from counters, phase per sample, in-flight
    requests and output tokens/s at each sample."""
    input:
        requests="data/runs/{engine}/{model}/{load}/{rep}/requests.parquet",
        telemetry="data/runs/{engine}/{model}/{load}/{rep}/telemetry.parquet",
        run="data/runs/{engine}/{model}/{load}/{rep}/run.json",
        code=imports_of("merge_telemetry"),
    output:
        "data/merged/{engine}/{model}/{load}/{rep}/timeline.parquet",
    log:
        "logs/merge_telemetry/{engine}/{model}/{load}/{rep}.log",
    threads: 2  # NumPy work split over two threads (tokenbench.joblog.threads)
    conda:
        "../envs/tokenbench.yaml"
    script:
        "../scripts/merge_telemetry.py"
