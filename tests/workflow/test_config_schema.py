"""The committed JSON Schema and config reference are what the code generates, and the shipped
configs point editors at the schema and satisfy it."""
import json

import jsonschema
import yaml

from tests.snakemake_util import ROOT
from tokenbench import config_reference as ref

REGENERATE = f"regenerate: tokenbench schema --out {ref.SCHEMA_FILE} --reference {ref.REFERENCE_FILE}"
CONFIGS = sorted((ROOT / "config").glob("*.yaml"))


def test_committed_json_schema_is_what_the_code_generates():
    assert (ROOT / ref.SCHEMA_FILE).read_text() == ref.schema_text(), REGENERATE


def test_committed_config_reference_is_what_the_code_generates():
    assert (ROOT / ref.REFERENCE_FILE).read_text() == ref.reference_document(), REGENERATE


def test_every_shipped_config_points_editors_at_the_schema_and_satisfies_it():
    schema = json.loads((ROOT / ref.SCHEMA_FILE).read_text())
    validator = jsonschema.Draft202012Validator(schema)
    assert len(CONFIGS) >= 5
    for path in CONFIGS:
        text = path.read_text()
        assert text.splitlines()[0] == ref.MODELINE, path.name
        # the modeline's path is relative to the config's own folder, as the YAML language server reads it
        assert (path.parent / ref.MODELINE.split("$schema=")[1]).is_file()
        errors = [e.message for e in validator.iter_errors(yaml.safe_load(text))]
        assert errors == [], f"{path.name}: {errors}"
