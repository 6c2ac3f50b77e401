"""Snakemake wrapper for rule combine_replicates."""
from tokenbench import provenance, records
from tokenbench.analysis.replicates import combine_replicates
from tokenbench.joblog import to_log

log = to_log(snakemake.log[0])
docs = [records.read_json(p) for p in snakemake.input.metrics]
doc = combine_replicates(docs, level=snakemake.params.level)
records.write_json(doc, snakemake.output[0], "cell", provenance.block())
log.info("%s: %d replicate(s)", doc["cell"], len(docs))
