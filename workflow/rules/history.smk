def rerun_command():
    """The command that reruns this workflow from the checkout: the config files it was given
    (paths inside the checkout relative to it). The entry's config hash pins the exact config."""
    files = [
        (
            os.path.relpath(f, workflow.basedir)
            if os.path.abspath(f).startswith(os.path.abspath(workflow.basedir) + os.sep)
            else os.path.abspath(f)
        )
        for f in workflow.overwrite_configfiles
    ]
    return " ".join(["snakemake", "--cores", "1"] + [f"--configfile {f}" for f in files])


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
    conda:
        "../envs/tokenbench.yaml"
    params:
        config_hash=canonical_hash(CFG.model_dump()),
        command=rerun_command(),
        folder="data/history",
    script:
        "../scripts/archive_results.py"
