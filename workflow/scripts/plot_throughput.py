"""Snakemake wrapper for rule plot_throughput."""
from tokenbench import records
from tokenbench.report.charts import plot_throughput, save
from tokenbench.joblog import to_log

to_log(snakemake.log[0])
chart, data = plot_throughput(records.read_json(snakemake.input.frontiers),
                              [records.read_json(p) for p in snakemake.input.fits])
save(chart, data, snakemake.output.spec)
