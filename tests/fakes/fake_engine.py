#!/usr/bin/env python3
"""A fake engine executable: behaves like a real server at the process level.

    fake_engine.py --port P [--ready-after S] [--die-after S] [--ignore-sigterm] [--spawn-child]
                   [--tokens N] [--itl-ms MS] [other engine flags, ignored]

It serves /health (503 until ready, then 200), the streaming API and a llama-server-shaped
Prometheus /metrics (tests.fakes.fake_server). It accepts a real engine's command line (unknown
flags such as --model/--alias/--parallel are ignored), so run_load_test can launch it in place of
llama-server through a wrapper script,
can crash before becoming ready, can ignore SIGTERM (so teardown must escalate to SIGKILL) and
can fork a child that must not be orphaned.
"""
import argparse
import os
import signal
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
sys.path[:0] = [ROOT, os.path.join(ROOT, "workflow", "scripts")]  # tests.fakes, tokenbench

from aiohttp import web  # noqa: E402

from tests.fakes.fake_server import Behaviour, make_app  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ready-after", type=float, default=0.3)
    ap.add_argument("--die-after", type=float, default=None)
    ap.add_argument("--ignore-sigterm", action="store_true")
    ap.add_argument("--spawn-child", action="store_true")
    ap.add_argument("--tokens", type=int, default=4)
    ap.add_argument("--itl-ms", type=float, default=0.0)
    ap.add_argument("--crash-after-requests", type=int, default=None, help="die mid-run, mid-stream")
    a, ignored = ap.parse_known_args()
    print(f"fake engine starting on {a.host}:{a.port} pid {os.getpid()} pgid {os.getpgid(0)}"
          + (f" (ignoring {' '.join(ignored)})" if ignored else ""), flush=True)
    if a.ignore_sigterm:
        signal.signal(signal.SIGTERM, lambda *_: print("ignoring SIGTERM", flush=True))
    if a.spawn_child:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        print(f"child pid {child.pid}", flush=True)
    if a.die_after is not None:
        time.sleep(a.die_after)
        print("fatal: out of memory (simulated)", flush=True)
        sys.exit(3)
    t0 = time.monotonic()
    app = make_app(Behaviour(tokens=a.tokens, itl_ms=a.itl_ms))

    @web.middleware
    async def not_ready_yet(request, handler):
        if request.path == "/health" and time.monotonic() - t0 < a.ready_after:
            return web.json_response({"status": "loading model"}, status=503)
        return await handler(request)

    app.middlewares.append(not_ready_yet)

    @web.middleware
    async def slot_log(request, handler):  # llama-server logs a line when a slot finishes a request
        resp = await handler(request)
        if request.path.endswith("completions"):
            print(f"slot 0 released (fake, {request.path})", flush=True)
        return resp

    app.middlewares.append(slot_log)

    if a.crash_after_requests is not None:
        seen = {"n": 0}

        @web.middleware
        async def crash(request, handler):  # the whole server dies while streams are open
            if request.path.endswith("completions"):
                seen["n"] += 1
                if seen["n"] > a.crash_after_requests:
                    print("fatal: CUDA error: an illegal memory access (simulated)", flush=True)
                    os._exit(134)
            return await handler(request)

        app.middlewares.append(crash)
    web.run_app(app, host=a.host, port=a.port, print=None, handle_signals=not a.ignore_sigterm)


if __name__ == "__main__":
    main()
