"""The report's tables as data: what a page shows (display text) and what its download holds (raw
values), built once from the results, so the HTML, the CSV and the JSON of a table never disagree.

A ``Table`` is rows of ``Row``; each row has its display cells (header -> text) and its raw data
(column -> number or text, intervals as ``<key>_lo`` / ``<key>_hi``). Templates render tables with
the ``table`` macro (templates/macros.j2); ``write_downloads`` writes each table's CSV and JSON
beside the page.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from markupsafe import Markup

from tokenbench.analysis.registry import METRICS, fmt


@dataclass
class Row:
    cells: dict[str, str | Markup] = field(default_factory=dict)  # header -> display text
    data: dict[str, Any] = field(default_factory=dict)  # download column -> raw value
    invalid: str | None = None  # why the row's figures must not be trusted (greyed, reason shown)
    link: str | None = None  # a page the row's first cell links to
    numeric: set[str] = field(default_factory=set)  # headers of figure cells (kept on one line)

    def text(self, header: str, value: Any, key: str | None = None) -> Row:
        """A plain cell, in the download under ``key`` (default: the header)."""
        self.cells[header] = "" if value is None else (value if isinstance(value, Markup) else str(value))
        self.data[key or header] = value
        return self

    def number(self, header: str, key: str, value: float | None, digits: int = 1, pct: bool = False,
               shown: str | None = None) -> Row:
        """A figure: ``shown`` on the page when given (a p value as "< 0.001"), else formatted."""
        self.cells[header] = fmt(value, digits, pct) if shown is None else shown
        self.numeric.add(header)
        self.data[key] = value
        return self

    def metric(self, key: str, value: float | None, column: str | None = None, header: str | None = None) -> Row:
        """A registry metric's value, with the registry's header and precision."""
        m = METRICS[key]
        return self.number(header or m.header(), column or key, value, m.digits, m.percent)

    def interval(self, header: str, key: str, iv: dict[str, Any] | None, digits: int = 1, pct: bool = False,
                 reason: bool = False) -> Row:
        """estimate [lo, hi]; without an interval, the estimate alone (``reason``: and why)."""
        self.cells[header] = interval_text(iv, digits, pct, reason)
        self.numeric.add(header)
        iv = iv or {}
        self.data[key] = iv.get("estimate")
        self.data[f"{key}_lo"] = iv.get("lo")
        self.data[f"{key}_hi"] = iv.get("hi")
        return self


def interval_text(iv: dict[str, Any] | None, digits: int = 1, pct: bool = False, reason: bool = False) -> str:
    if not iv or iv.get("estimate") is None:
        return "n/a"
    est = fmt(iv["estimate"], digits, pct)
    if iv.get("lo") is None:
        return f"{est} ({no_interval(iv)})" if reason else f"{est} (no CI)"
    return f"{est} [{fmt(iv['lo'], digits, pct)}, {fmt(iv['hi'], digits, pct)}]"


def no_interval(iv: dict[str, Any]) -> str:
    """Why an estimate has no interval, as its note says it."""
    note = iv.get("note") or "too few samples"
    return note if "no interval" in note else f"no interval: {note}"


@dataclass
class Table:
    id: str  # unique within its page: the download's file stem
    rows: list[Row]
    caption: str = ""
    notes: list[str] = field(default_factory=list)  # numbered notes under the table
    sticky: bool = True  # the first column stays in view while the table scrolls sideways
    href: dict[str, str] = field(default_factory=dict)  # "csv"/"json" -> path relative to the page (set on writing)
    # A row built by the same code as the rows, never shown: its columns lead the download's, so a
    # table that may be empty in one run (no invalid phase, no excluded point) keeps its header.
    template: Row | None = None

    @property
    def columns(self) -> list[str]:
        return list(dict.fromkeys(h for r in self.rows for h in r.cells))

    @property
    def data_columns(self) -> list[str]:
        shapes = [self.template] * (self.template is not None) + self.rows
        return list(dict.fromkeys(k for r in shapes for k in [*r.data, "invalid_reason"]))

    def drop_empty_columns(self) -> list[str]:
        """Hide the columns no row has a figure in (the download keeps them); returns their headers."""
        empty = [c for c in self.columns if self.rows and all(r.cells.get(c, "n/a") == "n/a" for r in self.rows)]
        for r in self.rows:
            for c in empty:
                r.cells.pop(c, None)
        return empty

    def records(self) -> list[dict[str, Any]]:
        cols = self.data_columns
        return [{c: (r.invalid if c == "invalid_reason" else _plain(r.data.get(c))) for c in cols} for r in self.rows]


def _plain(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, Markup):
        return str(v.striptags())
    return v


def write_downloads(table: Table, folder: Path, stem: str, href_prefix: str) -> None:
    """``folder/stem.csv`` and ``folder/stem.json``: the table's raw rows; records the links in
    ``table.href`` (``href_prefix`` is the folder as the page links to it)."""
    folder.mkdir(parents=True, exist_ok=True)
    records = table.records()
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=table.data_columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    (folder / f"{stem}.csv").write_text(buf.getvalue())
    (folder / f"{stem}.json").write_text(json.dumps(records, indent=1, default=str) + "\n")
    table.href = {"csv": f"{href_prefix}/{stem}.csv", "json": f"{href_prefix}/{stem}.json"}
