"""Snakemake wrapper for rule merge_telemetry."""
from tokenbench import records
from tokenbench.joblog import to_log
from tokenbench.telemetry.merge import REQUEST_COLUMNS_USED, merge_telemetry

log = to_log(snakemake.log[0])
run = records.read_json(snakemake.input.run)
requests = records.read_table(snakemake.input.requests, columns=REQUEST_COLUMNS_USED, arrow_lists=True)
tl = merge_telemetry(requests, records.read_table(snakemake.input.telemetry), run)
records.write_table(tl, snakemake.output[0], "timeline", run["provenance"], {"cell": run["cell"]})
log.info("timeline: %d samples", len(tl))
