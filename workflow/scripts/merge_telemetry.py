"""Snakemake wrapper for rule merge_telemetry."""
from tokenbench import records
from tokenbench.joblog import to_log
from tokenbench.telemetry.merge import merge_telemetry

log = to_log(snakemake.log[0])
run = records.read_json(snakemake.input.run)
tl = merge_telemetry(records.read_table(snakemake.input.requests), records.read_table(snakemake.input.telemetry), run)
records.write_table(tl, snakemake.output[0], "timeline", run["provenance"], {"cell": run["cell"]})
log.info("timeline: %d samples", len(tl))
