rule resolve_model:
    """Model download stage: resolve a model (package file, local path or pinned hub snapshot),
    hash its files and read the architecture figures MFU needs."""
    input:
        code=imports_of("resolve_model"),
    output:
        "data/models/{model}/manifest.json",
    log:
        "logs/resolve_model/{model}.log",
    params:
        spec=lambda wc: CFG.models[wc.model].model_dump(mode="json"),
    conda:
        "../envs/tokenbench.yaml"
    script:
        "../scripts/resolve_model.py"
