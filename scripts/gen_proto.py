"""Regenerate retriever/_proto/ from proto/ (run: `make proto`). `--check` exits 1 if stale."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO = Path("retriever/v1/retriever.proto")
OUT = ROOT / "retriever" / "_proto"
# protoc writes imports relative to the proto root ("from retriever.v1 import ..."), which would
# resolve inside our own `retriever` package; the generated code lives under retriever._proto.
IMPORT_FIX = ("from retriever.v1 import", "from retriever._proto.retriever.v1 import")


def generate() -> dict[str, bytes]:
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        args = ["protoc", f"-I{ROOT / 'proto'}", f"--python_out={tmp}", f"--pyi_out={tmp}", f"--grpc_python_out={tmp}", str(PROTO)]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        files = {}
        for path in sorted(Path(tmp).rglob("*.py*")):
            text = path.read_text().replace(*IMPORT_FIX)
            files[str(path.relative_to(tmp))] = text.encode()
    for package in ("retriever", "retriever/v1"):
        files[f"{package}/__init__.py"] = b'"""Generated gRPC code; import it only through retriever.conversions."""\n'
    files["__init__.py"] = files["retriever/__init__.py"]
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="compare with the committed files instead of writing")
    args = parser.parse_args()
    files = generate()
    if args.check:
        stale = [name for name, data in files.items() if not (OUT / name).exists() or (OUT / name).read_bytes() != data]
        if stale:
            print(f"generated code is stale: {stale}; run `make proto`", file=sys.stderr)
            raise SystemExit(1)
        return
    for name, data in files.items():
        (OUT / name).parent.mkdir(parents=True, exist_ok=True)
        (OUT / name).write_bytes(data)


if __name__ == "__main__":
    main()
