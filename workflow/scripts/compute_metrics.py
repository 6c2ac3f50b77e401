"""Snakemake wrapper for rule compute_metrics."""
from tokenbench import records
from tokenbench.config import HardwareSpec, SloSpec, ValiditySpec
from tokenbench.joblog import to_log
from tokenbench.analysis.metrics import REQUEST_COLUMNS_USED, compute_metrics

log = to_log(snakemake.log[0])
run = records.read_json(snakemake.input.run)
requests = records.read_table(snakemake.input.requests, columns=REQUEST_COLUMNS_USED, arrow_lists=True)
doc, windows = compute_metrics(requests, records.read_table(snakemake.input.timeline),
                               run, records.read_json(snakemake.input.model),
                               HardwareSpec.model_validate(snakemake.params.hardware),
                               SloSpec.model_validate(snakemake.params.slo),
                               ValiditySpec.model_validate(snakemake.params.validity),
                               level=snakemake.params.level, resamples=snakemake.params.resamples,
                               engine_metrics=records.read_table(snakemake.input.engine_metrics))
records.write_json(doc, snakemake.output.metrics, "metrics", run["provenance"])
records.write_table(windows, snakemake.output.windows, "windows", run["provenance"], {"cell": run["cell"]})
log.info("metrics for %s: %d phases", run["cell"], len(doc["phases"]))
