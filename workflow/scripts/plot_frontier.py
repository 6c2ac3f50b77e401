"""Snakemake wrapper for rule plot_frontier."""
from tokenbench import records
from tokenbench.report.charts import plot_frontier, plot_iso_table, save, save_table
from tokenbench.joblog import to_log

to_log(snakemake.log[0])
doc = records.read_json(snakemake.input.frontiers)
chart, data = plot_frontier(doc)
save(chart, data, snakemake.output.spec)
save_table(plot_iso_table(doc), snakemake.output.iso_csv)
