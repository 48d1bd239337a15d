"""One engine for dense, binary, lexical, learned-sparse and multi-vector retrieval."""

from .collection import Collection, connect
from .config import CollectionConfig, FieldConfig
from .errors import (
    AlreadyExists,
    CorruptIndex,
    InvalidConfig,
    InvalidRequest,
    NotFound,
    RetrieverError,
    StorageFull,
    WriteFailed,
)
from .types import Hits, Results

__all__ = [
    "AlreadyExists", "Collection", "CollectionConfig", "CorruptIndex", "FieldConfig", "Hits",
    "InvalidConfig", "InvalidRequest", "NotFound", "Results", "RetrieverError", "StorageFull", "WriteFailed",
    "connect",
]
__version__ = "0.1.0"
