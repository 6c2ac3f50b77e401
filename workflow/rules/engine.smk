rule probe_engine:
    """Find the engine binary and record its version and digest for provenance."""
    output:
        "data/engines/{engine}/probe.json",
    input:
        code=pkg("engines.py", "records.py", "provenance.py"),
    params:
        kind=lambda wc: CFG.engines[wc.engine].kind,
        binary=lambda wc: CFG.engines[wc.engine].binary,
    log:
        "logs/probe_engine/{engine}.log",
    conda:
        engine_conda_env
    container:
        engine_container
    script:
        "../scripts/probe_engine.py"
