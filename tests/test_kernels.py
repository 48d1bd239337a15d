import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retriever.index.vectors import VectorStore
from retriever.kernels import cpu, reference


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("batch, cands, dim", [(1, 1, 1), (3, 7, 5), (4, 33, 17), (2, 100, 64)])
def test_rescore_matches_reference(metric, batch, cands, dim):
    rng = np.random.default_rng(batch * cands + dim)
    base = rng.normal(size=(150, dim)).astype(np.float32)
    queries = rng.normal(size=(batch, dim)).astype(np.float32)
    ids = rng.integers(-1, 150, size=(batch, cands))
    fast = cpu.rescore(queries, VectorStore([base[:40], base[40:]], dim).gather(ids), ids >= 0, metric)
    slow = reference.rescore(queries, base, ids, metric)
    assert np.array_equal(np.isinf(fast), np.isinf(slow))
    finite = np.isfinite(slow)
    np.testing.assert_allclose(fast[finite], slow[finite], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("k", [1, 5, 9, 20])
def test_top_k_rows_matches_full_sort(k):
    rng = np.random.default_rng(k)
    scores = rng.normal(size=(5, 9)).astype(np.float32)
    ids = rng.integers(0, 1000, size=(5, 9))
    top_scores, top_ids = cpu.top_k_rows(scores, ids, k)
    order = np.argsort(-scores, axis=1, kind="stable")[:, : min(k, 9)]
    np.testing.assert_array_equal(top_scores, np.take_along_axis(scores, order, axis=1))
    np.testing.assert_array_equal(top_ids, np.take_along_axis(ids, order, axis=1))


def test_vector_store_gathers_across_segments():
    a = np.arange(12, dtype=np.float32).reshape(4, 3)
    b = -np.arange(6, dtype=np.float32).reshape(2, 3)
    store = VectorStore([a, b], 3)
    rows = np.array([[5, 0, -1], [3, 4, 1]])
    got = store.gather(rows)
    full = np.concatenate([a, b])
    np.testing.assert_array_equal(got[0, 0], full[5])
    np.testing.assert_array_equal(got[1], full[[3, 4, 1]])
    np.testing.assert_array_equal(got[0, 2], np.zeros(3))
    assert len(store) == 6


def test_vector_store_single_segment_fast_path_matches_segmented():
    rng = np.random.default_rng(1)
    full = rng.normal(size=(50, 7)).astype(np.float32)
    rows = rng.integers(-1, 50, size=(6, 9))
    np.testing.assert_array_equal(VectorStore([full], 7).gather(rows), VectorStore([full[:20], full[20:]], 7).gather(rows))


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("rows", [3, 250, 1000])
@pytest.mark.parametrize("filtered", [False, True])
@pytest.mark.parametrize("batch", [1, 5])  # a heap per query, or vectorized cuts
def test_flat_top_k_matches_exact_search_ties_to_the_lower_row(metric, rows, filtered, batch, monkeypatch):
    monkeypatch.setattr(cpu, "FLAT_BLOCK", 97)  # several blocks, the last one short
    rng = np.random.default_rng(rows)
    base = np.round(rng.standard_normal((rows, 8)), 1).astype(np.float32)  # coarse: ties happen
    base[rows // 2 :: 7] = base[0]  # exact duplicates across blocks
    queries = np.concatenate([base[:1], rng.standard_normal((4, 8)).astype(np.float32)])[:batch]
    allowed = rng.random(rows) > 0.4 if filtered else None
    scores, ids = cpu.flat_top_k(queries, base, 10, metric, allowed)
    expected_scores, expected_ids = reference.exact_search(queries, base, 10, metric, allowed)
    assert np.array_equal(ids, expected_ids)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-4, atol=1e-3)


def test_flat_top_k_when_every_score_ties_keeps_the_lowest_rows():
    base = np.ones((500, 4), np.float32)  # the bound cuts nothing: the exact k-th best does
    for batch in (1, 2, 6):  # a heap per query, or vectorized cuts
        scores, ids = cpu.flat_top_k(np.ones((batch, 4), np.float32), base, 10, "ip")
        assert ids.tolist() == [list(range(10))] * batch and np.all(scores == 4)


@pytest.mark.parametrize("n", [5, 10, 11, 99, 1000])
def test_kth_lower_bound_is_at_most_the_kth_best(n):
    scores = np.random.default_rng(n).standard_normal((6, n)).astype(np.float32)
    bound = cpu.kth_lower_bound(scores, 10)
    if n < 10:
        assert np.all(bound == -np.inf)
    else:
        kth = np.sort(scores, axis=1)[:, -10]
        assert np.all(bound <= kth) and np.all(bound > -np.inf)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), count=st.integers(1, 30), metric=st.sampled_from(["ip", "l2"]),
       filtered=st.booleans(), removing=st.booleans(), half=st.booleans())
def test_records_top_k_matches_numpy_over_the_same_records(seed, count, metric, filtered, removing, half):
    from retriever.kernels.postings import records_top_k

    rng = np.random.default_rng(seed)
    records = np.zeros(80, dtype=[("id", "<i8"), ("vector", "<f2" if half else "<f4", (6,))])
    records["id"] = rng.integers(0, 60, 80)  # replicas: an id may be held by several records
    records["vector"] = rng.integers(-3, 4, (80, 6))  # small integers: exact sums, and ties happen
    query = rng.integers(-3, 4, 6).astype(np.float32)
    allowed = rng.random(50) < 0.7 if filtered else None  # ids from 50 on lie past the mask: left out
    removed = np.sort(rng.choice(60, 10, replace=False)) if removing else np.zeros(0, np.int64)
    scores, ids = records_top_k(records, query, count, metric, allowed, removed)
    v = records["vector"].astype(np.float64)
    expected = v @ query if metric == "ip" else -((v - query) ** 2).sum(1)
    keep = ~np.isin(records["id"], removed)
    if allowed is not None:
        keep &= (records["id"] < 50) & allowed[np.minimum(records["id"], 49)]
    order = np.lexsort((records["id"][keep], -expected[keep]))[:count]  # best first, ties by id
    assert scores.tolist() == expected[keep][order].tolist()
    assert ids.tolist() == records["id"][keep][order].tolist()


