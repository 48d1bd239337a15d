"""RAG generation with KV chunk-cache reuse on SciFact with SmolLM2-135M-Instruct: time to first
token per mode (full, prefix, reuse, blend) on a distinct-question stream and a repeated-question
(Zipf) stream, hit rates, quality against `full` (first token, 32 greedy tokens, first-token KL)
for reuse and blend at several recompute ratios and KV precisions, and bytes per cached token.

Workload: the SciFact claims as questions in a seeded shuffled order, each with its top 5
abstracts retrieved by MiniLM (dense, exact) as chunks. On 2 CPU cores a full prefill of ~1,300
tokens takes seconds, so the timed and quality parts run on the first questions of the stream
(sizes are options); the reuse statistics cover the whole stream. On a CUDA machine the model
runs on the GPU and the chunk cache is kept in GPU memory (the store's device tier).

    .venv/bin/python bench/rag.py --out bench/results/rag.json [--cache /tmp/binary-cache] [--parts quality,ceiling]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, latency, log  # noqa: E402

CHUNKS = 5
RATIOS = (0.1, 0.15, 0.2, 0.3)
QUANTIZED_RATIOS = (0.15, 0.2)
DEVIATION_RATIOS = (0.15, 0.2)  # CacheBlend's selection, for comparison with the default (attention)
CEILING_RATIOS = (0.2, 0.3, 0.5)
NEAR_TIE_NATS = 0.1  # full's top two first tokens closer than this: a coin toss that any cache error can flip


def workload(scifact: Path, cache: Path | None, work: Path) -> tuple[list[str], list[list[str]]]:
    """(questions in stream order, their top-5 chunk ids): every SciFact claim, seeded shuffle."""
    import retriever
    from retriever.documents import document_texts, documents_to_table
    from retriever.encoders.dense import DenseEncoder

    docs = [json.loads(line) for line in (scifact / "corpus.jsonl").read_text(encoding="utf-8").split("\n") if line.strip()]
    claims = [json.loads(line)["text"] for line in (scifact / "queries.jsonl").read_text(encoding="utf-8").split("\n") if line.strip()]
    if cache and (cache / "docs.npy").exists():
        doc_vectors, claim_vectors = np.load(cache / "docs.npy"), np.load(cache / "queries.npy")
    else:
        encoder = DenseEncoder("all-minilm-l6-v2")
        table = documents_to_table([{"id": str(d["_id"]), "title": d.get("title", ""), "text": d["text"]} for d in docs])
        doc_vectors, claim_vectors = encoder.encode(document_texts(table, ("title", "text")), progress=True), encoder.encode(claims)
        if cache:
            cache.mkdir(parents=True, exist_ok=True)
            np.save(cache / "docs.npy", doc_vectors)
            np.save(cache / "queries.npy", claim_vectors)
    collection = retriever.Collection.create(work / "scifact", {"name": "scifact", "max_batch": 2048, "fields": [{"name": "dense", "dim": 384}]})
    collection.add([{"id": str(d["_id"]), "title": d.get("title", ""), "text": d["text"]} for d in docs], vectors={"dense": doc_vectors})
    hits = collection.search(claim_vectors, CHUNKS)
    texts = {str(d["_id"]): f"{d.get('title', '')}. {d['text']}".strip() for d in docs}
    order = np.random.default_rng(0).permutation(len(claims))
    return [claims[i] for i in order], [hits[i].ids for i in order], texts


def reuse_statistics(chunk_lists: list[list[str]]) -> dict:
    """How often a chunk was retrieved before in the stream, and how often a prompt's chunk list
    starts with an earlier prompt's (what exact-prefix caching can reuse)."""
    seen_chunks: set[str] = set()
    seen_prefixes: set[tuple[str, ...]] = set()
    reused = prefix_depths = full_matches = first_matches = 0
    for chunks in chunk_lists:
        reused += sum(c in seen_chunks for c in chunks)
        depth = max((d for d in range(1, CHUNKS + 1) if tuple(chunks[:d]) in seen_prefixes), default=0)
        prefix_depths += depth
        full_matches += depth == CHUNKS
        first_matches += depth >= 1
        seen_chunks.update(chunks)
        seen_prefixes.update(tuple(chunks[:d]) for d in range(1, CHUNKS + 1))
    n = len(chunk_lists)
    return {"questions": n, "chunk_reuse_rate": round(reused / (n * CHUNKS), 4), "distinct_chunks": len(seen_chunks),
            "exact_prefix_match_rate_whole_list": round(full_matches / n, 4), "prefix_match_rate_first_chunk": round(first_matches / n, 4),
            "mean_prefix_chunks_reusable": round(prefix_depths / n, 3)}


