"""Send a job's stdout/stderr and logging to its Snakemake log file; the threads it may use."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path


def to_log(path: str) -> logging.Logger:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a", buffering=1)
    sys.stdout = sys.stderr = fh
    logging.basicConfig(stream=fh, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", force=True)
    return logging.getLogger("tokenbench")


def threads() -> int:
    """CPUs this job may use: those it may run on, capped by OMP_NUM_THREADS where set (Snakemake
    sets it to a rule's ``threads`` for the rule's script jobs)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        n = min(n, int(os.environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):
        pass
    return max(1, n)
