"""Rule inputs are derived from the import graph: editing a package file reruns exactly the rules
whose wrapper scripts import it (directly or not) and what depends on them.

The expectation is computed independently of tokenbench.imports (which the Snakefile uses): by the
standard library's modulefinder, which follows every import in a script's bytecode.
"""
import modulefinder
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.snakemake_util import ROOT, env, planned_jobs

SCRIPTS = ROOT / "workflow" / "scripts"
PACKAGE = SCRIPTS / "tokenbench"
CONFIG = "config/smoke.yaml"


def rule_scripts(repo: Path) -> dict[str, Path]:
    """rule name -> its wrapper script, read from the rule files (a rule and its wrapper share a name)."""
    out = {}
    for smk in sorted((repo / "workflow" / "rules").glob("*.smk")):
        for m in re.finditer(r"^rule (\w+):.*?^\s+script:\s*\n\s+\"\.\./scripts/(\w+)\.py\"", smk.read_text(), re.M | re.S):
            rule, script = m.groups()
            assert rule == script, f"{smk.name}: rule {rule} runs scripts/{script}.py; a rule and its wrapper share a name"
            out[rule] = repo / "workflow" / "scripts" / f"{script}.py"
    return out


def modulefinder_files(script: Path, scripts_dir: Path) -> set[str]:
    """Package files (relative to the package) a script imports, per the standard library."""
    finder = modulefinder.ModuleFinder(path=[str(scripts_dir)] + sys.path)
    finder.run_script(str(script))
    pkg = scripts_dir / "tokenbench"
    return {str(Path(m.__file__).resolve().relative_to(pkg.resolve())) for name, m in finder.modules.items()
            if name.split(".")[0] == "tokenbench" and m.__file__}


def rule_graph(repo: Path, workdir: Path) -> dict[str, set[str]]:
    """rule -> rules that consume its outputs (Snakemake's own --rulegraph)."""
    out = snake(repo, workdir, "--rulegraph").stdout
    names = dict(re.findall(r"^\s*(\d+)\[label = \"(\w+)\"", out, re.M))
    graph: dict[str, set[str]] = {n: set() for n in names.values()}
    for a, b in re.findall(r"^\s*(\d+) -> (\d+)", out, re.M):
        graph[names[a]].add(names[b])
    return graph


def downstream(graph: dict[str, set[str]], start: set[str]) -> set[str]:
    seen, todo = set(start), list(start)
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def snake(repo: Path, workdir: Path, *args: str) -> subprocess.CompletedProcess:
    e = env()
    e["PYTHONPATH"] = str(repo / "workflow" / "scripts")  # the copy's package, not the checkout's
    cmd = [sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"), "-d", str(workdir), "--cores", "1",
           "--configfile", str(repo / CONFIG), *args]
    out = subprocess.run(cmd, capture_output=True, text=True, env=e, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    return out


@pytest.fixture(scope="module")
def up_to_date(tmp_path_factory):
    """A copy of the workflow and a working directory where every output exists and is up to date."""
    base = tmp_path_factory.mktemp("rule_inputs")
    repo, workdir = base / "repo", base / "work"
    repo.mkdir()
    shutil.copy(ROOT / "Snakefile", repo / "Snakefile")
    shutil.copytree(ROOT / "workflow", repo / "workflow", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "config", repo / "config")
    workdir.mkdir()
    for line in snake(repo, workdir, "--summary").stdout.splitlines()[1:]:
        path = workdir / line.split("\t")[0]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    snake(repo, workdir, "--touch")  # mtimes in DAG order and metadata: nothing left to do
    assert "Nothing to be done" in snake(repo, workdir, "-n").stdout
    return repo, workdir


def test_rules_and_wrappers_share_names_and_every_rule_has_one():
    scripts = rule_scripts(ROOT)
    wrappers = {p.stem for p in SCRIPTS.glob("*.py")}
    assert set(scripts) == wrappers, "every wrapper script belongs to exactly one rule of the same name"


def names_data(module, f):
    """Does ``module`` use package data file ``f``: naming it, or declaring its folder (beside the
    module) in PACKAGE_DATA?"""
    text = module.read_text()
    declared = "PACKAGE_DATA" in text and f'"{f.parent.name}"' in text and f.parent.parent == module.parent
    return f.name in text or declared


def test_editing_any_package_file_reruns_exactly_its_importers_and_their_downstream(up_to_date):
    repo, workdir = up_to_date
    pkg = repo / "workflow" / "scripts" / "tokenbench"
    scripts = rule_scripts(repo)
    imports = {rule: modulefinder_files(s, repo / "workflow" / "scripts") for rule, s in scripts.items()}
    graph = rule_graph(repo, workdir)
    files = sorted(p for p in pkg.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    assert len(files) >= 25
    wrong = []
    for f in files:
        rel = str(f.relative_to(pkg))
        if f.suffix == ".py":
            importers = {rule for rule, fs in imports.items() if rel in fs}
        else:  # package data: the rules importing a module that names the file or declares its folder
            importers = {rule for rule, fs in imports.items()
                         if any(names_data(pkg / m, f) for m in fs if m.endswith(".py"))}
        importers &= graph.keys()  # a rule this config does not use (convert_model here) plans no job
        expected = downstream(graph, importers) if importers else set()
        text, stat = f.read_bytes(), f.stat()
        f.write_bytes(text + (b"\n# edited by the test\n" if f.suffix in (".py", ".yaml") else b"\n"))
        try:
            planned = {rule for rule, _ in planned_jobs(snake(repo, workdir, "-n").stdout)}
        finally:  # as it was, mtime included: jobs without Snakemake metadata rerun on mtime alone
            f.write_bytes(text)
            os.utime(f, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        if planned != expected:
            wrong.append(f"{rel}: planned {sorted(planned)}, expected {sorted(expected)}")
    assert not wrong, "\n".join(wrong)


def test_no_package_module_is_imported_only_by_tests():
    """Every module is reached from a wrapper script, the CLI, the Snakefile, or a `python -m`
    entry point the package starts itself."""
    roots = list(rule_scripts(ROOT).values()) + [PACKAGE / "cli.py"]
    snakefile_imports = re.findall(r"^from (tokenbench[\w.]*) import", (ROOT / "Snakefile").read_text()
                                   + "".join(p.read_text() for p in (ROOT / "workflow" / "rules").glob("*.smk")), re.M)
    started = re.findall(r"\"-m\", \"(tokenbench[\w.]*)\"", "".join(p.read_text() for p in PACKAGE.rglob("*.py")))
    make = re.findall(r"-m (tokenbench[\w.]*)", (ROOT / "Makefile").read_text())
    for dotted in snakefile_imports + started + make:
        roots.append(SCRIPTS.joinpath(*dotted.split(".")).with_suffix(".py"))
    reached = {"__init__.py"}
    for r in roots:
        assert r.is_file(), r
        reached |= modulefinder_files(r, SCRIPTS) | {str(r.relative_to(PACKAGE)) if PACKAGE in r.parents else ""}
    modules = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")}
    assert modules - reached == set()