def make_generator(model, tokenizer, bits: int = 16, capacity: int = 8 << 30, selection: str = "attention", anchored: bool = True):
    from retriever.rag.generate import RagGenerator
    from retriever.rag.store import ChunkCacheStore, Tier

    unanchored = {} if anchored else {"anchor_text": None}
    tier = Tier("device", capacity, device="cuda", bits=bits) if next(model.parameters()).is_cuda else Tier("memory", capacity, bits=bits)
    return RagGenerator(model, tokenizer, ChunkCacheStore([tier]), selection=selection, **unanchored)


def first_token_time(generator, question: str, chunks: list[str], mode: str, ratio: float | None) -> dict:
    *_, last = generator.generate(question, chunks, mode=mode, recompute_ratio=ratio, max_new_tokens=1)
    return last.stats


def distinct_stream(model, tokenizer, questions, chunk_texts, warmup: int, measured: int, ratio: float) -> dict:
    """Warm cache: every chunk of the measured questions computed beforehand (a deployment that
    caches corpus chunks); exact-prefix caching warmed by the `warmup` questions before them
    (distinct questions cannot share more). Then TTFT per mode over the measured questions."""
    out = {"warmup_questions": warmup, "measured_questions": measured}
    measured_q = list(range(warmup, warmup + measured))
    for label, mode, selection in (("full", "full", None), ("prefix", "prefix", None), ("reuse", "reuse", None),
                                   ("blend", "blend", "attention"), ("blend_deviation", "blend", "deviation")):
        generator = make_generator(model, tokenizer, selection=selection or "attention")
        began = time.perf_counter()
        if mode in ("reuse", "blend"):
            for i in measured_q:  # chunk KV alone (after the shared prefix, or prefix + anchor): what the store keeps
                generator.assembler.prefill(generator.prompt(questions[i], chunk_texts[i]), "reuse")
        elif mode == "prefix":
            for i in range(warmup):
                first_token_time(generator, questions[i], chunk_texts[i], "prefix", None)
        warm_s = time.perf_counter() - began
        stats = [first_token_time(generator, questions[i], chunk_texts[i], mode, ratio if mode == "blend" else None) for i in measured_q]
        hits = sum(s["cache_hits"] for s in stats)
        lookups = hits + sum(s["cache_misses"] for s in stats)
        out[label] = {
            **latency([s["time_to_first_token_s"] for s in stats], digits=1),
            "hit_rate": round(hits / lookups, 4) if lookups else None,
            "mean_tokens_computed": round(float(np.mean([s["tokens_computed"] for s in stats])), 1),
            "warm_s": round(warm_s, 1),
        }
        log("distinct", label, out[label])
    out["mean_prompt_tokens"] = round(float(np.mean([s["prompt_tokens"] for s in stats])), 1)
    for mode in ("prefix", "reuse", "blend", "blend_deviation"):
        out[f"speedup_{mode}_vs_full_p50"] = round(out["full"]["p50_ms"] / out[mode]["p50_ms"], 2)
    out["speedup_blend_vs_prefix_p50"] = round(out["prefix"]["p50_ms"] / out["blend"]["p50_ms"], 2)
    return out


def zipf_stream(model, tokenizer, questions, chunk_texts, distinct: int, requests: int, ratio: float) -> dict:
    """Identical questions repeating (Zipf, s = 1.1 over `distinct` questions): prefix caching's best case. Cold start."""
    rng = np.random.default_rng(1)
    weights = 1 / np.arange(1, distinct + 1) ** 1.1
    picks = rng.choice(distinct, size=requests, p=weights / weights.sum())
    out = {"distinct_questions": distinct, "requests": requests, "repeat_rate": round(1 - len(set(picks.tolist())) / requests, 4)}
    for mode in ("full", "prefix", "blend"):
        generator = make_generator(model, tokenizer)
        stats = [first_token_time(generator, questions[i], chunk_texts[i], mode, ratio if mode == "blend" else None) for i in picks]
        hits = sum(s["cache_hits"] for s in stats)
        lookups = hits + sum(s["cache_misses"] for s in stats)
        out[mode] = {**latency([s["time_to_first_token_s"] for s in stats], digits=1),
                     "hit_rate": round(hits / lookups, 4) if lookups else None}
        log("zipf", mode, out[mode])
    return out


def kl_divergence(reference, logprobs) -> float:
    """KL(reference || other) of two log-probability vectors."""
    return float((reference.exp() * (reference - logprobs)).sum())


