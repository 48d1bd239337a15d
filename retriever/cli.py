"""`retriever` command line: build, search, generate, eval, info, check. `--json` prints one JSON object on stdout."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from .errors import InvalidRequest, RetrieverError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Build, search and evaluate retrieval collections.")

JsonOption = typer.Option(False, "--json", help="Print one JSON object on stdout.")
GENERATE_TIMEOUT = 300.0  # seconds for a remote answer: on a fresh machine the LLM is converted first
TokenEnvOption = typer.Option(None, "--token-env", help="For grpc:// targets: send `Bearer $VAR`.")
RayOption = typer.Option(False, "--ray", help="On Ray: a sharded collection (docs/scale-out.md).")
RayAddressOption = typer.Option(
    None, "--ray-address",
    help="The Ray cluster to join ('auto': the one on this machine); default: start Ray here.",
)
FieldsOption = typer.Option(None, "--fields", help="Comma-separated fields to search (default: the first field).")
FusionOption = typer.Option("rrf", "--fusion", help="How several fields are fused: rrf, or weighted (normalized scores x weights).")
WeightsOption = typer.Option(None, "--weights", help="Weighted fusion: FIELD=WEIGHT pairs, comma-separated (default 1 each).")
NormalizationOption = typer.Option(
    "minmax", "--normalization", help="Weighted fusion: minmax, zscore or robust (median / MAD), per query."
)
ParamOption = typer.Option(
    None, "--param", "-p",
    help="Search parameter NAME=INT (nprobe, efSearch, rescore, inference_free, candidates, rerank); repeatable.",
)
PipelineOption = typer.Option(
    None, "--pipeline",
    help="A query pipeline: the name of one in the collection's config, or a .json / .toml file.",
)
ExhaustiveOption = typer.Option(False, "--exhaustive", help="Multi-vector fields: exact MaxSim over every document (the quality reference).")


def main() -> None:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    app()


def _run(as_json: bool, work: Callable[[], dict[str, Any]], show: Callable[[dict[str, Any]], None]) -> None:
    """Run a command; library errors become one clear line (or a JSON error) and exit code 2."""
    try:
        result = work()
    except RetrieverError as e:
        if as_json:
            print(json.dumps({"error": str(e), "type": type(e).__name__}))
        print(f"error: {e}", file=sys.stderr)
        raise typer.Exit(2) from None
    if as_json:
        print(json.dumps(result, default=str))
    else:
        show(result)


def _fields(value: Optional[str]) -> Optional[list[str]]:
    return [f.strip() for f in value.split(",") if f.strip()] if value else None


def _params(values: Optional[list[str]], exhaustive: bool = False) -> dict[str, int]:
    params = _pairs(values or [], int, "--param takes NAME=INT")
    return {**params, "exhaustive": 1} if exhaustive else params


def _weights(value: Optional[str]) -> Optional[dict[str, float]]:
    return _pairs(value.split(","), float, "--weights takes FIELD=NUMBER pairs") if value else None


def _pairs(items: list[str], cast, usage: str) -> dict[str, Any]:
    out = {}
    for item in items:
        name, _, raw = item.partition("=")
        try:
            out[name.strip()] = cast(raw)
        except ValueError:
            raise InvalidRequest(f"{usage}, got {item!r}") from None
    return out


def _token_from_env(token_env: Optional[str]) -> Optional[str]:
    """The bearer token held by the named environment variable (None when no name is given)."""
    import os

    if not token_env:
        return None
    token = os.environ.get(token_env)
    if not token:
        raise InvalidRequest(f"token variable {token_env}: the environment variable is empty or unset")
    return token


def _remote_options(token_env: Optional[str]) -> dict[str, Any]:
    token = _token_from_env(token_env)
    return {"token": token} if token else {}


def _load_vectors(path: Path):
    import numpy as np

    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise InvalidRequest(f"--vectors {str(path)!r} is not a readable .npy matrix: {e}") from None


@app.command()
def build(
    config: Path = typer.Option(..., "--config", "-c", help="Collection config (TOML)."),
    input: Path = typer.Option(..., "--input", "-i", help="Corpus: .jsonl, .parquet, .npy vectors, or a folder of text files."),
    out: Path = typer.Option(..., "--out", "-o", help="Collection directory to create."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted build, skipping encoded blocks."),
    block_size: int = typer.Option(512, "--block-size", help="Documents per resumable encoding block."),
    memory_cap: str = typer.Option(
        "4GB", "--memory-cap",
        help="Memory the build may use (e.g. 2GB): the corpus streams through in chunks.",
    ),
    ray: bool = RayOption,
    ray_address: Optional[str] = RayAddressOption,
    shards: int = typer.Option(1, "--shards", help="With --ray: shards the documents are spread over."),
    workers: int = typer.Option(1, "--workers", help="With --ray: encoding actors (one model each)."),
    as_json: bool = JsonOption,
) -> None:
    """Build a collection from a corpus (with --ray, a sharded one on a Ray cluster)."""
    def work():
        import time

        from .build import build as run_build
        from .build import parse_size
        from .config import CollectionConfig

        start = time.perf_counter()
        if ray:
            from .cluster import ray_build, ray_serve

            ray_serve.start(ray_address)
            built = ray_build.build(CollectionConfig.from_toml(config), input, out, shards=shards,
                                    workers=workers, resume=resume, memory_cap=parse_size(memory_cap),
                                    progress=True)
            seconds = time.perf_counter() - start
            return {"path": str(out), "manifest": built.to_dict(), "counts": {"documents": built.documents},
                    "seconds": round(seconds, 3), "docs_per_s": round(built.documents / seconds, 2)}
        if shards != 1 or workers != 1 or ray_address:
            raise InvalidRequest("--shards, --workers and --ray-address build on Ray: add --ray")
        collection = run_build(
            CollectionConfig.from_toml(config), input, out, resume=resume, block_size=block_size,
            memory_cap=parse_size(memory_cap),
        )
        seconds = time.perf_counter() - start
        return {**collection.info(), "seconds": round(seconds, 3), "docs_per_s": round(len(collection) / seconds, 2)}

    _run(as_json, work, lambda r: print(f"built {r['path']}: {r['counts']['documents']} documents in {r['seconds']} s ({r['docs_per_s']} docs/s)"))


@app.command()
def search(
    collection: str = typer.Argument(..., help="Collection directory, or grpc://host:port/name."),
    queries: Optional[list[str]] = typer.Argument(None, help="One or more query texts."),
    vectors: Optional[Path] = typer.Option(None, "--vectors", help="Query vectors instead of texts: an .npy matrix [B, D]."),
    k: int = typer.Option(10, "-k", help="Hits per query."),
    fields: Optional[str] = FieldsOption,
    fusion: str = FusionOption,
    weights: Optional[str] = WeightsOption,
    normalization: str = NormalizationOption,
    filter: Optional[str] = typer.Option(None, "--filter", help='Metadata filter as JSON, e.g. \'{"year": {"gte": 2000}}\'.'),
    param: Optional[list[str]] = ParamOption,
    exhaustive: bool = ExhaustiveOption,
    pipeline: Optional[str] = PipelineOption,
    explain: bool = typer.Option(False, "--explain", help="Show each field's or stage's score of every hit."),
    token_env: Optional[str] = typer.Option(None, "--token-env", help="For grpc:// targets: send `Bearer $VAR`."),
    as_json: bool = JsonOption,
) -> None:
    """Search a collection (a directory, or a server's grpc://host:port/name) with text queries."""
    def work():
        from .collection import connect

        try:
            conditions = json.loads(filter) if filter else None
        except json.JSONDecodeError as e:
            raise InvalidRequest(f"--filter is not valid JSON: {e}") from None
        if bool(queries) == (vectors is not None):
            raise InvalidRequest("give query texts or --vectors FILE.npy, not both or neither")
        request = _load_vectors(vectors) if vectors is not None else queries
        hits = connect(collection, **_remote_options(token_env)).search(
            request, k=k, fields=_fields(fields), filter=conditions, params=_params(param, exhaustive),
            fusion=fusion, weights=_weights(weights), normalization=normalization,
            pipeline=_pipeline(pipeline))
        labels = queries or [f"vector {i}" for i in range(len(hits))]
        results = [{"query": q, "reason": h.reason, "hits": _hit_list(h, explain)}
                   for q, h in zip(labels, hits)]
        return {"results": results}

    def show(result):
        for r in result["results"]:
            print(f"# {r['query']}" + (f"  ({r['reason']})" if r["reason"] else ""))
            for rank, h in enumerate(r["hits"], start=1):
                text = " ".join(str(h["document"].get("text", "")).split())[:100]
                print(f"{rank:3d}. {h['score']:.4f}  {h['id']}  {text}")
                if explain:
                    print("       " + "  ".join(f"{name} {score:.4f}" for name, score in h["stages"].items()))

    _run(as_json, work, show)


def _hit_list(hits, explain: bool) -> list[dict[str, Any]]:
    """One query's hits as plain data; with `explain`, each field's or stage's own score (those
    that did not return the hit left out)."""
    out = []
    for i, (document, score) in enumerate(zip(hits.documents, hits.scores)):
        hit = {"id": document["id"], "score": float(score), "document": document}
        if explain:
            hit["stages"] = {n: float(v[i]) for n, v in hits.field_scores.items() if v[i] == v[i]}  # not NaN
        out.append(hit)
    return out


def _pipeline(value: Optional[str]):
    """--pipeline: a file (JSON, or TOML by its .toml suffix) holding a pipeline, or a name."""
    if value is None or not Path(value).is_file():
        return value
    import tomllib

    text = Path(value).read_text(encoding="utf-8")
    try:
        return tomllib.loads(text) if value.endswith(".toml") else json.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        kind = "TOML" if value.endswith(".toml") else "JSON"
        raise InvalidRequest(f"--pipeline {value}: not a valid {kind} file: {e}") from None


@app.command("eval")
def evaluate(
    collection: str = typer.Argument(
        ..., help="Collection directory, grpc://host:port/name, ray://NAME, or a sharded one's directory."
    ),
    beir: Path = typer.Option(..., "--beir", help="BEIR data folder (queries.jsonl, qrels/SPLIT.tsv)."),
    split: str = typer.Option("test", "--split"),
    run: Optional[Path] = typer.Option(None, "--run", help="Also write the top-100 ranked lists in TREC run format."),
    batch_size: int = typer.Option(1, "--batch-size", help="Queries per search call."),
    fields: Optional[str] = FieldsOption,
    fusion: str = FusionOption,
    weights: Optional[str] = WeightsOption,
    normalization: str = NormalizationOption,
    param: Optional[list[str]] = ParamOption,
    exhaustive: bool = ExhaustiveOption,
    pipeline: Optional[str] = PipelineOption,
    token_env: Optional[str] = TokenEnvOption,
    as_json: bool = JsonOption,
) -> None:
    """Score a collection on a BEIR split with ir-measures (nDCG@10, R@100) and time it."""
    def work():
        from .collection import connect
        from .evaluation import evaluate as run_eval
        from .evaluation import load_beir

        queries, qrels = load_beir(beir, split)
        target = connect(collection, **_remote_options(token_env))
        return run_eval(target, queries, qrels, batch_size=batch_size, fields=_fields(fields),
                        params=_params(param, exhaustive), fusion=fusion, weights=_weights(weights),
                        normalization=normalization, run_path=run, pipeline=_pipeline(pipeline))

    _run(as_json, work, lambda r: print(json.dumps(r, indent=1)))


@app.command()
def tune(
    collection: Path = typer.Argument(..., help="Collection directory."),
    beir: Path = typer.Option(..., "--beir", help="BEIR data folder (queries.jsonl, qrels/SPLIT.tsv)."),
    split: str = typer.Option("train", "--split", help="The judged queries to tune on."),
    name: str = typer.Option("tuned", "--name", help="Keep the chosen pipeline in the config as NAME."),
    default: bool = typer.Option(False, "--default", help="Also run it when a search names no fields."),
    folds: int = typer.Option(2, "--folds", help="Cross-validation folds for held-out figures (1: none)."),
    fields: Optional[str] = typer.Option(
        None, "--fields", help="Comma-separated fields to combine (default: every field encoding texts)."),
    depths: str = typer.Option("50,100,200", "--depths", help="Comma-separated prefetch depths to try."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Report only: keep nothing in the collection."),
    as_json: bool = JsonOption,
) -> None:
    """Choose the query pipeline (fields, fusion, weights, depths, re-rank) that ranks judged
    queries best, report its cross-validated nDCG@10 against each field alone and the built-in
    hybrid pipeline, and keep it in the collection as a named pipeline."""
    def work():
        from .collection import Collection
        from .evaluation import load_beir
        from .tuning import tune as run_tune

        if str(collection).startswith("grpc:"):
            raise InvalidRequest("tune reads each field's exact scorer, so it runs on a collection "
                                 "directory: tune a copy (a snapshot), then save_pipeline on the server")
        queries, qrels = load_beir(beir, split)
        try:
            tried = tuple(int(d) for d in depths.split(",") if d.strip())
        except ValueError:
            raise InvalidRequest(f"--depths takes comma-separated integers, got {depths!r}") from None
        opened = Collection.open(collection)
        result = run_tune(opened, queries, qrels, fields=_fields(fields), depths=tried, folds=folds)
        if not dry_run:
            opened.save_pipeline(name, result["pipeline"], default=default)
        return {**result, "kept_as": None if dry_run else name, "default": default and not dry_run}

    def show(r):
        scores = r["nDCG@10"]
        alone = ", ".join(f"{n} {v:.4f}" for n, v in scores["fields"].items())
        print(f"{r['queries']} judged queries; nDCG@10: tuned {scores['tuned']:.4f}, "
              f"hybrid {scores['hybrid']:.4f}, {alone}")
        if "held_out" in r:
            h = r["held_out"]
            print(f"held out ({h['folds']} folds): {h['nDCG@10']:.4f}, {h['gain_over_best_field']:+.4f} over "
                  f"{h['best_field']}, {h['gain_over_hybrid']:+.4f} over hybrid")
        print(json.dumps(r["pipeline"], indent=1))
        if r["kept_as"]:
            print(f"kept as pipeline {r['kept_as']!r}{' (the default)' if r['default'] else ''}: "
                  f"`retriever eval {collection} --beir DIR --pipeline {r['kept_as']}` scores it")

    _run(as_json, work, show)


@app.command("tune-pq")
def tune_pq(
    collection: Path = typer.Argument(..., help="Collection directory."),
    beir: Path = typer.Option(..., "--beir", help="BEIR data folder (queries.jsonl, qrels/SPLIT.tsv)."),
    split: str = typer.Option("train", "--split", help="The judged queries to train on."),
    field: Optional[str] = typer.Option(
        None, "--field", help="The dense PQ field (default: the first field)."),
    hold_out: str = typer.Option(
        "documents", "--hold-out",
        help="documents: keep training only if it helps queries about documents never judged; "
             "queries: if it helps unseen queries (judged documents may be asked about again)."),
    as_json: bool = JsonOption,
) -> None:
    """Train a dense field's PQ centroids on judged queries (JPQ): relevant documents ranked above
    the ones that crowd them out, instead of k-means reconstruction. Every segment is rebuilt;
    later segments of the field train on the same queries. Score it with `retriever eval`."""
    def work():
        from .collection import Collection
        from .evaluation import load_beir

        queries, qrels = load_beir(beir, split)
        opened = Collection.open(collection)
        name = field or opened.config.fields[0].name
        segments = opened.tune_pq(name, queries, qrels, hold_out=hold_out)
        return {"field": name, "queries": len(qrels), "hold_out": hold_out, "segments": segments}

    def show(r):
        if not r["segments"]:
            print(f"{r['field']}: no segment is large enough for PQ codes yet; the judged queries are "
                  "kept, and segments built later train on them")
        for s in r["segments"]:
            print(f"{r['field']}: {s['rows']} rows, held-out MRR {s['mrr_before']:.4f} -> "
                  f"{s['mrr_after']:.4f} (epoch {s['epoch']} kept; 0 is k-means), {s['seconds']} s")

    _run(as_json, work, show)


@app.command()
def serve(
    collections: Optional[list[Path]] = typer.Argument(None, help="Collection directories to serve."),
    data_dir: Optional[Path] = typer.Option(
        None, "--data-dir",
        help="Serve every collection under DIR; CreateCollection/DropCollection work there.",
    ),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(50051, "--port", help="0 picks a free port (printed on stderr)."),
    workers: int = typer.Option(8, "--workers", help="Threads running searches, writes and generation."),
    max_concurrent: int = typer.Option(
        64, "--max-concurrent", help="Unary calls in flight before RESOURCE_EXHAUSTED."
    ),
    max_streams: int = typer.Option(
        16, "--max-streams", help="Upsert/Generate streams open before RESOURCE_EXHAUSTED."
    ),
    stream_idle: float = typer.Option(
        30.0, "--stream-idle-seconds", help="Close an Upsert stream silent this long."
    ),
    max_message_mb: int = typer.Option(16, "--max-message-mb", help="Largest request or response."),
    token_env: Optional[str] = typer.Option(
        None, "--token-env", help="Require `authorization: Bearer $VAR` (name of the environment variable)."
    ),
    write_token_env: Optional[str] = typer.Option(
        None, "--write-token-env", help="Also accept `Bearer $VAR` for reads and writes (no create or drop)."
    ),
    read_token_env: Optional[str] = typer.Option(
        None, "--read-token-env", help="Also accept `Bearer $VAR` for reads only."
    ),
    tls_cert: Optional[Path] = typer.Option(None, "--tls-cert", help="PEM certificate chain (with --tls-key) to serve TLS."),
    tls_key: Optional[Path] = typer.Option(None, "--tls-key"),
    reflection: bool = typer.Option(False, "--reflection", help="Enable gRPC server reflection."),
    metrics_port: Optional[int] = typer.Option(None, "--metrics-port", help="Serve Prometheus metrics on this port."),
    ray: bool = typer.Option(False, "--ray", help="Serve sharded collections (directories) on Ray Serve."),
    ray_address: Optional[str] = RayAddressOption,
    replicas: int = typer.Option(1, "--replicas", help="With --ray: replicas of each shard."),
) -> None:
    """Serve collections over gRPC until SIGTERM (health goes NOT_SERVING, in-flight calls finish)."""
    from .registry import Registry
    from .server import Server, ServerOptions

    try:
        if bool(tls_cert) != bool(tls_key):
            raise InvalidRequest("--tls-cert and --tls-key go together")
        token = _token_from_env(token_env)
        options = ServerOptions(
            host=host, port=port, workers=workers, max_concurrent_rpcs=max_concurrent,
            max_streams=max_streams, stream_idle_seconds=stream_idle,
            max_message_bytes=max_message_mb * 1024 * 1024, token=token,
            write_token=_token_from_env(write_token_env), read_token=_token_from_env(read_token_env),
            tls_cert=tls_cert.read_bytes() if tls_cert else None, tls_key=tls_key.read_bytes() if tls_key else None,
            reflection=reflection, metrics_port=metrics_port,
        )
        if bool(collections) == bool(data_dir):
            raise InvalidRequest("give collection directories, or --data-dir DIR (not both)")
        if ray:
            registry = _ray_registry(collections or [], ray_address, replicas)
        else:
            registry = Registry.open_data_dir(data_dir) if data_dir else Registry.open(collections)
        for path, reason in registry.not_served.items():
            print(f"not serving {path}: {reason}", file=sys.stderr)
        if not registry.names() and not data_dir:
            raise InvalidRequest("none of the directories holds a collection to serve")
        server = Server(registry, options).start()
    except RetrieverError as e:
        print(f"error: {e}", file=sys.stderr)
        raise typer.Exit(2) from None
    names = ", ".join(f"{n}{'' if registry.healthy(n) else ' (damaged, not served)'}" for n in registry.names())
    print(f"serving {names} on {host}:{server.port}", file=sys.stderr, flush=True)
    server.wait()


def _ray_registry(paths: list[Path], address: Optional[str], replicas: int):
    """Each sharded collection deployed on Ray Serve, behind the server's registry."""
    from .cluster import ray_serve
    from .cluster.serving import ClusterRegistry

    ray_serve.start(address)
    served = [ray_serve.deploy(path, replicas=replicas) for path in paths]
    return ClusterRegistry({collection.name: collection for collection in served})


@app.command()
def generate(
    collection: str = typer.Argument(..., help="Collection directory, or grpc://host:port/name."),
    question: str = typer.Argument(..., help="The question to answer from the retrieved documents."),
    k: int = typer.Option(5, "-k", help="Documents retrieved as chunks."),
    mode: str = typer.Option("blend", "--mode", help="blend (cached chunk KV, a share recomputed), reuse, prefix or full."),
    ratio: Optional[float] = typer.Option(None, "--ratio", help="blend: share of chunk tokens recomputed (default 0.2)."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens"),
    fields: Optional[str] = FieldsOption,
    param: Optional[list[str]] = ParamOption,
    token_env: Optional[str] = typer.Option(None, "--token-env", help="For grpc:// targets: send `Bearer $VAR`."),
    as_json: bool = JsonOption,
) -> None:
    """Answer a question from a collection with the LLM ($RETRIEVER_LLM, default SmolLM2-135M-Instruct),
    reusing the KV cache of chunks seen before. The answer streams to stdout; stats go to stderr."""
    def work():
        from .collection import connect

        # a grpc:// answer's deadline covers the whole stream, and a server's first answer loads the LLM
        remote = {"timeout": GENERATE_TIMEOUT} if collection.startswith(("grpc://", "grpcs://")) else {}
        pieces = connect(collection, **_remote_options(token_env), **remote).generate(
            question, k, mode=mode, recompute_ratio=ratio, max_new_tokens=max_new_tokens, fields=_fields(fields), params=_params(param))
        text, stats = [], {}
        for piece in pieces:
            text.append(piece.text)
            stats = piece.stats or stats
            if not as_json:
                print(piece.text, end="", flush=True)
        return {"question": question, "answer": "".join(text), "stats": stats}

    def show(result):
        stats = result["stats"]
        print()
        print(f"[{stats.get('mode')}: first token after {stats.get('time_to_first_token_s', 0):.3f} s, cache hits {stats.get('cache_hits')}, "
              f"misses {stats.get('cache_misses')}, tokens recomputed {stats.get('tokens_recomputed')}]", file=sys.stderr)

    _run(as_json, work, show)


@app.command()
def info(
    collection: str = typer.Argument(..., help="Collection directory, or grpc://host:port/name."),
    token_env: Optional[str] = typer.Option(None, "--token-env", help="For grpc:// targets: send `Bearer $VAR`."),
    as_json: bool = JsonOption,
) -> None:
    """Config, counts, fields and size of a collection."""
    def work():
        from .collection import connect

        return connect(collection, **_remote_options(token_env)).info()

    _run(as_json, work, lambda r: print(json.dumps(r, indent=1)))


@app.command()
def check(
    collection: Path = typer.Argument(..., help="Collection directory."),
    sample: int = typer.Option(100, "--sample", help="Stored vectors used as queries against exact search."),
    min_recall: float = typer.Option(0.5, "--min-recall", help="Lowest recall@10 accepted for approximate indexes."),
    as_json: bool = JsonOption,
) -> None:
    """Verify checksums and counts, and compare a sample of queries with exact search."""
    from .check import check as run_check

    result: dict[str, Any] = {}

    def work():
        result.update(run_check(collection, sample=sample, min_recall=min_recall))
        return result

    def show(r):
        print("ok" if r["ok"] else "FAILED")
        for problem in r["problems"]:
            print(f"  problem: {problem}")
        for name, figures in r["fields"].items():
            print(f"  field {name}: {figures}")

    _run(as_json, work, show)
    if not result.get("ok", True):
        raise typer.Exit(1)


@app.command()
def migrate(
    collection: Path = typer.Argument(..., help="Collection directory in an older storage format."),
    as_json: bool = JsonOption,
) -> None:
    """Convert a collection written by an older engine to the current storage format (in place,
    as one atomic commit; its data files are kept). Older engines cannot open it afterwards."""
    from .collection import Collection

    def work():
        opened = Collection.open(collection)
        before = opened.manifest["format_version"]
        changed = opened.migrate()
        return {
            "path": str(collection),
            "from_format": before,
            "format": opened.manifest["format_version"],
            "changed": changed,
            "version": opened.version,
        }

    def show(r):
        done = f"format {r['from_format']} -> {r['format']}"
        if not r["changed"]:
            done = f"already format {r['format']}"
        print(f"{r['path']}: {done}")

    _run(as_json, work, show)


@app.command()
def optimize(
    collection: Path = typer.Argument(..., help="Collection directory."),
    as_json: bool = JsonOption,
) -> None:
    """Flush the write buffer, then merge every segment into one, dropping deleted rows (each
    field's index is rebuilt on the merged segment). Searches elsewhere keep running; other
    writers wait for it."""
    from .collection import Collection

    def work():
        opened = Collection.open(collection)
        before, flushed = len(opened.info()["segments"]), opened.info()["buffer"]["writes"]
        merged = opened.optimize()
        return {"path": str(collection), "segments_before": before, "buffered_writes_flushed": flushed,
                "segments": len(opened.segments), "merged": merged, "version": opened.version,
                "counts": opened.counts}

    _run(as_json, work, lambda r: print(f"{r['path']}: {r['segments_before']} segments -> {r['segments']}"))



@app.command()
def snapshot(
    collection: str = typer.Argument(..., help="Collection directory, or grpc://host:port/name."),
    out: Path = typer.Argument(..., help="The archive to write (a tar file)."),
    token_env: Optional[str] = typer.Option(None, "--token-env", help="For grpc:// targets: an admin token."),
    as_json: bool = JsonOption,
) -> None:
    """Write a consistent snapshot of a collection: its write buffer flushed, then its newest
    version as a tar archive (`retriever restore` makes a collection from it)."""
    def work():
        from .collection import connect

        target = connect(collection, **_remote_options(token_env))
        try:
            version = target.snapshot(out)
        except OSError as e:
            raise InvalidRequest(f"cannot write the archive {str(out)!r}: {e.strerror}") from None
        size = out.stat().st_size
        return {"collection": collection, "archive": str(out), "version": version, "bytes": size}

    _run(as_json, work, lambda r: print(f"{r['archive']}: version {r['version']}, {r['bytes']:,} bytes"))


@app.command()
def restore(
    archive: Path = typer.Argument(..., help="A snapshot archive (`retriever snapshot`)."),
    target: str = typer.Argument(..., help="A new collection directory, or grpc://host:port/name."),
    name: Optional[str] = typer.Option(None, "--name", help="Directory targets: rename the collection."),
    token_env: Optional[str] = typer.Option(None, "--token-env", help="For grpc:// targets: an admin token."),
    as_json: bool = JsonOption,
) -> None:
    """Make a collection from a snapshot archive; every file is checked against the archive's
    manifest first, and a damaged archive leaves nothing behind."""
    def work():
        from .client import RemoteCollection
        from .collection import Collection

        if not archive.is_file():
            raise InvalidRequest(f"the archive {str(archive)!r} is not a readable file")
        if target.startswith(("grpc://", "grpcs://")):
            info = RemoteCollection.from_url(target, **_remote_options(token_env)).restore(archive)
            return {"collection": info["name"], "target": target, "version": info["version"]}
        restored = Collection.restore(archive, target, name=name)
        return {"collection": restored.name, "target": target, "version": restored.version}

    _run(as_json, work, lambda r: print(f"restored {r['collection']} at {r['target']} (v{r['version']})"))
