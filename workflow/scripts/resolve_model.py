"""Snakemake wrapper for rule resolve_model."""
from tokenbench import provenance, records
from tokenbench.joblog import to_log
from tokenbench.models import ModelSpec, resolve_model

log = to_log(snakemake.log[0])
manifest = resolve_model(snakemake.wildcards.model, ModelSpec.model_validate(snakemake.params.spec))
log.info("model %s -> %s (%d bytes, sha256 %s)", manifest["name"], manifest["path"], manifest["bytes"], manifest["sha256"])
records.write_json(manifest, snakemake.output[0], "model_manifest", provenance.block())
