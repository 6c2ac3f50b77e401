import asyncio
import os
import socket
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow" / "scripts"))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeServer:
    """tests.fakes.fake_server running on a background event loop, on loopback."""

    def __init__(self, behaviour, keepalive_timeout=75.0):
        from aiohttp import web

        from tests.fakes.fake_server import make_app

        self.port = _free_port()
        self.app = make_app(behaviour)
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(self.app, keepalive_timeout=keepalive_timeout)
        ready = threading.Event()

        def serve():
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.runner.setup())
            site = web.TCPSite(self.runner, "127.0.0.1", self.port)
            self.loop.run_until_complete(site.start())
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()
        ready.wait(10)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    @property
    def requests(self):
        from tests.fakes.fake_server import STATE

        return self.app[STATE]["requests"]

    def die(self):
        """The server dies: its port closes and its connections drop (later connects are refused)."""
        async def _die():
            for site in list(self.runner.sites):
                await site.stop()
            server = self.runner.server
            for proto in list(getattr(server, "connections", []) if server else []):
                if proto.transport is not None:
                    proto.transport.abort()

        asyncio.run_coroutine_threadsafe(_die(), self.loop).result(10)

    def close(self):
        if self.thread.is_alive():
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)


def _started(make):
    """A fixture body: yields a start(**kw) function, closes every server it started."""
    servers = []

    def start(*args, **kw):
        s = make(*args, **kw)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.close()


@pytest.fixture
def fake_server():
    """tests.fakes.fake_server (aiohttp) on loopback: start(keepalive_timeout=75.0, **Behaviour)."""
    from tests.fakes.fake_server import Behaviour

    yield from _started(lambda keepalive_timeout=75.0, **kw: FakeServer(Behaviour(**kw), keepalive_timeout))


@pytest.fixture
def fast_server():
    """tests.fakes.fast_fake_server (raw asyncio) on loopback: start(**FastBehaviour)."""
    from tests.fakes.fast_fake_server import FastBehaviour, ThreadedFastFakeServer

    yield from _started(lambda **kw: ThreadedFastFakeServer(FastBehaviour(**kw)))
