"""The config reference, generated from the schema (tokenbench.config): the JSON Schema editors
validate and complete configs with, and the reference tables (key path, type, default,
description) for the docs and the report site.

Every key is documented once, in its ``Field(description=...)``; this module only lays the
schema out. ``tokenbench schema`` writes both files; tests check the committed copies
(``config/tokenbench.schema.json``, ``docs/config-reference.md``) are what the code generates.
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from tokenbench.config import Config

SCHEMA_FILE = "config/tokenbench.schema.json"  # relative to the checkout's root
REFERENCE_FILE = "docs/config-reference.md"
# the line that points the YAML language server at the schema, at the top of every shipped config
MODELINE = "# yaml-language-server: $schema=tokenbench.schema.json"


def json_schema() -> dict[str, Any]:
    """The config's JSON Schema (draft 2020-12, as pydantic writes it): every key with its type,
    bounds, default and description; unknown keys are errors (additionalProperties: false)."""
    schema = Config.model_json_schema(mode="validation")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "tokenbench config",
            **{k: v for k, v in schema.items() if k != "title"}}


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"


# ----------------------------------------------------------------------------- reference tables
@dataclass
class Section:
    """One block of the config: the keys of one schema class at one place in the config."""
    path: str  # e.g. "engines.<name>"; "" for the top level
    model: type[BaseModel]
    note: str = ""
    rows: list[dict[str, str]] = field(default_factory=list)

    @property
    def title(self) -> str:
        return f"`{self.path}`" if self.path else "Top level"


def _strip(tp):
    """Annotated[X, ...] -> X, with the metadata kept apart."""
    meta = []
    while typing.get_origin(tp) is Annotated:
        args = typing.get_args(tp)
        tp, meta = args[0], meta + list(args[1:])
    return tp, meta


def _members(tp) -> list:
    tp, _ = _strip(tp)
    if typing.get_origin(tp) in (Union, types.UnionType):
        return [m for a in typing.get_args(tp) for m in _members(a)]
    return [tp]


def _bounds(meta: list) -> str:
    """A field's numeric bounds and minimum length (annotated_types metadata) in words."""
    out = []
    for m in meta:
        for attr, sym in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"), ("min_length", "at least")):
            v = getattr(m, attr, None)
            if v is not None:
                out.append(f"{sym} {v}")
    return ", ".join(dict.fromkeys(out))


def type_text(tp, where: dict[type, str]) -> str:
    """A type in words: str, integer, number, one of a / b, list of ..., mapping name -> ...,
    a schema class by the section that lists its keys."""
    tp, _ = _strip(tp)
    members = _members(tp)
    if len(members) > 1:
        parts = [type_text(m, where) for m in members if m is not type(None)]
        return " or ".join(dict.fromkeys(parts)) + (" or null" if type(None) in members else "")
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(f"`{a}`" for a in typing.get_args(tp))
    if origin is list:
        return f"list of {type_text(typing.get_args(tp)[0], where)}"
    if origin is dict:
        return f"mapping of name to {type_text(typing.get_args(tp)[1], where)}"
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return f"mapping (`{where[tp]}`)" if where.get(tp) else "mapping"
    return {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}.get(tp, str(tp))


