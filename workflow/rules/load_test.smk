rule run_load_test:
    """One cell: launch the server, sample telemetry, run the load's phases, tear down."""
    output:
        requests="data/runs/{engine}/{model}/{load}/requests.parquet",
        telemetry="data/runs/{engine}/{model}/{load}/telemetry.parquet",
        engine_metrics="data/runs/{engine}/{model}/{load}/engine_metrics.parquet",
        run="data/runs/{engine}/{model}/{load}/run.json",
    input:
        model="data/models/{model}/manifest.json",
        engine="data/engines/{engine}/probe.json",
        load_files=load_files,
        code=pkg("loadtest.py", "loadgen.py", "server.py", "engines.py", "telemetry.py", "prompts.py",
                 "hardware.py", "records.py", "provenance.py", "config.py", "promscrape.py", "data/prompts.jsonl",
                 "data/hardware.yaml"),
    params:
        settings=settings_of,
    resources:
        load_test=1,  # one load test at a time on a host: they would measure each other
    log:
        job="logs/run_load_test/{engine}/{model}/{load}.log",
        server="logs/run_load_test/{engine}/{model}/{load}.server.log",
        journal="logs/run_load_test/{engine}/{model}/{load}.requests.jsonl",
    conda:
        engine_conda_env
    container:
        engine_container
    script:
        "../scripts/run_load_test.py"
