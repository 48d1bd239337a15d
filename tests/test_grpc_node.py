"""The Node (grpc-js) client in examples/node, written from the .proto alone, gets the answers a
Python caller gets in-process: the same ids and the same float32 scores. Runs where `node` is."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

import retriever
from helpers import make_docs, random_vectors, vector_config
from retriever.registry import Registry
from retriever.server import Server, ServerOptions

NODE_DIR = Path(__file__).resolve().parent.parent / "examples" / "node"
TOKEN = "node-t0ken"


@pytest.fixture(scope="module")
def node() -> str:
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.skip("node is not installed")
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").exists():
        command = [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"]
        done = subprocess.run(command, cwd=NODE_DIR, capture_output=True, text=True, timeout=600)
        if done.returncode:
            pytest.skip(f"npm could not install the client's packages: {done.stderr[-500:]}")
    return node


def test_node_client_matches_python(node, tmp_path):
    local = retriever.Collection.create(tmp_path / "vecs", vector_config("IVF8,Flat", rescore=20))
    local.add(make_docs(200), vectors={"dense": random_vectors(200, 16, seed=1)})
    queries = random_vectors(3, 16, seed=2)
    where = {"lang": "en", "year": {"gte": 2000}}
    new = random_vectors(2, 16, seed=3)
    added = [{"id": "n1", "text": "from node"}, {"id": "n2"}]
    ask = {"vectors": queries.tolist(), "k": 5, "filter": where, "token": TOKEN,
           "upsert": {"documents": added, "vectors": new.tolist()}}
    (tmp_path / "ask.json").write_text(json.dumps(ask))
    def hits(found):
        return [[{"id": i, "score": float(s)} for i, s in zip(h.ids, h.scores)] for h in found]

    expected = {"hits": hits(local.search(queries, k=5)), "count": local.count(where),
                "filtered_hits": hits(local.search(queries, k=5, filter=where))}
    page, after = local.scroll(where, limit=3)
    server = Server(Registry.open([tmp_path / "vecs"]), ServerOptions(port=0, token=TOKEN)).start()
    try:
        address = f"127.0.0.1:{server.port}"
        command = [node, str(NODE_DIR / "client.js"), address, "vecs", str(tmp_path / "ask.json")]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    finally:
        server.stop()
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert {key: out[key] for key in expected} == expected  # bit-identical float32 scores
    assert out["scroll"] == {"ids": [d["id"] for d in page], "next_after": after}
    first = [h["id"] for h in out["hits"][0][:2]]
    assert out["documents"] == local.get(first) and out["missing"] == ["no-such-id"]
    [field] = out["schema"]["fields"]
    assert field == {"name": "dense", "kind": "dense", "dim": 16, "query_inputs": ["vectors"]}
    assert out["acks"] == [{"batch": 0, "upserted": 2}] and out["deleted"] == 2
    assert [h[0]["id"] for h in out["upserted_hits"]] == ["n1", "n2"]
    assert out["bad_request"]["code"] == "INVALID_ARGUMENT" and "nprobe" in out["bad_request"]["details"]
