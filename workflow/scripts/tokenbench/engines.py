"""The engine catalog: how to launch, probe and talk to each inference engine.

Each entry is written against the engine's real CLI. The vertical slice ships llama.cpp's
``llama-server``; later engines add entries of the same shape.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


class EngineError(RuntimeError):
    pass


@dataclass(frozen=True)
class Engine:
    kind: str
    build_command: Callable[[dict[str, Any], str, int], list[str]]
    version_command: Callable[[str], list[str]]
    health_path: str = "/health"
    route_prefix: str = "/v1"
    metrics_path: str | None = None
    capabilities: frozenset = field(default_factory=frozenset)
    log_patterns: tuple[str, ...] = ()


def _llamacpp_command(spec: dict[str, Any], model_path: str, port: int) -> list[str]:
    cmd = [
        spec["binary"],
        "--model", model_path,
        "--alias", spec["served_name"],
        "--host", spec["host"],
        "--port", str(port),
        "--parallel", str(spec["parallel"]),
        # llama-server splits --ctx-size evenly across its slots
        "--ctx-size", str(spec["parallel"] * spec["ctx_per_slot"]),
        "--cont-batching",
        "--metrics",
        "--no-webui",
    ]
    if spec.get("threads"):
        cmd += ["--threads", str(spec["threads"])]
    return cmd + list(spec.get("extra_args") or [])


CATALOG: dict[str, Engine] = {
    "llama.cpp": Engine(
        kind="llama.cpp",
        build_command=_llamacpp_command,
        version_command=lambda binary: [binary, "--version"],
        health_path="/health",  # 503 while loading, 200 {"status":"ok"} when ready
        route_prefix="/v1",
        metrics_path="/metrics",
        capabilities=frozenset({"chat", "completions", "stream_usage", "ignore_eos", "tokenize"}),
        log_patterns=(r"prompt eval time", r"eval time", r"slot .* released", r"error"),
    ),
}


def engine(kind: str) -> Engine:
    try:
        return CATALOG[kind]
    except KeyError:
        raise EngineError(f"unknown engine kind {kind!r}; the catalog has {sorted(CATALOG)}") from None


def resolve_binary(binary: str) -> str:
    """Absolute path of an engine binary: a path as given, else looked up on PATH."""
    if os.sep in binary:
        p = Path(binary).expanduser()
        if p.is_file() and os.access(p, os.X_OK):
            return str(p.resolve())
        raise EngineError(f"engine binary {binary} does not exist or is not executable")
    found = shutil.which(binary)
    if not found:
        raise EngineError(
            f"engine binary '{binary}' is not on PATH; run `make setup` (builds llama-server) "
            f"or set engines.<name>.binary to its full path"
        )
    return found


def probe(kind: str, binary: str) -> dict[str, Any]:
    """Engine version and binary identity, for provenance."""
    eng = engine(kind)
    path = resolve_binary(binary)
    proc = subprocess.run(eng.version_command(path), capture_output=True, text=True, timeout=60)
    text = (proc.stdout + proc.stderr).strip()
    m = re.search(r"version:\s*(\S+)\s*\(([^)]*)\)", text)
    h = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return {
        "kind": kind,
        "binary": path,
        "binary_sha256": h,
        "version": m.group(1) if m else (text.splitlines()[0] if text else None),
        "version_commit": m.group(2) if m else None,
        "version_output": text[:2000],
        "capabilities": sorted(eng.capabilities),
    }
