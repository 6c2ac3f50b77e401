"""Send a job's stdout/stderr and logging to its Snakemake log file."""

from __future__ import annotations

import logging
import sys
from pathlib import Path


def to_log(path: str) -> logging.Logger:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a", buffering=1)
    sys.stdout = sys.stderr = fh
    logging.basicConfig(stream=fh, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", force=True)
    return logging.getLogger("tokenbench")
