"""The seed's exception classes (RESULTS.md §11). Every error the Rust jobs report arrives
as one of these, all under :class:`DefactoError`."""

from __future__ import annotations

from typing import Any


class DefactoError(Exception):
    """Base of every defacto error: ``message``, ``details`` and ``recoverable``."""

    def __init__(self, message: str, details: dict[str, Any] | None = None,
                 recoverable: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.details = dict(details or {})
        self.recoverable = recoverable

    def __str__(self) -> str:
        return self.message


class ConfigError(DefactoError):
    """Bad configuration: connection strings, shard parameters, no active version."""


class DefinitionError(DefactoError):
    """Invalid definitions; ``details["errors"]`` lists every error found."""


class IngestError(DefactoError):
    """Kept for the seed's API; the jobs report failed events instead of raising it."""


class ValidationError(DefactoError):
    """Kept for the seed's API; never raised (RESULTS.md §11)."""


class BuildError(DefactoError):
    """A build that cannot run at all."""


class StorageError(DefactoError):
    """The lake or the catalog database could not be read or written."""

    def __init__(self, message: str, details: dict[str, Any] | None = None,
                 recoverable: bool = True) -> None:
        super().__init__(message, details, recoverable)


class IdentityError(DefactoError):
    """An explicit merge that cannot be done (into itself, across entity types)."""


class NotFoundError(DefactoError):
    """An entity type, version, draft or source that does not exist."""


class ConsumerError(DefactoError):
    """Kept for the seed's API; the batch product has no Kafka consumer."""


class QueryError(DefactoError):
    """SQL that names an unknown table or column, or that cannot run."""


KINDS: dict[str, type[DefactoError]] = {
    cls.__name__: cls
    for cls in (ConfigError, DefinitionError, IngestError, ValidationError, BuildError,
                StorageError, IdentityError, NotFoundError, ConsumerError, QueryError)
}


def from_native(kind: str, message: str, errors: list[str] | None = None) -> DefactoError:
    """The exception for an error the native module reported as ``(kind, message, errors)``."""
    cls = KINDS.get(kind, DefactoError)
    details: dict[str, Any] = {"errors": list(errors)} if errors else {}
    return cls(message, details)
