"""The built report site, opened in headless Chromium as a person would (issue 9, "Checked as a person
would"): every page reachable from index.html loads with no console error and no request leaving
loopback, every chart drew marks, nav links and downloads work, pages are under 1 MB and fit 420 px.

The checker itself (tests/e2e/browser.py) is first tried on two small sites written here, one sound and
one broken in every way it looks for, so a green run on the real site means the checks can fail."""
import json
import os
from pathlib import Path

import pytest

from tests.e2e.browser import MAX_PAGE_BYTES, NARROW, WIDE, check_site, chromium_path

pytestmark = pytest.mark.skipif(chromium_path() is None,
                                reason="Chromium is not installed (Debian: apt-get install chromium; .ci/run does)")
pytest.importorskip("playwright.sync_api", reason="playwright is not installed: `make setup` installs the test extra")


# --- the checker on sites written here --------------------------------------------------------------

def bar_spec(values):
    return {"$schema": "https://vega.github.io/schema/vega-lite/v5.json", "data": {"values": values},
            "mark": "bar",
            "encoding": {"x": {"field": "k", "type": "nominal"}, "y": {"field": "v", "type": "quantitative"}}}


def chart(name, spec, actions=False, renderer="svg"):
    blob = json.dumps(spec).replace("</", "<\\/")
    return (f'<div class="tb-chart" data-spec="{name}"></div><script>window.TB_SPECS=window.TB_SPECS||{{}};'
            f'window.TB_SPECS["{name}"]={blob};</script>'
            f'<script>vegaEmbed(document.querySelector(\'[data-spec="{name}"]\'), window.TB_SPECS["{name}"],'
            f' {{actions: {json.dumps(actions)}, renderer: "{renderer}"}});</script>')


def page(body, nav=("index.html", "comparison.html", "runs.html"), vega=False, prefix=""):
    links = "".join(f'<a href="{prefix}{n}">{n}</a> ' for n in nav)
    script = f'<script src="{prefix}assets/vega-bundle.js"></script>' if vega else ""
    return (f'<!doctype html><html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">'
            f'<link rel="icon" href="data:,"><title>t</title>{script}</head>'
            f'<body><nav>{links}</nav>{body}</body></html>')


@pytest.fixture(scope="module")
def vega_bundle(tmp_path_factory):
    import vl_convert

    path = tmp_path_factory.mktemp("vega") / "vega-bundle.js"
    path.write_text(vl_convert.javascript_bundle())
    return path


def write_site(root, files, vega_bundle):
    (root / "assets").mkdir(parents=True)
    (root / "assets" / "vega-bundle.js").write_bytes(vega_bundle.read_bytes())
    for rel, content in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(content if isinstance(content, bytes) else content.encode())
    return root


def parquet_bytes():
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.table({"request_id": [0, 1], "ttft_ms": [12.5, 13.0]}), buf)
    return buf.getvalue()


def test_checker_passes_a_sound_site(tmp_path, vega_bundle):
    downloads = ('<a class="tb-download" href="data/t.csv">CSV</a> <a class="tb-download" href="data/t.json">JSON</a>'
                 ' <a class="tb-download" href="runs/a.parquet">Parquet</a>')
    wide_table = ('<div style="overflow-x:auto"><table><tr>' + "".join(f"<td>column-{i}-with-a-long-name</td>"
                                                                         for i in range(30)) + "</tr></table></div>")
    site = write_site(tmp_path / "public", {
        "index.html": page(chart("throughput", bar_spec([{"k": "a", "v": 3}, {"k": "b", "v": 5}])) + downloads,
                           vega=True),
        "comparison.html": page(wide_table),
        "runs.html": page('<a href="runs/a.html">run a</a>'),
        "runs/a.html": page(chart("timeline.a", bar_spec([{"k": "x", "v": 1}]))
                            + chart("engine.a", bar_spec([{"k": "x", "v": 2}]), renderer="canvas"),
                            vega=True, prefix="../"),
        "data/t.csv": "engine,tok_s\nbatched,12.5\nserial,7.25\n",
        "data/t.json": json.dumps([{"engine": "batched", "tok_s": 12.5}]),
        "runs/a.parquet": parquet_bytes(),
        "404.html": page("not found"),  # mkdocs writes one; no link leads to it, and none should
    }, vega_bundle)
    report = check_site(site, tmp_path / "shots")
    print(report.summary())
    assert report.problems() == []
    assert sorted(report.pages) == ["comparison.html", "index.html", "runs.html", "runs/a.html"]
    assert [(c.name, c.renderer) for c in report.charts] == [("throughput", "svg"), ("timeline.a", "svg"),
                                                             ("engine.a", "canvas")]
    assert [c.marks for c in report.charts][:2] == [2, 1]  # one rect per bar: axes and titles are not counted
    assert report.charts[2].marks > 100  # a canvas counts its painted pixels
    assert sorted((d.kind, d.problem) for d in report.downloads) == [("csv", ""), ("json", ""), ("parquet", "")]
    assert report.pages["comparison.html"].scrolling_tables  # noted (not a failure): columns out of view at 1400 px
    assert report.pages["index.html"].nav_links == ["comparison.html", "index.html", "runs.html"]
    shots = sorted(p.name for p in report.screenshots)
    assert shots == sorted(f"{n}-{w}{top}.png" for n in ("index", "comparison", "run-a") for w in (WIDE, NARROW)
                           for top in ("", "-top"))
    for shot in report.screenshots:
        head = shot.read_bytes()[:24]
        assert head[:8] == b"\x89PNG\r\n\x1a\n"
        width = int.from_bytes(head[16:20], "big")  # IHDR: the picture is as wide as the window it shows
        assert width == (WIDE if f"-{WIDE}" in shot.name else NARROW), (shot.name, width)


