"""Regenerate the Python code for ``proto/`` into ``libs/api/src`` (``make proto`` runs this).

The proto tree mirrors the Python package (``proto/opspawn/v1/x.proto`` → ``opspawn.v1.x_pb2``)
and protoc runs with ``-I proto``, so the generated modules import each other as
``from opspawn.v1 import x_pb2`` with no post-processing. Outputs: messages (``--python_out``),
their stubs (``--pyi_out``), service stubs (``--grpc_python_out``) and typed service stubs
(``--mypy_grpc_out``, from mypy-protobuf). Stale generated files are removed first, so a deleted
``.proto`` leaves nothing behind. The result is committed; CI does not regenerate it.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
OUTPUT_ROOT = ROOT / "libs" / "api" / "src"
GENERATED_PATTERNS = ("*_pb2.py", "*_pb2.pyi", "*_pb2_grpc.py", "*_pb2_grpc.pyi")


def _mypy_grpc_plugin() -> str:
    """protoc-gen-mypy_grpc from this environment (uv puts it next to the interpreter)."""
    plugin = Path(sys.executable).parent / "protoc-gen-mypy_grpc"
    if not plugin.exists():
        raise SystemExit(f"{plugin} not found: run `uv sync` (mypy-protobuf is a dev dependency)")
    return str(plugin)


def generate() -> list[Path]:
    protos = sorted(PROTO_ROOT.rglob("*.proto"))
    if not protos:
        raise SystemExit(f"no .proto files under {PROTO_ROOT}")
    for package_dir in {OUTPUT_ROOT / proto.parent.relative_to(PROTO_ROOT) for proto in protos}:
        for pattern in GENERATED_PATTERNS:
            for stale in package_dir.glob(pattern):
                stale.unlink()
    well_known_types = resources.files("grpc_tools") / "_proto"
    arguments = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known_types}",
        f"--plugin=protoc-gen-mypy_grpc={_mypy_grpc_plugin()}",
        f"--python_out={OUTPUT_ROOT}",
        f"--pyi_out={OUTPUT_ROOT}",
        f"--grpc_python_out={OUTPUT_ROOT}",
        f"--mypy_grpc_out={OUTPUT_ROOT}",
        *(str(proto) for proto in protos),
    ]
    status = protoc.main(arguments)
    if status != 0:
        raise SystemExit(f"protoc failed with status {status}")
    return sorted(
        path
        for pattern in GENERATED_PATTERNS
        for path in OUTPUT_ROOT.rglob(pattern)
        if path.is_file()
    )


def main() -> None:
    for path in generate():
        print(path.relative_to(ROOT))


if __name__ == "__main__":
    main()
