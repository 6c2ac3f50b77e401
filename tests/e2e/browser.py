"""Open a built report site in headless Chromium the way a reader would, and say what is wrong with it.

`check_site(public_dir)` serves the folder with Python's http.server on 127.0.0.1 (a free port),
crawls it from index.html by following every internal link, loads each page at 1400 px and again at
420 px, and records: console errors and uncaught exceptions, every request that is not to the site's
own origin (aborted, never sent: Chromium also runs behind a dead loopback proxy, so nothing can leave
the machine even if interception missed one), whether each `.tb-chart` drew data marks, whether
vega-embed's action menu is shown, horizontal overflow of the page at 420 px, each page's HTML
size, whether every nav link and every other internal link resolves, and whether every
`a.tb-download` link returns a non-empty body of the type its extension says. Screenshots of the
Summary, Comparison and first Run page are taken at both widths.

By hand:  python -m tests.e2e.browser site/public --screenshots /tmp/shots [--old-layout]
"""

from __future__ import annotations

import argparse
import csv
import functools
import http.server
import io
import json
import shutil
import socket
import sys
import threading
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urldefrag, urlparse

CHROMIUM = "/usr/bin/chromium"
WIDE, NARROW = 1400, 420
MAX_PAGE_BYTES = 1_000_000  # "a typical page under 1 MB"
SCREENSHOT_PAGES = ("index.html", "comparison.html", "runs/*.html")  # Summary, Comparison, the first Run page
CHART_TIMEOUT_S = 20.0  # how long a page's charts get to draw
NAV_SELECTOR = "nav a[href], .md-tabs a[href], header a[href]"
PAGE_SUFFIXES = ("", ".html", ".htm")


