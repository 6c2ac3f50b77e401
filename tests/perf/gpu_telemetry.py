#!/usr/bin/env python3
"""The real sampler on a real GPU: what the power sensors are and how they agree.

    python3 tests/perf/gpu_telemetry.py [--device 0] [--baseline 5] [--load 15] [--rest 5] [--out DIR]

Runs tokenbench's telemetry sampler (python -m tokenbench.telemetry.sampler, 20 Hz) on one GPU
through: a baseline with nothing running, a matmul load (PyTorch, bf16 8192³ in a loop, ramping in
over its first seconds as kernels start), and a rest. Then prints, from the recorded samples with
tokenbench's own EnergyMeter:

- each GPU's sensor semantics as the sampler detected them (architecture, 1 s-averaged power
  usage or instantaneous, the instantaneous field value, the energy counter);
- the achieved sampling interval (p50, p99, largest gap) and each signal's effective resolution
  (median time between value changes: the energy counter updates every 20-100 ms);
- baseline, load and rest power, gross and net of the baseline;
- energy over each window from the counter against the integral of the instantaneous field and of
  the 1 s-averaged power usage, and the disagreement (over 5 % is what the pipeline flags).

Needs a GPU, PyTorch and nvidia-ml-py; nothing else of the pipeline (no pydantic). Not a test: it
prints figures (with the host's load average) for a note, and asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[2] / "workflow" / "scripts"
sys.path.insert(0, str(SCRIPTS))


def matmul_load(seconds: float, device: int) -> int:
    import torch

    torch.cuda.set_device(device)
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    n, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(20):
            a @ b
        torch.cuda.synchronize()
        n += 20
    return n


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", type=int, default=0)
    ap.add_argument("--baseline", type=float, default=5)
    ap.add_argument("--load", type=float, default=15)
    ap.add_argument("--rest", type=float, default=5)
    ap.add_argument("--interval", type=float, default=0.05)
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/gpu_telemetry"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    raw = out / "telemetry.parquet"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SCRIPTS), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "tokenbench.telemetry.sampler", "--out", str(raw),
                             "--interval", str(args.interval), "--devices", str(args.device)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    if proc.stdout.readline().strip() != "ready":
        print(proc.stderr.read())
        return 1
    marks = {"baseline": [time.monotonic_ns()]}
    time.sleep(args.baseline)
    marks["baseline"].append(time.monotonic_ns())
    marks["load"] = [time.monotonic_ns()]
    products = matmul_load(args.load, args.device)
    marks["load"].append(time.monotonic_ns())
    marks["rest"] = [time.monotonic_ns()]
    time.sleep(args.rest)
    marks["rest"].append(time.monotonic_ns())
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)

    import numpy as np
    import pandas as pd

    from tokenbench.telemetry.energy import EnergyMeter, integral

    tel = pd.read_parquet(raw)
    side = json.loads(raw.with_suffix(".json").read_text())
    print("load average:", " ".join(f"{x:.2f}" for x in os.getloadavg()), f"· {products} bf16 8192³ products")
    for g in side["gpus"]:
        print(f"{g['device']}: {g['name']} ({g['architecture']}, pci {g['pci_device_id']}), power usage: "
              f"{g['power_usage_semantics']}, instantaneous field: {g['power_instant_field']}, "
              f"energy counter: {g['energy_counter']}, MIG: {g['mig_mode']}")
    print(f"sampling: {side['samples']} samples, interval p50 {side['interval_p50_ms']:.2f} ms, "
          f"p99 {side['interval_p99_ms']:.2f} ms, largest gap {side['max_gap_ms']:.1f} ms")
    meter = EnergyMeter(tel)
    for dev, q in meter.quality(tel).items():
        print(f"{dev} resolution:", {k: (round(v, 1) if isinstance(v, float) else v) for k, v in q.items()})
    base = meter.window(*marks["baseline"])
    print(f"baseline: {base['power_w']:.1f} W ({base['power_source']})")
    gpu = tel[tel.device == f"gpu{args.device}"].sort_values("t_ns")
    t = gpu["t_ns"].to_numpy(dtype=np.int64)
    for name, (t0, t1) in marks.items():
        w = meter.window(t0, t1)
        secs = (t1 - t0) / 1e9
        line = [f"{name:8s} {secs:5.1f} s: counter {w['energy_j']:9.1f} J = {w['power_w']:6.1f} W, "
                f"net {w['energy_j'] - base['power_w'] * secs:9.1f} J"]
        for col in ("power_instant_w", "power_usage_w"):
            v = pd.to_numeric(gpu[col], errors="coerce").to_numpy(dtype=float)
            ok = np.isfinite(v)
            if ok.sum() > 2:
                j = integral(t[ok], v[ok], t0, t1)
                line.append(f"{col.removesuffix('_w')} integral {j:9.1f} J ({(j - w['energy_j']) / w['energy_j'] * 100:+.1f} %)")
        print(" · ".join(line))
    print(f"samples and sidecar kept in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
