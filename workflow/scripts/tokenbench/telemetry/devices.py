"""Which GPUs the engine was given, as NVML indices, so the sampler measures those and no others.

NVML sees every GPU on the host; an engine sees the ones ``CUDA_VISIBLE_DEVICES`` lets through and
uses the first ``tensor_parallel x pipeline_parallel`` of them. :func:`engine_gpus` maps the one to
the other:

- ``CUDA_VISIBLE_DEVICES`` unset: every GPU is visible; set to "" : none is. Otherwise a comma list
  of entries, each an index (``2``), a GPU UUID or a unique prefix of one (``GPU-8932f937``), or a
  MIG device (``MIG-<uuid>`` from driver R470 on, ``MIG-GPU-<gpu uuid>/<gi>/<ci>`` before), which
  maps to its parent GPU (power, energy and clocks are only reported for the whole GPU). As in CUDA,
  a negative index ends the list (``-1`` hides every GPU).
- **Device order.** An index is taken in NVML order, which is PCI bus order. CUDA's default order,
  ``CUDA_DEVICE_ORDER=FASTEST_FIRST`` (also what an unset variable means), puts the fastest GPU
  first and is PCI bus order only when the GPUs are alike (and even then NVIDIA does not promise
  it); the two agree for certain only with ``CUDA_DEVICE_ORDER=PCI_BUS_ID``. So when an index
  (or "the first N") decides which GPU is meant and the order is not PCI_BUS_ID, the result carries
  a ``note`` saying what was assumed. The usual fix: launch the engine with
  ``CUDA_DEVICE_ORDER=PCI_BUS_ID``, or give UUIDs, which need no order.

A value that cannot be mapped (an index past the last GPU, an unknown or ambiguous UUID, a repeated
device, more GPUs needed than visible) raises ValueError naming it; nothing is guessed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from collections.abc import Mapping

from tokenbench.telemetry.sampler import _decode

PCI_BUS_ID = "PCI_BUS_ID"


@dataclass(frozen=True)
class EngineGpus:
    indices: list[int]  # NVML indices of the GPUs the engine uses, in the engine's device order
    visible: list[int]  # NVML indices of every GPU the engine could see (parents of MIG devices once)
    note: str | None = None  # what was assumed about device order, where it decides the answer
    mig: dict[int, list[str]] = field(default_factory=dict)  # NVML index -> MIG devices used on it

    def devices_arg(self) -> str:
        """The sampler's ``--devices`` value."""
        return ",".join(map(str, self.indices))


def engine_gpus(nvml_uuids: list[str], visible: str | None, needed: int | None = None,
                order: str | None = None, mig_parents: Mapping[str, str] | None = None) -> EngineGpus:
    """The NVML indices of the GPUs an engine uses.

    nvml_uuids: every GPU's UUID in NVML index order (:func:`nvml_inventory`); visible: the
    engine's ``CUDA_VISIBLE_DEVICES`` (None: unset); needed: GPUs the engine uses, tensor_parallel
    x pipeline_parallel (None: all it can see); order: its ``CUDA_DEVICE_ORDER`` (None: unset,
    i.e. FASTEST_FIRST); mig_parents: MIG device UUID -> parent GPU UUID, for ``MIG-<uuid>`` entries.
    """
    n = len(nvml_uuids)
    if needed is not None and needed < 0:
        raise ValueError(f"needed GPUs must be >= 0, not {needed}")
    if visible is None:
        cuda = [("index", i, str(i)) for i in range(n)]
        by_index = needed is not None and needed < n  # "the first N" in CUDA's order
    else:
        cuda = _parse(visible, nvml_uuids, mig_parents or {})
        by_index = any(kind == "index" for kind, _, _ in cuda)
    shown = "unset" if visible is None else repr(visible)
    if needed is not None and needed > len(cuda):
        raise ValueError(f"the engine needs {needed} GPU{'s' if needed != 1 else ''} (tensor x pipeline parallel) "
                         f"but CUDA_VISIBLE_DEVICES={shown} makes {len(cuda)} visible on this "
                         f"{n}-GPU host")
    used = cuda if needed is None else cuda[:needed]
    note = None
    if by_index and (order or "FASTEST_FIRST").strip().upper() != PCI_BUS_ID:
        note = (f"CUDA_DEVICE_ORDER is {order or 'unset (FASTEST_FIRST)'}: GPU indices were taken in NVML (PCI bus) "
                f"order, which is CUDA's order for certain only with CUDA_DEVICE_ORDER=PCI_BUS_ID; launch the "
                f"engine with CUDA_DEVICE_ORDER=PCI_BUS_ID (or give GPU UUIDs) to make the sampled GPUs exact")
    mig: dict[int, list[str]] = {}
    for kind, i, entry in used:
        if kind == "mig":
            mig.setdefault(i, []).append(entry)
    return EngineGpus(indices=_unique(i for _, i, _ in used), visible=_unique(i for _, i, _ in cuda),
                      note=note, mig=mig)


