"""Snakemake wrapper for rule plot_latency_breakdown."""
from tokenbench import records
from tokenbench.report.charts import BREAKDOWN_COLUMNS, plot_latency_breakdown, save
from tokenbench.joblog import to_log

to_log(snakemake.log[0])
run = records.read_json(snakemake.input.run)
c = run["cell"]
requests = records.read_table(snakemake.input.requests, columns=BREAKDOWN_COLUMNS)
chart, data = plot_latency_breakdown(requests, run["phases"],
                                     f"{c['engine']} · {c['model']} · {c['load']} · {c['rep']}: where a request's "
                                     "time goes (measured)")
save(chart, data, snakemake.output.spec)