def test_half_to_float_is_exact_for_every_finite_half():
    import numba

    from retriever.kernels.postings import half_to_float

    convert = half_to_float()

    @numba.njit
    def widen(halves):
        out = np.empty(len(halves), np.float32)
        for i in range(len(halves)):
            out[i] = convert(halves[i])
        return out

    halves = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    finite = np.isfinite(halves.view(np.float16))
    assert np.array_equal(widen(halves)[finite], halves.view(np.float16)[finite].astype(np.float32))


@pytest.mark.parametrize("n, k", [(50, 7), (7, 10), (1000, 96)])
def test_heap_top_k_keeps_the_best_ties_to_the_lower_column(n, k):
    from retriever.kernels.heap import top_k

    scores = np.random.default_rng(n).integers(0, 20, (3, n)).astype(np.float32)  # many ties
    got_scores, got_columns = top_k(scores, k)
    order = np.lexsort((np.broadcast_to(np.arange(n), scores.shape), -scores), axis=1)[:, :k]
    width = min(k, n)
    assert got_columns[:, :width].tolist() == order.tolist() and (got_columns[:, width:] == -1).all()
    assert got_scores[:, :width].tolist() == np.take_along_axis(scores, order, 1).tolist()


def test_running_top_k_over_blocks_is_top_k_of_the_blocks_joined():
    from retriever.kernels.heap import RunningTopK, top_k

    scores = np.random.default_rng(3).integers(0, 9, (3, 70)).astype(np.float32)  # ties across blocks
    scores[1, ::3] = -np.inf  # never kept: the row keeps fewer than k, -1 padded
    scores[2, :] = -np.inf
    scores[2, 5] = 1.0
    running = RunningTopK(3, 30)
    for lo in range(0, 70, 16):
        running.offer(scores[:, lo : lo + 16], lo)
    got_scores, got_columns = running.best()
    expected_scores, expected_columns = top_k(scores, 30)
    assert got_columns.tolist() == expected_columns.tolist()
    assert got_scores.tolist() == expected_scores.tolist()
    assert got_columns[2].tolist() == [5] + [-1] * 29 and got_scores[2, 1] == -np.inf


@pytest.mark.parametrize("normalize", [True, False])
def test_checked_rows_matches_numpy_and_refuses_what_numpy_would(normalize):
    from retriever.kernels.vectors import checked_rows

    rng = np.random.default_rng(5)
    array = rng.standard_normal((40, 33)).astype(np.float32) * 1e3
    array[3] *= 1e30  # float32 squares overflow; the norm does not
    array.flags.writeable = False  # a memory-mapped batch being written
    got = checked_rows(array, normalize)
    norms = np.linalg.norm(array.astype(np.float64), axis=1, keepdims=True)
    expected = (array / norms).astype(np.float32) if normalize else array
    np.testing.assert_allclose(got, expected, rtol=2e-7)
    assert checked_rows(np.zeros((0, 33), np.float32), normalize).shape == (0, 33)
    for bad in (np.nan, np.inf, -np.inf):
        broken = array.copy()
        broken[7, 2] = bad
        assert checked_rows(broken, normalize) is None
    zeros = array.copy()
    zeros[9] = 0
    assert (checked_rows(zeros, normalize) is None) == normalize


def test_one_segments_top_list_is_the_merge_of_any_segmentation():
    """merge_top_k's one-segment shortcut against its general merge (a second, empty segment)."""
    from retriever.fields.base import merge_top_k

    rng = np.random.default_rng(4)
    scores = np.round(rng.standard_normal((3, 6)), 0).astype(np.float32)  # coarse: ties happen
    rows = rng.permutation(40)[:18].reshape(3, 6).astype(np.int64)
    order = np.lexsort((rows, -scores), axis=1)  # as a segment's kernel answers: best first, ties by row
    scores, rows = np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)
    scores[2, 4:], rows[2, 4:] = -np.inf, -1  # a short list
    empty = (np.zeros((3, 0), np.float32), np.zeros((3, 0), np.int64))
    for k in (4, 6, 9):
        alone = merge_top_k([(scores, rows)], [0], 3, k)
        merged = merge_top_k([(scores, rows), empty], [0, 40], 3, k)
        assert alone[1].tolist() == merged[1].tolist()
        np.testing.assert_array_equal(alone[0], merged[0])


@pytest.mark.parametrize("scaled", [False, True])
def test_decompress_matches_numpy_for_read_only_and_writable_codes(scaled):
    from retriever.index.tokens import compress, decompress

    tokens = np.random.default_rng(5).standard_normal((50, 8)).astype(np.float32)
    codes, scales = compress(tokens, "int8" if scaled else "float16")
    expected = codes.astype(np.float32) * (scales[:, None] if scaled else 1)
    read_only = codes.copy()
    read_only.setflags(write=False)  # a read-only map is copied, a writable one read in place
    for stored in (codes, read_only):
        np.testing.assert_array_equal(decompress(stored, scales), expected)
