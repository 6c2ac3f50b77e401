"""Snakemake wrapper for rule render_pages."""
from pathlib import Path

from tokenbench.config import StudySpec
from tokenbench.joblog import to_log
from tokenbench.report.pages import render_pages

to_log(snakemake.log[0])
render_pages(
    study=StudySpec.model_validate(snakemake.params.study),
    config_hash=snakemake.params.config_hash,
    metric_paths=list(snakemake.input.metrics),
    run_paths=list(snakemake.input.runs),
    fit_paths=list(snakemake.input.fits),
    cell_paths=list(snakemake.input.cells),
    comparisons_path=snakemake.input.comparisons,
    hypotheses_path=snakemake.input.hypotheses,
    chart_paths={name: snakemake.input[name] for name in snakemake.params.charts},
    request_paths=dict(zip(snakemake.params.runs, snakemake.input.requests)),
    rerun=snakemake.params.rerun,
    frontiers_path=snakemake.input.frontiers[0] if snakemake.input.frontiers else None,
    archive_path=snakemake.input.archive,
    history_dir=snakemake.params.history,
    out_dir=str(Path(snakemake.output.mkdocs).parent),
)
