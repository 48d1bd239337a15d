#!/usr/bin/env bash
# The main job: index this repository's own docs and source, serve it over gRPC on the embedded
# default (local collection, no outside service), and answer questions through the server.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
DEMO=demo-collection
PORT=${PORT:-50071}

rm -rf "$DEMO"
$BIN/retriever build --config examples/hybrid.toml --input . --out "$DEMO"
$BIN/retriever check "$DEMO"

$BIN/retriever serve "$DEMO" --port "$PORT" &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 100); do  # wait until the collection reports SERVING
  $BIN/python -c "import grpc, sys; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g
c = grpc.insecure_channel('127.0.0.1:$PORT')
try: sys.exit(g.HealthStub(c).Check(h.HealthCheckRequest(service='docs'), timeout=1).status != h.HealthCheckResponse.SERVING)
except grpc.RpcError: sys.exit(1)" 2>/dev/null && break
  sleep 0.2
done

$BIN/retriever search "grpc://127.0.0.1:$PORT/docs" -k 3 \
  "how does a commit stay atomic if the writer is killed?" \
  "which faiss index types can a dense field use?" \
  "how do I evaluate a collection on a BEIR dataset?"

# The same question answered by BM25 alone and by dense + BM25 fused with reciprocal ranks.
$BIN/retriever search "grpc://127.0.0.1:$PORT/docs" -k 3 --fields bm25 "inverted index postings for BM25"
$BIN/retriever search "grpc://127.0.0.1:$PORT/docs" -k 3 --fields dense,bm25 --fusion rrf "inverted index postings for BM25"

# RAG over the same server: retrieve 3 chunks, answer with SmolLM2-135M-Instruct reusing cached chunk KV.
# The second question shares chunks with the first, so its chunk KV comes from the cache (see the stats line).
$BIN/retriever generate "grpc://127.0.0.1:$PORT/docs" -k 3 --max-new-tokens 48 "How does a commit stay atomic?"
$BIN/retriever generate "grpc://127.0.0.1:$PORT/docs" -k 3 --max-new-tokens 48 "What happens to a commit when the writer is killed?"
