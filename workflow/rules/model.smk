rule resolve_model:
    """Model download stage: resolve a model (package file, local path or pinned hub snapshot),
    hash its files and read the architecture figures MFU needs."""
    output:
        "data/models/{model}/manifest.json",
    input:
        code=pkg("models.py", "records.py", "provenance.py"),
    params:
        spec=lambda wc: CFG.models[wc.model].model_dump(),
    log:
        "logs/resolve_model/{model}.log",
    conda:
        "../envs/tokenbench.yaml"
    script:
        "../scripts/resolve_model.py"
