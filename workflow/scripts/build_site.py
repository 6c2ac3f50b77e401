"""Snakemake wrapper for rule build_site."""
from tokenbench.joblog import to_log
from tokenbench.report.site import build_site

to_log(snakemake.log[0])
index = build_site(snakemake.input.mkdocs, snakemake.log[0] + ".mkdocs")
print(f"site built: {index.resolve()}")
