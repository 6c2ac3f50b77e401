rule archive_results:
    """This run's entry in the results archive: written to data/analysis/archive_entry.json and
    copied into data/history/{run_id}.json (the folder is not an output: Snakemake would empty it,
    and `make clean` keeps it, so runs accumulate)."""
    input:
        cells=cell_results(),
        runs=run_paths("runs", "run.json"),
        code=imports_of("archive_results"),
    output:
        "data/analysis/archive_entry.json",
    log:
        "logs/archive_results.log",
    params:
        config_hash=canonical_hash(CFG.model_dump()),
        command=RERUN_COMMAND,
        folder="data/history",
    conda:
        "../envs/tokenbench.yaml"
    script:
        "../scripts/archive_results.py"
