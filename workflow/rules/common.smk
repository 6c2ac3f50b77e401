# Helpers shared by the rule files: per-cell config slices, handed to scripts through params.
from tokenbench.config import cell_settings, canonical_hash, sweep_phase


def settings_of(wc):
    return cell_settings(CFG, wc.engine, wc.model, wc.load)


def cell_paths(stage, name):
    return [f"data/{stage}/{e}/{m}/{l}/{name}" for e, m, l in CELLS]


def sweep_loads():
    return list(CFG.sweep.loads) if CFG.sweep else []
