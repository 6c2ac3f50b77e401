"""Snakemake wrapper for rule plot_throughput."""
from tokenbench import records
from tokenbench.report.charts import plot_throughput, save
from tokenbench.joblog import to_log

to_log(snakemake.log[0])
summary = records.read_table(snakemake.input.summary)
sweep = summary[summary["load"].isin(snakemake.params.loads) & ~summary["warmup"] & (summary["mode"] == "closed")]
save(plot_throughput(sweep, [records.read_json(p) for p in snakemake.input.fits]), snakemake.output[0])
