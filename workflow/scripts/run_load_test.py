"""Snakemake wrapper for rule run_load_test."""
from tokenbench.config import CellSettings
from tokenbench.joblog import to_log
from tokenbench.load.run import run_load_test

log = to_log(snakemake.log.job)
doc = run_load_test(
    settings=CellSettings.model_validate(snakemake.params.settings),  # params carry its JSON dump
    model_manifest=snakemake.input.model,
    engine_probe=snakemake.input.engine,
    out_requests=snakemake.output.requests,
    out_telemetry=snakemake.output.telemetry,
    out_run=snakemake.output.run,
    out_engine_metrics=snakemake.output.engine_metrics,
    server_log=snakemake.log.server,
    journal=snakemake.log.journal,
)
log.info("load test done: %s", doc["client"])
