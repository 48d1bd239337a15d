"""Merging a run of segments in three steps, so that a merge need not hold the writer:

1. `plan` (writers paused): the run the policy names, pinned: its segments, their deletions and
   the fields as they are at this version.
2. `write` (no lock): the merged segment's files, from the pinned objects only; writes go on.
3. `finish` (writers paused): deletions that reached the run meanwhile are carried over to the
   merged segment (as a deletions file), and the run is replaced in the next version.

Files of a merge in flight carry its segment name as a prefix, which the writer's debris sweep
leaves alone; a merge that cannot finish leaves them as debris for a later sweep.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from retriever.index import storage

from .documents import concat
from .errors import CorruptIndex
from .segments import Segment, new_segment, with_deletions


@dataclass
class MergePlan:
    version: int  # the version the run was taken from
    first: int  # its first segment's position then
    segments: list[Segment]  # the run, with its deletions then
    fields: dict[str, Any]  # the fields then (what the merged data is read from)
    base: int  # the run's first row then
    name: str  # the merged segment's name: a prefix no other writer uses
    keep_empty: bool  # write the segment even with no live row (a format migration must)
    sources: dict[str, Any] = field(default_factory=dict)  # the run's files: {name: size and checksums}
    entry: dict[str, Any] | None = None  # written: the merged segment's entry ...
    table: pa.Table | None = None  # ... its documents ...
    shared: dict[str, Any] = field(default_factory=dict)  # ... each field's shared entry ...
    files: dict[str, Any] = field(default_factory=dict)  # ... and every file written

    @property
    def names(self) -> list[str]:
        return [s.entry["name"] for s in self.segments]

    @property
    def live(self) -> np.ndarray:
        """[rows of the run] True where a row was live at the plan (the rows the merge keeps)."""
        return np.concatenate([np.zeros(0, bool), *(~s.deleted for s in self.segments)])


def plan(
    version: int,
    segments: list[Segment],
    fields: dict[str, Any],
    first: int,
    end: int,
    keep_empty: bool,
    files: dict[str, Any],
    name: str | None = None,
) -> MergePlan:
    """Segments first..end-1 of `version` (whose manifest lists `files`), merged into `name` (by
    default `seg-<version>-m`)."""
    base = sum(s.rows for s in segments[:first])
    name = name or f"seg-{version:06d}-m"
    run = segments[first:end]
    names = storage.referenced_names({"segments": [s.entry for s in run]})
    sources = {n: files[n] for n in names if n in files}  # a write buffer's segments have none
    return MergePlan(version, first, run, dict(fields), base, name, keep_empty, sources)


def write(path: Path, merge: MergePlan) -> MergePlan:
    """The merged segment's documents and each field's data (live rows of the run, in order);
    nothing when no row is live (the run is then dropped), unless `keep_empty`."""
    if not merge.live.any() and not merge.keep_empty:
        return merge
    problems = storage.verify_files(path, merge.sources)  # opening checked their ends only
    if problems:
        raise CorruptIndex(f"segments {merge.names} cannot be merged: {'; '.join(problems)}")
    rows = merge.base + np.flatnonzero(merge.live)  # [R] rows of the planned version
    documents = concat([s.table.filter(pa.array(~s.deleted)) for s in merge.segments])
    entry, written, merge.table = new_segment(path, merge.name, documents)
    merge.files.update(written)
    entry["fields"] = {}
    for name, f in merge.fields.items():
        merge.shared[name], entry["fields"][name], written = f.merge(path, entry["name"], rows)
        merge.files.update(written)
    merge.entry = entry
    return merge


def locate(merge: MergePlan, segments: list[Segment]) -> int | None:
    """Where the planned run is among `segments` (a later version's), or None when it is no
    longer there as planned (another process merged it)."""
    names = [s.entry["name"] for s in segments]
    at = names.index(merge.names[0]) if merge.names[0] in names else -1
    return at if at >= 0 and names[at : at + len(merge.segments)] == merge.names else None


def finish(
    path: Path, v: int, merge: MergePlan, segments: list[Segment], at: int
) -> tuple[list[Segment], dict[str, Any]]:
    """Version v's segments with the run (at `at`) replaced by the merged segment, or dropped when
    nothing in it was live, and the files written for that: a deletions file, when rows of the run
    were deleted since the plan."""
    after = segments[at + len(merge.segments) :]
    if merge.entry is None:
        return [*segments[:at], *after], {}
    now = np.concatenate([s.deleted for s in segments[at : at + len(merge.segments)]])
    deleted = now[merge.live]  # [R] rows of the merged segment deleted since the plan
    entry, files = with_deletions(path, v, merge.entry, deleted) if deleted.any() else (merge.entry, {})
    return [*segments[:at], Segment(entry, merge.table, deleted), *after], {**merge.files, **files}
