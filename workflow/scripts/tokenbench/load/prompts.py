"""Prompt sources and the seeded, reproducible request list of a load test."""

from __future__ import annotations

import json
import random
from importlib import resources
from pathlib import Path
from typing import Any

from tokenbench.config import DatasetPrompts, FilePrompts, PromptSource, SyntheticPrompts, canonical_hash


def builtin_prompts() -> list[dict[str, Any]]:
    """32 prompts written for tokenbench: technical, creative, code and general questions."""
    text = resources.files("tokenbench").joinpath("data/prompts.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


class PromptError(ValueError):
    pass


def file_prompts(spec: FilePrompts) -> list[dict[str, Any]]:
    """Prompts from a JSONL or CSV file: one per row, text in `column`."""
    import pandas as pd

    path, column, output_column, limit = spec.file, spec.column, spec.output_column, spec.limit
    p = Path(path)
    if not p.is_file():
        raise PromptError(f"request.prompts.file: {path} does not exist")
    df = pd.read_json(p, lines=True) if p.suffix in (".jsonl", ".ndjson") else pd.read_csv(p)
    for col in filter(None, (column, output_column)):
        if col not in df.columns:
            raise PromptError(f"request.prompts: {path} has no column '{col}' (columns: {list(df.columns)})")
    df = df.head(limit) if limit else df
    out = []
    for i, row in enumerate(df.itertuples(index=False)):
        item = {"id": f"{p.stem}-{i}", "text": str(getattr(row, column))}
        if output_column and pd.notna(getattr(row, output_column)):
            item["max_tokens"] = int(getattr(row, output_column))
        out.append(item)
    if not out:
        raise PromptError(f"request.prompts.file: {path} has no rows")
    return out


DATASETS = {  # name -> (hub dataset repo, file, row reader)
    "dolly": ("databricks/databricks-dolly-15k", "databricks-dolly-15k.jsonl"),
    "sharegpt": ("anon8231489123/ShareGPT_Vicuna_unfiltered", "ShareGPT_V3_unfiltered_cleaned_split.json"),
}


def dataset_prompts(spec: DatasetPrompts) -> tuple[list[dict[str, Any]], dict]:
    """Prompts from a Hugging Face dataset file (hf_hub_download, cached; HF_HUB_OFFLINE honoured)."""
    import os

    from huggingface_hub import hf_hub_download

    name, revision, limit = spec.dataset, spec.revision, spec.limit
    repo, filename = DATASETS[name]
    from tokenbench import hub

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    try:
        path = hf_hub_download(repo_id=repo, filename=filename, repo_type="dataset", revision=revision,
                               token=hub.token(), local_files_only=offline)
    except Exception as exc:
        if not offline and hub.refused(exc):
            raise PromptError(f"request.prompts.dataset '{name}': "
                              + hub.refusal_message(f"{repo}/{filename}@{revision}", exc)) from None
        raise PromptError(
            f"request.prompts.dataset '{name}': cannot fetch {repo}/{filename}@{revision} "
            f"({'offline (HF_HUB_OFFLINE) and not cached' if offline else 'no hub access?'}: {type(exc).__name__}). "
            "Use prompts: builtin, or a local file: {file: path.jsonl}") from None
    resolved = Path(path).parent.name  # the snapshot directory is the commit sha
    items = []
    if name == "dolly":
        with open(path) as fh:
            for i, line in enumerate(fh):
                row = json.loads(line)
                text = row["instruction"] + (f"\n\n{row['context']}" if row.get("context") else "")
                items.append({"id": f"dolly-{i}", "text": text})
                if limit and len(items) >= limit:
                    break
    else:
        with open(path) as fh:
            for conv in json.load(fh):
                turns = conv.get("conversations") or []
                if len(turns) >= 2 and turns[0].get("from") == "human" and turns[0].get("value"):
                    items.append({"id": f"sharegpt-{conv.get('id', len(items))}", "text": turns[0]["value"]})
                if limit and len(items) >= limit:
                    break
    return items, {"dataset": repo, "file": filename, "revision": revision, "resolved_revision": resolved}


WORDS = ("time year people way day man thing woman life child world school state family student group "
         "country problem hand part place case week company system program question work government number "
         "night point home water room mother area money story fact month lot right study book eye job word "
         "business issue side kind head house service friend father power hour game line end member law car "
         "city community name president team minute idea kid body information back parent face others level "
         "office door health person art war history party result change morning reason research girl guy "
         "moment air teacher force education").split()


def synthetic_prompts(tokenizer, input_tokens: int, count: int, seed: int) -> list[dict[str, Any]]:
    """`count` distinct prompts of exactly `input_tokens` tokens in the model's own tokenizer."""
    rng = random.Random(f"{seed}:synthetic")
    out = []
    for i in range(count):
        words = [rng.choice(WORDS) for _ in range(input_tokens * 2 + 8)]
        ids = tokenizer.encode(" ".join(words))[:input_tokens]
        text = tokenizer.decode(ids)
        for _ in range(8):  # detokenize/retokenize can merge at the cut: trim or pad until exact
            n = len(tokenizer.encode(text))
            if n == input_tokens:
                break
            text = tokenizer.decode(tokenizer.encode(text)[:input_tokens]) if n > input_tokens else text + " " + rng.choice(WORDS)
        else:
            raise PromptError(f"could not build a prompt of exactly {input_tokens} tokens")
        out.append({"id": f"synthetic-{input_tokens}-{i}", "text": text, "input_tokens": input_tokens})
    return out


def load_prompts(source: PromptSource, tokenizer=None, seed: int = 0) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The prompt set of a request spec, and a description of where it came from (for provenance)."""
    if isinstance(source, FilePrompts):
        return file_prompts(source), {"source": "file", "file": source.file}
    if isinstance(source, DatasetPrompts):
        items, info = dataset_prompts(source)
        return items, {"source": "dataset", **info}
    if isinstance(source, SyntheticPrompts):
        if tokenizer is None:
            raise PromptError("request.prompts.synthetic needs the model's tokenizer: the engine must be able to "
                              "tokenize (llama.cpp's /tokenize) or the model must ship a tokenizer")
        syn = source.synthetic
        return synthetic_prompts(tokenizer, syn.input_tokens, syn.count, seed), {"source": "synthetic", **syn.model_dump()}
    if source == "builtin":
        return builtin_prompts(), {"source": "builtin"}
    raise PromptError(f"request.prompts: unknown prompt source {source!r}; give builtin, {{file: ...}}, "
                      f"{{dataset: ...}} or {{synthetic: ...}}")


class PromptStream:
    """An endless, seeded sequence of prompts: the same seed gives the same request list.

    Prompts are drawn in shuffled rounds (every prompt once per round, as in seed 000's
    "rotated randomly to prevent caching bias"), so short runs still cover the set evenly.
    """

    def __init__(self, prompts: list[dict[str, Any]], seed: int, salt: str = ""):
        if not prompts:
            raise ValueError("empty prompt set")
        self.prompts = prompts
        self.rng = random.Random(f"{seed}:{salt}")
        self._round: list[int] = []

    def next(self) -> dict[str, Any]:
        if not self._round:
            self._round = list(range(len(self.prompts)))
            self.rng.shuffle(self._round)
        return self.prompts[self._round.pop()]


def prompt_set_hash(prompts: list[dict[str, Any]]) -> str:
    return canonical_hash(prompts)
