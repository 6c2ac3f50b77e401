rule resolve_model:
    input:
        code=imports_of("resolve_model"),
    """Model download stage: resolve a model (package file, local path or pinned hub snapshot),
    hash its files and read the architecture figures MFU needs."""
    output:
        "data/models/{model}/manifest.json",
    log:
        "logs/resolve_model/{model}.log",
    conda:
        "../envs/tokenbench.yaml"
    params:
        spec=lambda wc: CFG.models[wc.model].model_dump(),
    script:
        "../scripts/resolve_model.py"
