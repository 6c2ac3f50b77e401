"""Other tools' definitions applied to tokenbench's records (tokenbench.analysis.definitions)."""
import json

import numpy as np
import pandas as pd
import pytest

from tokenbench.analysis import definitions
from tokenbench.analysis.definitions import request_figures, side_by_side, weighted_lower_percentile
from tokenbench.analysis.metrics import compute_metrics
from tokenbench.config import HardwareSpec

from .test_metrics import MARK, NO_TELEMETRY

MS = 1_000_000
INT_COLUMNS = ["scheduled_ns", "sent_ns", "written_ns", "headers_ns", "first_byte_ns", "first_event_ns",
               "first_token_ns", "first_output_token_ns", "end_ns", "prompt_tokens", "output_tokens",
               "client_output_tokens", "reasoning_chunks", "reasoning_tokens"]


def record(i, sent, ttft_ms=200, n=10, itl_ms=20, role_ms=None, usage=None, client=None, reasoning=0,
           reasoning_tokens=None, status="ok", phase="steady"):
    """One request's record as the load generator writes it: ``n`` token-carrying chunks ``itl_ms``
    apart from ``ttft_ms`` on, the first ``reasoning`` of them reasoning; the role chunk
    ``role_ms`` before the first token (None: no role chunk, the first event is the first token);
    ``usage``: the server's completion_tokens (None: the server sent none)."""
    first = sent + int(ttft_ms * MS)
    chunks = [first + int(k * itl_ms * MS) for k in range(n)]
    event = first - int(role_ms * MS) if role_ms is not None else first
    return {"request_id": i, "phase": phase, "user": 0, "status": status, "scheduled_ns": sent, "sent_ns": sent,
            "written_ns": sent, "headers_ns": event, "first_byte_ns": event, "first_event_ns": event,
            "first_token_ns": first, "first_output_token_ns": chunks[reasoning] if reasoning < n else None,
            "end_ns": chunks[-1] + MS, "chunk_ns": chunks, "prompt_tokens": 10,
            "output_tokens": usage if usage is not None else n, "output_tokens_source": "usage" if usage is not None
            else "chunks", "client_output_tokens": client, "reasoning_chunks": reasoning,
            "reasoning_tokens": reasoning_tokens, "finish_reason": "length", "attempts": 1}


def frame(rows, drop=()):
    df = pd.DataFrame(rows)
    for c in INT_COLUMNS:
        df[c] = df[c].astype("Int64")
    return df.drop(columns=list(drop))


def phase(df, name="steady"):
    return side_by_side(df, [{"name": name, "mode": "closed"}])[name]


def fig(ph, tool, figure):
    return ph[tool]["figures"][figure]


def test_vllm_counts_the_role_chunk_so_its_ttft_reads_85_ms_below_tokenbench():
    df = frame([record(i, i * 1000 * MS, ttft_ms=200 + 10 * i, role_ms=85, usage=10, client=10) for i in range(7)])
    per = request_figures(df)
    assert per["vllm.ttft_ms"].to_numpy() == pytest.approx(per["tokenbench.ttft_ms"].to_numpy() - 85)
    ph = phase(df)
    assert fig(ph, "tokenbench", "ttft_ms")["p50"] == pytest.approx(230)
    assert fig(ph, "vllm", "ttft_ms")["p50"] == pytest.approx(145)
    assert fig(ph, "vllm", "ttft_ms")["vs_tokenbench"]["p50"] == pytest.approx(-85)
    # the tools that wait for a token read what tokenbench reads (clock started at the same send)
    for tool in ("guidellm", "aiperf", "inference_perf"):
        assert fig(ph, tool, "ttft_ms")["vs_tokenbench"]["p50"] == pytest.approx(0)
    # the role chunk's 85 ms moves into vLLM's decode figures: its span starts at the role chunk
    assert fig(ph, "vllm", "tpot_ms")["p50"] == pytest.approx((85 + 9 * 20) / 9)
    assert fig(ph, "vllm", "itl_ms")["mean"] == pytest.approx((85 + 9 * 20) / 10)  # 10 gaps, the first 85 ms
    assert fig(ph, "tokenbench", "itl_ms")["mean"] == pytest.approx(20)


def test_without_a_role_chunk_vllm_reads_what_tokenbench_reads():
    ph = phase(frame([record(i, i * 1000 * MS, usage=10, client=10) for i in range(3)]))
    assert fig(ph, "vllm", "ttft_ms")["vs_tokenbench"]["p50"] == pytest.approx(0)
    assert fig(ph, "vllm", "itl_ms")["mean"] == pytest.approx(20)


