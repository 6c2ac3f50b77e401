"""The model's tokenizer, for exact-length synthetic prompts and client-side output token counts.

Uses the engine's own tokenizer over HTTP where the engine offers it (llama.cpp's ``/tokenize``
and ``/detokenize``), so the count is the model's, never another model's tokenizer.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import requests


class EngineTokenizer:
    def __init__(self, base_url: str, timeout_s: float = 30.0):
        self.base = base_url.rstrip("/")
        self.timeout = timeout_s
        self.http = requests.Session()

    def encode(self, text: str) -> list[int]:
        r = self.http.post(f"{self.base}/tokenize", json={"content": text, "add_special": False}, timeout=self.timeout)
        r.raise_for_status()
        return r.json()["tokens"]

    def decode(self, ids: list[int]) -> str:
        r = self.http.post(f"{self.base}/detokenize", json={"tokens": ids}, timeout=self.timeout)
        r.raise_for_status()
        return r.json()["content"]

    def count_many(self, texts: list[str], workers: int = 4) -> list[int]:
        with ThreadPoolExecutor(workers) as pool:
            return [len(ids) for ids in pool.map(self.encode, texts)]
