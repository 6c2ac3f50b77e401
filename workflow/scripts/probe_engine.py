"""Snakemake wrapper for rule probe_engine."""
from tokenbench import provenance, records
from tokenbench.engines.catalog import probe
from tokenbench.joblog import to_log

log = to_log(snakemake.log[0])
info = probe(snakemake.params.kind, snakemake.params.binary)
log.info("engine %s: %s version %s", snakemake.wildcards.engine, info["binary"], info["version"])
records.write_json(info, snakemake.output[0], "engine_probe", provenance.block())
