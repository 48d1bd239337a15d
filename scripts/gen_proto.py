"""Regenerate retriever/_proto/ from proto/ (run: `make proto`). `--check` exits 1 if stale."""

from __future__ import annotations

import argparse
import ast
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO = Path("retriever/v1/retriever.proto")
OUT = ROOT / "retriever" / "_proto"
# protoc writes imports relative to the proto root ("from retriever.v1 import ..."), which would
# resolve inside our own `retriever` package; the generated code lives under retriever._proto.
IMPORT_FIX = ("from retriever.v1 import", "from retriever._proto.retriever.v1 import")
# grpc_tools names the messages module by its path; a short alias keeps generated lines under 110
ALIAS_FIX = ("retriever_dot_v1_dot_retriever__pb2", "pb2")
INIT = b'"""Generated gRPC code; import it only through retriever.conversions."""\n'
DESCRIPTOR_CALL = "AddSerializedFile("
BYTES_PER_LINE = 24  # <= 4 characters a byte in a literal: lines stay under 110


def wrapped_descriptor(text: str) -> str:
    """The one-line serialized descriptor literal protoc writes, as the same bytes in short literals."""
    lines = text.split("\n")
    for i, line in enumerate(lines):
        start = line.find(DESCRIPTOR_CALL)
        if start < 0:
            continue
        head, literal = line[: start + len(DESCRIPTOR_CALL)], line[start + len(DESCRIPTOR_CALL) : -1]
        data = ast.literal_eval(literal)
        pieces = [repr(data[k : k + BYTES_PER_LINE]) for k in range(0, len(data), BYTES_PER_LINE)]
        lines[i] = head + "\n" + "\n".join(f"    {p}" for p in pieces) + "\n)"
    return "\n".join(lines)


def generate() -> dict[str, bytes]:
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        outputs = [f"--{kind}_out={tmp}" for kind in ("python", "pyi", "grpc_python")]
        args = ["protoc", f"-I{ROOT / 'proto'}", *outputs, str(PROTO)]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        files = {}
        for path in sorted(Path(tmp).rglob("*.py*")):
            text = wrapped_descriptor(path.read_text().replace(*IMPORT_FIX).replace(*ALIAS_FIX))
            files[str(path.relative_to(tmp))] = text.encode()
    for package in ("retriever", "retriever/v1"):
        files[f"{package}/__init__.py"] = INIT
    files["__init__.py"] = files["retriever/__init__.py"]
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="compare with the committed files only")
    args = parser.parse_args()
    files = generate()
    if args.check:
        stale = [name for name, data in files.items()
                 if not (OUT / name).exists() or (OUT / name).read_bytes() != data]
        if stale:
            print(f"generated code is stale: {stale}; run `make proto`", file=sys.stderr)
            raise SystemExit(1)
        return
    for name, data in files.items():
        (OUT / name).parent.mkdir(parents=True, exist_ok=True)
        (OUT / name).write_bytes(data)


if __name__ == "__main__":
    main()
