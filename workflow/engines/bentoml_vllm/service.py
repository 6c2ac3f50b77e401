"""A BentoML service wrapping vLLM's OpenAI-compatible server, as tokenbench benchmarks it.

Served with (tokenbench's bentoml-vllm catalog entry builds this command):

    bentoml serve service:TokenbenchVLLM --working-dir workflow/engines/bentoml_vllm \
        --host 127.0.0.1 --port 3000 --arg model=/path/to/model --arg served_model_name=llama3-8b \
        [--arg dtype=float16 --arg max_context=2048 --arg max_batch=128 \
         --arg kv_cache_fraction=0.9 --arg tensor_parallel=1 --arg quantization=awq]

Written against BentoML >= 1.4.8 (``bentoml.use_arguments`` template arguments,
``@bentoml.service``, ``@bentoml.asgi_app``, ``@bentoml.on_startup`` / ``@bentoml.on_shutdown``;
see docs.bentoml.com "Configure template arguments" and the bentoml/BentoVLLM examples). The
service starts ``vllm serve`` on an internal loopback port with the same flags tokenbench's vllm
entry uses, waits for its /health, and proxies ``/v1/*`` to it, streaming. BentoML's own
``/readyz`` turns ready only once vLLM is; BentoML's Prometheus ``/metrics`` covers the service
layer and ``/v1/engine/metrics`` re-exports vLLM's (KV-cache usage, running/waiting requests).
"""
from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time

import bentoml
import fastapi
import httpx
import pydantic
from starlette.responses import Response, StreamingResponse


class Args(pydantic.BaseModel):
    model: str
    served_model_name: str
    dtype: str | None = None
    max_context: int | None = None
    max_batch: int | None = None
    kv_cache_fraction: float | None = None
    tensor_parallel: int | None = None
    quantization: str | None = None
    vllm: str = "vllm"  # the vllm CLI inside this environment
    ready_timeout_s: float = 1800


args = bentoml.use_arguments(Args)
openai_app = fastapi.FastAPI()
STATE: dict = {}


def vllm_command(a: Args, port: int) -> list[str]:
    # same mapping as tokenbench.engines.catalog._vllm (vllm-project/vllm vllm/entrypoints/cli/serve.py)
    cmd = [a.vllm, "serve", a.model, "--host", "127.0.0.1", "--port", str(port),
           "--served-model-name", a.served_model_name]
    for flag, value in (("--dtype", a.dtype), ("--max-model-len", a.max_context), ("--max-num-seqs", a.max_batch),
                        ("--gpu-memory-utilization", a.kv_cache_fraction),
                        ("--tensor-parallel-size", a.tensor_parallel), ("--quantization", a.quantization)):
        if value is not None:
            cmd += [flag, str(value)]
    return cmd


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@openai_app.get("/engine/metrics")
async def engine_metrics() -> Response:
    r = await STATE["client"].get("/metrics")
    return Response(r.content, status_code=r.status_code, media_type=r.headers.get("content-type"))


@openai_app.api_route("/{path:path}", methods=["GET", "POST"])
async def proxy(path: str, request: fastapi.Request):
    client: httpx.AsyncClient = STATE["client"]
    headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
    upstream = client.build_request(request.method, f"/v1/{path}", headers=headers, content=await request.body(),
                                    params=request.query_params)
    resp = await client.send(upstream, stream=True)
    out_headers = {k: v for k, v in resp.headers.items() if k.lower() not in ("content-length", "transfer-encoding")}

    async def body():
        try:
            async for chunk in resp.aiter_raw():
                yield chunk
        finally:
            await resp.aclose()

    return StreamingResponse(body(), status_code=resp.status_code, headers=out_headers,
                             media_type=resp.headers.get("content-type"))


@bentoml.asgi_app(openai_app, path="/v1")
@bentoml.service(name="tokenbench-vllm", traffic={"timeout": 3600},
                 resources={"gpu": args.tensor_parallel or 1}, envs=[{"name": "HF_TOKEN"}])
class TokenbenchVLLM:
    @bentoml.on_startup
    async def start_vllm(self) -> None:
        port = _free_port()
        cmd = vllm_command(args, port)
        print("tokenbench bentoml-vllm: launching " + " ".join(cmd), flush=True)
        # vLLM's log goes to this service's stdout/stderr, which tokenbench keeps per cell. It stays in
        # BentoML's process group, so tokenbench's group teardown reaches it too.
        self.proc = subprocess.Popen(cmd, stdout=sys.stdout, stderr=sys.stderr)
        STATE["client"] = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=None)
        deadline = time.monotonic() + args.ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited with code {self.proc.returncode} before it was ready")
            try:
                if (await STATE["client"].get("/health")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(1)
        raise RuntimeError(f"vllm serve not ready after {args.ready_timeout_s} s")

    @bentoml.on_shutdown
    async def stop_vllm(self) -> None:
        if getattr(self, "proc", None) and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if "client" in STATE:
            await STATE["client"].aclose()
