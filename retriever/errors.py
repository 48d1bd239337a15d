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


class AlreadyExists(RetrieverError):
    """Creating a collection where one already exists."""
