"""A fast, scriptable fake OpenAI-compatible streaming server (for tests and client benchmarks).

It streams ``tokens`` content chunks per request with an injected time-to-first-token and
inter-token latency (zero by default), then a usage chunk and ``[DONE]``. Failure modes let
tests prove that the client records every request: ``fail_after`` drops the connection mid-stream,
``status`` answers an HTTP error, ``no_usage`` omits the usage chunk; the faults of
tests/unit/load/test_faults.py (``reset``, ``malformed_sse``, ``stall_after``, ``ignore_max_tokens``,
``echo_key``, 429 with ``retry_after``) hit every ``fault_every``-th request.

    python -m tests.fakes.fake_server --port 8000 --tokens 64 --ttft-ms 20 --itl-ms 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import dataclass

from aiohttp import web

STATE = web.AppKey("state", dict)  # request counter, read by tests

@dataclass
class Behaviour:
    tokens: int = 16
    ttft_ms: float = 0.0
    itl_ms: float = 0.0
    status: int = 200
    fail_after: int | None = None  # close the connection after this many content chunks
    no_usage: bool = False
    usage_on_finish_chunk: bool = False  # usage on the finish chunk instead of a choices: [] chunk
    role_chunk: bool = True  # send an empty role-only delta first, as vLLM and llama.cpp do
    close_after_response: bool = False  # drop the keep-alive connection after each response, unannounced
    drop_on_reuse: bool = False  # close a kept-alive connection, unanswered, when a second request comes on it
    reasoning_tokens: int = 0  # chat: this many reasoning_content deltas before the content (a thinking model)
    hide_reasoning: bool = False  # spend the reasoning tokens without streaming them (usage still counts them)
    capacity: int | None = None  # at most this many requests generate at once; the rest queue (saturation)
    api_key: str | None = None  # require "Authorization: Bearer <api_key>" on the API routes
    metrics: bool = True  # serve Prometheus text at /metrics, shaped like llama-server's
    # faults (tests/unit/load/test_faults.py): each hits every `fault_every`-th request (1: all of them)
    fault_every: int = 1
    retry_after: str | None = None  # with status 429/503: its Retry-After header
    reset: bool = False  # reset the connection after the response's first bytes
    malformed_sse: bool = False  # a data: line that is not JSON, mid-stream
    stall_after: int | None = None  # stop sending (connection kept open) after this many content chunks
    ignore_max_tokens: bool = False  # stream `tokens` whatever max_tokens asks for
    echo_key: bool = False  # a 401 that echoes the Authorization header it got (as OpenAI's does, part-masked)
    models_status: int = 200  # /v1/models answers this (a readiness probe's view)


def _chunk(obj) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def make_app(b: Behaviour) -> web.Application:
    state = {"requests": 0, "in_flight": 0, "tokens": 0, "auth_failures": 0}
    slots = asyncio.Semaphore(b.capacity) if b.capacity else None

    async def health(_req):
        return web.json_response({"status": "ok"})

    async def models(req: web.Request):
        if b.models_status != 200:
            return web.json_response({"error": {"message": "model is loading"}}, status=b.models_status)
        if b.api_key and req.headers.get("Authorization") != f"Bearer {b.api_key}":
            state["auth_failures"] += 1
            return web.json_response({"error": {"message": "invalid api key"}}, status=401)
        return web.json_response({"object": "list", "data": [{"id": "fake", "object": "model"}]})

    async def metrics(_req):
        # llama-server's /metrics names (tools/server/server.cpp): a gauge, counters, a ratio
        text = ("# HELP llamacpp:requests_processing Number of requests processing.\n"
                "# TYPE llamacpp:requests_processing gauge\n"
                f"llamacpp:requests_processing {state['in_flight']}\n"
                "# TYPE llamacpp:tokens_predicted_total counter\n"
                f"llamacpp:tokens_predicted_total {state['tokens']}\n"
                "# TYPE llamacpp:kv_cache_usage_ratio gauge\n"
                f"llamacpp:kv_cache_usage_ratio {min(1.0, state['in_flight'] / 16):.4f}\n"
                "# TYPE unrelated_histogram histogram\n"
                'unrelated_histogram_bucket{le="+Inf"} 3\n')
        return web.Response(text=text, content_type="text/plain")

    served: dict[int, int] = {}  # requests seen per connection (transport id)

    async def completions(req: web.Request):
        if b.drop_on_reuse:
            k = id(req.transport)
            served[k] = served.get(k, 0) + 1
            if served[k] > 1:  # the keep-alive race a client can lose: the server closes as the request lands
                req.transport.close()
                raise asyncio.CancelledError
        if b.api_key and req.headers.get("Authorization") != f"Bearer {b.api_key}":
            state["auth_failures"] += 1
            return web.json_response({"error": {"message": "invalid api key"}}, status=401)
        if b.echo_key:
            state["requests"] += 1
            key = req.headers.get("Authorization", "").removeprefix("Bearer ")
            return web.json_response({"error": {"message": f"Incorrect API key provided: {key}. You can find your "
                                                           "API key at https://platform.openai.com/account/api-keys.",
                                                "type": "invalid_request_error", "code": "invalid_api_key"}},
                                     status=401)
        state["requests"] += 1
        state["authorization"] = req.headers.get("Authorization")
        state["in_flight"] += 1
        try:
            if slots is None:
                return await _completions(req)
            async with slots:
                return await _completions(req)
        finally:
            state["in_flight"] -= 1

    async def _completions(req: web.Request):
        body = await req.json()
        fault = state["requests"] % b.fault_every == 0
        if b.status != 200 and fault:
            headers = {"Retry-After": b.retry_after} if b.retry_after is not None else None
            return web.json_response({"error": {"message": "injected failure"}}, status=b.status, headers=headers)
        chat = req.path.endswith("/chat/completions")
        n = b.tokens if b.ignore_max_tokens else min(b.tokens, int(body.get("max_tokens") or b.tokens))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(req)
        base = {"id": f"fake-{state['requests']}", "object": "chat.completion.chunk" if chat else "text_completion",
                "model": body.get("model", "fake")}
        if chat and b.role_chunk:
            await resp.write(_chunk({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}))
        if b.reset and fault:  # a connection reset mid-response (after its first bytes: no client resend)
            await asyncio.sleep(0.01)
            req.transport.abort()
            return resp
        if b.ttft_ms:
            await asyncio.sleep(b.ttft_ms / 1000)
        usage = {"prompt_tokens": 8, "completion_tokens": n + b.reasoning_tokens, "total_tokens": 8 + n + b.reasoning_tokens}
        if b.reasoning_tokens:
            usage["completion_tokens_details"] = {"reasoning_tokens": b.reasoning_tokens}
            for i in range(b.reasoning_tokens):
                if i and b.itl_ms:
                    await asyncio.sleep(b.itl_ms / 1000)
                if not b.hide_reasoning:
                    await resp.write(_chunk({**base, "choices": [{"index": 0, "delta": {"reasoning_content": f"r{i} "}}]}))
            if b.itl_ms:
                await asyncio.sleep(b.itl_ms / 1000)
        for i in range(n):
            if i and b.itl_ms:
                await asyncio.sleep(b.itl_ms / 1000)
            if b.fail_after is not None and i >= b.fail_after:
                req.transport.close()  # abrupt disconnect, as when a server dies
                return resp
            if fault and b.stall_after is not None and i >= b.stall_after:
                while req.transport is not None and not req.transport.is_closing():  # a stalled stream:
                    await asyncio.sleep(0.05)  # the connection stays open, nothing comes, until the client gives up
                return resp
            if fault and b.malformed_sse and i == 1:
                await resp.write(b"data: {\"choices\": [{\"delta\": {\"content\": \"t\"\n\n")
            last = i == n - 1
            choice = {"index": 0, "finish_reason": "length" if last else None}
            if chat:
                choice["delta"] = {"content": f"t{i} "}
            else:
                choice["text"] = f"t{i} "
            obj = {**base, "choices": [choice]}
            if last and b.usage_on_finish_chunk and not b.no_usage:
                obj["usage"] = usage
            await resp.write(_chunk(obj))
            state["tokens"] += 1
        if not b.no_usage and not b.usage_on_finish_chunk:
            await resp.write(_chunk({**base, "choices": [], "usage": usage}))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        if b.close_after_response:
            req.transport.close()
        return resp

    vocab: dict[str, int] = {}
    words: list[str] = []

    async def tokenize(req: web.Request):  # llama-server's /tokenize: one token per whitespace word
        text = (await req.json())["content"]
        ids = []
        for w in text.split():
            if w not in vocab:
                vocab[w] = len(words)
                words.append(w)
            ids.append(vocab[w])
        return web.json_response({"tokens": ids})

    async def detokenize(req: web.Request):
        return web.json_response({"content": " ".join(words[i] for i in (await req.json())["tokens"])})

    app = web.Application()
    app.router.add_post("/tokenize", tokenize)
    app.router.add_post("/detokenize", detokenize)
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    if b.metrics:
        app.router.add_get("/metrics", metrics)
    app.router.add_post("/v1/chat/completions", completions)
    app.router.add_post("/v1/completions", completions)
    app[STATE] = state
    return app


def server_args(prog: str) -> argparse.ArgumentParser:
    """The command-line options both fake servers take: where to listen and the Behaviour basics."""
    ap = argparse.ArgumentParser(prog=prog)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--ttft-ms", type=float, default=0.0)
    ap.add_argument("--itl-ms", type=float, default=0.0)
    return ap


def main(argv=None) -> None:
    a = server_args("python -m tests.fakes.fake_server").parse_args(argv)
    web.run_app(make_app(Behaviour(a.tokens, a.ttft_ms, a.itl_ms)), host=a.host, port=a.port, print=None)


if __name__ == "__main__":
    main()
