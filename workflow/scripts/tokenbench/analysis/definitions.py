"""TTFT, TPOT, ITL and output tokens as other benchmark tools define them, from tokenbench's records.

Tools disagree on the same server: vLLM's ``bench serve`` stops its TTFT clock at the first SSE
event that has a ``choices`` list, the empty role chunk included, where GuideLLM and AIPerf wait
for the first token and inference-perf for the first *content* token; GuideLLM's TPOT includes the
time to the first token; AIPerf counts output tokens by re-tokenizing the text. Each tool's
definitions are declared here once (the version read, the source files, one function per formula
whose docstring is the definition) and applied to one phase's ok requests, beside tokenbench's own
figures, which come from ``tokenbench.analysis.metrics``.

The records are tokenbench's: where a tool's definition needs a timestamp they do not hold, the
figure is left out with a note saying which; where another recorded value stands in for the tool's
own (``sent_ns`` for the moment the tool starts its clock, the engine's re-tokenization for the
tool's tokenizer), the note says which. Two differences no record can carry are not corrected for:
every tool stamps an event when its event loop gets to the socket read, tokenbench with the
kernel's receive time of that read; and each tool's client has its own overhead before the request
leaves.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tokenbench.analysis.metrics import dist, itl_dist, itl_ms, request_latencies
from tokenbench.chunks import Chunks, Tokens

# figure -> (label, unit)
FIGURES = {"ttft_ms": ("TTFT", "ms"), "tpot_ms": ("TPOT", "ms"), "itl_ms": ("ITL", "ms"),
           "output_tokens": ("output tokens", "")}
# the statistic the run page shows per figure (the JSON holds them all): ITL is pooled over gaps by
# two of the tools, which gives a mean and no per-request percentile; token counts differ in total
SHOWN = {"ttft_ms": "p50", "tpot_ms": "p50", "itl_ms": "mean", "output_tokens": "total"}


# ============================================================================ the records, per request
@dataclass
class Records:
    """A phase's ok requests as the formulas read them: one float per request, in ms from the
    phase's earliest send for timestamps (exact: the int ns are subtracted first), NaN where a row
    has no value. A column the records do not hold reads as None."""
    frame: pd.DataFrame  # the ok rows (metrics.request_latencies)
    first_chunk: np.ndarray  # first token-carrying chunk (ms)
    last_chunk: np.ndarray  # last token-carrying chunk (ms)
    n_chunks: np.ndarray  # token-carrying chunks (int)
    origin: int  # ns subtracted from every timestamp
    spans: ChunkSpans
    rows: np.ndarray  # the requests' positions in ``spans``

    @classmethod
    def of(cls, ok: pd.DataFrame, spans: ChunkSpans, rows: np.ndarray) -> Records:
        """``ok``: the ok requests; ``spans``: every request's chunk span; ``rows``: the ok requests'
        positions among them."""
        sent = ok["sent_ns"].to_numpy(dtype=np.int64)
        origin = int(sent.min()) if len(sent) else 0
        first, last, n = spans.first[rows], spans.last[rows], spans.n[rows]
        has = n > 0
        return cls(ok, np.where(has, (first - origin) / 1e6, np.nan), np.where(has, (last - origin) / 1e6, np.nan),
                   n, origin, spans, rows)

    def __len__(self) -> int:
        return len(self.frame)

    def tokens(self) -> Tokens:
        """The requests' chunks as ``tokenbench.chunks.Tokens`` (what ``metrics.itl_ms`` reads)."""
        return Tokens.of_requests(self.frame, self.spans.chunks.take(self.rows))

    def has(self, column: str) -> bool:
        return column in self.frame.columns

    def time(self, column: str) -> np.ndarray | None:
        """A timestamp column in ms from the origin; None where the records do not hold it."""
        if not self.has(column):
            return None
        v = self.frame[column].astype("Int64")
        return ((v - self.origin).astype("Float64") / 1e6).to_numpy(dtype=float, na_value=np.nan)

    def unrecorded(self, column: str, rows: np.ndarray | None = None) -> tuple[str, ...]:
        """A note where a column the records hold is null for some requests (among ``rows``, a mask)."""
        if not self.has(column):
            return ()
        null = self.frame[column].isna().to_numpy()
        k = int((null & rows).sum() if rows is not None else null.sum())
        return (f"`{column}` not recorded for {k} of {len(self) if rows is None else int(rows.sum())} requests",) \
            if k else ()

    def count(self, column: str) -> np.ndarray | None:
        """A count column as floats (NaN where null); None where the records do not hold it."""
        if not self.has(column):
            return None
        return self.frame[column].astype("Float64").to_numpy(dtype=float, na_value=np.nan)

    @property
    def sent(self) -> np.ndarray:
        return self.time("sent_ns")

    @property
    def usage(self) -> np.ndarray:
        """True where the output token count is the server's usage count."""
        return (self.frame["output_tokens_source"] == "usage").to_numpy(dtype=bool, na_value=False)

    @property
    def reasoning_aware(self) -> bool:
        """Records that tell the first token of any kind from the first content token (newer files)."""
        return self.has("first_output_token_ns")


