rule run_load_test:
    """One cell: launch the server, sample telemetry, run the load's phases, tear down."""
    input:
        model=get_model_manifest,
        engine="data/engines/{engine}/probe.json",
        load_files=get_load_files,
        code=imports_of("run_load_test"),
    output:
        requests="data/runs/{engine}/{model}/{load}/{rep}/requests.parquet",
        telemetry="data/runs/{engine}/{model}/{load}/{rep}/telemetry.parquet",
        engine_metrics="data/runs/{engine}/{model}/{load}/{rep}/engine_metrics.parquet",
        run="data/runs/{engine}/{model}/{load}/{rep}/run.json",
    log:
        job="logs/run_load_test/{engine}/{model}/{load}/{rep}.log",
        server="logs/run_load_test/{engine}/{model}/{load}/{rep}.server.log",
        journal="logs/run_load_test/{engine}/{model}/{load}/{rep}.requests.arrows",
    params:
        settings=get_settings,
    resources:
        load_test=1,  # one load test at a time on a host: they would measure each other
    conda:
        get_engine_conda_env
    container:
        get_engine_container
    script:
        "../scripts/run_load_test.py"