def default_text(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    d = info.get_default(call_default_factory=True)
    if isinstance(d, BaseModel):
        return "its keys' defaults"
    return "`" + json.dumps(d) + "`"


def _children(tp) -> list[tuple[str, type[BaseModel]]]:
    """(path suffix, schema class) of the blocks nested in a field's type."""
    out = []
    for m in _members(tp):
        origin = typing.get_origin(m)
        if origin is list:
            out += [("[]" + s, c) for s, c in _children(typing.get_args(m)[0])]
        elif origin is dict:
            out += [(".<name>" + s, c) for s, c in _children(typing.get_args(m)[1])]
        elif isinstance(m, type) and issubclass(m, BaseModel):
            out.append(("", m))
    return out


def _common_fields(models: list[type[BaseModel]]) -> list[str]:
    """Keys every one of several alternatives has alike (same type and default), except the tag."""
    first = models[0].model_fields
    return [n for n, f in first.items() if n != "mode" and all(
        n in m.model_fields and m.model_fields[n].annotation == f.annotation
        and m.model_fields[n].default == f.default for m in models[1:])]


def sections(root: type[BaseModel] = Config) -> list[Section]:
    """Every block of the config in schema order, each schema class listed once (where it first
    appears; a later place refers to it). Alternatives of one key (prompt sources, phase modes) each
    get a block, titled by their tag, after a block of the keys they all share."""
    out: list[Section] = []
    where: dict[type, str] = {}
    queue: list[tuple[str, type[BaseModel], list[str]]] = [("", root, [])]  # (path, class, keys left out)
    while queue:
        path, model, skip = queue.pop(0)
        if model in where:
            continue
        where[model] = path
        out.append(Section(path, model, note=_mode_note(model), rows=[{"skip": k} for k in skip]))
        key_path = path.split(" (")[0]
        nested = []  # listed right after this block, in key order
        for name, info in model.model_fields.items():
            children = _children(info.annotation)
            alternatives = list(dict.fromkeys(c for _, c in children))
            shared = _common_fields(alternatives) if len(alternatives) > 1 else []
            if len(shared) > 1:
                suffix = children[0][0]
                out.append(Section(f"{key_path}.{name}{suffix} (every {_tag_key(alternatives[0])})".lstrip("."),
                                   alternatives[0], note="Keys every alternative below has.",
                                   rows=[{"only": k} for k in shared]))
            for suffix, child in children:
                tag = f" ({_tag(child)})" if len(alternatives) > 1 else ""
                child_path = f"{key_path}.{name}{suffix}".lstrip(".") + tag
                if child not in where and all(child is not m for _, m, _ in queue + nested):
                    nested.append((child_path, child, shared if len(shared) > 1 else []))
        queue = nested + queue
    for sec in out:
        skip = {r["skip"] for r in sec.rows if "skip" in r}
        only = [r["only"] for r in sec.rows if "only" in r]
        sec.rows = []
        fields = sorted(sec.model.model_fields.items(), key=lambda kv: kv[0] != "mode")  # the tag first
        for name, info in fields:
            if name in skip or (only and name not in only):
                continue
            _, meta = _strip(info.annotation)
            bounds = _bounds([*meta, *info.metadata])
            sec.rows.append({
                "key": f"{sec.path.split(' (')[0]}.{name}".lstrip("."),
                "type": type_text(info.annotation, where) + (f" ({bounds})" if bounds else ""),
                "default": default_text(info),
                "description": info.description or "",
            })
    return out


def _tag_key(model: type[BaseModel]) -> str:
    return "mode" if "mode" in model.model_fields else "alternative"


def _tag(model: type[BaseModel]) -> str:
    """What tells one alternative of a key from the others: its mode, else its first required key."""
    mode = model.model_fields.get("mode")
    if mode is not None and typing.get_origin(mode.annotation) is Literal:
        return f"mode: {typing.get_args(mode.annotation)[0]}"
    return next((n for n, f in model.model_fields.items() if f.is_required()), model.__name__)


def _mode_note(model: type[BaseModel]) -> str:
    mode = model.model_fields.get("mode")
    if mode is not None and typing.get_origin(mode.annotation) is Literal:
        return f"A phase with `mode: {typing.get_args(mode.annotation)[0]}`."
    return ""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def reference_markdown(heading_level: int = 2) -> str:
    """The reference tables as Markdown: one table per block (key path, type, default, description)."""
    h = "#" * heading_level
    lines = []
    for sec in sections():
        lines += [f"{h} {sec.title}", ""]
        if sec.note:
            lines += [sec.note, ""]
        lines += ["| key | type | default | description |", "|---|---|---|---|"]
        lines += [f"| `{_cell(r['key'])}` | {_cell(r['type'])} | {_cell(r['default'])} | {_cell(r['description'])} |"
                  for r in sec.rows]
        lines.append("")
    return "\n".join(lines)


INTRO = """Every key a tokenbench config may have, generated from the schema (`tokenbench/config.py` and the
classes it uses): key path, type with its bounds, default, and description. `<name>` is a key you
choose (a path component: letters, digits, `_` and `-`); `[]` is an item of a list. A key not listed
here is an error. Editors with the YAML language server validate and complete configs against
`config/tokenbench.schema.json` (the shipped configs point at it on their first line)."""


def reference_document() -> str:
    """docs/config-reference.md: the title, how to read it, how it is made, then the tables."""
    return ("# Config reference\n\n" + INTRO + "\n\nGenerated by `tokenbench schema --reference "
            f"{REFERENCE_FILE}`; do not edit by hand.\n\n" + reference_markdown())


def write_outputs(schema_path: str | None, reference_path: str | None) -> int:
    """``tokenbench schema``: the JSON Schema to schema_path (stdout when neither path is given),
    the reference document to reference_path."""
    import sys
    from pathlib import Path

    if reference_path:
        Path(reference_path).write_text(reference_document())
    if schema_path:
        Path(schema_path).write_text(schema_text())
    elif not reference_path:
        sys.stdout.write(schema_text())
    return 0
