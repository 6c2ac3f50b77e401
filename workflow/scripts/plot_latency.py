"""Snakemake wrapper for rule plot_latency."""
from tokenbench import records
from tokenbench.report.charts import plot_latency, save
from tokenbench.joblog import to_log

to_log(snakemake.log[0])
summary = records.read_table(snakemake.input.summary)
sweep = summary[summary["load"].isin(snakemake.params.loads) & ~summary["warmup"] & (summary["mode"] == "closed")]
chart, data = plot_latency(sweep)
save(chart, data, snakemake.output.spec)
