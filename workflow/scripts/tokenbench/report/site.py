"""Build the static site with mkdocs-material, strict: a broken link or a page missing from the build fails it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


class SiteError(RuntimeError):
    pass


def build_site(mkdocs_yml: str, log_path: str | None = None) -> Path:
    cfg = Path(mkdocs_yml)
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--clean", "--strict", "-f", str(cfg)],
                          capture_output=True, text=True)
    if log_path:
        Path(log_path).write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SiteError(f"mkdocs build failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    index = cfg.parent / "public" / "index.html"
    if not index.is_file():
        raise SiteError(f"mkdocs build produced no {index}")
    return index


def write_vega_bundle(path: str | Path) -> None:
    """vega + vega-lite + vega-embed in one file, from vl-convert (no CDN: the site works offline)."""
    import vl_convert as vlc

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(vlc.javascript_bundle())
