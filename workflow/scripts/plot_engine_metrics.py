"""Snakemake wrapper for rule plot_engine_metrics."""
from tokenbench import records
from tokenbench.report.charts import plot_engine_metrics, save
from tokenbench.joblog import to_log

to_log(snakemake.log[0])
run = records.read_json(snakemake.input.run)
c = run["cell"]
chart, data = plot_engine_metrics(records.read_table(snakemake.input.engine_metrics), run["phases"],
                                  f"{c['engine']} · {c['model']} · {c['load']} · {c['rep']}: the engine's own "
                                  "/metrics (measured; counters as rates)")
save(chart, data, snakemake.output.spec)
