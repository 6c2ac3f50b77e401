"""tokenbench: a reproducible benchmark pipeline for LLM inference engines.

All logic lives in this package; the Snakemake wrappers in ``workflow/scripts`` only unpack
``snakemake.input/output/params`` and call into it. Nothing here imports snakemake.
"""

__version__ = "0.1.0"

# Version of the on-disk record layout (Parquet columns and JSON keys). Bump on any change a
# reader would notice; every results file carries it.
SCHEMA_VERSION = 4
