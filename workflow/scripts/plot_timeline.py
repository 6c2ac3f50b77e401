"""Snakemake wrapper for rule plot_timeline."""
from tokenbench import records
from tokenbench.report.charts import plot_timeline, save
from tokenbench.joblog import to_log

to_log(snakemake.log[0])
run = records.read_json(snakemake.input.run)
c = run["cell"]
chart, data = plot_timeline(records.read_table(snakemake.input.timeline), run["phases"],
                            f"{c['engine']} · {c['model']} · {c['load']} · {c['rep']}: telemetry (measured)")
save(chart, data, snakemake.output.spec)
