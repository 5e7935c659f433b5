"""defacto: raw operational events to temporal, queryable entity state.

The Python API of the seed over the Rust jobs (the same code as the ``defacto`` binary)::

    from defacto import Defacto

    with Defacto("definitions/") as d:
        d.ingest("app", events, process=True)
        df = d.table("customer").execute()
"""

from ._defacto import (Defacto, DefinitionsDraft, DefinitionsManager, IdentityInspector,
                       LedgerInspector, validate_definitions)
from .definitions import Definitions
from .errors import (BuildError, ConfigError, ConsumerError, DefactoError, DefinitionError,
                     IdentityError, IngestError, NotFoundError, QueryError, StorageError,
                     ValidationError)
from .results import (BuildResult, BuildStatus, EraseResult, EventFailure, IngestResult,
                      MergeResult, RegisterResult, ResolveResult, TickResult, Timeline,
                      TimelineEntry, ValidationResult)
from .tables import DefactoTable, TableCollection

__all__ = [
    "Defacto", "Definitions", "DefinitionsDraft", "DefinitionsManager", "IdentityInspector",
    "LedgerInspector", "validate_definitions", "DefactoTable", "TableCollection",
    "DefactoError", "ConfigError", "DefinitionError", "IngestError", "ValidationError",
    "BuildError", "StorageError", "IdentityError", "NotFoundError", "ConsumerError",
    "QueryError", "BuildResult", "BuildStatus", "EraseResult", "EventFailure", "IngestResult",
    "MergeResult", "RegisterResult", "ResolveResult", "TickResult", "Timeline", "TimelineEntry",
    "ValidationResult",
]
