"""Which segments to merge next: a tiered policy over the newest segments, as Lucene's
LogMergePolicy with a factor of 2, plus compaction of segments that are mostly deleted rows.

Every write adds a segment at the end. A run of the newest segments is merged once the segment
before it holds no more live rows than the run: sizes then at least double going back, so a
collection of N rows keeps O(log N) segments (and so O(log N) files and descriptors), and each
row is rewritten O(log N) times over its life, not once per commit.
"""

from __future__ import annotations

MAX_SEGMENTS = 32  # more than this (many equal segments): the two smallest neighbours are merged
DELETED_SHARE = 0.3  # a segment whose rows are more than this share deleted is rewritten without them


def next_merge(rows: list[int], deleted: list[int], max_rows: int | None = None) -> tuple[int, int] | None:
    """Segments first..end-1 to merge next (rows and deleted rows per segment, oldest first), or
    None. No merge makes a segment of more than `max_rows` live rows (a merge's memory grows with
    its segment): segments at that size stay, as Lucene's maxMergedSegmentMB keeps them."""
    live = [r - d for r, d in zip(rows, deleted)]
    fits = (lambda n: True) if max_rows is None else (lambda n: n <= max_rows)  # noqa: E731
    end = len(live)
    first = end - 1
    while first > 0 and live[first - 1] <= sum(live[first:end]) and fits(sum(live[first - 1 : end])):
        first -= 1
    if end - first >= 2:
        return first, end
    for i, (r, d) in enumerate(zip(rows, deleted)):
        if d and (d > DELETED_SHARE * r or d == r):
            return i, i + 1
    pairs = [i for i in range(len(live) - 1) if fits(live[i] + live[i + 1])]
    if len(live) > MAX_SEGMENTS and pairs:
        pair = min(pairs, key=lambda i: live[i] + live[i + 1])
        return pair, pair + 2
    return None
