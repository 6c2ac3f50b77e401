"""Snakemake wrapper for rule trace_frontiers."""
from tokenbench import provenance, records
from tokenbench.analysis.frontier import trace_frontiers
from tokenbench.joblog import to_log

log = to_log(snakemake.log[0])
doc = trace_frontiers([records.read_json(p) for p in snakemake.input.cells],
                      [records.read_json(p) for p in snakemake.input.metrics],
                      snakemake.params.phases, baseline=snakemake.params.baseline, level=snakemake.params.level)
records.write_json(doc, snakemake.output[0], "frontiers", provenance.block())
log.info("%d sweep points, %d on an output frontier (median); iso targets %s", len(doc["points"]),
         sum(p["frontier"]["median"]["output"] for p in doc["points"]), doc["targets"])
