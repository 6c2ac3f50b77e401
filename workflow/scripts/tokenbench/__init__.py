"""tokenbench: a reproducible benchmark pipeline for LLM inference engines.

All logic lives in this package; the Snakemake wrappers in ``workflow/scripts`` only unpack
``snakemake.input/output/params`` and call into it. Nothing here imports snakemake.
"""

__version__ = "0.1.0"

# Version of the on-disk record layout (Parquet columns and JSON keys), every results file carries
# it. It is the layout's MAJOR version (there is no minor): bump it on any change a reader would
# notice. Readers refuse a major they do not read (tokenbench.records: check_version).
SCHEMA_VERSION = 4
