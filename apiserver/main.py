"""``clustermesh-apiserver`` command line.

The publishing side (``clustermesh`` and ``etcdinit`` subcommands) is not built
yet; until it is, the command says so instead of pretending to run.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="clustermesh-apiserver",
        description="Publish this cluster's identities, endpoints, services and nodes "
                    "into its etcd (not implemented yet).",
    )
    parser.add_argument("command", choices=("clustermesh", "etcdinit"))
    args, _ = parser.parse_known_args(argv)
    print(f"clustermesh-apiserver {args.command}: not implemented yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
