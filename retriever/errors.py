"""Exceptions raised to callers. The server maps each class to one gRPC status code."""


class RetrieverError(Exception):
    """Base class of every error the engine raises on purpose."""


class InvalidRequest(RetrieverError, ValueError):
    """The request itself is wrong: bad dimension, NaN, empty query, k out of range."""


class InvalidConfig(RetrieverError, ValueError):
    """A collection config is malformed: unknown key, bad type, unknown index string."""


class NotFound(RetrieverError, KeyError):
    """A collection, field or document that does not exist."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class CorruptIndex(RetrieverError):
    """Stored files disagree with the manifest (checksum, size, count) or cannot be parsed."""


class ReadFailed(CorruptIndex):
    """A read from an index file failed or came back short: that request fails, the process lives."""


class OutOfDeviceMemory(RetrieverError):
    """An index or a request does not fit in the GPU's free memory."""


class AlreadyExists(RetrieverError):
    """Creating a collection where one already exists."""


class WriteFailed(RetrieverError):
    """A disk operation of a write failed (EIO, a full disk, ...): the write was not committed and
    the collection answers as before; retrying once the cause is fixed succeeds."""


class StorageFull(WriteFailed):
    """A write found no space left on the disk."""


class Overloaded(RetrieverError):
    """The server is answering as many calls (or streams) as it allows: retry shortly."""


class PermissionDenied(RetrieverError):
    """The call's bearer token is not accepted, or its scope (read, write, admin) does not cover
    the call."""


class Unavailable(RetrieverError):
    """A remote server could not be reached (after retries) or is shutting down."""


# gRPC status code names, in one place: the server sends them, the client maps them back.
GRPC_CODES: dict[type[RetrieverError], str] = {
    InvalidRequest: "INVALID_ARGUMENT",
    InvalidConfig: "INVALID_ARGUMENT",
    NotFound: "NOT_FOUND",
    AlreadyExists: "ALREADY_EXISTS",
    CorruptIndex: "DATA_LOSS",
    OutOfDeviceMemory: "RESOURCE_EXHAUSTED",
    StorageFull: "RESOURCE_EXHAUSTED",
    Overloaded: "RESOURCE_EXHAUSTED",
    WriteFailed: "ABORTED",  # nothing was committed: the client may retry the write
    Unavailable: "UNAVAILABLE",
    PermissionDenied: "PERMISSION_DENIED",
    RetrieverError: "INTERNAL",
}


def grpc_code_name(error: RetrieverError) -> str:
    for cls in type(error).__mro__:
        if cls in GRPC_CODES:
            return GRPC_CODES[cls]
    return "INTERNAL"


def error_for_code(name: str, message: str) -> RetrieverError:
    """The exception a client raises for a status code received from the server; `grpc_code`
    keeps the code's name (e.g. RESOURCE_EXHAUSTED, UNAUTHENTICATED, DEADLINE_EXCEEDED)."""
    # RESOURCE_EXHAUSTED also means "server busy", so it maps back to the base class, not OutOfDeviceMemory
    ambiguous = (OutOfDeviceMemory, StorageFull, Overloaded)
    cls = next((c for c, code in GRPC_CODES.items() if code == name and c not in ambiguous), None)
    error = cls(message) if cls is not None else RetrieverError(f"{name}: {message}")
    error.grpc_code = name
    return error
