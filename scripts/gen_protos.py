"""Generate the Python gRPC stubs from protos/ into client/ (run: `make protos`).

The stubs are committed so that `pip install ./client` needs no code generator;
tests/test_protos_fresh.py fails when they no longer match the .proto files.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "protos"


def generate(out_dir: pathlib.Path) -> None:
    """Run protoc (from grpcio-tools) on every .proto under protos/, writing into out_dir."""
    from grpc_tools import protoc
    import grpc_tools

    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *protos,
    ]
    code = protoc.main(args)
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")
    for pkg in {pathlib.Path(p).parent for p in protos}:
        for part in [pkg, *pkg.parents]:
            if str(part) in ("", "."):
                continue
            init = out_dir / part / "__init__.py"
            if not init.exists():
                init.write_text('"""Generated gRPC stubs (see protos/)."""\n')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "client", help="output directory (default: client/)")
    args = parser.parse_args(argv)
    generate(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
