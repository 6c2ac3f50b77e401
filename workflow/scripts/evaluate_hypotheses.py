"""Snakemake wrapper for rule evaluate_hypotheses."""
from tokenbench import provenance, records
from tokenbench.analysis.compare import evaluate_hypotheses
from tokenbench.config import HypothesisSpec
from tokenbench.joblog import to_log

log = to_log(snakemake.log[0])
hypotheses = [{**HypothesisSpec.model_validate(h).model_dump(mode="json"), "phase": h["phase"]}
              for h in snakemake.params.hypotheses]  # re-validated; the phase is resolved by the workflow
result = evaluate_hypotheses(hypotheses, records.read_json(snakemake.input.comparisons))
records.write_json({"hypotheses": result}, snakemake.output[0], "hypotheses", provenance.block())
for h in result:
    log.info("%s: %s (%s)", h["name"], h["status"], h["reason"])
