"""Compile proto/*.proto into Python stubs inside the clustermesh package.

    python proto/generate.py            # regenerate in place
    python proto/generate.py --check    # exit 1 if any checked-in stubs are stale

Two targets, each its own generated package:

- the etcd v3 API (``kv``, ``auth``, ``rpc``) -> grpc.aio stubs in ``clustermesh/etcd/pb/``;
- the service v2 EndpointSlice value (``discovery``, ``endpointslice``) -> messages only
  (no services, so no ``*_pb2_grpc.py``) in ``clustermesh/endpointslice_pb/``.

protoc emits absolute imports (``import kv_pb2``); we rewrite them to package-relative
ones so the stubs live inside our package without touching ``sys.path``.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
_IMPORT = re.compile(r"^import (\w+_pb2) as (\w+)$", re.MULTILINE)
_HEADER = '"""Generated from proto/ by proto/generate.py. Do not edit."""\n'


class Target(NamedTuple):
    """One generated package: which protos go into which directory."""

    out_dir: Path
    protos: tuple[str, ...]
    grpc: bool  # the protos define services: also emit the *_pb2_grpc.py stubs


ETCD = Target(ROOT / "clustermesh" / "etcd" / "pb", ("kv.proto", "auth.proto", "rpc.proto"),
              grpc=True)
ENDPOINTSLICE = Target(ROOT / "clustermesh" / "endpointslice_pb",
                       ("discovery.proto", "endpointslice.proto"), grpc=False)
TARGETS: tuple[Target, ...] = (ETCD, ENDPOINTSLICE)


def generate(out_dir: Path, target: Target = ETCD) -> None:
    """Generate ``target``'s stubs into ``out_dir`` (its own directory, or a scratch one)."""
    import grpc_tools
    from grpc_tools import protoc  # only needed to (re)generate, not at run time

    include = Path(grpc_tools.__file__).parent / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    grpc_out = [f"--grpc_python_out={out_dir}"] if target.grpc else []
    rc = protoc.main([
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        *grpc_out,
        *(str(PROTO_DIR / p) for p in target.protos),
    ])
    if rc != 0:
        raise SystemExit(f"protoc failed with exit status {rc}")
    for path in out_dir.glob("*_pb2*.py*"):
        text = _IMPORT.sub(r"from . import \1 as \2", path.read_text())
        path.write_text(text)
    (out_dir / "__init__.py").write_text(_HEADER)


def stale_files(out_dir: Path | None = None, *, target: Target = ETCD) -> list[str]:
    """Names of ``target``'s stub files in ``out_dir`` (default: its own directory) that
    differ from a fresh generation, are missing, or should not be there (empty = up to date).
    """
    out_dir = target.out_dir if out_dir is None else out_dir
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh, target)
        names = {p.name for p in fresh.iterdir()} | {
            p.name for p in out_dir.glob("*") if p.is_file()
        }
        return sorted(
            name for name in names
            if not (out_dir / name).is_file()
            or not (fresh / name).is_file()
            or (out_dir / name).read_bytes() != (fresh / name).read_bytes()
        )


def stale_paths() -> list[str]:
    """Every stale stub of every target, as paths relative to the repository root."""
    return [
        str((target.out_dir / name).relative_to(ROOT))
        for target in TARGETS
        for name in stale_files(target=target)
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check for stale stubs")
    args = parser.parse_args()
    if args.check:
        stale = stale_paths()
        if stale:
            print("stale generated stubs: " + ", ".join(stale), file=sys.stderr)
            return 1
        return 0
    for target in TARGETS:
        generate(target.out_dir, target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
