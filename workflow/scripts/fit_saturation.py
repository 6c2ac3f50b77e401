"""Snakemake wrapper for rule fit_saturation."""
from tokenbench import provenance, records
from tokenbench.analysis.fit import fit_saturation
from tokenbench.joblog import to_log

log = to_log(snakemake.log[0])
users, tput = [], []
for path, phase in zip(snakemake.input.metrics, snakemake.params.phases):
    ph = next(p for p in records.read_json(path)["phases"] if p["phase"] == phase)
    users.append(ph["target"]["users"])
    tput.append(ph["output_tok_s"])
fit = fit_saturation(users, tput)
w = snakemake.wildcards
records.write_json({"engine": w.engine, "model": w.model, "loads": snakemake.params.loads, "fit": fit},
                   snakemake.output[0], "saturation_fit", provenance.block())
log.info("fit %s/%s: %s", w.engine, w.model, {k: fit[k] for k in ("vmax", "k", "dof", "r2")})
