"""Compile proto/*.proto into grpc.aio stubs under clustermesh/etcd/pb/.

    python proto/generate.py            # regenerate in place
    python proto/generate.py --check    # exit 1 if the checked-in stubs are stale

protoc emits absolute imports (``import kv_pb2``); we rewrite them to package-relative
ones so the stubs live inside our package without touching ``sys.path``.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_DIR = ROOT / "clustermesh" / "etcd" / "pb"
PROTOS = ("kv.proto", "auth.proto", "rpc.proto")
_IMPORT = re.compile(r"^import (\w+_pb2) as (\w+)$", re.MULTILINE)
_HEADER = '"""Generated from proto/ by proto/generate.py. Do not edit."""\n'


def generate(out_dir: Path) -> None:
    import grpc_tools
    from grpc_tools import protoc  # only needed to (re)generate, not at run time

    include = Path(grpc_tools.__file__).parent / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    rc = protoc.main([
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(PROTO_DIR / p) for p in PROTOS),
    ])
    if rc != 0:
        raise SystemExit(f"protoc failed with exit status {rc}")
    for path in out_dir.glob("*_pb2*.py*"):
        text = _IMPORT.sub(r"from . import \1 as \2", path.read_text())
        path.write_text(text)
    (out_dir / "__init__.py").write_text(_HEADER)


def stale_files(out_dir: Path = OUT_DIR) -> list[str]:
    """Names of stub files that differ from a fresh generation (empty = up to date)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        names = {p.name for p in fresh.iterdir()} | {
            p.name for p in out_dir.glob("*") if p.is_file()
        }
        return sorted(
            name for name in names
            if not (out_dir / name).is_file()
            or not (fresh / name).is_file()
            or (out_dir / name).read_bytes() != (fresh / name).read_bytes()
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check for stale stubs")
    args = parser.parse_args()
    if args.check:
        stale = stale_files()
        if stale:
            print("stale generated stubs: " + ", ".join(stale), file=sys.stderr)
            return 1
        return 0
    generate(OUT_DIR)
    return 0


if __name__ == "__main__":
    sys.exit(main())
