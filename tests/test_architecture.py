"""The layers of docs/architecture.md depend one way: faces -> collection -> fields -> index -> kernels."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KERNELS = {"retriever.kernels"}
INDEX = KERNELS | {"retriever.index", "retriever.errors"}
ENCODERS = INDEX | {"retriever.encoders"}
FIELDS = ENCODERS | {"retriever.fields"}
COLLECTION = FIELDS | {
    f"retriever.{m}"
    for m in (
        "collection", "config", "documents", "filters", "fusion", "types", "corpus", "rag", "segments",
        "buffer", "merging", "merge_policy", "snapshots", "pipeline", "text_encoders",
    )
}
# what each layer may import from the engine (by top-level module under `retriever`)
ALLOWED = {
    "retriever.kernels": KERNELS,
    "retriever.index": INDEX,
    "retriever.encoders": ENCODERS,
    "retriever.fields": FIELDS,
    "retriever.rag": ENCODERS | {"retriever.rag"},
    # sharded collections: over collections, beneath the faces (server, client, cli)
    "retriever.cluster": COLLECTION | {"retriever.cluster", "retriever.build", "retriever.encoders"},
    **{
        m: COLLECTION | {"retriever.check", "retriever.build", "retriever.evaluation"}
        for m in (
            "retriever.collection",
            "retriever.config",
            "retriever.documents",
            "retriever.filters",
            "retriever.fusion",
            "retriever.types",
            "retriever.corpus",
            "retriever.segments",
            "retriever.buffer",
            "retriever.merging",
            "retriever.merge_policy",
            "retriever.snapshots",
            "retriever.pipeline",
            "retriever.text_encoders",
            "retriever.check",
            "retriever.build",
            "retriever.evaluation",
        )
    },
}
FACES_ONLY = {
    "grpc",
    "typer",
    "click",
}  # only the faces (server, client, cli, conversions) parse arguments or speak gRPC
EXCEPTIONS = {
    ("retriever.collection", "retriever.client"),
    ("retriever.collection", "retriever.cluster"),
}  # `connect()` picks in-process, remote or sharded, imported lazily


def modules():
    for folder, package in (
        ("retriever", "retriever"),
        ("index", "retriever.index"),
        ("kernels", "retriever.kernels"),
    ):
        for path in (ROOT / folder).rglob("*.py"):
            if "_proto" in path.parts:
                continue
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            yield name, path


def imports(name: str, path: Path):
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*base, node.module] if node.module else base)
            yield module
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


def layer(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_layers_depend_one_way():
    wrong = []
    for name, path in modules():
        own = layer(name)
        for module in imports(name, path):
            top = module.split(".")[0]
            if top in FACES_ONLY and own not in (
                "retriever.server",
                "retriever.client",
                "retriever.cli",
                "retriever.conversions",
            ):
                wrong.append(f"{name} imports {module}")
            if top != "retriever" or own not in ALLOWED or (own, layer(module)) in EXCEPTIONS:
                continue
            if layer(module) not in ALLOWED[own] and module != "retriever":
                wrong.append(f"{name} imports {module}")
    assert not wrong, wrong
