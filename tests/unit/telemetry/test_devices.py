import json

import pandas as pd
import pytest

from tokenbench.telemetry import sampler as telemetry
from tokenbench.telemetry.devices import engine_gpus, engine_gpus_from_env, nvml_inventory

from .fake_nvml import FakeHost, eight_gpu_host, h100

HOST = eight_gpu_host()
UUIDS, _ = nvml_inventory(HOST.module())


def test_unset_means_every_gpu_and_no_order_question():
    got = engine_gpus(UUIDS, None)
    assert got.indices == list(range(8)) and got.note is None


def test_indices_map_to_nvml_indices_with_a_note_on_order():
    got = engine_gpus(UUIDS, "2,3", needed=2)
    assert got.indices == [2, 3] and got.devices_arg() == "2,3"
    assert "PCI_BUS_ID" in got.note and "unset (FASTEST_FIRST)" in got.note
    assert engine_gpus(UUIDS, "2,3", 2, order="PCI_BUS_ID").note is None
    assert engine_gpus(UUIDS, "5,1,2", needed=2, order="PCI_BUS_ID").indices == [5, 1]  # the engine's order


def test_uuids_and_prefixes_need_no_order():
    got = engine_gpus(UUIDS, f"{UUIDS[2]},{UUIDS[3][:12]}", needed=2)
    assert got.indices == [2, 3] and got.note is None


def test_first_n_of_unset_is_cuda_order_so_noted():
    got = engine_gpus(UUIDS, None, needed=2)
    assert got.indices == [0, 1] and got.visible == list(range(8)) and got.note


@pytest.mark.parametrize("visible", ["", "-1", " -1,2"])
def test_empty_or_negative_hides_every_gpu(visible):
    assert engine_gpus(UUIDS, visible).indices == []
    with pytest.raises(ValueError, match=f"CUDA_VISIBLE_DEVICES={visible!r} makes 0 visible"):
        engine_gpus(UUIDS, visible, needed=1)


@pytest.mark.parametrize("visible, needed, match", [
    ("0,8", 2, r"CUDA_VISIBLE_DEVICES='0,8': entry '8' is past the last GPU: NVML sees 8"),
    ("GPU-ffffffff", 1, r"entry 'GPU-ffffffff' matches no GPU's UUID"),
    ("GPU-", 1, r"is a prefix of 8 GPUs' UUIDs"),
    ("2,2", 1, r"entry '2' names a GPU already listed"),
    ("2,3", 4, r"needs 4 GPUs .* but CUDA_VISIBLE_DEVICES='2,3' makes 2 visible on this 8-GPU host"),
    ("nvidia0", 1, r"entry 'nvidia0' is neither an index"),
    ("MIG-0000", 1, r"entry 'MIG-0000' matches no MIG device"),
])
def test_what_cannot_be_mapped_is_a_clear_error(visible, needed, match):
    with pytest.raises(ValueError, match=match):
        engine_gpus(UUIDS, visible, needed)


def test_mig_devices_map_to_their_parent_gpu():
    host = FakeHost([h100(), h100(seed=1, mig=True)])
    uuids, parents = nvml_inventory(host.module())
    mig = host.gpus[1].mig_uuids
    assert parents == {m: uuids[1] for m in mig}
    got = engine_gpus(uuids, ",".join(mig), needed=2, mig_parents=parents)
    assert got.indices == [1] and got.mig == {1: mig} and got.note is None
    old_form = f"MIG-{uuids[1]}/1/0"  # driver R450's MIG-GPU-<uuid>/<gi>/<ci>
    assert engine_gpus(uuids, old_form, needed=1).indices == [1]


def test_from_env_reads_both_variables():
    got = engine_gpus_from_env(UUIDS, 1, environ={"CUDA_VISIBLE_DEVICES": "6", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"})
    assert got.indices == [6] and got.note is None


@pytest.mark.parametrize("form", ["index", "uuid"])
def test_a_two_gpu_engine_on_an_eight_gpu_host_samples_two_gpus(tmp_path, form):
    host = eight_gpu_host(clock="monotonic")
    nv = host.module()
    uuids, parents = nvml_inventory(nv)
    visible = "2,3" if form == "index" else f"{uuids[2]},{uuids[3]}"
    gpus = engine_gpus(uuids, visible, needed=2 * 1, mig_parents=parents)  # tensor parallel 2 x pipeline 1
    out = tmp_path / "telemetry.raw.parquet"
    telemetry.run_sampler(str(out), 0.02, nvml=nv, max_duration_s=0.1,
                          devices=telemetry.parse_devices(gpus.devices_arg()))
    df = pd.read_parquet(out)
    assert sorted(set(df.device)) == ["cpu", "gpu2", "gpu3"]
    side = json.loads(out.with_suffix(".json").read_text())
    assert [(g["index"], g["device"], g["uuid"]) for g in side["gpus"]] == [(2, "gpu2", uuids[2]),
                                                                             (3, "gpu3", uuids[3])]
