# Helpers shared by all stages: per-cell config slices (handed to scripts through params) and
# the package files each script imports (Snakemake does not track imports, so inputs list them).
# Rule file <stage>.smk runs workflow/scripts/<rule>.py, which calls tokenbench.<stage>.
from tokenbench.config import (
    cell_settings,
    canonical_hash,
    conversions,
    model_manifest_path,
    engine_env_file,
    hypothesis_phase,
    sweep_phase,
)
from tokenbench.imports import package_files
from tokenbench.report.pages import ASSETS, PAGES

# the report's pages and the assets they load, as the package declares them
SITE_PAGES = [stem for stem, _ in PAGES]
SITE_ASSETS = sorted(p.name for p in ASSETS.iterdir())
# the command that reruns this config from the checkout (the config hash pins the exact config)
RERUN_COMMAND = " ".join(
    ["snakemake", "--cores", "1"]
    + [
        f"--configfile {os.path.relpath(f, workflow.basedir)}"
        for f in workflow.overwrite_configfiles
    ]
)


def imports_of(rule_name):
    """Every tokenbench file the rule's wrapper script imports, directly or not (derived from
    the import graph, never hand-kept): editing one reruns exactly the rules that use it.
    """
    return package_files(os.path.join(SCRIPTS, f"{rule_name}.py"))


def get_settings(wc):
    return cell_settings(CFG, wc.engine, wc.model, wc.load, wc.rep).model_dump(
        mode="json"
    )


def get_load_files(wc):
    """Files a cell's load reads (trace replays, prompt files): inputs, so editing one reruns it.
    Relative paths are relative to the working directory."""
    settings = get_settings(wc)
    files = [p["path"] for p in settings["load"]["phases"] if p["mode"] == "trace"]
    prompts = settings["request"]["prompts"]
    if isinstance(prompts, dict) and "file" in prompts:
        files.append(prompts["file"])
    return files


def run_paths(stage, name):
    """One path per replicate run of every cell."""
    return [f"data/{stage}/{e}/{m}/{l}/{r}/{name}" for e, m, l, r in RUNS]


def get_replicate_paths(stage, name):
    """The paths of one cell's replicate runs (wildcards engine, model, load)."""
    return lambda wc: [
        f"data/{stage}/{wc.engine}/{wc.model}/{wc.load}/{r}/{name}" for r in REPS
    ]


def cell_results():
    """One combined result per cell (its replicates pooled)."""
    return [f"data/analysis/cells/{e}/{m}/{l}.json" for e, m, l in CELLS]


def hypotheses_of():
    """The configured hypotheses with the phase each reads, as plain data."""
    return [
        {**h.model_dump(mode="json"), "phase": hypothesis_phase(CFG, h)}
        for h in CFG.hypotheses
    ]


def get_sweep_metrics(wc):
    """One configuration's metrics at every replicate of every sweep load (fit_saturation)."""
    return [
        f"data/metrics/{wc.engine}/{wc.model}/{l}/{r}/metrics.json"
        for l in sweep_loads()
        for r in REPS
    ]


def get_chart_specs(wc):
    """{chart name: Vega-Lite spec path} of every chart of the config (render_pages embeds them)."""
    return dict(CHART_SPECS)


def get_chart_data(wc):
    """Every chart's data beside its spec, as CSV and JSON (the pages' download links)."""
    return [
        p.removesuffix(".vl.json") + ext
        for p in CHART_SPECS.values()
        for ext in (".csv", ".json")
    ]


def sweep_loads():
    return list(CFG.sweep.loads) if CFG.sweep else []


def get_engine_conda_env(wc):
    """Per-engine software: workflow/envs/<kind>.yaml (tokenbench's dependencies plus the engine),
    used with `--sdm conda`; without it (plain-PATH mode) the engine is whatever is on PATH.
    """
    return os.path.join(workflow.basedir, engine_env_file(CFG.engines[wc.engine].kind))


def get_engine_container(wc):
    """engines.<name>.container, used with `--sdm apptainer` (None: run on the host)."""
    return CFG.engines[wc.engine].container


def get_model_manifest(wc):
    """The manifest of the weights this engine loads: the model's own, or its conversion's."""
    return model_manifest_path(CFG, wc.engine, wc.model)


def get_converting_engine(wc):
    """The engine whose environment converts this model to this format (its spec, as plain data)."""
    return CFG.engines[conversions(CFG)[(wc.model, wc.format)]].model_dump(mode="json")


def get_converting_conda_env(wc):
    kind = CFG.engines[conversions(CFG)[(wc.model, wc.format)]].kind
    return os.path.join(workflow.basedir, engine_env_file(kind))
