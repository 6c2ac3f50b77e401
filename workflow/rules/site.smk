rule render_pages:
    """Markdown pages generated from the results (no number typed by hand) and the mkdocs config."""
    output:
        pages=expand("site/docs/{page}.md", page=["index", "runs", "methodology", "provenance"]),
        mkdocs="site/mkdocs.yml",
        assets=["site/docs/assets/charts.js", "site/docs/assets/tokenbench.css"],
    input:
        unpack(lambda wc: chart_inputs()),
        metrics=cell_paths("metrics", "metrics.json"),
        runs=cell_paths("runs", "run.json"),
        fits=[f"data/analysis/saturation/{e}/{m}.json" for e, m in PAIRS] if CFG.sweep else [],
        code=pkg("pages.py", "metrics.py", "records.py"),
    params:
        study=CFG.study.model_dump(),
        config_hash=canonical_hash(CFG.model_dump()),
        charts=list(chart_inputs()),
    log:
        "logs/render_pages.log",
    conda:
        "../envs/tokenbench.yaml"
    script:
        "../scripts/render_pages.py"


rule bundle_vega:
    """vega + vega-lite + vega-embed as one local script, so the site needs no CDN."""
    output:
        "site/docs/assets/vega-bundle.js",
    input:
        code=pkg("pages.py"),
    log:
        "logs/bundle_vega.log",
    conda:
        "../envs/tokenbench.yaml"
    script:
        "../scripts/bundle_vega.py"


rule build_site:
    """The static report site (mkdocs-material)."""
    output:
        "site/public/index.html",
    input:
        pages=rules.render_pages.output.pages,
        mkdocs="site/mkdocs.yml",
        bundle="site/docs/assets/vega-bundle.js",
        code=pkg("site.py"),
    log:
        "logs/build_site.log",
    conda:
        "../envs/tokenbench.yaml"
    script:
        "../scripts/build_site.py"
