"""``tokenbench`` command line: helpers around the pipeline (the pipeline itself is Snakemake)."""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="tokenbench")
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("validate", help="check a config file and list its cells")
    v.add_argument("config")
    b = sub.add_parser("build-engine", help="build llama-server from source (cached) into DEST")
    b.add_argument("--dest", required=True)
    args = ap.parse_args(argv)
    if args.cmd == "validate":
        from .config import ConfigError, cells, load_config

        try:
            cfg = load_config(args.config)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 2
        for e, m, l in cells(cfg):
            print(f"{e}\t{m}\t{l}")
        return 0
    if args.cmd == "build-engine":
        from .build_engine import main as build_main

        return build_main(["--dest", args.dest])
    return 1


if __name__ == "__main__":
    sys.exit(main())
