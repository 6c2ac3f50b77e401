"""Snakemake wrapper for rule compare_configurations."""
from functools import partial

from tokenbench import provenance, records
from tokenbench.analysis.compare import compare_configurations
from tokenbench.config import ComparisonSpec, SloSpec
from tokenbench.joblog import to_log

log = to_log(snakemake.log[0])
runs = {}
for metrics_path, requests_path in zip(snakemake.input.metrics, snakemake.input.requests):
    doc = records.read_json(metrics_path)
    c = doc["cell"]
    runs[(c["engine"], c["model"], c["load"], c["rep"])] = (doc, partial(records.read_table, requests_path))
result = compare_configurations(runs, [tuple(p) for p in snakemake.params.compared],
                                ComparisonSpec.model_validate(snakemake.params.comparison),
                                SloSpec.model_validate(snakemake.params.slo))
records.write_json(result, snakemake.output[0], "comparisons", provenance.block())
log.info("%d comparisons, %d with a winner", len(result["comparisons"]),
         sum(1 for c in result["comparisons"] if c.get("winner")))
