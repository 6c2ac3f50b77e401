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


rule convert_model:
    """One model's weights in the format an engine of the study loads (a GGUF file into a Hugging
    Face folder, through transformers' GGUF loader in that engine's environment), made once per
    format, recording the weights it came from and the precision it holds."""
    input:
        manifest="data/models/{model}/manifest.json",
        code=imports_of("convert_model"),
    output:
        "data/models/{model}/{format}/manifest.json",
    log:
        "logs/convert_model/{model}/{format}.log",
    params:
        engine=get_converting_engine,
    conda:
        get_converting_conda_env
    script:
        "../scripts/convert_model.py"
