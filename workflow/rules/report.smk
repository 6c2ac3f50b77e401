rule render_pages:
    """The report's pages, from Jinja2 templates filled with the results (no number typed by hand),
    each table's and chart's data as CSV and JSON, each run's raw requests, and the mkdocs config.
    """
    input:
        unpack(get_chart_specs),
        chart_data=get_chart_data,
        metrics=run_paths("metrics", "metrics.json"),
        runs=run_paths("runs", "run.json"),
        requests=run_paths("runs", "requests.parquet"),
        cells=cell_results(),
        comparisons="data/analysis/comparisons.json",
        hypotheses="data/analysis/hypotheses.json",
        archive="data/analysis/archive_entry.json",
        frontiers=["data/analysis/frontiers.json"] if CFG.sweep else [],
        fits=(
            [f"data/analysis/saturation/{e}/{m}.json" for e, m in PAIRS]
            if CFG.sweep
            else []
        ),
        code=imports_of("render_pages"),
    output:
        pages=expand("site/docs/{page}.md", page=SITE_PAGES),
        run_pages=expand(
            "site/docs/runs/{e}.{m}.{l}.{r}.md",
            zip,
            e=[r[0] for r in RUNS],
            m=[r[1] for r in RUNS],
            l=[r[2] for r in RUNS],
            r=[r[3] for r in RUNS],
        ),
        mkdocs="site/mkdocs.yml",
        assets=expand("site/docs/assets/{name}", name=SITE_ASSETS),
    log:
        "logs/render_pages.log",
    params:
        study=CFG.study.model_dump(mode="json"),
        config_hash=canonical_hash(CFG.model_dump()),
        charts=list(CHART_SPECS),
        runs=["{}.{}.{}.{}".format(*r) for r in RUNS],
        rerun=RERUN_COMMAND,
        history="data/history",
    conda:
        "../envs/tokenbench.yaml"
    script:
        "../scripts/render_pages.py"


rule bundle_vega:
    """vega + vega-lite + vega-embed as one local script, so the site needs no CDN."""
    input:
        code=imports_of("bundle_vega"),
    output:
        "site/docs/assets/vega-bundle.js",
    log:
        "logs/bundle_vega.log",
    conda:
        "../envs/tokenbench.yaml"
    script:
        "../scripts/bundle_vega.py"


rule build_site:
    """The static report site (mkdocs-material)."""
    input:
        pages=rules.render_pages.output.pages,
        run_pages=rules.render_pages.output.run_pages,
        mkdocs="site/mkdocs.yml",
        bundle="site/docs/assets/vega-bundle.js",
        code=imports_of("build_site"),
    output:
        "site/public/index.html",
    log:
        "logs/build_site.log",
    conda:
        "../envs/tokenbench.yaml"
    script:
        "../scripts/build_site.py"