def engine_gpus_from_env(nvml_uuids: list[str], needed: int | None = None,
                         environ: Mapping[str, str] | None = None,
                         mig_parents: Mapping[str, str] | None = None) -> EngineGpus:
    """engine_gpus with CUDA_VISIBLE_DEVICES and CUDA_DEVICE_ORDER read from environ (the engine's
    environment; default this process's)."""
    env = os.environ if environ is None else environ
    return engine_gpus(nvml_uuids, env.get("CUDA_VISIBLE_DEVICES"), needed, env.get("CUDA_DEVICE_ORDER"),
                       mig_parents)


def nvml_inventory(nv) -> tuple[list[str], dict[str, str]]:
    """Every GPU's UUID in NVML index order, and MIG device UUID -> parent GPU UUID, from an
    initialised pynvml."""
    uuids, parents = [], {}
    for i in range(nv.nvmlDeviceGetCount()):
        h = nv.nvmlDeviceGetHandleByIndex(i)
        uuid = _decode(nv.nvmlDeviceGetUUID(h))
        uuids.append(uuid)
        try:
            count = nv.nvmlDeviceGetMaxMigDeviceCount(h)
        except Exception:  # not MIG-capable, or an old pynvml
            continue
        for k in range(count):
            try:
                parents[_decode(nv.nvmlDeviceGetUUID(nv.nvmlDeviceGetMigDeviceHandleByIndex(h, k)))] = uuid
            except Exception:  # an empty slot
                continue
    return uuids, parents


def _parse(visible: str, uuids: list[str], mig_parents: Mapping[str, str]) -> list[tuple[str, int, str]]:
    """CUDA_VISIBLE_DEVICES -> [(kind, NVML index, entry)] in the engine's order."""
    out: list[tuple[str, int, str]] = []
    seen: set[str] = set()
    lower = [u.lower() for u in uuids]
    for entry in (e.strip() for e in visible.split(",")):
        if not entry:
            continue
        what = f"CUDA_VISIBLE_DEVICES={visible!r}: entry {entry!r}"
        if entry.lstrip("+-").isdigit():
            i = int(entry)
            if i < 0:
                break  # CUDA stops at an invalid index: "-1" hides every GPU after it
            if i >= len(uuids):
                raise ValueError(f"{what} is past the last GPU: NVML sees {len(uuids)} (indices 0..{len(uuids) - 1})")
            item = ("index", i, entry)
        elif entry.upper().startswith("MIG-"):
            item = ("mig", _mig_parent(entry, what, lower, mig_parents), entry)
        elif entry.upper().startswith("GPU-"):
            item = ("uuid", _by_prefix(entry, what, lower), entry)
        else:
            raise ValueError(f"{what} is neither an index, a GPU-<uuid> nor a MIG-<uuid>")
        key = entry.lower() if item[0] == "mig" else str(item[1])
        if key in seen:
            raise ValueError(f"{what} names a GPU already listed")
        seen.add(key)
        out.append(item)
    return out


def _by_prefix(entry: str, what: str, lower: list[str]) -> int:
    hits = [i for i, u in enumerate(lower) if u.startswith(entry.lower())]
    if not hits:
        raise ValueError(f"{what} matches no GPU's UUID on this host ({len(lower)} GPUs)")
    if len(hits) > 1:
        raise ValueError(f"{what} is a prefix of {len(hits)} GPUs' UUIDs (NVML indices {hits}); give more of it")
    return hits[0]


def _mig_parent(entry: str, what: str, lower: list[str], mig_parents: Mapping[str, str]) -> int:
    body = entry[4:]
    if body.upper().startswith("GPU-"):  # R450 form: MIG-GPU-<gpu uuid>/<gi>/<ci>
        return _by_prefix(body.split("/")[0], what, lower)
    parents = {k.lower(): v for k, v in mig_parents.items()}
    hits = [p for m, p in parents.items() if m.startswith(entry.lower())]
    if len(hits) != 1:
        raise ValueError(f"{what} {'matches no' if not hits else 'is a prefix of several'} MIG device"
                         f"{'s' if hits else ''} NVML lists on this host")
    return _by_prefix(hits[0], what, lower)


def _unique(items) -> list[int]:
    out: list[int] = []
    for i in items:
        if i not in out:
            out.append(i)
    return out
