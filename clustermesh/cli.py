"""``clustermesh`` command line (enable, connect, status, check, local mesh).

Not built yet: the command says so instead of pretending to work.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="clustermesh",
        description="Set up and inspect a Cluster Mesh (not implemented yet).",
    )
    parser.add_argument("command", choices=("local", "enable", "connect", "status", "check",
                                            "troubleshoot"))
    args, _ = parser.parse_known_args(argv)
    print(f"clustermesh {args.command}: not implemented yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
