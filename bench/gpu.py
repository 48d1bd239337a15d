"""GPU paths against their baselines in the same run: the MaxSim kernel against a padded torch
einsum + max, Hamming and SDC scans over packed codes, exact and IVF-PQ dense search against faiss
on the CPU (batch 1 and batch 1,000), and MiniLM encoding on the GPU against the CPU.

Memory-bound kernels are also reported as a share of the roofline: the bytes they must read over
the time they take, against the device's copy bandwidth measured here (a clone reads and writes
each byte). `--small` shrinks every size so the bench itself can be checked on a CPU.

    .venv/bin/python bench/gpu.py --out bench/results/gpu.json [--device cuda] [--small]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, log  # noqa: E402

K = 10
TARGET_RECALL = 0.95


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, repeats: int = 5) -> float:
    """Median seconds of fn() after one warm-up run."""
    fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - began)
    return float(np.median(times))


def copy_bandwidth(device: str, size: int) -> float:
    """Bytes per second a device-to-device clone moves (read + write)."""
    x = torch.empty(size, dtype=torch.uint8, device=device)
    return 2 * size / timed(lambda: x.clone(), device)


def clustered(rows: int, dim: int, seed: int, centers: int = 4096) -> np.ndarray:
    middle = np.random.default_rng(1234).normal(size=(centers, dim)).astype(np.float32)
    rng = np.random.default_rng(seed)
    out = np.empty((rows, dim), np.float32)
    for start in range(0, rows, 1_000_000):
        n = min(1_000_000, rows - start)
        out[start : start + n] = middle[rng.integers(0, centers, n)] + 0.35 * rng.normal(size=(n, dim)).astype(np.float32)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


# ---- MaxSim ----------------------------------------------------------------------------------------

def bench_maxsim(device: str, bandwidth: float, docs: int, dim: int = 128) -> dict:
    from retriever.kernels import gpu

    rng = np.random.default_rng(0)
    lengths = rng.integers(32, 300, size=docs)
    offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)])).to(device)
    tokens = torch.randn(int(lengths.sum()), dim, device=device, dtype=torch.float16)
    queries = torch.randn(8, 32, dim, device=device, dtype=torch.float16)
    query_lengths = torch.full((8,), 32, device=device)
    candidates = torch.arange(docs, device=device).repeat(8, 1)  # [8, docs]: every query scores every document
    ours = timed(lambda: gpu.maxsim_pairs(queries, query_lengths, tokens, offsets, candidates), device)
    padded = torch.zeros(docs, int(lengths.max()), dim, device=device, dtype=torch.float16)
    mask = torch.zeros(docs, int(lengths.max()), dtype=torch.bool, device=device)
    for d, (start, length) in enumerate(zip(offsets[:-1].tolist(), lengths.tolist())):
        padded[d, :length], mask[d, :length] = tokens[start : start + length], True

    def einsum_max():
        similarity = torch.einsum("bqd,cld->bcql", queries, padded).float()  # [B, C, Lq, L]
        return similarity.masked_fill(~mask[None, :, None, :], float("-inf")).amax(-1).sum(-1)

    baseline = timed(einsum_max, device)
    pairs = 8 * docs
    must_read = tokens.numel() * 2 * 8  # each query's programs read every document's tokens once (fp16)
    return {"queries": 8, "query_tokens": 32, "documents": docs, "dim": dim, "doc_tokens_mean": float(lengths.mean()),
            "pairs_per_s": {"ours": pairs / ours, "torch_einsum_max_padded": pairs / baseline},
            "speedup_over_einsum": baseline / ours, "roofline_share": must_read / ours / bandwidth}


# ---- binary codes -----------------------------------------------------------------------------------

def bench_binary(device: str, bandwidth: float, rows: int, code_bytes: int = 32) -> dict:
    from retriever.kernels import gpu

    codes = torch.randint(0, 256, (rows, code_bytes), dtype=torch.uint8, device=device)
    words = gpu.as_words(codes)
    out = {"rows": rows, "code_bytes": code_bytes}
    for batch in (1, 64):
        query_words = gpu.as_words(torch.randint(0, 256, (batch, code_bytes), dtype=torch.uint8, device=device))
        tables = torch.randn(batch, code_bytes, 256, device=device)
        offsets = torch.zeros(batch, device=device)
        hamming = timed(lambda: gpu.hamming_top_k(query_words, words, K), device)
        sdc = timed(lambda: gpu.lookup_top_k(tables, offsets, codes, K), device)
        must_read = rows * code_bytes * batch  # every query reads every code
        out[f"batch_{batch}"] = {"hamming_queries_per_s": batch / hamming, "sdc_queries_per_s": batch / sdc,
                                 "hamming_roofline_share": must_read / hamming / bandwidth,
                                 "sdc_roofline_share": must_read / sdc / bandwidth}
    return out


# ---- dense search -----------------------------------------------------------------------------------

def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth)]))


def bench_dense(device: str, bandwidth: float, rows: int, dim: int = 96, nlist: int = 4096) -> dict:
    import faiss

    from retriever.index.gpu_search import DeviceFlat, DeviceIvfPq

    base, queries = clustered(rows, dim, 0), clustered(1000, dim, 1)
    cpu_flat = faiss.IndexFlatIP(dim)
    cpu_flat.add(base)
    truth = cpu_flat.search(queries, K)[1]
    out = {"rows": rows, "dim": dim, "faiss_threads": faiss.omp_get_max_threads()}

    flat = DeviceFlat(base, "ip", device)  # fp16
    systems = {"ours_exact_fp16": lambda q: flat.search(q, K)[1]}
    cpu_ivf = faiss.index_factory(dim, f"IVF{nlist},PQ{dim // 2}", faiss.METRIC_INNER_PRODUCT)
    cpu_ivf.train(base[np.random.default_rng(0).choice(rows, min(rows, 100 * nlist), replace=False)])
    refined = faiss.IndexRefineFlat(cpu_ivf)  # faiss's own re-scoring from the full vectors
    refined.add(base)  # fills the IVF-PQ and the flat refine index
    ivf = DeviceIvfPq(cpu_ivf, device, refine=base)
    for nprobe in (8, 16, 32, 64):
        params = faiss.IndexRefineSearchParameters(k_factor=10, base_index_params=faiss.SearchParametersIVF(nprobe=nprobe))
        systems[f"ours_ivfpq_nprobe{nprobe}_rescore100"] = lambda q, n=nprobe: ivf.search(q, K, {"nprobe": n, "rescore": 100})[1]
        systems[f"faiss_cpu_ivfpq_refine_nprobe{nprobe}"] = lambda q, p=params: refined.search(q, K, params=p)[1]
    systems["faiss_cpu_flat"] = lambda q: cpu_flat.search(q, K)[1]
    for name, search in systems.items():
        row = {"recall@10": recall(search(queries), truth)}
        for batch in (1, 1000):
            block = queries[:batch]
            seconds = timed(lambda: search(block), device, repeats=3 if batch == 1000 else 20)
            row[f"batch_{batch}_queries_per_s"] = batch / seconds
        out[name] = row
        log(name, row)
    exact = timed(lambda: flat.search(queries, K), device, repeats=3)
    out["ours_exact_fp16"]["roofline_share_batch_1000"] = rows * dim * 2 / exact / bandwidth  # vectors read once per batch
    out["summary"] = _dense_summary(out)
    return out


def _dense_summary(out: dict) -> dict:
    """Per family and batch: our fastest point at recall >= 0.95 against faiss CPU's."""
    def fastest(prefix, batch):
        ok = [(name, row) for name, row in out.items() if name.startswith(prefix) and isinstance(row, dict)
              and row.get("recall@10", 0) >= TARGET_RECALL]
        return max(ok, key=lambda item: item[1][f"batch_{batch}_queries_per_s"], default=(None, None))

    summary = {}
    for batch in (1, 1000):
        ours_name, ours = fastest("ours_ivfpq", batch)
        theirs_name, theirs = fastest("faiss_cpu_ivfpq", batch)
        summary[f"batch_{batch}"] = {
            "ours_ivfpq": ours_name, "faiss_cpu_ivfpq": theirs_name,
            "ivfpq_speedup": ours[f"batch_{batch}_queries_per_s"] / theirs[f"batch_{batch}_queries_per_s"] if ours and theirs else None,
            "exact_speedup_over_faiss_cpu_flat": out["ours_exact_fp16"][f"batch_{batch}_queries_per_s"]
            / out["faiss_cpu_flat"][f"batch_{batch}_queries_per_s"]}
    return summary