def chromium_path() -> str | None:
    """The system Chromium (Debian's package), or None when it is not installed."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    return found or (CHROMIUM if Path(CHROMIUM).exists() else None)


# --- what was found -------------------------------------------------------------------------------

@dataclass
class Chart:
    name: str
    renderer: str | None  # "svg", "canvas" or None (nothing drawn)
    marks: int  # drawn data-mark items (svg) or non-blank pixels (canvas)
    action_menu: bool  # vega-embed's <details> menu is shown (the issue wants actions disabled)
    text: str = ""  # what the element says when no chart was drawn

    @property
    def drawn(self) -> bool:
        return self.renderer is not None and self.marks > 0


@dataclass
class Page:
    path: str  # relative to the site root
    status: int | None = None
    html_bytes: int = 0
    title: str = ""
    charts: list[Chart] = field(default_factory=list)
    loads_vega: bool = False
    console_errors: list[str] = field(default_factory=list)
    console_warnings: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)  # site requests that failed or were >= 400
    overflow_px: float = 0.0  # at 420 px: scrollWidth - innerWidth
    overflowing: list[str] = field(default_factory=list)  # elements that stick out of the page at 420 px
    nav_links: list[str] = field(default_factory=list)
    scrolling_tables: list[str] = field(default_factory=list)  # at 1400 px: tables with columns scrolled out of view
    load_error: str = ""  # why the browser could not load it
    linked_from: str = ""  # the first page the crawl found a link to this one on


@dataclass
class Download:
    url: str
    page: str
    status: int | None = None
    nbytes: int = 0
    kind: str = ""
    detail: str = ""  # e.g. "12 rows x 5 columns"
    problem: str = ""


@dataclass
class SiteReport:
    root: str
    base_url: str
    pages: dict[str, Page] = field(default_factory=dict)
    downloads: list[Download] = field(default_factory=list)
    external_requests: dict[str, str] = field(default_factory=dict)  # url -> page that asked for it
    broken_links: dict[str, str] = field(default_factory=dict)  # "url (status)" -> page linking to it
    unreached: list[str] = field(default_factory=list)  # html files on disk the crawl never reached
    screenshots: list[Path] = field(default_factory=list)
    screenshot_problems: list[str] = field(default_factory=list)

    def __repr__(self) -> str:  # pytest prints this in a failed assertion: keep it to one line
        return f"SiteReport({self.root!r}, {len(self.pages)} pages, {len(self.problems())} problems)"

    # one list per kind of problem, so a test can assert each separately and name what failed
    def console_problems(self) -> list[str]:
        out = []
        for p in self.pages.values():
            out += [f"{p.path}: console error: {m}" for m in p.console_errors]
            out += [f"{p.path}: uncaught exception: {m}" for m in p.page_errors]
        return out

    def request_problems(self) -> list[str]:
        out = [f"request left the site's origin: {u} (from {pg})" for u, pg in self.external_requests.items()]
        for p in self.pages.values():
            out += [f"{p.path}: request failed: {r}" for r in p.failed_requests]
        return out

    def chart_problems(self) -> list[str]:
        out = []
        for p in self.pages.values():
            for c in p.charts:
                if not c.drawn:
                    what = f"no {c.renderer} marks" if c.renderer else "nothing drawn"
                    out.append(f"{p.path}: chart {c.name!r}: {what}" + (f" ({c.text})" if c.text else ""))
                if c.action_menu:
                    out.append(f"{p.path}: chart {c.name!r} shows vega-embed's action menu (actions must be disabled)")
        return out

    def navigation_problems(self) -> list[str]:
        out = [f"{p.path}: HTTP {p.status}" + (f" (linked from {p.linked_from})" if p.linked_from else "")
               + (f": {p.load_error}" if p.load_error else "") for p in self.pages.values() if p.status != 200]
        out += [f"broken link {u} (on {pg})" for u, pg in self.broken_links.items()]
        out += [f"page not reachable by links from index.html: {u}" for u in self.unreached]
        if "index.html" not in self.pages:
            out.append("index.html was not loaded")
        out += [f"{p.path}: no navigation links ({NAV_SELECTOR})" for p in self.pages.values()
                if p.status == 200 and not p.nav_links]
        return out

    def download_problems(self) -> list[str]:
        return [f"download {d.url} (on {d.page}): {d.problem}" for d in self.downloads if d.problem]

    def size_problems(self) -> list[str]:
        """Pages over 1 MB of HTML, and pages that load the chart library without showing a chart."""
        return ([f"{p.path}: {p.html_bytes / 1e6:.2f} MB of HTML (limit {MAX_PAGE_BYTES / 1e6:.0f} MB)"
                 for p in self.pages.values() if p.html_bytes > MAX_PAGE_BYTES]
                + [f"{p.path}: loads the Vega bundle but has no chart" for p in self.pages.values()
                   if p.loads_vega and not p.charts])

    def overflow_problems(self) -> list[str]:
        return [f"{p.path}: at {NARROW} px the page is {p.overflow_px:.0f} px wider than the window"
                + (f" ({', '.join(p.overflowing)})" if p.overflowing else "")
                for p in self.pages.values() if p.overflow_px > 1]

    def problems(self) -> list[str]:
        return (self.navigation_problems() + self.console_problems() + self.request_problems()
                + self.chart_problems() + self.download_problems() + self.size_problems()
                + self.overflow_problems() + self.screenshot_problems)

    @property
    def charts(self) -> list[Chart]:
        return [c for p in self.pages.values() for c in p.charts]

    def summary(self) -> str:
        lines = [f"site {self.root} served at {self.base_url}",
                 f"pages: {len(self.pages)} reached by crawling from index.html"
                 + (f", {len(self.unreached)} not reached" if self.unreached else "")]
        for p in sorted(self.pages.values(), key=lambda p: p.path):
            drawn = sum(c.drawn for c in p.charts)
            flags = [f"{len(p.console_errors)} console errors" if p.console_errors else "",
                     f"{len(p.page_errors)} exceptions" if p.page_errors else "",
                     f"{sum(c.action_menu for c in p.charts)} action menus" if any(c.action_menu for c in p.charts)
                     else "",
                     "vega bundle without charts" if p.loads_vega and not p.charts else "",
                     f"overflow {p.overflow_px:.0f} px at {NARROW}" if p.overflow_px > 1 else "",
                     "OVER 1 MB" if p.html_bytes > MAX_PAGE_BYTES else ""]
            lines.append(f"  {p.path:<48} HTTP {p.status}  {p.html_bytes / 1e3:8.1f} kB  charts {drawn}/{len(p.charts)}"
                         + "".join(f"  [{f}]" for f in flags if f))
        charts = self.charts
        lines.append(f"charts: {sum(c.drawn for c in charts)} of {len(charts)} drawn, "
                     f"{sum(c.action_menu for c in charts)} with vega-embed's action menu")
        bad = [d for d in self.downloads if d.problem]
        kinds = {}
        for d in self.downloads:
            kinds[d.kind] = kinds.get(d.kind, 0) + 1
        by_kind = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "none"
        lines.append(f"downloads: {len(self.downloads)} links ({by_kind}), {len(bad)} broken")
        sizes = sorted(p.html_bytes for p in self.pages.values())
        if sizes:
            over = sum(s > MAX_PAGE_BYTES for s in sizes)
            idle_vega = sum(p.loads_vega and not p.charts for p in self.pages.values())
            lines.append(f"sizes: largest page {sizes[-1] / 1e6:.2f} MB, median {sizes[len(sizes) // 2] / 1e6:.2f} MB, "
                         f"{over} over {MAX_PAGE_BYTES / 1e6:.0f} MB; {idle_vega} load the Vega bundle without a chart")
        lines.append(f"console errors: {sum(len(p.console_errors) for p in self.pages.values())}, "
                     f"uncaught exceptions: {sum(len(p.page_errors) for p in self.pages.values())}, "
                     f"console warnings: {sum(len(p.console_warnings) for p in self.pages.values())}")
        scrolling = [f"{p.path}: {t}" for p in self.pages.values() for t in p.scrolling_tables]
        lines.append(f"tables scrolling sideways at {WIDE} px (a note, not a failure): {len(scrolling)}"
                     + "".join(f"\n  {t}" for t in scrolling[:10]))
        warnings = sorted({f"{p.path}: {m}" for p in self.pages.values() for m in p.console_warnings})
        lines += [f"  warning {m}" for m in warnings[:10]]
        lines += [f"  ... {len(warnings) - 10} more"] if len(warnings) > 10 else []
        lines.append(f"external requests: {len(self.external_requests)}"
                     + "".join(f"\n  {u} (from {pg})" for u, pg in self.external_requests.items()))
        lines += [f"screenshot: {s}" for s in self.screenshots]
        problems = self.problems()
        lines.append(f"problems: {len(problems)}" + "".join(f"\n  - {m}" for m in problems))
        return "\n".join(lines)


# --- serving ---------------------------------------------------------------------------------------

class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@contextmanager
def serve(public_dir: str | Path):
    """The folder over HTTP on 127.0.0.1 at a free port; yields the base URL (ending in /)."""
    handler = functools.partial(_QuietHandler, directory=str(public_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def _closed_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- in the page -----------------------------------------------------------------------------------

# every chart element has settled: drawn (svg/canvas) or replaced by a message
_CHARTS_SETTLED = """() => Array.from(document.querySelectorAll('.tb-chart')).every(
  el => el.querySelector('svg, canvas') || el.textContent.trim().length > 0)"""

# per chart: the renderer and how many data-mark items it drew. Vega's SVG renderer puts data marks in
# <g class="mark-TYPE role-mark">; axes, legends and titles have role-axis-*/role-legend-*/role-title-*,
# so an empty chart with axes counts 0. A canvas counts its non-transparent pixels (axes included: a canvas
# cannot tell data marks from axes, so the site's charts should use the SVG renderer, as they do).
_CHART_STATE = """() => Array.from(document.querySelectorAll('.tb-chart')).map(el => {
  const name = el.dataset.spec || el.id || '';
  const menu = !!el.querySelector('details, .vega-actions');
  const svg = el.querySelector('svg');
  if (svg) {
    let marks = 0;
    svg.querySelectorAll('g.role-mark').forEach(g => {
      for (const item of g.children) {
        if (item.tagName === 'g') continue;  // a nested group is a group mark's scope, counted itself
        if (item.tagName === 'path' && !(item.getAttribute('d') || '').trim()) continue;
        marks += 1;
      }
    });
    return {name, renderer: 'svg', marks, menu, text: ''};
  }
  const canvas = el.querySelector('canvas');
  if (canvas && canvas.width && canvas.height) {
    let marks = 0;
    try {
      const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
      for (let i = 3; i < data.length; i += 4) if (data[i] > 0) marks += 1;
    } catch (e) { marks = -1; }
    return {name, renderer: 'canvas', marks, menu, text: ''};
  }
  return {name, renderer: null, marks: 0, menu, text: el.textContent.trim().slice(0, 200)};
})"""

# links after the page's scripts ran (absolute URLs), the nav's links, the download links, vega loaded?
_LINKS = """(navSelector) => ({
  links: Array.from(document.querySelectorAll('a[href]')).map(a => a.href),
  nav: Array.from(document.querySelectorAll(navSelector)).map(a => a.href),
  downloads: Array.from(document.querySelectorAll('a.tb-download[href]')).map(a => a.href),
  vega: Array.from(document.scripts).some(s => /vega/i.test(s.src || '')) || typeof window.vegaEmbed === 'function',
  title: document.title,
})"""

# at the narrow width: how far the document sticks out, and the outermost elements that make it so
# (an element inside a container that scrolls or clips horizontally is that container's business)
_OVERFLOW = """() => {
  const w = window.innerWidth, over = document.documentElement.scrollWidth - w;
  if (over <= 1) return {over, culprits: []};
  const contained = el => { for (let a = el.parentElement; a && a !== document.body; a = a.parentElement) {
      const o = getComputedStyle(a).overflowX;
      if (o === 'auto' || o === 'scroll' || o === 'hidden' || o === 'clip') return true; }
    return false; };
  const describe = el => el.tagName.toLowerCase() + (el.id ? '#' + el.id : '')
    + (el.classList.length ? '.' + Array.from(el.classList).slice(0, 2).join('.') : '');
  const culprits = [];
  for (const el of document.body.querySelectorAll('*')) {
    const r = el.getBoundingClientRect(), reach = Math.max(r.right, r.left + el.scrollWidth);
    if (reach <= w + 1 || contained(el)) continue;
    const parent = el.parentElement, pr = parent && parent.getBoundingClientRect();
    if (parent && parent !== document.body && pr.right > w + 1) continue;  // its parent already sticks out
    culprits.push(describe(el) + ' ' + Math.round(reach - w) + ' px');
    if (culprits.length >= 5) break;
  }
  return {over, culprits};
}"""

# at the wide width: tables whose container scrolls sideways (columns hidden until the reader scrolls)
_SCROLLING_TABLES = """() => Array.from(document.querySelectorAll('table')).flatMap(t => {
  for (let a = t.parentElement; a && a !== document.body; a = a.parentElement) {
    const o = getComputedStyle(a).overflowX;
    if ((o === 'auto' || o === 'scroll') && a.scrollWidth > a.clientWidth + 1) {
      const head = Array.from(t.querySelectorAll('th')).slice(0, 3).map(th => th.textContent.trim()).join(' | ');
      return [`table (${head}): ${a.scrollWidth - a.clientWidth} px hidden`];
    }
  }
  return [];
})"""

_NEXT_FRAME = "() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))"


def _is_page(rel: str) -> bool:
    return Path(rel).suffix.lower() in PAGE_SUFFIXES


def _rel(url: str, base_url: str) -> str | None:
    """The site-relative path of an internal URL (directories mean their index.html), else None."""
    url = urldefrag(url)[0].split("?")[0]
    if not url.startswith(base_url):
        return None
    rel = url[len(base_url):]
    return rel + "index.html" if rel == "" or rel.endswith("/") else rel


def _status(url: str, method: str = "GET") -> tuple[int | None, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=30) as r:
            return r.status, (r.read() if method == "GET" else b"")
    except urllib.error.HTTPError as e:
        return e.code, b""
    except OSError as e:
        return None, str(e).encode()


def check_download(url: str, page: str) -> Download:
    """GET a download link from the loopback server and check its body matches its extension."""
    d = Download(url=url, page=page, kind=Path(urlparse(url).path).suffix.lower().lstrip(".") or "(none)")
    d.status, body = _status(url)
    d.nbytes = len(body)
    if d.status != 200:
        d.problem = f"HTTP {d.status}" if d.status else f"not fetched: {body.decode(errors='replace')}"
    elif not body:
        d.problem = "empty body"
    elif d.kind == "csv":
        try:
            rows = list(csv.reader(io.StringIO(body.decode("utf-8"))))
        except (UnicodeDecodeError, csv.Error) as e:
            d.problem = f"not CSV: {e}"
        else:
            header = rows[0] if rows else []
            if not header or not all(h.strip() for h in header):
                d.problem = f"CSV without a header row (first row {header!r})"
            elif any(len(r) != len(header) for r in rows[1:] if r):
                d.problem = "CSV rows do not all have the header's number of columns"
            else:
                d.detail = f"{len(rows) - 1} rows x {len(header)} columns"
    elif d.kind == "json":
        try:
            doc = json.loads(body)
        except ValueError as e:
            d.problem = f"not JSON: {e}"
        else:
            d.detail = f"{type(doc).__name__} of {len(doc)}" if isinstance(doc, (list, dict)) else type(doc).__name__
    elif d.kind == "parquet":
        if not (body[:4] == b"PAR1" and body[-4:] == b"PAR1"):
            d.problem = f"not Parquet (starts {body[:4]!r}, ends {body[-4:]!r})"
    else:
        d.problem = f"unknown download type {d.kind!r} (expected .csv, .json or .parquet)"
    return d


def _photograph(page, folder: Path, stem: str) -> list[Path]:
    """The whole page (STEM.png) and the first screen a reader sees (STEM-top.png, easier to look at)."""
    folder.mkdir(parents=True, exist_ok=True)
    full, top = folder / f"{stem}.png", folder / f"{stem}-top.png"
    page.screenshot(path=str(full), full_page=True)
    page.screenshot(path=str(top))
    return [full, top]


def _screenshot_targets(public: Path, require: bool) -> tuple[dict[str, str], list[str]]:
    """{relative page: short name} for the pages to photograph, and what is missing."""
    targets, missing = {}, []
    for pattern in SCREENSHOT_PAGES:
        found = sorted(p.relative_to(public).as_posix() for p in public.glob(pattern) if p.is_file())
        if found:
            targets[found[0]] = Path(found[0]).stem if "/" not in pattern else "run-" + Path(found[0]).stem
        elif require:
            missing.append(f"screenshot page missing: no {pattern} in {public}")
        else:
            print(f"(old layout: no {pattern}, its screenshots skipped)", file=sys.stderr)
    return targets, missing


def check_site(public_dir: str | Path, screenshots: str | Path | None = None, *,
               require_screenshot_pages: bool = True, executable: str | None = None,
               chart_timeout_s: float = CHART_TIMEOUT_S) -> SiteReport:
    """Serve `public_dir` on loopback, open every page reachable from index.html in headless Chromium,
    and return what was found (see SiteReport.problems()). With `screenshots`, the Summary, Comparison and
    first Run page are saved there at 1400 and 420 px (full page); a missing one of those pages is a
    problem unless `require_screenshot_pages` is False (the old four-page layout)."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    public = Path(public_dir).resolve()
    if not (public / "index.html").is_file():
        raise FileNotFoundError(f"no index.html in {public}")
    executable = executable or chromium_path()
    if not executable:
        raise FileNotFoundError("Chromium not found (Debian: apt-get install chromium)")
    shots_dir = Path(screenshots) if screenshots else None
    targets, missing = _screenshot_targets(public, require_screenshot_pages)

    with serve(public) as base_url, sync_playwright() as pw:
        report = SiteReport(root=str(public), base_url=base_url, screenshot_problems=missing)
        origin = base_url.rstrip("/")
        # a dead loopback proxy: a request that escaped interception still cannot leave the machine
        browser = pw.chromium.launch(executable_path=executable, headless=True,
                                     args=[f"--proxy-server=http://127.0.0.1:{_closed_loopback_port()}",
                                           "--proxy-bypass-list=127.0.0.1", "--no-sandbox",
                                           "--disable-background-networking",
                                           "--disable-component-update", "--no-first-run",
                                           "--disable-features=Translate,OptimizationHints,MediaRouter"])
        current = {"page": "index.html"}

        def route(r):
            url = r.request.url
            if url == origin or url.startswith(origin + "/"):
                r.continue_()
            else:
                report.external_requests.setdefault(url, current["page"])
                r.abort("blockedbyclient")

        def open_context(width: int):
            ctx = browser.new_context(viewport={"width": width, "height": 900}, service_workers="block",
                                      accept_downloads=False)
            ctx.route("**/*", route)
            return ctx

        def visit(ctx, rel: str, record: Page, narrow: bool):
            page = ctx.new_page()
            tag = f" (at {NARROW} px)" if narrow else ""

            def console(m):
                where = m.location.get("url") if isinstance(m.location, dict) else None
                if m.type == "error":
                    record.console_errors.append(f"{m.text}{tag}" + (f" [{where}]" if where else ""))
                elif m.type == "warning":
                    record.console_warnings.append(f"{m.text}{tag}")

            page.on("console", console)
            page.on("pageerror", lambda e: record.page_errors.append(f"{e}{tag}"))
            page.on("requestfailed", lambda q: q.url.startswith(origin) and record.failed_requests.append(
                f"{q.url} ({q.failure}){tag}"))
            page.on("response", lambda r: r.status >= 400 and r.url.startswith(origin)
                    and record.failed_requests.append(f"{r.url} HTTP {r.status}{tag}"))
            try:
                resp = page.goto(base_url + rel, wait_until="load", timeout=60_000)
            except PlaywrightError as e:
                record.load_error = record.load_error or f"{str(e).splitlines()[0]}{tag}"
                return page, None
            if not narrow:
                record.status = resp.status if resp else None
            # bring every chart into view once (a chart drawn lazily on scroll gets its chance), then wait
            for el in page.query_selector_all(".tb-chart"):
                el.scroll_into_view_if_needed()
                page.evaluate(_NEXT_FRAME)
            try:
                page.wait_for_function(_CHARTS_SETTLED, timeout=chart_timeout_s * 1000)
            except PlaywrightError:
                pass  # the charts that never drew are reported as such
            page.evaluate("() => window.scrollTo(0, 0)")
            page.evaluate(_NEXT_FRAME)
            return page, resp

        wide, narrow = open_context(WIDE), open_context(NARROW)
        queue, seen, links_from = ["index.html"], {"index.html"}, {}
        while queue:
            rel = queue.pop(0)
            current["page"] = rel
            record = report.pages[rel] = Page(path=rel)
            file = public / rel
            record.html_bytes = file.stat().st_size if file.is_file() else 0
            page, resp = visit(wide, rel, record, narrow=False)
            if resp is None or resp.status != 200:
                page.close()
                continue
            record.charts = [Chart(name=c["name"], renderer=c["renderer"], marks=c["marks"], action_menu=c["menu"],
                                   text=c["text"]) for c in page.evaluate(_CHART_STATE)]
            found = page.evaluate(_LINKS, NAV_SELECTOR)
            record.loads_vega, record.title = found["vega"], found["title"]
            record.nav_links = sorted({r for r in (_rel(u, base_url) for u in found["nav"]) if r})
            for url in found["downloads"]:
                if urldefrag(url)[0] not in {d.url for d in report.downloads}:
                    if _rel(url, base_url) is None:
                        report.downloads.append(Download(url=url, page=rel, problem="not on the site (external link)"))
                    else:
                        report.downloads.append(check_download(urldefrag(url)[0], rel))
            for url in found["links"]:
                target = _rel(url, base_url)
                if target is None or target in seen:
                    continue
                if urlparse(url).scheme not in ("http", "https"):
                    continue
                seen.add(target)
                links_from[target] = rel
                if _is_page(target):
                    queue.append(target)
            record.scrolling_tables = page.evaluate(_SCROLLING_TABLES)
            if shots_dir and rel in targets:
                report.screenshots += _photograph(page, shots_dir, f"{targets[rel]}-{WIDE}")
            page.close()

            page, resp = visit(narrow, rel, record, narrow=True)
            if resp is not None:
                state = page.evaluate(_OVERFLOW)
                record.overflow_px, record.overflowing = float(state["over"]), state["culprits"]
                if shots_dir and rel in targets:
                    report.screenshots += _photograph(page, shots_dir, f"{targets[rel]}-{NARROW}")
            page.close()
        wide.close()
        narrow.close()
        browser.close()

        # every other internal link (assets, downloads already checked, data files) must resolve
        checked = {urldefrag(d.url)[0] for d in report.downloads}
        for target, rel in sorted(links_from.items()):
            url = base_url + target
            if target in report.pages:
                report.pages[target].linked_from = rel
                continue
            if url in checked:
                continue
            status, _ = _status(url, "HEAD")
            if status != 200:
                report.broken_links[f"{target} ({status})"] = rel

    on_disk = {p.relative_to(public).as_posix() for p in public.rglob("*.html")} - {"404.html"}
    report.unreached = sorted(on_disk - set(report.pages))
    for rel in targets:
        if rel not in report.pages:
            report.screenshot_problems.append(f"screenshot page {rel} exists but no link leads to it")
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.e2e.browser", description=__doc__.split("\n\n")[0])
    ap.add_argument("public_dir", help="the built site (site/public)")
    ap.add_argument("--screenshots", help="folder for the screenshots (none taken without it)")
    ap.add_argument("--old-layout", action="store_true",
                    help="the four-page site: no comparison.html or runs/*.html to photograph is not a problem")
    ap.add_argument("--chromium", help=f"the browser binary (default: chromium on PATH or {CHROMIUM})")
    args = ap.parse_args(argv)
    report = check_site(args.public_dir, args.screenshots, require_screenshot_pages=not args.old_layout,
                        executable=args.chromium)
    print(report.summary())
    return 1 if report.problems() else 0


if __name__ == "__main__":
    sys.exit(main())
