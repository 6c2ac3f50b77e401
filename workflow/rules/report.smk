rule render_pages:
    """Markdown pages generated from the results (no number typed by hand) and the mkdocs config."""
    input:
        unpack(lambda wc: chart_inputs()),
        metrics=run_paths("metrics", "metrics.json"),
        runs=run_paths("runs", "run.json"),
        cells=cell_results(),
        comparisons="data/analysis/comparisons.json",
        hypotheses="data/analysis/hypotheses.json",
        fits=(
            [f"data/analysis/saturation/{e}/{m}.json" for e, m in PAIRS]
            if CFG.sweep
            else []
        ),
        code=imports_of("render_pages"),
    output:
        pages=expand(
            "site/docs/{page}.md", page=["index", "runs", "methodology", "provenance"]
        ),
        mkdocs="site/mkdocs.yml",
        assets=["site/docs/assets/charts.js", "site/docs/assets/tokenbench.css"],
    log:
        "logs/render_pages.log",
    conda:
        "../envs/tokenbench.yaml"
    params:
        study=CFG.study.model_dump(mode="json"),
        config_hash=canonical_hash(CFG.model_dump()),
        charts=list(chart_inputs()),
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
