"""pyproject.toml is the one list of tokenbench's runtime dependencies: every conda env file
(environment.yml and workflow/envs/*.yaml, which `--sdm conda` jobs run in) carries each of them
with the same version bounds, so a job under conda runs the same client (orjson, uvloop) as a
pip install. Each engine env also carries its engine."""
import tomllib
import typing
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.snakemake_util import ROOT

ENV_FILES = sorted((ROOT / "workflow" / "envs").glob("*.yaml")) + [ROOT / "environment.yml"]


def runtime_requirements() -> dict[str, Requirement]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {canonicalize_name(r.name): r for r in map(Requirement, deps)}


def env_requirements(path: Path) -> dict[str, Requirement]:
    """Conda and pip entries of an env file as requirements (conda's `name>=1` reads the same)."""
    out = {}
    for dep in yaml.safe_load(path.read_text())["dependencies"]:
        for spec in dep["pip"] if isinstance(dep, dict) else [dep]:
            if spec.startswith("-"):  # pip options such as `-e .`
                continue
            r = Requirement(spec.replace(" ", ""))
            out[canonicalize_name(r.name)] = r
    return out


def test_env_files_are_found():
    names = {p.name for p in ENV_FILES}
    assert {"environment.yml", "tokenbench.yaml", "vllm.yaml", "sglang.yaml"} <= names and len(names) >= 9


@pytest.mark.parametrize("path", ENV_FILES, ids=lambda p: p.name)
def test_env_file_carries_every_runtime_dependency_with_its_bounds(path):
    have = env_requirements(path)
    wrong = []
    for name, req in runtime_requirements().items():
        if name not in have:
            wrong.append(f"{req.name} missing")
        elif have[name].specifier != req.specifier:
            wrong.append(f"{req.name}: {have[name].specifier} here, {req.specifier} in pyproject.toml")
    assert not wrong, f"{path.name}: " + "; ".join(wrong)


def test_test_only_dependencies_stay_out_of_the_runtime_list():
    runtime = runtime_requirements()
    assert "aiohttp" not in runtime and "pytest" not in runtime


ENGINE_PACKAGE = {  # engine kind -> the distribution its env installs (None: the engine comes from elsewhere)
    "vllm": "vllm", "sglang": "sglang", "lmdeploy": "lmdeploy", "trtllm": "tensorrt-llm",
    "mlc-llm": "mlc-llm-nightly-cu123", "bentoml-vllm": "bentoml", "transformers": "transformers",
    "llama.cpp": None,  # built from source by `make setup` (python -m tokenbench.engines.build)
    "external": None,  # someone else's server
    "tgi": None,  # not pip-installable: engines.<name>.container names its image
}


def test_every_engine_kind_has_an_env_with_its_engine():
    from tokenbench.config import EngineKind, engine_env_file

    kinds = typing.get_args(EngineKind)
    assert set(kinds) == set(ENGINE_PACKAGE), "a new engine kind needs its env file and an entry here"
    for kind in kinds:
        path = ROOT / engine_env_file(kind)
        have = env_requirements(path)
        package = ENGINE_PACKAGE[kind]
        if package is not None:
            assert canonicalize_name(package) in have, f"{path.name} does not install {package}"
        elif kind == "tgi":
            assert "container" in path.read_text() and set(have) <= set(runtime_requirements()) | {"python", "pip"}
        else:
            assert path.name == "tokenbench.yaml", kind
    assert "engine_conda_env" in (ROOT / "workflow" / "rules" / "load.smk").read_text()