def quality(model, tokenizer, questions, chunk_texts, count: int, tokens: int = 32) -> dict:
    """Against `full` on the same prompts: first-token agreement (also over the prompts whose
    first token is not a near tie in `full`); over the first 32 greedy tokens, the share of prompts
    whose tokens are identical, the mean share generated before the first difference, and
    teacher-forced agreement (full's tokens fed in, the share of positions where the mode's greedy
    choice is the same); first-token KL(full || mode). Per KV precision and blend selection, and
    at 16 bits without the anchor (every chunk cached right after the system prompt)."""
    import torch

    reference = make_generator(model, tokenizer)
    full = [reference.compare(questions[i], chunk_texts[i], "full", count=tokens) for i in range(count)]
    margins = [float(-torch.diff(torch.topk(logprobs, 2).values)) for logprobs, *_ in full]
    clear = [m >= NEAR_TIE_NATS for m in margins]
    out: dict = {"questions": count, "tokens": tokens, "near_tie_nats": NEAR_TIE_NATS, "near_tie_share": round(1 - float(np.mean(clear)), 4)}
    runs = [(16, "attention", [0.0, *RATIOS], True), (16, "deviation", DEVIATION_RATIOS, True),
            *((bits, "attention", [0.0, *QUANTIZED_RATIOS], True) for bits in (8, 4)), (16, "attention", [0.0, 0.2], False)]
    for bits, selection, ratios, anchored in runs:
        generator = make_generator(model, tokenizer, bits=bits, selection=selection, anchored=anchored)
        group = f"kv_{bits}bit" + ("" if anchored else "_no_anchor")
        for ratio in ratios:
            mode = "blend" if ratio else "reuse"
            rows = []
            for i in range(count):
                ref_logprobs, ref_tokens, _, _ = full[i]
                logprobs, generated, forced, _ = generator.compare(questions[i], chunk_texts[i], mode, ratio, count=tokens, reference=ref_tokens)
                before = next((j for j, (a, b) in enumerate(zip(generated, ref_tokens)) if a != b), min(len(generated), len(ref_tokens)))
                rows.append((generated[:1] == ref_tokens[:1], generated == ref_tokens, before / max(len(ref_tokens), 1),
                             float(np.mean([a == b for a, b in zip(forced, ref_tokens)])),
                             kl_divergence(ref_logprobs, logprobs)))
            first, identical, before, forced_agreement, kl = (float(np.mean(column)) for column in zip(*rows))
            first_clear = float(np.mean([row[0] for row, keep in zip(rows, clear) if keep])) if any(clear) else None
            key = "reuse" if mode == "reuse" else f"blend_{selection}_r{ratio}"
            out.setdefault(group, {})[key] = {
                "first_token_agreement": round(first, 4), "first_token_agreement_no_near_ties": round(first_clear, 4) if first_clear is not None else None,
                "tokens32_identical": round(identical, 4), "tokens32_share_before_first_difference": round(before, 4),
                "tokens32_teacher_forced_agreement": round(forced_agreement, 4), "first_token_kl": round(kl, 5)}
            log("quality", group, key, out[group][key])
    return out


def ceiling(model, tokenizer, questions, chunk_texts, count: int) -> dict:
    """What blend could reach if recomputing were exact: reuse's KV with the picked chunk slots
    replaced by full prefill's own KV, then the question run on top (first-token agreement and KL
    against full). Picks: blend's own (attention), and an oracle that takes the tokens whose KV
    deviates most from full's summed over all layers. Separates what the pick and the share `r`
    can give from what the recompute loses. Reaches into the assembler: a diagnostic, not a mode."""
    import torch

    generator = make_generator(model, tokenizer)
    rows: dict[str, list] = {}
    for i in range(count):
        with torch.inference_mode():
            _ceiling_rows(model, generator, questions[i], chunk_texts[i], rows)
    out: dict = {"questions": count}
    for key, values in rows.items():
        out[key] = {"first_token_agreement": round(float(np.mean([a for a, _ in values])), 4),
                    "first_token_kl": round(float(np.mean([kl for _, kl in values])), 5)}
        log("ceiling", key, out[key])
    return out


