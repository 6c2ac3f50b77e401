"""Scrape an engine's Prometheus ``/metrics`` endpoint during a load test.

A background thread polls each metrics path (1 s by default) and keeps the numeric samples that
matter (KV-cache usage, running/waiting requests, the engine's own token counters: the catalog
lists them per engine as regexes), stamped with CLOCK_MONOTONIC int nanoseconds, the clock the
load generator and the telemetry sampler share. Counters are stored raw, as the engine reported
them; rates are for later stages.

The parser handles the Prometheus text exposition format (version 0.0.4): ``# HELP``/``# TYPE``
comments, label sets with escaped quotes, ``NaN``/``+Inf``, optional sample timestamps.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Iterable

import pandas as pd

COLUMNS = {"t_ns": "int64", "path": "string", "metric": "string", "labels": "string",
           "type": "string", "value": "float64"}

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LINE = re.compile(rf"^({_NAME})(?:\{{(.*)\}})?\s+(\S+)(?:\s+(-?\d+))?\s*$")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')


class ParseError(ValueError):
    pass


def _unescape(v: str) -> str:
    return v.replace(r"\\", "\x00").replace(r"\"", '"').replace(r"\n", "\n").replace("\x00", "\\")


def _labels(text: str | None) -> dict[str, str]:
    if not text:
        return {}
    out, pos = {}, 0
    while pos < len(text):
        m = _LABEL.match(text, pos)
        if not m:
            if text[pos:].strip(" ,") == "":
                break
            raise ParseError(f"bad label set {{{text}}}")
        out[m.group(1)] = _unescape(m.group(2))
        pos = m.end()
    return out


def _value(s: str) -> float:
    low = s.lower()
    if low in ("+inf", "inf"):
        return math.inf
    if low == "-inf":
        return -math.inf
    if low == "nan":
        return math.nan
    return float(s)


def parse(text: str) -> list[dict[str, Any]]:
    """Samples of a Prometheus text exposition: [{metric, labels, value, type}]."""
    types: dict[str, str] = {}
    samples = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 4 and parts[1] == "TYPE":
                types[parts[2]] = parts[3].strip()
            continue
        m = _LINE.match(line)
        if not m:
            raise ParseError(f"line {n}: not a sample: {raw[:200]!r}")
        name = m.group(1)
        try:
            value = _value(m.group(3))
        except ValueError:
            raise ParseError(f"line {n}: bad value {m.group(3)!r}") from None
        base = re.sub(r"_(bucket|sum|count|total|created)$", "", name)
        samples.append({"metric": name, "labels": _labels(m.group(2)), "value": value,
                        "type": types.get(name) or types.get(base) or "untyped"})
    return samples


def keep(samples: Iterable[dict[str, Any]], patterns: Iterable[str] | None) -> list[dict[str, Any]]:
    """Samples whose metric name fully matches one of the patterns (all but histogram buckets if None)."""
    pats = [re.compile(p) for p in (patterns or [])]
    out = []
    for s in samples:
        if pats:
            if any(p.fullmatch(s["metric"]) for p in pats):
                out.append(s)
        elif not s["metric"].endswith("_bucket"):
            out.append(s)
    return out


@dataclass
class Scraper:
    """Poll ``base_url + path`` for each path every ``interval_s`` in a daemon thread."""
    base_url: str
    paths: list[str]
    patterns: list[str] | None = None
    interval_s: float = 1.0
    headers: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 2.0
    rows: list[dict[str, Any]] = field(default_factory=list)
    ok: int = 0
    failed: int = 0
    last_error: str | None = None

    def __post_init__(self):
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def scrape_once(self) -> None:
        for path in self.paths:
            t_ns = time.monotonic_ns()
            req = urllib.request.Request(self.base_url.rstrip("/") + path, headers=self.headers)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                    text = r.read().decode("utf-8", errors="replace")
                samples = keep(parse(text), self.patterns)
            except (urllib.error.URLError, OSError, TimeoutError, ParseError, ValueError) as exc:
                self.failed += 1
                self.last_error = f"{path}: {type(exc).__name__}: {exc}"[:500]
                continue
            self.ok += 1
            for s in samples:
                self.rows.append({"t_ns": t_ns, "path": path, "metric": s["metric"],
                                  "labels": json.dumps(s["labels"], sort_keys=True, separators=(",", ":")),
                                  "type": s["type"], "value": s["value"]})

    def _run(self) -> None:
        start = time.monotonic_ns()
        k = 0
        while not self._stop.is_set():
            self.scrape_once()
            k += 1
            # absolute schedule: a slow scrape does not shift the following ones
            delay = (start + k * int(self.interval_s * 1e9) - time.monotonic_ns()) / 1e9
            if delay > 0:
                self._stop.wait(delay)

    def start(self) -> "Scraper":
        if self.paths:
            self._thread = threading.Thread(target=self._run, name="metrics-scraper", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout_s * len(self.paths) + 5)

    def summary(self) -> dict[str, Any]:
        return {"paths": list(self.paths), "interval_s": self.interval_s, "scrapes_ok": self.ok,
                "scrapes_failed": self.failed, "last_error": self.last_error, "samples": len(self.rows)}

    def frame(self) -> pd.DataFrame:
        return frame(self.rows)


def frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    return df.astype(COLUMNS)
