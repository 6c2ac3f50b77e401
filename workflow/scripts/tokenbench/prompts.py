"""Prompt sources and the seeded, reproducible request list of a load test."""

from __future__ import annotations

import json
import random
from importlib import resources
from typing import Any

from .config import canonical_hash


def builtin_prompts() -> list[dict[str, Any]]:
    """32 prompts written for tokenbench: technical, creative, code and general questions."""
    text = resources.files("tokenbench").joinpath("data/prompts.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def load_prompts(source: str) -> list[dict[str, Any]]:
    if source == "builtin":
        return builtin_prompts()
    raise ValueError(f"request.prompts: unknown prompt source {source!r}")


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