def test_token_counts_follow_each_tools_source():
    # the server counted 12 tokens in 10 chunks; re-tokenizing the text gives 13
    with_usage = [record(i, i * 1000 * MS, n=10, usage=12, client=13) for i in range(2)]
    # no usage from the server: tokenbench and GuideLLM count chunks, vLLM re-tokenizes
    without = [record(2, 2000 * MS, n=10, usage=None, client=13)]
    ph = phase(frame(with_usage + without))
    assert fig(ph, "tokenbench", "output_tokens")["total"] == 12 + 12 + 10
    assert fig(ph, "guidellm", "output_tokens")["total"] == 12 + 12 + 10
    assert fig(ph, "vllm", "output_tokens")["total"] == 12 + 12 + 13
    assert fig(ph, "aiperf", "output_tokens")["total"] == 3 * 13
    assert fig(ph, "inference_perf", "output_tokens")["total"] == 3 * 13
    assert fig(ph, "aiperf", "output_tokens")["vs_tokenbench"]["total"] == 3 * 13 - 34
    # the counts divide the decode span (180 ms from the first to the last chunk)
    per = request_figures(frame(with_usage + without))
    assert per["vllm.tpot_ms"].tolist() == pytest.approx([180 / 11, 180 / 11, 180 / 12])
    assert per["aiperf.itl_ms"].tolist() == pytest.approx([180 / 12] * 3)
    assert per["inference_perf.tpot_ms"].tolist() == pytest.approx([180 / 12] * 3)
    assert per["guidellm.itl_ms"].tolist() == pytest.approx([180 / 11, 180 / 11, 180 / 9])
    notes = " ".join(fig(ph, "vllm", "output_tokens")["notes"])
    assert "client_output_tokens" in notes and "stands for" in notes


def test_guidellm_tpot_includes_the_first_token_and_weights_by_tokens():
    # two requests: 10 tokens, and 100 tokens; GuideLLM's TPOT = (last token - start) / tokens
    rows = [record(0, 0, ttft_ms=200, n=10, itl_ms=20), record(1, 1000 * MS, ttft_ms=200, n=100, itl_ms=20)]
    per = request_figures(frame(rows))
    assert per["guidellm.tpot_ms"].tolist() == pytest.approx([(200 + 9 * 20) / 10, (200 + 99 * 20) / 100])
    ph = phase(frame(rows))
    # weighted by output tokens: the 100-token request holds 100 / 110 of the weight, so it is the median
    assert fig(ph, "guidellm", "tpot_ms")["p50"] == pytest.approx((200 + 99 * 20) / 100)
    assert fig(ph, "guidellm", "tpot_ms")["mean"] == pytest.approx((380 + 2180) / 110)


def test_weighted_percentile_is_guidellms_first_value_reaching_the_quantile():
    v, w = np.array([3.0, 1.0, 2.0]), np.array([1.0, 1.0, 1.0])
    assert weighted_lower_percentile(v, w, 50) == 2.0
    assert weighted_lower_percentile(np.array([1.0, 2.0]), np.ones(2), 50) == 1.0  # no interpolation (numpy: 1.5)
    assert weighted_lower_percentile(np.array([1.0, 2.0]), np.array([1.0, 3.0]), 50) == 2.0


def test_reasoning_stops_guidellm_and_aiperf_ttft_but_not_inference_perfs():
    # 3 reasoning chunks then 7 content chunks, 20 ms apart: the first content token comes 60 ms later
    rows = [record(i, i * 1000 * MS, n=10, reasoning=3, usage=10, reasoning_tokens=3, client=7) for i in range(3)]
    ph = phase(frame(rows))
    assert fig(ph, "guidellm", "ttft_ms")["p50"] == pytest.approx(200)
    assert fig(ph, "aiperf", "ttft_ms")["p50"] == pytest.approx(200)
    assert fig(ph, "inference_perf", "ttft_ms")["p50"] == pytest.approx(260)
    # AIPerf's OSL adds the reasoning tokens (the server's count standing for its re-tokenization)
    assert fig(ph, "aiperf", "output_tokens")["total"] == 3 * (7 + 3)
    assert any("reasoning_tokens" in n for n in fig(ph, "aiperf", "output_tokens")["notes"])
    assert fig(ph, "inference_perf", "output_tokens")["total"] == 3 * 7


