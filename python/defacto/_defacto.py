"""``Defacto``: the seed's Python API. Each method runs the same Rust job as the ``defacto``
command line, in this process, and returns the job's result as a frozen dataclass."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from datetime import date, datetime
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Union

from . import _run
from .definitions import ConfigLike, Definitions, as_definitions
from .errors import ConfigError, DefinitionError, NotFoundError
from .results import (BuildResult, BuildStatus, EraseResult, IngestResult, MergeResult,
                      RegisterResult, ResolveResult, TickResult, Timeline, ValidationResult)
from .tables import DefactoTable, Instant, TableCollection, instant_text

_LOG_LEVELS = {"DEBUG": "debug", "INFO": "info", "WARNING": "warn", "WARN": "warn",
               "ERROR": "error", "CRITICAL": "error", "TRACE": "trace"}


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return instant_text(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _definition_error(result: ValidationResult) -> DefinitionError:
    """The DefinitionError the jobs raise for these findings (one error: its text; more:
    ``Invalid definitions: a; b``)."""
    errors = list(result.errors)
    message = errors[0] if len(errors) == 1 else f"Invalid definitions: {'; '.join(errors)}"
    return DefinitionError(message, {"errors": errors})


def validate_definitions(definitions: ConfigLike) -> ValidationResult:
    """Every error and warning of a set of definitions (a dict, a ``Definitions`` object or a
    folder), as ``defacto validate`` reports them. Touches no storage."""
    defs = as_definitions(definitions)
    with tempfile.TemporaryDirectory(prefix="defacto-validate-") as tmp:
        path = defs.write(Path(tmp))
        return ValidationResult.from_dict(
            _run.run_json(["--config", str(path), "validate", "--format", "json"]))


class Defacto:
    """The entry point: ingestion, building, querying and lifecycle operations.

    ``config`` is a definitions folder (the jobs' ``--config``), a definitions dict or a
    ``Definitions`` object. With a folder, storage defaults to ``<folder>/.defacto`` exactly
    as for the command line; with a dict, to a temporary folder removed by ``close()`` unless
    ``database`` and ``cold_ledger`` name other places.
    """

    def __init__(self, config: ConfigLike, database: Optional[str] = None,
                 batch_size: int = 100, workers: int = 1, shard_id: Optional[int] = None,
                 total_shards: Optional[int] = None, namespace: str = "defacto",
                 kafka: Optional[dict] = None, cold_ledger: Optional[str] = None,
                 dead_letter: Union[dict, str, None] = None, log_level: str = "INFO",
                 log_format: str = "console") -> None:
        if kafka is not None:
            raise ConfigError("kafka is not supported: the batch product has no Kafka ledger")
        if (shard_id is None) != (total_shards is None):
            raise ConfigError("shard_id and total_shards go together")
        if shard_id is not None and not 0 <= shard_id < total_shards:
            raise ConfigError(f"shard_id {shard_id} must be below total_shards {total_shards}")
        if log_format not in ("console", "json"):
            raise ConfigError(f"log_format must be 'console' or 'json', not {log_format!r}")
        self._closed = False
        self._scratch = Path(tempfile.mkdtemp(prefix="defacto-"))
        self._defs = as_definitions(config)
        self.batch_size = batch_size
        self.workers = workers
        self.shard_id = shard_id
        self.total_shards = total_shards
        self.namespace = namespace
        try:
            config_path = self._defs.write(self._scratch / "config")
            self._config = str(config_path)
            if self._defs.path is None:
                cold_ledger = cold_ledger or str(self._scratch / "lake")
                database = database or f"sqlite://{self._scratch / 'defacto.db'}"
            self._global = ["--config", self._config, "--namespace", namespace,
                            "--log-level", _LOG_LEVELS.get(str(log_level).upper(),
                                                           str(log_level).lower()),
                            "--log-format", log_format]
            if cold_ledger:
                self._global += ["--lake", str(cold_ledger)]
            if database:
                self._global += ["--database", _database_url(database)]
            if dead_letter is not None:
                self._global += ["--dead-letter", _dead_letter(dead_letter)]
            if not os.path.exists(self._config):
                raise ConfigError(
                    f"the definitions folder '{self._config}' does not exist")
            result = self.validate_definitions()
            if not result.valid:
                raise _definition_error(result)
            self.definitions = DefinitionsManager(self)
            self.ledger = LedgerInspector(self)
            self.identity = IdentityInspector(self)
            # Connects to the catalog and registers the definitions' version, as every job
            # does first: a bad database URL or namespace fails here, not at the first call.
            self.definitions.versions()
        except BaseException:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._closed = True
            raise

    # ---- plumbing ----------------------------------------------------------------------

    def _run(self, args: Iterable[str], arrow: bool = False):
        if self._closed:
            raise ConfigError("this Defacto is closed")
        return _run.run([*self._global, *args], arrow=arrow)

    def _json(self, args: Iterable[str]) -> Any:
        _, out, _ = self._run(args)
        text = out.decode("utf-8").strip()
        return json.loads(text) if text else None

    def _shard(self) -> list[str]:
        if self.shard_id is None:
            return []
        return ["--shard-id", str(self.shard_id), "--total-shards", str(self.total_shards)]

    # ---- lifecycle ---------------------------------------------------------------------

    def close(self) -> None:
        """Releases what this instance holds: its scratch folder (and with it the storage of
        a dict config that had no ``database``/``cold_ledger``). Every job has already
        committed its work when it returned, so nothing is pending."""
        if not self._closed:
            self._closed = True
            shutil.rmtree(self._scratch, ignore_errors=True)

    def __enter__(self) -> "Defacto":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - interpreter shutdown order varies
        try:
            self.close()
        except Exception:
            pass

    # ---- ingestion and building --------------------------------------------------------

    def ingest(self, source: str, events: Iterable[Mapping[str, Any]],
               process: Union[bool, str, None] = None) -> IngestResult:
        """Appends raw events of ``source`` to the ledger and normalizes them (``defacto
        ingest`` + ``normalize``). ``process=True`` then builds the active version, a string
        builds that version; the build's result is ``build_result``."""
        events = list(events)
        if events:
            path = self._scratch / f"ingest-{os.getpid()}-{id(events)}.jsonl"
            try:
                with open(path, "w", encoding="utf-8") as f:
                    for event in events:
                        f.write(json.dumps(event, default=_json_default))
                        f.write("\n")
                self._json(["ingest", "--source", source, str(path)])
            finally:
                path.unlink(missing_ok=True)
        else:
            self._check_source(source)
        result = self._json(["normalize"]) or {}
        ingested = IngestResult.from_dict({**result, "build_result": None})
        if process:
            build = self.build(version=process if isinstance(process, str) else None)
            ingested = dataclasses.replace(ingested, build_result=build)
        return ingested

    def _check_source(self, source: str) -> None:
        doc = self._active_document(optional=True)
        if doc is not None and source not in (doc.get("sources") or {}):
            raise NotFoundError(f"Source '{source}' not found in definitions")

    def build(self, version: Optional[str] = None, full: bool = False,
              from_raw: bool = False, as_of: Optional[Instant] = None) -> BuildResult:
        """Builds SCD2 history; the mode is detected (SKIP, INCREMENTAL, FULL, ...)."""
        args = ["build", "--workers", str(self.workers), *self._shard()]
        if version:
            args += ["--version", version]
        if full:
            args.append("--full")
        if from_raw:
            args.append("--from-raw")
        if as_of is not None:
            args += ["--as-of", instant_text(as_of)]
        return BuildResult.from_dict(self._json(args))

    def resolve(self, from_raw: bool = False) -> ResolveResult:
        """Resolves identity for new events (``defacto resolve``): run once before the
        builds of the shards (``shard_id``/``total_shards``); an unsharded build does it
        itself. Not in the seed, which has no shards of this kind."""
        args = ["resolve"]
        if from_raw:
            args.append("--from-raw")
        return ResolveResult.from_dict(self._json(args))

    def build_status(self, version: Optional[str] = None) -> BuildStatus:
        args = ["status", *self._shard()]
        if version:
            args += ["--version", version]
        return BuildStatus.from_dict(self._json(args))

    def tick(self, version: Optional[str] = None, as_of: Optional[Instant] = None) -> TickResult:
        """Evaluates the time rules of every live entity up to ``as_of`` (default: now)."""
        args = ["tick", "--workers", str(self.workers), *self._shard()]
        if version is not None:
            args += ["--version", version]
        if as_of is not None:
            args += ["--as-of", instant_text(as_of)]
        return TickResult.from_dict(self._json(args))

    # ---- lifecycle operations ----------------------------------------------------------

    def merge(self, from_entity_id: str, into_entity_id: str, reason: str = "",
              as_of: Optional[Instant] = None) -> MergeResult:
        args = ["merge", from_entity_id, into_entity_id, "--reason", reason]
        if as_of is not None:
            args += ["--as-of", instant_text(as_of)]
        return MergeResult.from_dict(self._json(args))

    def erase(self, entity_id: str) -> EraseResult:
        """Permanently deletes an entity everywhere, cascading through merges."""
        return EraseResult.from_dict(self._json(["erase", entity_id]))

    def redact(self, entity_id: str) -> int:
        """Redacts the entity's sensitive values in its events; returns the rows redacted."""
        result = self._json(["redact", entity_id])
        if isinstance(result, dict):
            return int(result.get("rows_redacted", result.get("count", 0)))
        return int(result or 0)

    # ---- queries -----------------------------------------------------------------------

    def table(self, entity: str) -> DefactoTable:
        """Current state of an entity type (rows whose ``valid_to`` is null)."""
        return DefactoTable(self, entity=entity)

    def history(self, entity: str) -> DefactoTable:
        """Full SCD2 history of an entity type."""
        return DefactoTable(self, entity=entity, history=True)

    def tables(self, *entities: str) -> TableCollection:
        """Several entity types (all of the active version when none are named)."""
        known = sorted((self._active_document() or {}).get("entities") or {})
        for name in entities:
            if name not in known:
                raise NotFoundError(f"Unknown entity type '{name}'. "
                                    f"Available entity types: [{', '.join(known)}]")
        return TableCollection(self, list(entities) or known)

    def query(self, sql: str) -> DefactoTable:
        """Read-only SQL over ``<entity>``, ``<entity>_history``, ``rel_<type>`` and
        ``rel_<type>_history``; unknown tables or columns raise QueryError."""
        return DefactoTable(self, query=sql)

    def timeline(self, entity_id: str) -> Timeline:
        return Timeline.from_dict(self._json(["timeline", entity_id]))

    def assert_entity(self, entity_id: str, state: Optional[str] = None,
                      **properties: Any) -> None:
        """Raises AssertionError unless the entity's current row matches (RESULTS.md §10)."""
        args = ["assert", entity_id]
        if state is not None:
            args.append(f"state={state}")
        for key, value in properties.items():
            args.append(f"{key}={json.dumps(value, default=_json_default)}")
        status, out, _ = self._run(args)
        if status != 0:
            raise AssertionError(out.decode("utf-8").rstrip("\n"))

    # ---- definitions -------------------------------------------------------------------

    def validate_definitions(self) -> ValidationResult:
        """The findings of ``defacto validate`` for this instance's definitions."""
        return ValidationResult.from_dict(
            _run.run_json(["--config", self._config, "validate", "--format", "json"]))

    def _active_document(self, optional: bool = False) -> Optional[dict]:
        try:
            active = self.definitions.active()
        except ConfigError:
            if optional:
                return None
            raise
        return self.definitions.get(active)


def _database_url(database: str) -> str:
    if "://" in database or database.startswith(("sqlite:", "postgres:", "postgresql:")):
        return database
    return f"sqlite://{Path(database).expanduser().resolve()}"


def _dead_letter(spec: Union[dict, str]) -> str:
    if isinstance(spec, str):
        return spec
    kind = spec.get("type")
    if kind == "file":
        return f"file:{spec['path']}"
    if kind == "delta":
        return "delta"
    raise ConfigError(f"unknown dead-letter type {kind!r}: use 'file' or 'delta'")


class DefinitionsManager:
    """``d.definitions``: registered versions, activation and drafts."""

    def __init__(self, defacto: Defacto) -> None:
        self._d = defacto

    def _list(self) -> list[dict]:
        return self._d._json(["definitions", "list"]) or []

    def versions(self) -> list[str]:
        """Every registered version, in registration order."""
        return [v["version"] for v in self._list()]

    def active(self) -> str:
        """The active version's name."""
        for v in self._list():
            if v.get("active"):
                return v["version"]
        raise ConfigError("No active definition version")

    def get(self, version: str) -> dict:
        """The stored definitions document of ``version``."""
        return self._d._json(["definitions", "show", version])

    def register(self, version: str, definitions: ConfigLike) -> RegisterResult:
        """Registers definitions as ``version`` (not activated)."""
        defs = as_definitions(definitions)
        with tempfile.TemporaryDirectory(prefix="defacto-register-", dir=self._d._scratch) as tmp:
            path = defs.write(Path(tmp))
            return RegisterResult.from_dict(
                self._d._json(["definitions", "register", version, str(path)]))

    def activate(self, version: str) -> None:
        """Makes ``version`` the active one; its build must be complete."""
        self._d._json(["definitions", "activate", version])

    def draft(self, version: str, based_on: Optional[str] = None) -> "DefinitionsDraft":
        """A new draft named ``version`` from ``based_on`` (default: the active version)."""
        args = ["definitions", "draft", version, "create"]
        if based_on:
            args += ["--based-on", based_on]
        self._d._json(args)
        return DefinitionsDraft(self._d, version)


class DefinitionsDraft:
    """A mutable copy of a version; every edit is checked at once and rolled back on error."""

    def __init__(self, defacto: Defacto, name: str) -> None:
        self._d = defacto
        self.name = name

    def _op(self, *args: str) -> Any:
        return self._d._json(["definitions", "draft", self.name, *args])

    def add_property(self, entity: str, name: str, spec: Optional[Mapping] = None,
                     **fields: Any) -> dict:
        body = {**(spec or {}), **fields}
        return self._op("add-property", entity, name, json.dumps(body))

    def remove_property(self, entity: str, name: str) -> dict:
        return self._op("remove-property", entity, name)

    def add_state(self, entity: str, name: str, spec: Optional[Mapping] = None, *,
                  on: Optional[Mapping] = None, after: Optional[list] = None) -> dict:
        spec = dict(spec or {})
        on = on if on is not None else spec.get("on", spec.get("when"))
        after = after if after is not None else spec.get("after")
        args = ["add-state", entity, name]
        if on is not None:
            args += ["--on", json.dumps(on)]
        if after is not None:
            args += ["--after", json.dumps(after)]
        return self._op(*args)

    def remove_state(self, entity: str, name: str) -> dict:
        return self._op("remove-state", entity, name)

    def add_transition(self, entity: str, state: str, *args: Any,
                       to: Optional[str] = None) -> dict:
        """``add_transition(entity, state, event, to=target)``, or the seed's form
        ``add_transition(entity, state, target, event, spec)`` where ``spec`` may add
        ``effects`` (run before the transition) and a ``guard``."""
        spec: Mapping = {}
        if to is not None:
            (event,) = args
        elif len(args) in (2, 3):
            to, event = args[0], args[1]
            spec = args[2] if len(args) == 3 and args[2] else {}
        else:
            raise TypeError("add_transition(entity, state, event, to=target) or "
                            "add_transition(entity, state, target, event, spec)")
        if spec.get("effects") or spec.get("guard"):
            effects = [*(spec.get("effects") or []), {"transition": {"to": to}}]
            return self.add_handler(entity, state, event, effects=effects,
                                    guard=spec.get("guard"))
        return self._op("add-transition", entity, state, event, "--to", to)

    def add_handler(self, entity: str, state: str, event: str,
                    spec: Union[Mapping, list, None] = None, *,
                    effects: Optional[list] = None, guard: Optional[str] = None) -> dict:
        if isinstance(spec, Mapping):
            effects = effects if effects is not None else spec.get("effects")
            guard = guard if guard is not None else spec.get("guard")
        elif isinstance(spec, list) and effects is None:
            effects = spec
        args = ["add-handler", entity, state, event, json.dumps(effects or [])]
        if guard is not None:
            args += ["--guard", guard]
        return self._op(*args)

    def update_identity(self, entity: str, fields: Optional[Mapping] = None,
                        **more: Any) -> dict:
        body = {**(fields or {}), **more}
        return self._op("update-identity", entity, json.dumps(body))

    def validate(self) -> ValidationResult:
        return ValidationResult.from_dict(self._op("validate"))

    def diff(self) -> dict:
        return self._op("diff")

    def impact(self) -> dict:
        return self._op("impact")

    def register(self) -> RegisterResult:
        return RegisterResult.from_dict(self._op("register"))

    def __repr__(self) -> str:
        return f"DefinitionsDraft({self.name!r})"


class LedgerInspector:
    """``d.ledger``: what the ledger holds."""

    def __init__(self, defacto: Defacto) -> None:
        self._d = defacto

    def count(self, source: Optional[str] = None) -> int:
        args = ["ledger", "count", "--format", "json"]
        if source is not None:
            args += ["--source", source]
        return int(self._d._json(args)["count"])

    def events_for(self, entity_id: str) -> list[dict]:
        """The entity's events (and those of the entities merged into it), in canonical order:
        ``{sequence, event_id, event_type, timestamp}``."""
        return self._d._json(["ledger", "events", entity_id, "--format", "json"])


class IdentityInspector:
    """``d.identity``: which entity a hint value belongs to, and an entity's hints."""

    def __init__(self, defacto: Defacto) -> None:
        self._d = defacto

    def lookup(self, hint_value: str) -> Optional[str]:
        return self._d._json(["identity", "lookup", hint_value, "--format", "json"])["entity_id"]

    def hints(self, entity_id: str) -> dict[str, list[str]]:
        return self._d._json(["identity", "hints", entity_id, "--format", "json"])

    def list(self, entity: Optional[str] = None) -> list[dict]:
        args = ["identity", "list", "--format", "json"]
        if entity is not None:
            args += ["--entity", entity]
        return self._d._json(args)