# ---- encoding ---------------------------------------------------------------------------------------

def bench_encode(device: str, texts: int) -> dict:
    from retriever.encoders.dense import DenseEncoder
    from retriever.errors import InvalidConfig

    rng = np.random.default_rng(0)
    words = "retrieval engine vector index query document token model search dense sparse binary".split()
    corpus = [" ".join(rng.choice(words, size=int(n))) for n in rng.integers(8, 200, size=texts)]
    out = {"texts": texts}
    for where in dict.fromkeys(["cpu", device]):
        try:
            encoder = DenseEncoder("sentence-transformers/all-MiniLM-L6-v2", device=where, batch_size=128)
        except InvalidConfig as e:
            return {"skipped": str(e)}
        sample = corpus if where != "cpu" else corpus[: min(texts, 2000)]
        seconds = timed(lambda: encoder.encode(sample), where, repeats=3)
        out[f"{where}_{encoder.precision}_docs_per_s"] = len(sample) / seconds
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--small", action="store_true", help="small sizes, to check the bench on a CPU")
    parser.add_argument("--only", choices=("maxsim", "binary", "dense", "encode"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    small = args.small or args.device == "cpu"
    sizes = {"maxsim": 200 if small else 5_000, "binary": 200_000 if small else 10_000_000,
             "dense": 50_000 if small else 1_000_000, "encode": 200 if small else 20_000}
    device = args.device
    result = {"device": torch.cuda.get_device_name() if device.startswith("cuda") else f"cpu ({os.cpu_count()} cores)",
              "torch": torch.__version__, "small": small}
    bandwidth = copy_bandwidth(device, (64 if small else 2048) << 20)
    result["copy_bandwidth_GBps"] = bandwidth / 1e9
    benches = {"maxsim": lambda: bench_maxsim(device, bandwidth, sizes["maxsim"]),
               "binary": lambda: bench_binary(device, bandwidth, sizes["binary"]),
               "dense": lambda: bench_dense(device, bandwidth, sizes["dense"], nlist=256 if small else 4096),
               "encode": lambda: bench_encode(device, sizes["encode"])}
    for name, run in benches.items():
        if args.only in (None, name):
            log("bench", name)
            result[name] = run()
    emit(result, args.out)


if __name__ == "__main__":
    main()
