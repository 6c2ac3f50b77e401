rule merge_telemetry:
    """Telemetry onto the request timeline: rates from counters, phase per sample, in-flight
    requests and output tokens/s at each sample."""
    input:
        requests="data/runs/{engine}/{model}/{load}/requests.parquet",
        telemetry="data/runs/{engine}/{model}/{load}/telemetry.parquet",
        run="data/runs/{engine}/{model}/{load}/run.json",
        code=imports_of("merge_telemetry"),
    output:
        "data/merged/{engine}/{model}/{load}/timeline.parquet",
    log:
        "logs/merge_telemetry/{engine}/{model}/{load}.log",
    conda:
        "../envs/tokenbench.yaml"
    threads: 2  # NumPy work split over two threads (tokenbench.joblog.threads)
    script:
        "../scripts/merge_telemetry.py"