def test_checker_names_every_kind_of_breakage(tmp_path, vega_bundle):
    site = write_site(tmp_path / "public", {
        "index.html": page(
            '<script>console.error("boom from the page")</script>'
            '<script>throw new Error("uncaught in the page")</script>'
            '<img src="http://tokenbench.invalid/pixel.png" alt="">'
            + chart("empty", bar_spec([]))
            + chart("with-menu", bar_spec([{"k": "a", "v": 1}]), actions=True)
            + '<div class="tb-chart" data-spec="never-embedded"></div>'
            + '<div style="width:2000px">a fixed-width block that cuts the page at 420 px</div>'
            + '<a href="missing.html">gone</a> <a href="big.html">big</a> <a href="methodology.html">m</a>'
            + ' <a href="dead-end.html">d</a>'
            + ' <a href="assets/missing.css">css</a>'
            + '<a class="tb-download" href="data/empty.csv">CSV</a>'
            + ' <a class="tb-download" href="data/bad.json">JSON</a>'
            + ' <a class="tb-download" href="data/fake.parquet">Parquet</a>'
            + ' <a class="tb-download" href="data/headerless.csv">CSV</a>'
            + ' <a class="tb-download" href="data/t.txt">TXT</a>',
            vega=True),
        "big.html": page("<p>" + "x" * (MAX_PAGE_BYTES + 1) + "</p>"),
        "methodology.html": page("<p>no charts here</p>", vega=True),
        "orphan.html": page("<p>nothing links here</p>"),
        "dead-end.html": "<!doctype html><title>t</title><p>no way back</p>",
        "data/empty.csv": "",
        "data/bad.json": "{not json",
        "data/fake.parquet": "engine,tok_s\n",
        "data/headerless.csv": ",\n1,2\n",
        "data/t.txt": "text",
    }, vega_bundle)
    report = check_site(site, tmp_path / "shots", require_screenshot_pages=True, chart_timeout_s=3)
    print(report.summary())
    console = "\n".join(report.console_problems())
    assert "boom from the page" in console and "uncaught in the page" in console
    assert "http://tokenbench.invalid/pixel.png" in "\n".join(report.request_problems())
    assert list(report.external_requests) == ["http://tokenbench.invalid/pixel.png"]
    charts = report.chart_problems()
    assert any("'empty': no svg marks" in m for m in charts)
    assert any("'never-embedded': nothing drawn" in m for m in charts)
    assert any("'with-menu' shows vega-embed's action menu" in m for m in charts)
    assert not any("'with-menu': " in m for m in charts)  # it drew its bar
    nav = report.navigation_problems()
    assert "missing.html: HTTP 404 (linked from index.html)" in nav
    assert "broken link assets/missing.css (404) (on index.html)" in nav
    assert "page not reachable by links from index.html: orphan.html" in nav
    assert [m.split(":")[0] for m in nav if "no navigation links" in m] == ["dead-end.html"]
    downloads = {d.url.rsplit("/", 1)[1]: d.problem for d in report.downloads}
    assert downloads["empty.csv"] == "empty body"
    assert downloads["bad.json"].startswith("not JSON")
    assert downloads["fake.parquet"].startswith("not Parquet")
    assert downloads["headerless.csv"].startswith("CSV without a header")
    assert downloads["t.txt"].startswith("unknown download type")
    assert [m.split(":")[0] for m in report.size_problems()] == ["big.html", "methodology.html"]
    assert "loads the Vega bundle but has no chart" in report.size_problems()[1]
    overflow = report.overflow_problems()
    assert [m.split(":")[0] for m in overflow] == ["index.html", "big.html"]  # a 2000 px block, a 1 MB word
    assert "(div 1588 px)" in overflow[0] and "p " in overflow[1]
    assert any("no comparison.html" in m for m in report.screenshot_problems)
    assert any("no runs/*.html" in m for m in report.screenshot_problems)


# --- the real site, built once by the pipeline fixture in conftest.py --------------------------------

@pytest.fixture(scope="module")
def site_report(built_site, tmp_path_factory):
    shots = Path(os.environ.get("TOKENBENCH_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    report = check_site(built_site, shots)
    print("\n" + report.summary())
    return report


@pytest.mark.e2e
def test_site_navigation_reaches_every_page(site_report):
    problems = site_report.navigation_problems()
    assert not problems, "\n".join(problems)
    assert {"index.html", "comparison.html"} <= set(site_report.pages)
    assert any(p.startswith("runs/") for p in site_report.pages)


@pytest.mark.e2e
@pytest.mark.parametrize("kind, found", [
    ("console", None),  # no console errors or uncaught exceptions
    ("request", None),  # every request stays on loopback
    ("chart", "charts"),  # charts draw marks, without vega-embed's action menus
    ("download", "downloads"),  # every download works
    ("size", None),  # pages under 1 MB, the Vega bundle only with charts
    ("overflow", None),  # nothing wider than 420 px
])
def test_site_passes_each_check(site_report, kind, found):
    if found:
        assert getattr(site_report, found), f"the site has no {found} at all"
    problems = getattr(site_report, f"{kind}_problems")()
    assert not problems, "\n".join(problems)


@pytest.mark.e2e
def test_site_screenshots_saved(site_report):
    assert not site_report.screenshot_problems, "\n".join(site_report.screenshot_problems)
    names = sorted(p.name for p in site_report.screenshots)
    assert len(names) == 12 and all(p.stat().st_size > 0 for p in site_report.screenshots), names
    print("screenshots:\n" + "\n".join(str(p) for p in site_report.screenshots))
