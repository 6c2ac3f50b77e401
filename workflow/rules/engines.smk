rule probe_engine:
    """Find the engine binary and record its version and digest for provenance."""
    input:
        code=imports_of("probe_engine"),
    output:
        "data/engines/{engine}/probe.json",
    log:
        "logs/probe_engine/{engine}.log",
    params:
        kind=lambda wc: CFG.engines[wc.engine].kind,
        binary=lambda wc: CFG.engines[wc.engine].binary,
    conda:
        get_engine_conda_env
    container:
        get_engine_container
    script:
        "../scripts/probe_engine.py"
