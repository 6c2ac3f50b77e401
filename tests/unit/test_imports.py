from pathlib import Path

from tokenbench.imports import PACKAGE_DIR, package_files


def rel(paths):
    return {str(Path(p).relative_to(PACKAGE_DIR)) for p in paths}


def test_the_load_test_wrapper_depends_on_the_http_client_and_tokenizer(tmp_path):
    # the two modules a hand-kept list had dropped: editing the HTTP client must rerun load tests
    script = tmp_path / "wrapper.py"
    script.write_text("from tokenbench.load.run import run_load_test\n")
    files = rel(package_files(script))
    assert {"load/http_stream.py", "load/tokenizer.py", "load/generator.py", "load/phases.py"} <= files
    assert {"__init__.py", "load/__init__.py", "engines/__init__.py"} <= files  # packages run on the way
    assert "data/prompts.jsonl" in files and "data/hardware.yaml" in files  # data the modules name
    assert "report/pages.py" not in files and "analysis/metrics.py" not in files


def test_imports_inside_functions_and_submodules_named_in_from_imports_count(tmp_path):
    script = tmp_path / "wrapper.py"
    script.write_text("def f():\n    from tokenbench.report import site\n")
    assert rel(package_files(script)) == {"__init__.py", "report/__init__.py", "report/site.py"}


def test_a_script_that_imports_nothing_from_the_package_depends_on_nothing(tmp_path):
    script = tmp_path / "wrapper.py"
    script.write_text("import json\nfrom pathlib import Path\n")
    assert package_files(script) == []



def test_a_module_depends_on_every_file_of_the_folders_it_declares(tmp_path):
    # the report's templates and assets: editing a page's layout must rerun render_pages, and only it
    script = tmp_path / "wrapper.py"
    script.write_text("from tokenbench.report.pages import render_pages\n")
    files = rel(package_files(script))
    assert {"report/templates/index.md.j2", "report/templates/macros.j2", "report/assets/charts.js"} <= files
    bundle = tmp_path / "bundle.py"
    bundle.write_text("from tokenbench.report.site import write_vega_bundle\n")
    assert not any(f.startswith("report/templates/") for f in rel(package_files(bundle)))
