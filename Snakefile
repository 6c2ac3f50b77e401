# tokenbench: which engine serves this model best on this hardware, by how much, at what cost,
# and how sure are we?  Run `snakemake --cores 1` (or `make run`).
#
# Data path scheme (all relative to the working directory):
#   data/models/{model}/manifest.json                 resolve_model: files, sha256, MFU figures
#   data/models/{model}/{format}/manifest.json        convert_model: the weights in another format
#                                                     (weights/ beside it), for engines that need it
#   data/engines/{engine}/probe.json                  probe_engine: binary, version, sha256
#   ({rep} = r1, r2, ...: a cell's replicate runs, each on a fresh server launch)
#   data/runs/{engine}/{model}/{load}/{rep}/requests.parquet   run_load_test: one row per request sent
#   data/runs/{engine}/{model}/{load}/{rep}/telemetry.parquet  run_load_test: raw telemetry samples
#   data/runs/{engine}/{model}/{load}/{rep}/engine_metrics.parquet  run_load_test: engine /metrics
#   data/runs/{engine}/{model}/{load}/{rep}/run.json    run_load_test: phases, command, provenance
#   data/merged/{engine}/{model}/{load}/{rep}/timeline.parquet   merge_telemetry
#   data/metrics/{engine}/{model}/{load}/{rep}/metrics.json (+ windows.parquet)   compute_metrics:
#                                                     per phase, figures with within-run intervals
#   data/analysis/summary.parquet                     summarize_metrics: one row per run x phase
#   data/analysis/cells/{engine}/{model}/{load}.json  combine_replicates: across-run intervals
#   data/analysis/comparisons.json                    compare_configurations: tests, effect sizes
#   data/analysis/hypotheses.json                     evaluate_hypotheses: confirmed / rejected / ...
#   data/analysis/saturation/{engine}/{model}.json    fit_saturation (users sweep, model choice)
#   data/analysis/archive_entry.json                  archive_results: this run's entry, also copied
#   data/history/{run_id}.json                        into the results archive (kept by make clean)
#   data/analysis/frontiers.json                      trace_frontiers (users sweep): frontiers, iso table
#   data/charts/**/*.vl.json (+ .csv, .json)          plot_*: Vega-Lite specs and their data
#   site/docs/*.md, site/docs/runs/*.md, site/docs/data/   render_pages: pages from templates, and
#                                                     every table's and chart's data, raw requests
#   site/mkdocs.yml                                   render_pages
#   site/public/index.html                            build_site: the report
#   logs/{rule}/...                                   one log per job; server logs and request
#                                                     journals live here and survive failures
import os
import sys

from snakemake.logging import logger
from snakemake.utils import min_version

min_version("9.0")  # as pyproject.toml: snakemake>=9,<10

SCRIPTS = os.path.join(workflow.basedir, "workflow", "scripts")
# The package is importable from this checkout without installing it: here, and in every script
# job (Snakemake puts a script's own directory, workflow/scripts, on its sys.path).
sys.path.insert(0, SCRIPTS)

from tokenbench.joblog import forward_stop_signals
from tokenbench.config import (
    ConfigError,
    check_references,
    config_warnings,
    read_config_file,
    validate,
    cells as config_cells,
    compared_pairs,
    pairs as config_pairs,
    reps as config_reps,
    runs as config_runs,
)

# The default config, unless --configfile names others: those *replace* it rather than being
# merged into it (a merged config would silently keep the default's loads and models).
# (Snakemake reads a --configfile itself, before this file: a YAML error there gets its generic
# message; `tokenbench validate FILE` names the file, line and column.)
if not workflow.overwrite_configfiles:
    try:
        # a YAML error named with its file and line
        read_config_file("config/config.yaml")
    except ConfigError as exc:
        raise WorkflowError(str(exc))

    configfile: "config/config.yaml"


CONFIG_FILES = ", ".join(map(str, workflow.overwrite_configfiles))
CONFIG_SOURCE = CONFIG_FILES or "config/config.yaml"
try:
    CFG = validate(config, CONFIG_SOURCE)
    # local model paths, prompt and trace files, api_key_env: where the run is planned (also
    # snakemake -n), not in a job, nor again in each job's own Snakemake (a cluster node)
    if workflow.is_main_process:
        check_references(CFG)
except ConfigError as exc:
    raise WorkflowError(str(exc))
if workflow.is_main_process:
    for _warning in config_warnings(CFG):
        logger.warning(f"config warning: {_warning}")

ENGINES = list(CFG.engines)
MODELS = list(CFG.models)
LOADS = list(CFG.loads)
CELLS = config_cells(CFG)  # (engine, model, load)
REPS = config_reps(CFG)  # r1 .. r<replicates>: each a fresh server launch
RUNS = config_runs(CFG)  # (engine, model, load, rep)
COMPARED = compared_pairs(CFG)  # (model, a, b): configurations compared at each load
PAIRS = config_pairs(CFG)  # (engine, model) pairs: an engine may serve only some models

# No secret is asked for here: a dry-run or a plan never needs one. The Hugging Face token (HF_TOKEN,
# or the login `hf auth login` stored) is looked up only by the jobs that download from the hub
# (tokenbench.hub), and a refused download says there how to provide it.


wildcard_constraints:
    engine="[^/.]+",
    model="[^/.]+",
    load="[^/.]+",
    rep="r[0-9]+",
    format="gguf|hf|mlc",


include: "workflow/rules/common.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/engines.smk"
include: "workflow/rules/load.smk"
include: "workflow/rules/telemetry.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/charts.smk"
include: "workflow/rules/history.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        "site/public/index.html",


onstart:
    # SIGTERM/SIGINT to Snakemake alone: Snakemake waits for running jobs; a load test is told to stop
    forward_stop_signals("run_load_test")


onsuccess:
    if os.path.exists("site/public/index.html"):
        print(f"\ntokenbench report: {os.path.abspath('site/public/index.html')}\n")
