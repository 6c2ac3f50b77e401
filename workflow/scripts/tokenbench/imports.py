"""The package files a script depends on, from its import graph (so rule inputs cannot drift).

Snakemake reruns a job when an input is newer than its outputs, but it does not follow Python
imports. Each rule therefore lists, as inputs, every ``tokenbench`` module its wrapper script
imports, directly or through other modules, plus the package ``__init__`` files those imports
execute and the package data files the modules use: those of ``tokenbench/data/`` a module names,
and every file of the folders beside it that a module declares in ``PACKAGE_DATA`` (the report's
templates and assets). Imports anywhere in
a file count, including those inside functions: a lazily imported module still shapes results.
"""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

PACKAGE = "tokenbench"
PACKAGE_DIR = Path(__file__).resolve().parent


def _module_file(dotted: str) -> Path | None:
    """tokenbench.a.b -> .../tokenbench/a/b.py or .../a/b/__init__.py; None if not a package module."""
    parts = dotted.split(".")
    if parts[0] != PACKAGE:
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _dotted(path: Path) -> str:
    rel = path.relative_to(PACKAGE_DIR).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join([PACKAGE, *parts])


def _imported(tree: ast.AST, current: str | None, is_package: bool) -> set[str]:
    """Dotted names of what a module imports (modules, and ``from m import name`` as m.name too)."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing module
                if current is None:
                    continue
                base = current.split(".") if is_package else current.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
    return out


def _data_files(tree: ast.AST) -> set[Path]:
    """Package data files a module names in a string constant ("data/hardware.yaml")."""
    data = PACKAGE_DIR / "data"
    names = {p.name: p for p in data.iterdir() if p.is_file()} if data.is_dir() else {}
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            name = node.value.rsplit("/", 1)[-1]
            if name in names and node.value in (name, f"data/{name}"):
                found.add(names[name])
    return found


def _declared_folders(tree: ast.AST, path: Path) -> set[Path]:
    """Every file of the folders beside ``path`` that its ``PACKAGE_DATA = ("templates", ...)`` names."""
    found: set[Path] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "PACKAGE_DATA" for t in node.targets):
            for folder in ast.literal_eval(node.value):
                d = path.parent / folder
                found.update(p for p in d.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    return found


@lru_cache(maxsize=None)
def _direct(path: Path) -> tuple[frozenset[Path], frozenset[Path]]:
    """(package modules, data files) one file depends on directly, with the __init__ of each
    package on the way to a module (importing a.b.c runs a/__init__ and a/b/__init__)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    inside = PACKAGE_DIR in path.parents
    current = _dotted(path) if inside else None
    modules: set[Path] = set()
    for name in _imported(tree, current, path.name == "__init__.py"):
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            f = _module_file(".".join(parts[:i]))
            if f is not None:
                modules.add(f)
    modules.discard(path)
    return frozenset(modules), frozenset((_data_files(tree) | _declared_folders(tree, path)) if inside else ())


def package_files(script: str | Path) -> list[str]:
    """Every package file ``script`` depends on through its imports, sorted; the script itself
    is not included (Snakemake tracks a rule's script as code)."""
    start = Path(script).resolve()
    seen: set[Path] = set()
    data: set[Path] = set()
    todo = [start]
    while todo:
        f = todo.pop()
        mods, files = _direct(f)
        data |= files
        for m in mods - seen:
            seen.add(m)
            todo.append(m)
    seen.discard(start)
    return sorted(str(p) for p in seen | data)

