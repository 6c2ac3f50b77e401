"""Snakemake wrapper for rule archive_results."""
from tokenbench.joblog import to_log
from tokenbench.report.history import archive_results

to_log(snakemake.log[0])
archive_results(
    cell_paths=list(snakemake.input.cells),
    run_paths=list(snakemake.input.runs),
    config_hash=snakemake.params.config_hash,
    command=snakemake.params.command,
    entry_path=snakemake.output[0],
    folder=snakemake.params.folder,
)
