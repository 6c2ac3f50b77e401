"""Snakemake wrapper for rule bundle_vega."""
from tokenbench.joblog import to_log
from tokenbench.report.site import write_vega_bundle

to_log(snakemake.log[0])
write_vega_bundle(snakemake.output[0])
