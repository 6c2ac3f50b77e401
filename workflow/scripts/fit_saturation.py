"""Snakemake wrapper for rule fit_saturation."""
from tokenbench import provenance, records
from tokenbench.analysis.fit import fit_saturation, invalid_reason
from tokenbench.analysis.scaling import scaling_steps
from tokenbench.joblog import to_log

log = to_log(snakemake.log[0])
users, tput, invalid = [], [], []
for path, load, phase in zip(snakemake.input.metrics, snakemake.params.loads, snakemake.params.phases):
    doc = records.read_json(path)
    ph = next(p for p in doc["phases"] if p["phase"] == phase)
    users.append(ph["target"]["users"])
    tput.append(ph["output_tok_s"])
    invalid.append(invalid_reason(f"{load} {doc['cell']['rep']}", doc, ph))
fit = fit_saturation(users, tput, invalid)
w = snakemake.wildcards
records.write_json({"engine": w.engine, "model": w.model, "loads": sorted(set(snakemake.params.loads)), "fit": fit,
                    "scaling": scaling_steps(users, tput, invalid)},
                   snakemake.output[0], "saturation_fit", provenance.block())
log.info("fit %s/%s: %s", w.engine, w.model, {k: fit[k] for k in ("vmax", "k", "dof", "r2")})