def _ceiling_rows(model, generator, question: str, chunks: list[str], rows: dict[str, list]) -> None:
    """One prompt's (first token agrees, KL) per pick and ratio, appended to `rows`."""
    import torch

    from retriever.rag.kv import deviation as kv_deviation

    assembler = generator.assembler
    prompt = generator.prompt(question, chunks)
    logits, full_keys, full_values, _ = assembler.prefill(prompt, "full")
    reference = torch.log_softmax(logits.float(), dim=-1)
    _, keys, values, _ = assembler.prefill(prompt, "reuse")
    chunk_slots = torch.arange(len(prompt.prefix), len(prompt.ids) - len(prompt.question))
    deviation = sum(kv_deviation(*layer, chunk_slots) for layer in zip(full_keys, full_values, keys, values))
    asked = list(range(len(prompt.ids) - len(prompt.question), len(prompt.ids)))
    for ratio in CEILING_RATIOS:
        picked = round(ratio * len(chunk_slots))
        picks = {"attention": torch.tensor(assembler.select(prompt, keys, values, ratio, "attention"), dtype=torch.long),
                 "oracle_deviation": chunk_slots[torch.topk(deviation, picked).indices]}
        for pick, slots in picks.items():
            patched_keys, patched_values = [k.clone() for k in keys], [v.clone() for v in values]
            for layer in range(len(keys)):
                patched_keys[layer][:, :, slots] = full_keys[layer][:, :, slots]
                patched_values[layer][:, :, slots] = full_values[layer][:, :, slots]
            hidden = assembler.run(prompt.ids, asked, patched_keys, patched_values)
            logprobs = torch.log_softmax(model.lm_head(model.model.norm(hidden[:, -1:]))[0, -1].float(), dim=-1)
            rows.setdefault(f"exact_kv_{pick}_r{ratio}", []).append(
                (int(logprobs.argmax()) == int(reference.argmax()), kl_divergence(reference, logprobs)))


def bytes_per_token(model, tokenizer, chunk: str) -> dict:
    import torch

    from retriever.rag.keys import chunk_key
    from retriever.rag.kv import QuantizedKV

    generator = make_generator(model, tokenizer)
    prompt = generator.prompt("q", [chunk])
    generator.assembler.prefill(prompt, "reuse")  # computes and stores the chunk's KV
    kv = generator.store.get(chunk_key(generator.assembler.model_id, generator.assembler.tokenizer_id, prompt.chunks[0], prompt.prefix))
    fp16 = kv.to(dtype=torch.float16).nbytes / kv.tokens
    return {"tokens": kv.tokens, "fp16": round(fp16, 1), "8bit": round(QuantizedKV.of(kv, 8).nbytes / kv.tokens, 1),
            "4bit": round(QuantizedKV.of(kv, 4).nbytes / kv.tokens, 1)}


PARTS = ("streams", "quality", "ceiling")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scifact", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data" / "scifact")
    parser.add_argument("--cache", type=Path, help="keep SciFact MiniLM vectors here between runs")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--measured", type=int, default=40)
    parser.add_argument("--quality", type=int, default=20)
    parser.add_argument("--zipf", default="20,60", help="distinct questions, requests")
    parser.add_argument("--ratio", type=float, default=0.2, help="blend recompute ratio for the timed streams")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {PARTS}; with --out, other parts are kept from that file")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if not parts <= set(PARTS):
        parser.error(f"--parts takes {PARTS}, got {args.parts!r}")
    import torch

    from retriever.rag.model import load_causal_lm

    model, tokenizer = load_causal_lm()
    result: dict = json.loads(args.out.read_text()) if args.out and args.out.exists() and parts != set(PARTS) else {}
    result.update({"machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()},
                   "model": "SmolLM2-135M-Instruct (GGUF Q4_1 dequantized to float32)", "recompute_ratio_timed": args.ratio})
    with tempfile.TemporaryDirectory() as tmp:
        questions, chunk_ids, texts = workload(args.scifact, args.cache, Path(tmp))
    chunk_texts = [[texts[c] for c in ids] for ids in chunk_ids]
    result["stream_reuse"] = reuse_statistics(chunk_ids)
    result["bytes_per_cached_token"] = bytes_per_token(model, tokenizer, chunk_texts[0][0])
    if "streams" in parts:
        distinct, requests = (int(x) for x in args.zipf.split(","))
        result["distinct_stream"] = distinct_stream(model, tokenizer, questions, chunk_texts, args.warmup, args.measured, args.ratio)
        result["zipf_stream"] = zipf_stream(model, tokenizer, questions, chunk_texts, distinct, requests, args.ratio)
    if "quality" in parts:
        result["quality_vs_full"] = quality(model, tokenizer, questions, chunk_texts, args.quality)
    if "ceiling" in parts:
        result["exact_recompute_ceiling"] = ceiling(model, tokenizer, questions, chunk_texts, args.quality)
    emit(result, args.out)

if __name__ == "__main__":
    main()
