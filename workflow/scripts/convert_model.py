"""Snakemake wrapper for rule convert_model."""
from pathlib import Path

from tokenbench import provenance, records
from tokenbench.config import EngineSpec
from tokenbench.joblog import to_log
from tokenbench.model_formats import convert_model, converter_python

log = to_log(snakemake.log[0])
engine = EngineSpec.model_validate(snakemake.params.engine)
source = records.read_json(snakemake.input.manifest)
out = Path(snakemake.output[0])
python = converter_python(engine.binary)
log.info("converting %s (%s) to %s with %s", source["path"], source.get("format"), snakemake.wildcards.format, python)
manifest = convert_model(source, snakemake.wildcards.format, out.parent.resolve() / "weights", python, engine.dtype)
log.info("%s: %s, %d bytes, sha256 %s (%s)", snakemake.wildcards.model, manifest["path"], manifest["bytes"],
         manifest["sha256"], manifest["precision_note"])
records.write_json(manifest, out, "model_manifest", provenance.block())