def test_a_missing_column_gives_a_note_not_a_number():
    rows = [record(i, i * 1000 * MS, role_ms=85, usage=10) for i in range(3)]
    ph = phase(frame(rows, drop=["client_output_tokens"]))
    for tool, figure in (("aiperf", "output_tokens"), ("aiperf", "itl_ms"), ("inference_perf", "tpot_ms")):
        f = fig(ph, tool, figure)
        assert f["p50"] is None and f["mean"] is None
        assert any("not recorded" in n and "client_output_tokens" in n for n in f["notes"])
    # what does not need the missing column is still there
    assert fig(ph, "guidellm", "ttft_ms")["p50"] == pytest.approx(200)
    # vLLM's first event: neither first_event_ns nor the first_byte_ns that stands in for it
    records = definitions.Records.of(*_ok_with_spans(frame(rows)))
    records.frame = records.frame.drop(columns=["first_event_ns", "first_byte_ns"])
    summary = definitions.phase_figures(records)["vllm"]["figures"]["ttft_ms"]
    assert summary["p50"] is None and summary["n"] == 0 and summary["vs_tokenbench"]["p50"] is None
    assert any("not recorded" in n and "first_event_ns" in n for n in summary["notes"])


def _ok_with_spans(df):
    from tokenbench.analysis.metrics import request_latencies

    return request_latencies(df), definitions.ChunkSpans.of(df["chunk_ns"]), np.flatnonzero(df["status"] == "ok")


def test_older_records_use_the_first_byte_for_vllm_and_say_so():
    rows = [record(i, i * 1000 * MS, role_ms=85, usage=10, client=10) for i in range(3)]
    old = frame(rows, drop=["first_event_ns", "first_output_token_ns", "reasoning_chunks", "reasoning_tokens",
                            "written_ns"])
    ph = phase(old)
    assert fig(ph, "vllm", "ttft_ms")["vs_tokenbench"]["p50"] == pytest.approx(-85)
    assert any("first_byte_ns" in n and "stands for" in n for n in fig(ph, "vllm", "ttft_ms")["notes"])
    assert any("predate" in n for n in fig(ph, "guidellm", "ttft_ms")["notes"])
    assert any("predate" in n for n in fig(ph, "aiperf", "output_tokens")["notes"])
    assert not any("predate" in n for n in fig(ph, "inference_perf", "ttft_ms")["notes"])  # content: exact


def test_only_ok_requests_and_only_their_phase_count():
    rows = [record(0, 0, role_ms=85, usage=10, client=10), record(1, 1000 * MS, ttft_ms=900, usage=10, client=10,
                                                                   status="disconnect"),
            record(2, 2000 * MS, ttft_ms=500, usage=10, client=10, phase="other")]
    ph = phase(frame(rows))
    assert fig(ph, "vllm", "ttft_ms")["n"] == 1 and fig(ph, "vllm", "ttft_ms")["p50"] == pytest.approx(115)
    assert len(request_figures(frame(rows))) == 2  # ok requests of both phases


def test_compute_metrics_writes_the_side_by_side_per_phase_as_json():
    rows = [record(i, i * 500 * MS, role_ms=85, usage=10, client=11) for i in range(10)]
    run = {"phases": [MARK], "cell": {"engine": "e", "model": "m", "load": "l"}, "complete": True,
           "hardware": {"accelerator": "cpu", "cpu": {"name": "X", "cores": 2}}}
    doc, _ = compute_metrics(frame(rows), NO_TELEMETRY, run, {"name": "m", "figures": {}}, HardwareSpec())
    peers = doc["phases"][0]["peer_figures"]
    assert set(peers) == {t.key for t in definitions.TOOLS}
    # tokenbench's row is the phase's own figures, not a second computation of them
    assert peers["tokenbench"]["figures"]["ttft_ms"]["p50"] == doc["phases"][0]["ttft_ms"]["p50"]
    assert peers["tokenbench"]["figures"]["itl_ms"]["mean"] == doc["phases"][0]["itl_ms"]["mean"]
    assert peers["vllm"]["figures"]["ttft_ms"]["vs_tokenbench"]["p50"] == pytest.approx(-85)
    json.dumps(doc, allow_nan=False)


def test_every_tool_cites_its_sources_and_documents_each_formula():
    for tool in definitions.TOOLS:
        assert tool.sources and tool.version
        assert [d.figure for d in tool.definitions] == list(definitions.FIGURES)
        for d in tool.definitions:
            assert d.formula, (tool.key, d.figure)
    for tool in definitions.PEERS:
        for s in tool.sources:
            repo, _, rest = s.partition("@")
            commit, _, path = rest.partition(":")
            assert repo.count("/") == 1 and len(commit) == 40 and path
