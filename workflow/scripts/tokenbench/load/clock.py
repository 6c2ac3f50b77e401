"""The load generator's clock: CLOCK_MONOTONIC nanoseconds, and waits that end on time.

Every timestamp is ``time.monotonic_ns()``: the clock all processes on the host share, so the
telemetry sampler's samples line up with request events."""

from __future__ import annotations

import asyncio
import time

now_ns = time.monotonic_ns


async def wait_precisely(t_ns: int, spin_ns: int = 1_500_000) -> None:
    """Sleep to 1.5 ms before t_ns, then yield to the loop until due: an open-loop send leaves on
    schedule (asyncio.sleep alone wakes up to a millisecond or more late)."""
    delay = t_ns - spin_ns - now_ns()
    if delay > 0:
        await asyncio.sleep(delay / 1e9)
    while now_ns() < t_ns:
        await asyncio.sleep(0)


async def sleep_until(t_ns: int) -> None:
    delay = t_ns - now_ns()
    if delay > 0:
        await asyncio.sleep(delay / 1e9)
