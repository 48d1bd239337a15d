"""Reading corpora: BEIR-style JSONL, Parquet, .npy vectors, or a folder of text files chunked into passages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow.parquet as pq

from .errors import InvalidRequest

TEXT_SUFFIXES = (".md", ".rst", ".txt", ".py", ".toml", ".proto", ".cfg", ".yaml", ".yml")
SKIP_DIRS = {".git", ".venv", "venv", "__pycache__", "build", "dist", "node_modules", ".pytest_cache", ".hypothesis"}


Chunk = tuple[list[dict[str, Any]], dict[str, np.ndarray]]


def iter_corpus(path: str | Path, vector_fields: list[str], rows: int) -> Iterator[Chunk]:
    """The corpus in chunks of `rows` documents (the last may be shorter), each with the vectors
    its documents carry ({field: [n, D]}), read as it goes: memory does not grow with the corpus.

    A key (JSONL) or column (Parquet) named after a field holds that field's vectors; an .npy
    file is a matrix of vectors for the collection's only field, with ids "0".."N-1".
    """
    path = Path(path)
    if path.is_dir():
        docs = chunk_folder(path)
        for start in range(0, len(docs), rows):
            yield docs[start : start + rows], {}
        return
    if not path.exists():
        raise InvalidRequest(f"input {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        yield from _iter_npy(path, vector_fields, rows)
        return
    if suffix == ".parquet":
        # pre-buffering keeps every row group read so far in memory: off, so memory stays flat
        for batch in pq.ParquetFile(path, pre_buffer=False).iter_batches(batch_size=rows):
            vectors = {n: vector_column(batch, n) for n in vector_fields if n in batch.schema.names}
            yield batch.drop_columns(list(vectors)).to_pylist(), vectors
        return
    if suffix in (".jsonl", ".json"):
        batches = _batched(iter_jsonl(path), rows)
    else:
        raise InvalidRequest(f"input {str(path)!r}: expected .jsonl, .parquet, .npy or a folder")
    for docs in batches:
        yield docs, pop_vectors(docs, vector_fields)


def vector_column(batch, name: str) -> np.ndarray:
    """A Parquet column of equal-length number lists -> [n, D] float32, without Python objects."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = batch.column(name)
    if not (pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type)) or column.null_count:
        raise InvalidRequest(f"the {name!r} column must hold a list of numbers in every row")
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    if len(lengths) and (lengths != lengths[0]).any():
        raise InvalidRequest(f"the {name!r} vectors in the input are not all numbers of one length")
    try:
        values = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    except (pa.ArrowInvalid, ValueError, TypeError):
        raise InvalidRequest(f"the {name!r} vectors in the input are not all numbers") from None
    return values.reshape(len(column), int(lengths[0]) if len(lengths) else 0)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return list(iter_jsonl(path))


def iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """One JSON object per line. Splits on '\\n' only: corpus text may hold U+2028."""
    with open(path, "rb") as lines:  # binary lines end at a newline byte only
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line.decode("utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise InvalidRequest(f"{str(path)!r} line {number} is not valid JSON: {e}") from None
            except RecursionError:
                raise InvalidRequest(f"{str(path)!r} line {number} nests too deeply") from None
            if not isinstance(record, dict):
                raise InvalidRequest(
                    f"{str(path)!r} line {number} is a JSON {type(record).__name__}, not an object: "
                    'each line holds one document, {"id": ..., "text": ...}'
                )
            yield record


def _batched(records: Iterator[dict[str, Any]], rows: int) -> Iterator[list[dict[str, Any]]]:
    batch = []
    for record in records:
        batch.append(record)
        if len(batch) == rows:
            yield batch
            batch = []
    if batch:
        yield batch


def _iter_npy(path: Path, vector_fields: list[str], rows: int) -> Iterator[Chunk]:
    if len(vector_fields) != 1:
        raise InvalidRequest(f"an .npy input fills exactly one field, but the config has {vector_fields}")
    vectors = np.load(path, mmap_mode="r", allow_pickle=False)
    if vectors.ndim != 2:
        raise InvalidRequest(f"{str(path)!r} must hold a [N, D] matrix, got shape {vectors.shape}")
    for start in range(0, len(vectors), rows):
        block = np.asarray(vectors[start : start + rows], dtype=np.float32)
        yield [{"id": str(i)} for i in range(start, start + len(block))], {vector_fields[0]: block}


def pop_vectors(docs: list[dict[str, Any]], vector_fields: list[str]) -> dict[str, np.ndarray]:
    out = {}
    for name in vector_fields:
        present = [name in d for d in docs]
        if not any(present):
            continue
        if not all(present):
            raise InvalidRequest(f"some documents carry {name!r} vectors and some do not")
        try:
            out[name] = np.asarray([d.pop(name) for d in docs], dtype=np.float32)
        except ValueError:
            raise InvalidRequest(f"the {name!r} vectors in the input are not all numbers of one length") from None
    return out


def chunk_folder(root: Path, max_chars: int = 1200) -> list[dict[str, Any]]:
    """Every text file under `root` split into passages of whole paragraphs, about `max_chars` long.

    Ids are "relative/path#n"; the title is the relative path.
    """
    docs = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if not path.is_file() or path.suffix.lower() not in TEXT_SUFFIXES or SKIP_DIRS.intersection(rel.parts[:-1]):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for n, passage in enumerate(_passages(text, max_chars)):
            docs.append({"id": f"{rel.as_posix()}#{n}", "title": rel.as_posix(), "text": passage, "path": rel.as_posix()})
    if not docs:
        raise InvalidRequest(f"no text files ({', '.join(TEXT_SUFFIXES)}) under {str(root)!r}")
    return docs


def _passages(text: str, max_chars: int) -> list[str]:
    paragraphs = [p.strip() for p in text.split("\n\n") if p.strip()]
    out: list[str] = []
    current = ""
    for paragraph in paragraphs:
        while len(paragraph) > max_chars:  # one huge paragraph: cut at a space near the limit
            cut = paragraph.rfind(" ", 0, max_chars)
            cut = cut if cut > max_chars // 2 else max_chars
            pieces = paragraph[:cut].strip()
            if current:
                out.append(current)
                current = ""
            out.append(pieces)
            paragraph = paragraph[cut:].strip()
        if current and len(current) + len(paragraph) + 2 > max_chars:
            out.append(current)
            current = ""
        current = f"{current}\n\n{paragraph}" if current else paragraph
    if current:
        out.append(current)
    return out
