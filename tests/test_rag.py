"""RAG chunk cache on a tiny random Llama: re-rotated keys, recompute ratio 1 against full prefill,
cache keys across processes and models, store capacities, corrupt disk entries, KV compression."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import tiny_llama as tiny
from helpers import word_tokenizer
from retriever.errors import InvalidRequest
from retriever.rag.assemble import Assembler, Prompt
from retriever.rag.generate import RagGenerator
from retriever.rag.keys import chunk_key, model_identity, tokenizer_identity
from retriever.rag.kv import ChunkKV, QuantizedKV, rerotate
from retriever.rag.store import ChunkCacheStore, Tier


def random_prompt(seed: int = 1, chunks=(7, 9, 6)) -> Prompt:
    g = torch.Generator().manual_seed(seed)
    ids = lambda n: torch.randint(3, 1000, (n,), generator=g).tolist()  # noqa: E731
    return Prompt(ids(5), [ids(n) for n in chunks], ids(4))


def memory_store(capacity: int = 1 << 30) -> ChunkCacheStore:
    return ChunkCacheStore([Tier("cpu", capacity)])


def test_rerotated_first_layer_keys_equal_keys_computed_at_the_new_position():
    model = tiny(0)
    ids = torch.randint(3, 1000, (1, 6))

    def first_layer_keys(start):
        out = model(ids, position_ids=torch.arange(start, start + 6)[None], use_cache=True)
        return out.past_key_values.layers[0].keys[0]  # [heads, tokens, head_dim]; layer 0 sees only token and position

    moved = rerotate(first_layer_keys(5), 7, model.model.rotary_emb)
    torch.testing.assert_close(moved, first_layer_keys(12), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rerotate(moved, -7, model.model.rotary_emb), first_layer_keys(5), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode, ratio", [("full", 0.0), ("blend", 1.0), ("prefix", 0.0)])
def test_full_recompute_and_exact_prefix_reuse_equal_full_prefill(mode, ratio):
    model, prompt = tiny(0), random_prompt()
    expected = model(torch.tensor([prompt.ids])).logits[0, -1]
    assembler = Assembler(model, memory_store(), "tiny", "words")
    for _ in range(2):  # cold, then warm from the store
        logits, keys, _, stats = assembler.prefill(prompt, mode, ratio)
        torch.testing.assert_close(logits, expected, atol=1e-3, rtol=1e-3)  # cached KV is kept as float16
    assert stats.cache_hits > 0 or mode == "full"
    assert keys[0].shape == (1, 2, len(prompt.ids), 16)


@pytest.mark.parametrize("selection", ["attention", "deviation"])
def test_naive_reuse_differs_and_blend_recomputes_the_chosen_share(selection):
    model, prompt = tiny(0), random_prompt()
    expected = model(torch.tensor([prompt.ids])).logits[0, -1]
    assembler = Assembler(model, memory_store(), "tiny", "words")
    reuse, *_, stats = assembler.prefill(prompt, "reuse")
    assert stats.tokens_recomputed == 0 and stats.tokens_computed == len(prompt.question)
    assert (reuse - expected).abs().max() > 1e-3  # chunks encoded apart from each other really differ
    blend, _, _, half = assembler.prefill(prompt, "blend", 0.5, selection)
    assert half.tokens_recomputed == round(0.5 * 22) and half.cache_hits == 4 and half.cache_misses == 0
    assert (blend - expected).abs().max() < (reuse - expected).abs().max()


def test_blend_recomputes_only_stale_slots_since_the_first_chunk_is_cached_exactly():
    model, prompt = tiny(0), random_prompt()
    assembler = Assembler(model, memory_store(), "tiny", "words")
    _, full_keys, full_values, _ = assembler.prefill(prompt, "full")
    _, keys, values, _ = assembler.prefill(prompt, "reuse")
    first = slice(len(prompt.prefix), len(prompt.prefix) + len(prompt.chunks[0]))
    second = slice(first.stop, first.stop + len(prompt.chunks[1]))
    torch.testing.assert_close(keys[-1][:, :, first], full_keys[-1][:, :, first], atol=2e-3, rtol=2e-3)  # float16 cache
    torch.testing.assert_close(values[-1][:, :, first], full_values[-1][:, :, first], atol=2e-3, rtol=2e-3)
    assert (keys[-1][:, :, second] - full_keys[-1][:, :, second]).abs().max() > 1e-2
    stale = list(range(first.stop, len(prompt.ids) - len(prompt.question)))
    for selection in ("attention", "deviation"):
        picked = assembler.select(prompt, keys, values, 0.5, selection)
        assert len(picked) == round(0.5 * 22) and set(picked) <= set(stale)
        assert assembler.select(prompt, keys, values, 1.0, selection) == stale


def test_chunks_after_the_first_are_cached_behind_the_anchor_and_full_recompute_still_equals_full_prefill():
    model, plain = tiny(0), random_prompt()
    prompt = Prompt(plain.prefix, plain.chunks, plain.question, anchor=random_prompt(seed=2).chunks[1])
    store = memory_store()
    assembler = Assembler(model, store, "tiny", "words")
    _, _, _, stats = assembler.prefill(prompt, "reuse")
    assert stats.cache_misses == 1 + 1 + 3 and stats.cache_hits == 0  # prefix, anchor (read once), chunks
    behind = [*prompt.prefix, *prompt.anchor]
    cached = store.get(chunk_key("tiny", "words", prompt.chunks[1], behind))
    one_pass = model(torch.tensor([behind + prompt.chunks[1]]), use_cache=True).past_key_values.layers[-1]
    torch.testing.assert_close(cached.keys[-1].float(), one_pass.keys[0, :, len(behind):], atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(cached.values[-1].float(), one_pass.values[0, :, len(behind):], atol=2e-3, rtol=2e-3)
    assert store.get(chunk_key("tiny", "words", prompt.chunks[0], prompt.prefix)) is not None  # the first slot's stays exact
    assert store.get(chunk_key("tiny", "words", prompt.chunks[0], behind)) is None
    expected = model(torch.tensor([prompt.ids])).logits[0, -1]
    logits, *_ = assembler.prefill(prompt, "blend", 1.0)
    torch.testing.assert_close(logits, expected, atol=1e-3, rtol=1e-3)


def test_the_generator_puts_its_anchor_text_in_every_prompt_and_none_turns_it_off():
    model, tokenizer = tiny(0), word_tokenizer()
    anchored = RagGenerator(model, tokenizer, memory_store(), anchor_text="w30 w31 w32")
    plain = RagGenerator(model, tokenizer, memory_store(), anchor_text=None)
    first, second = anchored.prompt("w20", ["w1 w2"]), anchored.prompt("w21", ["w3"])
    assert list(first.anchor) == list(second.anchor) == tokenizer("w30 w31 w32", add_special_tokens=False)["input_ids"]
    assert plain.prompt("w20", ["w1 w2"]).anchor == () and plain.prompt("w20", ["w1 w2"]).ids == first.ids


def test_question_attention_equals_the_models_own_attention_weights():
    """With the full prompt's KV in place, the attention mass blend selects by is what the
    model's eager attention gives the prompt's last row, summed over layers and heads."""
    model, prompt = tiny(0), random_prompt()
    assembler = Assembler(model, memory_store(), "tiny", "words")
    _, keys, values, _ = assembler.prefill(prompt, "full")
    model.set_attn_implementation("eager")
    with torch.inference_mode():
        got = assembler._question_attention(prompt, keys, values)
        attentions = model(torch.tensor([prompt.ids]), output_attentions=True).attentions  # per layer [1, H, T, T]
    expected = sum(a[0, :, -1].sum(dim=0) for a in attentions)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_cache_keys_are_stable_across_processes_and_differ_across_models():
    script = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
              "from helpers import tiny_llama\n"
              "from retriever.rag.keys import chunk_key, model_identity\n"
              "print(chunk_key(model_identity(tiny_llama(0)), 'tok', [5, 6, 7], [1, 2]))\n")
    other_process = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.strip()
    here = chunk_key(model_identity(tiny(0)), "tok", [5, 6, 7], [1, 2])
    assert here == other_process
    assert chunk_key(model_identity(tiny(1)), "tok", [5, 6, 7], [1, 2]) != here
    assert chunk_key(model_identity(tiny(0)), "tok", [5, 6, 7], [1]) != here
    assert chunk_key(model_identity(tiny(0)), tokenizer_identity(word_tokenizer()), [5, 6, 7], [1, 2]) != here


def chunk(tokens: int, seed: int) -> ChunkKV:
    g = torch.Generator().manual_seed(seed)
    return ChunkKV(torch.randn(2, 2, tokens, 16, generator=g), torch.randn(2, 2, tokens, 16, generator=g), 5)


def test_store_respects_capacities_demotes_and_promotes(tmp_path):
    one = chunk(10, 0).to(dtype=torch.float16).nbytes  # 2560 bytes at float16
    store = ChunkCacheStore([Tier("cpu", 3 * one), Tier("disk", 100 * one, device="disk", bits=8, path=tmp_path)])
    for i in range(12):
        store.put(f"k{i}", chunk(10, i), cost=1.0 + (i == 0) * 100)  # k0 is expensive to recompute
        for tier in store.tiers:
            assert store.stats[tier.name].bytes <= tier.capacity_bytes
    assert store.stats["cpu"].entries == 3 and store.stats["cpu"].evictions == 9
    assert "k0" in store._entries[0]  # recompute cost outweighs age
    assert store.stats["disk"].entries == 9 and len(list(tmp_path.glob("*.kv"))) == 9
    restored = store.get("k3")  # from disk, 8-bit: close, and promoted to memory
    assert restored is not None and "k3" in store._entries[0]
    torch.testing.assert_close(restored.keys.float(), chunk(10, 3).keys, atol=0.05, rtol=0)
    assert store.stats["disk"].hits == 1 and store.get("absent") is None


def test_a_corrupt_disk_entry_is_a_miss(tmp_path):
    store = ChunkCacheStore([Tier("disk", 1 << 20, device="disk", bits=4, path=tmp_path)])
    store.put("k", chunk(8, 1), cost=1.0)
    path = next(tmp_path.glob("*.kv"))
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    assert store.get("k") is None
    assert store.stats["disk"].misses == 1 and "k" not in store
    store.put("k", chunk(8, 1), cost=1.0)
    path.write_bytes(b"")  # truncated
    assert store.get("k") is None


@pytest.mark.parametrize("bits, tolerance", [(8, 0.03), (4, 0.5)])
def test_kv_quantization_error_and_size(bits, tolerance):
    kv = chunk(32, 2)
    packed = QuantizedKV.of(kv, bits)
    restored = packed.restore(torch.float32)
    assert (restored.keys - kv.keys).abs().max() < tolerance and (restored.values - kv.values).abs().max() < tolerance
    assert packed.nbytes < kv.to(dtype=torch.float16).nbytes * (bits / 16 + 0.2)


def test_generate_streams_pieces_and_ends_with_stats():
    generator = RagGenerator(tiny(0), word_tokenizer(), memory_store())
    chunks = ["w1 w2 w3 w4", "w5 w6 w7", "w8 w9 w10 w11 w12"]
    for mode in ("full", "prefix", "reuse", "blend"):
        pieces = list(generator.generate("w20 w21", chunks, mode=mode, max_new_tokens=5))
        stats = pieces[-1].stats
        assert stats["mode"] == mode and stats["new_tokens"] <= 5 and stats["time_to_first_token_s"] > 0
        assert all(p.stats is None for p in pieces[:-1])
    first_full, tokens_full, _, _ = generator.compare("w20 w21", chunks, "full", count=4)
    first_exact, tokens_exact, forced, _ = generator.compare("w20 w21", chunks, "blend", 1.0, count=4, reference=tokens_full)
    assert tokens_full == tokens_exact and torch.allclose(first_full, first_exact, atol=1e-3)
    assert forced == tokens_full  # teacher forcing the same tokens gives the same greedy choices
    with pytest.raises(InvalidRequest, match="mode must be one of"):
        next(generator.generate("q", chunks, mode="fast"))
    with pytest.raises(InvalidRequest, match="recompute_ratio"):
        next(generator.generate("q", chunks, recompute_ratio=1.5))
