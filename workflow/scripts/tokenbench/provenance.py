"""Provenance: what produced a result, precisely enough to reproduce or distrust it."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import time
from importlib.metadata import PackageNotFoundError, requires, version
from pathlib import Path
from typing import Any

from tokenbench import SCHEMA_VERSION, __version__

PYPROJECT = Path(__file__).resolve().parents[3] / "pyproject.toml"  # in a checkout

SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "OPENAI_API_KEY", "API_KEY")
_EXTRA_SECRETS: set[str] = set()  # env var names a config declared as holding secrets (api_key_env)
_SECRET_VALUES: dict[str, str] = {}  # secret -> its label: secrets that came from no env var


def register_secret(var: str, value: str | None = None) -> None:
    """Treat the env var ``var`` as a secret: scrub() replaces its value from now on."""
    _EXTRA_SECRETS.add(var)


def register_secret_value(label: str, value: str) -> None:
    """Treat ``value`` itself as a secret (one read from a file, not the environment, such as the
    token `hf auth login` stored): scrub() replaces it with ``<label>`` from now on."""
    if value and len(value) >= 4:
        _SECRET_VALUES[value] = label


def stored_hf_token() -> str | None:
    """The token `hf auth login` stored (huggingface_hub's token file: HF_TOKEN_PATH, else
    $HF_HOME/token), or None. Read by scrub() so that it is scrubbed even in a process that never
    asked for it."""
    try:
        from huggingface_hub import constants

        text = Path(constants.HF_TOKEN_PATH).read_text().strip()
    except (ImportError, OSError, AttributeError):
        return None
    return text or None


def git_sha(repo: str | Path | None = None) -> str | None:
    repo = Path(repo or Path(__file__).resolve().parent)
    try:
        sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    if not sha:
        return None
    return sha + ("-dirty" if dirty else "")


def runtime_dependencies() -> list[str]:
    """Names of tokenbench's runtime dependencies, from its one list (pyproject.toml): the installed
    distribution's metadata, or the checkout's pyproject.toml where the package runs uninstalled
    (a per-engine conda env imports it from workflow/scripts)."""
    from packaging.requirements import Requirement

    try:
        reqs = [r for r in (requires("tokenbench") or []) if "extra ==" not in r]
    except PackageNotFoundError:
        import tomllib

        reqs = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    return [Requirement(r).name for r in reqs]


def package_versions(names: list[str] | None = None) -> dict[str, str | None]:
    out = {}
    for n in names if names is not None else runtime_dependencies():
        try:
            out[n] = version(n)
        except PackageNotFoundError:
            out[n] = None
    return out


def host() -> dict[str, Any]:
    from tokenbench.telemetry.hardware import cpu_info
    from tokenbench.telemetry.sampler import nvml_devices

    cpu = cpu_info()
    return {
        "hostname_hash": _short_hash(platform.node()),  # no raw hostnames in published data
        "os": platform.platform(),
        "cpu": cpu["name"],
        "cpu_cores": cpu["cores"],  # physical cores among the CPUs this process may use
        "logical_cpus": cpu.get("logical_cpus"),  # those CPUs: what host CPU utilisation is a share of
        "gpus": [g["name"] for g in nvml_devices()],
    }


def _short_hash(s: str) -> str:
    import hashlib

    return hashlib.sha256(s.encode()).hexdigest()[:12]


def block(config_hash: str | None = None, **extra: Any) -> dict[str, Any]:
    """The provenance block every results file carries."""
    return {
        "tool": "tokenbench",
        "tool_version": __version__,
        "git_sha": git_sha(),
        "schema_version": SCHEMA_VERSION,
        "config_hash": config_hash,
        "created_unix_ns": time.time_ns(),
        "python": platform.python_version(),
        "packages": package_versions(),
        "host": host(),
        **extra,
    }


# the shapes of common credentials, scrubbed whoever's they are: OpenAI-style keys (sk- and 20 or more
# characters: sk-proj-..., sk-ant-...), Hugging Face tokens (hf_ and 30 or more letters and digits; real
# ones have 34), and whatever follows "Bearer " (a server echoing the Authorization header). Long
# enough not to take a model called sk-llama-7b or a path hf_cache for a secret.
TOKEN_SHAPES = re.compile(r"\b(?:sk-[A-Za-z0-9_\-]{20,}|hf_[A-Za-z0-9]{30,})|(?<=Bearer )[^\s\"',;<>]{4,}")


def scrub_shapes(text: str, secrets: tuple[str, ...] = ()) -> str:
    """``secrets`` (known values, e.g. the API key a client sends) and every credential-shaped
    string (TOKEN_SHAPES) replaced by ``<secret>``: cheap enough for every error a client records."""
    for v in secrets:
        if v and len(v) >= 4:
            text = text.replace(v, "<secret>")
    return TOKEN_SHAPES.sub("<secret>", text)


def scrub(text: str, env: dict[str, str] | None = None) -> str:
    """Replace secrets in text before it is stored: the values of secret environment variables, of
    secrets registered by value, the Hugging Face token `hf auth login` stored, and strings shaped
    like credentials (TOKEN_SHAPES)."""
    text = _scrub_known(text, env)
    return TOKEN_SHAPES.sub("<secret>", text)


def _scrub_known(text: str, env: dict[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    for k in (*SECRET_ENV, *sorted(_EXTRA_SECRETS)):
        v = env.get(k)
        if v and len(v) >= 4:
            text = text.replace(v, f"<{k}>")
    stored = stored_hf_token()
    values = {**_SECRET_VALUES, **({stored: "HF token"} if stored and len(stored) >= 4 else {})}
    for v in sorted(values, key=len, reverse=True):  # longest first: a secret inside another stays whole
        text = text.replace(v, f"<{values[v]}>")
    return text