@dataclass(frozen=True)
class ChunkSpans:
    """Each request's first and last token-carrying chunk (ns) and how many it had, from ``chunk_ns``
    read once (``tokenbench.chunks``: flat arrays, no copy)."""
    first: np.ndarray
    last: np.ndarray
    n: np.ndarray
    chunks: Chunks

    @classmethod
    def of(cls, column) -> ChunkSpans:
        c = Chunks.of(column)
        n = c.lengths
        has = n > 0
        first = np.zeros(len(n), dtype=np.int64)
        last = np.zeros(len(n), dtype=np.int64)
        first[has] = c.values[c.offsets[:-1][has]]
        last[has] = c.values[c.offsets[1:][has] - 1]
        return cls(first, last, n, c)


@dataclass
class Values:
    """One figure of one tool, per request: NaN where the tool gives the request no value; None
    where the records cannot give it at all. ``weights``: how much each request counts in the
    tool's aggregate (GuideLLM weights by tokens; a figure pooled over gaps weights by gap count)."""
    per_request: np.ndarray | None
    weights: np.ndarray | None = None
    notes: tuple[str, ...] = ()


def _not_recorded(*columns: str) -> str:
    return "not recorded in these requests: " + ", ".join(f"`{c}`" for c in columns)


def _ratio(num: np.ndarray, den: np.ndarray, keep: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(keep, num / den, np.nan)


OLD_FIRST_TOKEN = ("these records predate reasoning-aware timestamps (no `first_output_token_ns`): their "
                   "`first_token_ns` is the first content token, which is this tool's first token only where the "
                   "model streamed no reasoning")
LAST_CHUNK = ("the last token-carrying chunk stands for the last event with a `choices` list: a finish chunk of "
              "its own (`finish_reason` with an empty delta) is not recorded")


def _first_any_token(r: Records) -> tuple[np.ndarray, tuple[str, ...]]:
    """The first token of any kind, content or reasoning (``first_token_ns``)."""
    return r.time("first_token_ns"), (() if r.reasoning_aware else (OLD_FIRST_TOKEN,))


def _first_content_token(r: Records) -> np.ndarray:
    """The first content token: ``first_output_token_ns``; in older records ``first_token_ns``,
    which was recorded for content only."""
    return r.time("first_output_token_ns") if r.reasoning_aware else r.time("first_token_ns")


# ============================================================================ tokenbench
def tokenbench_ttft(r: Records) -> Values:
    """TTFT as ``metrics.request_latencies`` computes it (the registry's ``ttft_ms``)."""
    return Values(r.frame["ttft_ms"].to_numpy(dtype=float, na_value=np.nan))


def tokenbench_tpot(r: Records) -> Values:
    """TPOT as ``metrics.request_latencies`` computes it (the registry's ``tpot_ms``)."""
    return Values(r.frame["tpot_ms"].to_numpy(dtype=float, na_value=np.nan))


def tokenbench_itl(r: Records) -> Values:
    """ITL as ``metrics.itl_ms`` computes it (the registry's ``itl_ms``): the gaps between
    consecutive token-carrying chunks, pooled; per request, the mean of its own gaps."""
    gaps = itl_ms(r.frame, r.tokens())
    per = np.maximum(r.n_chunks - 1, 0)
    ends = np.cumsum(per)
    sums = np.concatenate([[0.0], np.cumsum(gaps)])[ends] - np.concatenate([[0.0], np.cumsum(gaps)])[ends - per]
    return Values(_ratio(sums, per, per > 0), per.astype(float))


def tokenbench_tokens(r: Records) -> Values:
    """Output tokens as recorded (the registry's convention): the server's usage count, else the
    chunk count (``output_tokens_source``)."""
    return Values(r.count("output_tokens"))


# ============================================================================ vLLM bench serve
def _vllm_first_event(r: Records) -> tuple[np.ndarray | None, tuple[str, ...]]:
    if r.has("first_event_ns"):
        return r.time("first_event_ns"), r.unrecorded("first_event_ns")
    if r.has("first_byte_ns"):
        return r.time("first_byte_ns"), r.unrecorded("first_byte_ns") + (
            "`first_event_ns` not recorded (older records): `first_byte_ns`, the first body byte, stands for the "
            "first event with a `choices` list (the same where the server's first event is its role chunk; earlier "
            "where it sends an SSE comment first)",)
    return None, (_not_recorded("first_event_ns", "first_byte_ns"),)


def _vllm_token_count(r: Records) -> tuple[np.ndarray, tuple[str, ...]]:
    n = r.count("output_tokens")
    usage = r.usage
    notes = ["the records do not say which event carried the usage: vLLM reads it only from an event whose "
             "`choices` list is empty, taken here to be where the server sent it"] if usage.any() else []
    if not usage.all():
        client = r.count("client_output_tokens")
        if client is None:
            client = np.full(len(r), np.nan)
            notes.append("requests without a usage count: " + _not_recorded("client_output_tokens"))
        else:
            notes.append("requests without a usage count: `client_output_tokens` (the content re-tokenized by the "
                         "engine's own tokenizer) stands for vLLM's re-tokenization with the Hugging Face tokenizer")
            notes.extend(r.unrecorded("client_output_tokens", ~usage))
        n = np.where(usage, n, client)
    return n, tuple(notes)


def vllm_ttft(r: Records) -> Values:
    """TTFT = arrival of the first SSE ``data:`` event whose JSON has a non-empty ``choices`` list (the
    role chunk ``{"delta": {"role": "assistant", "content": ""}}`` counts: it carries no token) −
    ``time.perf_counter()`` taken just before ``session.post`` (before aiohttp acquires or opens a
    connection). Chat and completions alike."""
    first, notes = _vllm_first_event(r)
    if first is None:
        return Values(None, notes=notes)
    return Values(first - r.sent, notes=notes)


def vllm_tpot(r: Records) -> Values:
    """TPOT = (latency − TTFT) ÷ (output tokens − 1), for requests with more than one output token;
    latency ends at the last event with a non-empty ``choices`` list (the trailing usage-only chunk
    is not one), so the span is the first such event (the role chunk) to the last."""
    first, notes = _vllm_first_event(r)
    if first is None:
        return Values(None, notes=notes)
    n, token_notes = _vllm_token_count(r)
    return Values(_ratio(r.last_chunk - first, n - 1, n > 1), notes=notes + (LAST_CHUNK,) + token_notes)


def vllm_itl(r: Records) -> Values:
    """ITL = the gaps between consecutive events with a non-empty ``choices`` list after the first,
    the role chunk → first token gap included, pooled over all requests (``itls += output.itl``):
    the mean is Σ gaps ÷ number of gaps."""
    first, notes = _vllm_first_event(r)
    if first is None:
        return Values(None, notes=notes)
    gaps = r.n_chunks - 1 + (first < r.first_chunk)
    return Values(_ratio(r.last_chunk - first, gaps, gaps > 0), gaps.astype(float), notes + (
        LAST_CHUNK, "a role chunk that arrived in the same socket read as the first token shares its timestamp "
        "and is not told apart: its zero gap is not counted", "events with a `choices` list but no token (an "
        "empty delta mid-stream) are not recorded"))


def vllm_tokens(r: Records) -> Values:
    """Output tokens = ``usage.completion_tokens`` of the usage-only chunk
    (``stream_options.include_usage``); where the server sent none, the streamed ``content``
    re-tokenized with the model's tokenizer (``add_special_tokens=False``)."""
    n, notes = _vllm_token_count(r)
    return Values(n, notes=notes)


# ============================================================================ GuideLLM
def guidellm_ttft(r: Records) -> Values:
    """TTFT (``time_to_first_token_ms``) = ``first_token_iteration`` − ``request_start``: the first SSE
    line whose delta has non-empty ``content``, ``reasoning``/``reasoning_content`` or ``tool_calls``
    (the role chunk does not count; reasoning does) − ``time.time()`` taken just before
    ``httpx.AsyncClient.stream`` (before a connection is acquired)."""
    first, notes = _first_any_token(r)
    return Values(first - r.sent, notes=notes)


def guidellm_tpot(r: Records) -> Values:
    """TPOT (``time_per_output_token_ms``) = (``last_token_iteration`` − ``request_start``) ÷ output
    tokens: the time to the first token is included, divided over every output token. Aggregated
    weighted by output tokens."""
    n = r.count("output_tokens")
    return Values(_ratio(r.last_chunk - r.sent, n, n > 0), n)


def guidellm_itl(r: Records) -> Values:
    """ITL (``inter_token_latency_ms``) = (``last_token_iteration`` − ``first_token_iteration``) ÷
    (output tokens − 1), for requests with more than one output token. Aggregated weighted by
    output tokens − 1 (so its mean is Σ spans ÷ Σ (tokens − 1))."""
    first, notes = _first_any_token(r)
    n = r.count("output_tokens")
    return Values(_ratio(r.last_chunk - first, n - 1, n > 1), np.maximum(n - 1, 0), notes)


def guidellm_tokens(r: Records) -> Values:
    """Output tokens = the last ``usage``'s ``completion_tokens`` (GuideLLM asks for
    ``include_usage`` and ``continuous_usage_stats``); without usage, ``token_iterations``: the
    SSE lines that carried content, reasoning or tool calls."""
    return Values(r.count("output_tokens"))


# ============================================================================ AIPerf
def _stands_for(client: np.ndarray, tool_count: str) -> tuple[str, ...]:
    """The note for the engine's re-tokenization standing for a tool's, where any request has it."""
    if not np.isfinite(client).any():
        return ()
    return (f"`client_output_tokens` (the content re-tokenized by the engine's own tokenizer) stands for {tool_count}",)


def _aiperf_sequence_length(r: Records) -> tuple[np.ndarray | None, tuple[str, ...]]:
    client = r.count("client_output_tokens")
    if client is None:
        return None, (_not_recorded("client_output_tokens"),)
    notes = [*_stands_for(client, "AIPerf's `tokenizer.encode` of the content with the model's Hugging Face "
                                  "tokenizer"), *r.unrecorded("client_output_tokens")]
    chunks = r.count("reasoning_chunks")
    if chunks is None:
        reasoning = np.zeros(len(r))
        notes.append("these records predate `reasoning_chunks`: reasoning tokens are taken as 0 (exact where the "
                     "model streamed no reasoning)")
    else:
        used = r.count("reasoning_tokens")
        used = np.full(len(r), np.nan) if used is None else used
        reasoning = np.where(chunks > 0, used, 0.0)
        if (chunks > 0).any():
            notes.append("reasoning tokens: the server's `usage.completion_tokens_details.reasoning_tokens` stands "
                         "for AIPerf's re-tokenized reasoning text (NaN where the server sent none)")
    return client + reasoning, tuple(notes)


def aiperf_ttft(r: Records) -> Values:
    """TTFT (``time_to_first_token``) = the first content response − ``start_perf_ns``: the first SSE
    message whose delta has non-empty ``content``, ``reasoning_content``/``reasoning`` or
    ``tool_calls`` (the role chunk parses to no data and does not count) − ``time.perf_counter_ns()``
    taken just before ``session.request`` (before aiohttp acquires or opens a connection)."""
    first, notes = _first_any_token(r)
    return Values(first - r.sent, notes=notes)


def aiperf_tpot(r: Records) -> Values:
    """AIPerf defines no TPOT: its ``inter_token_latency`` (the ITL figure) is (request latency −
    TTFT) ÷ (OSL − 1), the formula vLLM calls TPOT."""
    return Values(None, notes=("AIPerf has no TPOT; see its ITL, which is this formula",))


def aiperf_itl(r: Records) -> Values:
    """ITL (``inter_token_latency``) = (``request_latency`` − TTFT) ÷ (OSL − 1), for OSL ≥ 2;
    ``request_latency`` ends at the last content response (not the usage-only chunk or
    ``[DONE]``); OSL (output sequence length) = output tokens + reasoning tokens. One value per
    request (``np.percentile``, ``np.mean``)."""
    first, notes = _first_any_token(r)
    osl, osl_notes = _aiperf_sequence_length(r)
    if osl is None:
        return Values(None, notes=osl_notes)
    return Values(_ratio(r.last_chunk - first, osl - 1, osl >= 2), notes=notes + osl_notes)


def aiperf_tokens(r: Records) -> Values:
    """Output sequence length (``output_sequence_length``) = ``output_token_count`` +
    ``reasoning_token_count``, by default both counted client-side: the content and the reasoning
    text each re-tokenized with the model's tokenizer (``--use-server-token-count`` switches to
    ``usage``)."""
    osl, notes = _aiperf_sequence_length(r)
    return Values(osl, notes=notes)


# ============================================================================ inference-perf
def _inference_perf_token_count(r: Records) -> tuple[np.ndarray | None, tuple[str, ...]]:
    client = r.count("client_output_tokens")
    if client is None:
        return None, (_not_recorded("client_output_tokens"),)
    return client, (*_stands_for(client, "inference-perf's `count_tokens(output_text, add_special_tokens=False)`"),
                    *r.unrecorded("client_output_tokens"))


def _streamable(r: Records) -> tuple[np.ndarray, tuple[str, ...]]:
    """Requests with more than one output token time (inference-perf computes TTFT and TPOT for
    those only): one time per token, each chunk's tokens sharing the chunk's arrival."""
    n, notes = _inference_perf_token_count(r)
    if n is not None and np.isfinite(n).all():
        return n > 1, notes
    content = r.n_chunks - (np.nan_to_num(r.count("reasoning_chunks")) if r.has("reasoning_chunks") else 0)
    return np.where(np.isfinite(n), n > 1, content > 1) if n is not None else content > 1, (
        "which requests have more than one token time: where `client_output_tokens` is not recorded, the content "
        "chunk count stands for their token count",)


def inference_perf_ttft(r: Records) -> Values:
    """TTFT (``time_to_first_token``) = ``output_token_times[0]`` − ``start``: the first SSE event whose
    ``choices[0].delta.content`` (chat) or ``text`` (completions) is non-empty (the role chunk and
    reasoning do not count) − ``time.perf_counter()`` taken just before ``session.post`` (before
    aiohttp acquires or opens a connection); requests with more than one output token time only."""
    keep, notes = _streamable(r)
    return Values(np.where(keep, _first_content_token(r) - r.sent, np.nan), notes=notes)


def inference_perf_tpot(r: Records) -> Values:
    """TPOT (``time_per_output_token``) = (``output_token_times[-1]`` − ``output_token_times[0]``) ÷
    (output tokens − 1): the first to the last content chunk, over the content re-tokenized
    (``use_server_output_tokens`` switches to ``usage.completion_tokens``)."""
    n, notes = _inference_perf_token_count(r)
    if n is None:
        return Values(None, notes=notes)
    keep, _ = _streamable(r)
    return Values(_ratio(r.last_chunk - _first_content_token(r), n - 1, keep & (n > 1)), notes=notes + _last_content(r))


def inference_perf_itl(r: Records) -> Values:
    """ITL (``inter_token_latency``) = the deltas between consecutive output token times, pooled over
    all requests: every token of a chunk is given the chunk's arrival time (the chunk's text
    re-tokenized), so a chunk of k tokens adds k − 1 zeros and one gap. The mean is Σ (last −
    first content chunk) ÷ Σ (tokens − 1)."""
    n, notes = _inference_perf_token_count(r)
    if n is None:
        return Values(None, notes=notes)
    span = r.last_chunk - _first_content_token(r)
    return Values(_ratio(span, n - 1, n > 1), np.maximum(n - 1, 0), notes + _last_content(r) + (
        "each chunk's own re-tokenized count is not recorded: the whole content's count stands for their sum",))


def inference_perf_tokens(r: Records) -> Values:
    """Output tokens = the streamed content re-tokenized (``count_tokens(output_text,
    add_special_tokens=False)``); reasoning is not part of it."""
    n, notes = _inference_perf_token_count(r)
    return Values(n, notes=notes)


def _last_content(r: Records) -> tuple[str, ...]:
    if r.has("reasoning_chunks") and (np.nan_to_num(r.count("reasoning_chunks")) > 0).any():
        return ("the last token-carrying chunk stands for the last content chunk (reasoning streamed first)",)
    return ()


# ============================================================================ the tools
@dataclass(frozen=True)
class Definition:
    """One figure as one tool defines it."""
    figure: str  # a key of FIGURES
    name: str  # the tool's own name for it
    compute: Callable[[Records], Values]
    pooled: bool = False  # one value per gap, pooled over requests: a mean, no per-request percentile

    @property
    def formula(self) -> str:
        return inspect.cleandoc(self.compute.__doc__ or "")


@dataclass(frozen=True)
class Tool:
    key: str
    name: str
    version: str  # what was read: release or commit
    sources: tuple[str, ...]  # repository@commit:path of the files the definitions come from
    clock: str  # where its clock starts, and what stands for it in the records
    percentile: str  # how it takes a percentile of per-request values
    definitions: tuple[Definition, ...]

    @property
    def weighted(self) -> bool:
        return self.key == "guidellm"


CLOCK_NOTE = ("`sent_ns` stands for this tool's clock start: both are taken after the request body is serialized "
              "and before a connection is acquired or opened")
LINEAR = "numpy's linear interpolation (`np.percentile`)"

TOKENBENCH = Tool(
    "tokenbench", "tokenbench", "this run", ("workflow/scripts/tokenbench/analysis/metrics.py",),
    "as the registry's `ttft_ms` says (`metrics.request_latencies`)", LINEAR,
    (Definition("ttft_ms", "ttft_ms", tokenbench_ttft), Definition("tpot_ms", "tpot_ms", tokenbench_tpot),
     Definition("itl_ms", "itl_ms", tokenbench_itl, pooled=True),
     Definition("output_tokens", "output_tokens", tokenbench_tokens)))

PEERS = (
    Tool("vllm", "vLLM bench serve", "commits 02cfb534 (request function), 009e6d4a (serve.py)",
         ("vllm-project/vllm@02cfb534df5674737558730b10f23d1b7aef9b7c:vllm/benchmarks/lib/endpoint_request_func.py",
          "vllm-project/vllm@009e6d4a1cd6ba3fb2a9fc00f4ec06f5297232a1:vllm/benchmarks/serve.py"),
         "`st = time.perf_counter()` just before `session.post(...)`; " + CLOCK_NOTE, LINEAR,
         (Definition("ttft_ms", "ttft", vllm_ttft), Definition("tpot_ms", "tpot", vllm_tpot),
          Definition("itl_ms", "itl", vllm_itl, pooled=True),
          Definition("output_tokens", "total_output_tokens", vllm_tokens))),
    Tool("guidellm", "GuideLLM", "v0.7.3+12 (ee7a7745)",
         ("vllm-project/guidellm@ee7a77457ba668b4b5ccb40f110518829893b36a:src/guidellm/backends/openai/http.py",
          "vllm-project/guidellm@ee7a77457ba668b4b5ccb40f110518829893b36a:"
          "src/guidellm/backends/openai/request_handlers.py",
          "vllm-project/guidellm@ee7a77457ba668b4b5ccb40f110518829893b36a:src/guidellm/schemas/request_stats.py",
          "vllm-project/guidellm@ee7a77457ba668b4b5ccb40f110518829893b36a:src/guidellm/benchmark/schemas/metrics.py",
          "vllm-project/guidellm@ee7a77457ba668b4b5ccb40f110518829893b36a:src/guidellm/schemas/statistics.py"),
         "`request_info.timings.request_start = time.time()` just before `httpx.AsyncClient.stream(...)`; "
         + CLOCK_NOTE,
         "weighted, no interpolation: the first value whose cumulative weight reaches the quantile "
         "(`Percentiles.from_pdf`); TPOT weighted by output tokens, ITL by output tokens − 1",
         (Definition("ttft_ms", "time_to_first_token_ms", guidellm_ttft),
          Definition("tpot_ms", "time_per_output_token_ms", guidellm_tpot),
          Definition("itl_ms", "inter_token_latency_ms", guidellm_itl),
          Definition("output_tokens", "output_token_count", guidellm_tokens))),
    Tool("aiperf", "AIPerf", "src/aiperf layout, the commit read per file (below)",
         ("ai-dynamo/aiperf@58028d5ba1cb33b0e135e18f1cc8833556a3639e:src/aiperf/metrics/types/ttft_metric.py",
          "ai-dynamo/aiperf@58dd5dea729ceece71b0afbea12994030bf70d8b:"
          "src/aiperf/metrics/types/inter_token_latency_metric.py",
          "ai-dynamo/aiperf@4f7ccffdf9641d884461671f3790dc700c814d27:src/aiperf/metrics/types/request_latency_metric.py",
          "ai-dynamo/aiperf@00a8e858f64a6b44929841b59c747e6544409068:src/aiperf/endpoints/openai_chat.py",
          "ai-dynamo/aiperf@095370b18ef9ab554557f3ae373952ead1cc8d36:src/aiperf/transports/aiohttp_client.py",
          "ai-dynamo/aiperf@1849cd1baf9f1bfc88e4d047c4028bc291d091a4:src/aiperf/records/inference_result_parser.py",
          "ai-dynamo/aiperf@0fec57a67268df14c2988dcd73df7d28c675e1f4:src/aiperf/metrics/metric_dicts.py"),
         "`record.start_perf_ns = time.perf_counter_ns()` just before `session.request(...)`; " + CLOCK_NOTE, LINEAR,
         (Definition("ttft_ms", "time_to_first_token", aiperf_ttft), Definition("tpot_ms", "(none)", aiperf_tpot),
          Definition("itl_ms", "inter_token_latency", aiperf_itl),
          Definition("output_tokens", "output_sequence_length", aiperf_tokens))),
    Tool("inference_perf", "inference-perf", "v0.6.1+29 (7de5ef2e)",
         ("kubernetes-sigs/inference-perf@7de5ef2ed6f7934e0ecbc8297e593f79e68430c0:"
          "inference_perf/apis/streaming_parser.py",
          "kubernetes-sigs/inference-perf@7de5ef2ed6f7934e0ecbc8297e593f79e68430c0:inference_perf/apis/chat.py",
          "kubernetes-sigs/inference-perf@7de5ef2ed6f7934e0ecbc8297e593f79e68430c0:"
          "inference_perf/client/modelserver/openai_client.py",
          "kubernetes-sigs/inference-perf@7de5ef2ed6f7934e0ecbc8297e593f79e68430c0:inference_perf/reportgen/base.py"),
         "`start = time.perf_counter()` just before `session.post(...)`; " + CLOCK_NOTE, LINEAR,
         (Definition("ttft_ms", "time_to_first_token", inference_perf_ttft),
          Definition("tpot_ms", "time_per_output_token", inference_perf_tpot),
          Definition("itl_ms", "inter_token_latency", inference_perf_itl, pooled=True),
          Definition("output_tokens", "output_tokens", inference_perf_tokens))),
)
TOOLS = (TOKENBENCH, *PEERS)


# ============================================================================ per request and per phase
def _phase_records(req: pd.DataFrame, spans: ChunkSpans, name: str) -> Records:
    """The phase's ok requests (``metrics.request_latencies``, so tokenbench's own selection and
    latency columns) with their chunk spans."""
    in_phase = (req["phase"] == name).to_numpy(dtype=bool, na_value=False)
    ok_rows = np.flatnonzero(in_phase & (req["status"] == "ok").to_numpy(dtype=bool, na_value=False))
    return Records.of(request_latencies(req[in_phase]), spans, ok_rows)


def request_figures(req: pd.DataFrame) -> pd.DataFrame:
    """Per ok request: request_id, phase and every tool's figures (columns ``<tool>.<figure>``,
    NaN where the tool gives the request none or the records cannot give it)."""
    spans = ChunkSpans.of(req["chunk_ns"])
    rest = req.drop(columns=["chunk_ns"])
    parts = []
    for name in req["phase"].dropna().unique():
        r = _phase_records(rest, spans, name)
        out = {"request_id": r.frame["request_id"].to_numpy(), "phase": name}
        for tool in TOOLS:
            for d in tool.definitions:
                v = d.compute(r).per_request
                out[f"{tool.key}.{d.figure}"] = np.full(len(r), np.nan) if v is None else v
        parts.append(pd.DataFrame(out))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def weighted_lower_percentile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    """GuideLLM's percentile (``Percentiles.from_pdf``): values sorted, weights normalized, the first
    value whose cumulative weight reaches ``q`` / 100; no interpolation."""
    order = np.argsort(values, kind="stable")
    cdf = np.cumsum(weights[order]) / weights.sum()
    return float(values[order][min(int(np.searchsorted(cdf, q / 100, side="left")), len(values) - 1)])


def _aggregate(tool: Tool, d: Definition, v: Values) -> dict[str, Any]:
    """The tool's own summary of a figure over the phase: p50 and mean as the tool takes them,
    the total of a token count, and n (requests with a value)."""
    out: dict[str, Any] = {"name": d.name, "p50": None, "mean": None, "n": 0}
    if d.figure == "output_tokens":
        out["total"] = None
    out["notes"] = list(v.notes)
    if v.per_request is None:
        return out
    x = v.per_request
    keep = np.isfinite(x)
    w = None
    if v.weights is not None and (tool.weighted or d.pooled):
        w = np.asarray(v.weights, dtype=float)
        keep &= np.isfinite(w) & (w > 0)
        w = w[keep]
    x = x[keep]
    out["n"] = int(keep.sum())
    if not len(x):
        return out
    out["mean"] = float(np.dot(x, w) / w.sum()) if w is not None else float(x.mean())
    if not d.pooled:
        out["p50"] = weighted_lower_percentile(x, w if w is not None else np.ones(len(x)), 50) if tool.weighted \
            else float(np.percentile(x, 50))
    if d.figure == "output_tokens":
        out["total"] = float(x.sum())
    return out


def _own(r: Records, own: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """tokenbench's figures of the phase: from its metrics (``own``: the phase's entry of
    metrics.json where computed already), else computed here with the same functions."""
    if own is None:
        own = {"ttft_ms": dist(r.frame["ttft_ms"]), "tpot_ms": dist(r.frame["tpot_ms"]),
               "itl_ms": itl_dist(r.frame, r.tokens()),
               "output_tokens_total": int(r.frame["output_tokens"].sum()) if len(r) else 0}
    figures = {}
    for key in ("ttft_ms", "tpot_ms", "itl_ms"):
        d = own.get(key) or {}
        figures[key] = {"name": key, "p50": d.get("p50"), "mean": d.get("mean"), "n": d.get("n", 0), "notes": []}
    tokens = dist(r.frame["output_tokens"])
    figures["output_tokens"] = {"name": "output_tokens", "p50": tokens["p50"], "mean": tokens["mean"],
                                "n": tokens["n"], "total": own.get("output_tokens_total"), "notes": []}
    return figures


def phase_figures(r: Records, own: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every tool's figures of one phase, with each one's difference from tokenbench's same
    statistic (``vs_tokenbench``)."""
    base = _own(r, own)
    out = {"tokenbench": {"figures": base, "notes": []}}
    for tool in PEERS:
        figures = {}
        for d in tool.definitions:
            f = _aggregate(tool, d, d.compute(r))
            f["vs_tokenbench"] = {stat: (f[stat] - base[d.figure][stat] if f.get(stat) is not None
                                         and base[d.figure].get(stat) is not None else None)
                                  for stat in ("p50", "mean", "total") if stat in f}
            figures[d.figure] = f
        out[tool.key] = {"figures": figures, "notes": [CLOCK_NOTE]}
    return out


def side_by_side(req: pd.DataFrame, marks: list[dict[str, Any]],
                 own: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """{phase name: ``phase_figures``} for each phase that sends requests. ``req``: the requests
    with ``chunk_ns``; ``own``: {phase name: its metrics.json entry}, where computed already."""
    spans = ChunkSpans.of(req["chunk_ns"])
    rest = req.drop(columns=["chunk_ns"])
    out = {}
    for mk in marks:
        if mk["mode"] == "idle":
            continue
        r = _phase_records(rest, spans, mk["name"])
        out[mk["name"]] = phase_figures(r, (own or {}).get(mk["name"]))
    return out


def sources() -> list[dict[str, Any]]:
    """Each tool's declaration as plain data (the Methodology page's table)."""
    return [{"tool": t.name, "version": t.version, "clock": t.clock, "percentile": t.percentile,
             "sources": list(t.sources),
             "figures": [{"figure": d.figure, "name": d.name, "formula": d.formula, "pooled": d.pooled}
                         for d in t.definitions]} for t in TOOLS]
