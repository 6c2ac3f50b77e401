"""Snakemake wrapper for rule summarize_metrics."""
from tokenbench import provenance, records
from tokenbench.joblog import to_log
from tokenbench.analysis.metrics import summarize_metrics

log = to_log(snakemake.log[0])
docs = [records.read_json(p) for p in snakemake.input.metrics]
df = summarize_metrics(docs)
records.write_table(df, snakemake.output[0], "summary", provenance.block(),
                    {"inputs": [d["provenance"]["config_hash"] for d in docs]})
log.info("summary: %d rows", len(df))
