"""Result types (RESULTS.md): frozen dataclasses with the seed's field names, built from the
result JSON the jobs print. Fields a job adds later are ignored until they are added here."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Optional


def _build(cls, data: dict[str, Any] | None, **convert):
    """An instance of the dataclass ``cls`` from ``data``, keeping only its fields;
    ``convert`` maps a field name to a function applied to its value."""
    data = data or {}
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key in names:
            kwargs[key] = convert[key](value) if key in convert else value
    return cls(**kwargs)


def _failures(items: list[dict] | None) -> list["EventFailure"]:
    return [EventFailure.from_dict(item) for item in items or []]


def parse_timestamp(text: str | None) -> Optional[datetime]:
    """Canonical timestamp text (RFC 3339, ``Z`` or an offset) as an aware datetime."""
    if text is None or text == "":
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass(frozen=True)
class EventFailure:
    error: str = ""
    raw: dict = field(default_factory=dict)
    stage: str = "normalization"
    source: str = ""
    handler: Optional[str] = None
    field: Optional[str] = None
    entity_id: Optional[str] = None
    entity_type: Optional[str] = None
    event_id: Optional[str] = None
    recoverable: bool = False

    @classmethod
    def from_dict(cls, data: dict) -> "EventFailure":
        return _build(cls, data)


@dataclass(frozen=True)
class BuildResult:
    mode: str = "SKIP"
    events_processed: int = 0
    effects_produced: int = 0
    entities_created: int = 0
    entities_updated: int = 0
    merges_detected: int = 0
    late_arrivals: int = 0
    duration_ms: int = 0
    events_failed: int = 0
    failures: list[EventFailure] = field(default_factory=list)
    timing: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict) -> "BuildResult":
        return _build(cls, data, failures=_failures)


@dataclass(frozen=True)
class IngestResult:
    events_ingested: int = 0
    events_failed: int = 0
    duplicates_skipped: int = 0
    duplicate_ids: list[str] = field(default_factory=list)
    failures: list[EventFailure] = field(default_factory=list)
    build_result: Optional[BuildResult] = None
    timing: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict) -> "IngestResult":
        return _build(cls, data, failures=_failures,
                      build_result=lambda b: None if b is None else BuildResult.from_dict(b))


@dataclass(frozen=True)
class ResolveResult:
    events_resolved: int = 0
    merges_detected: int = 0
    renormalized: bool = False
    identity_reset: bool = False
    events_failed: int = 0
    failures: list[EventFailure] = field(default_factory=list)
    duration_ms: int = 0

    @classmethod
    def from_dict(cls, data: dict) -> "ResolveResult":
        return _build(cls, data, failures=_failures)


@dataclass(frozen=True)
class TickResult:
    effects_produced: int = 0
    entities_affected: int = 0
    transitions: int = 0

    @classmethod
    def from_dict(cls, data: dict) -> "TickResult":
        return _build(cls, data)


@dataclass(frozen=True)
class MergeResult:
    from_entity_id: str = ""
    into_entity_id: str = ""
    events_reassigned: int = 0
    entities_rebuilt: int = 0
    tombstones_produced: int = 0
    failures: list[EventFailure] = field(default_factory=list)
    duplicate: bool = False

    @classmethod
    def from_dict(cls, data: dict) -> "MergeResult":
        return _build(cls, data, failures=_failures)


@dataclass(frozen=True)
class EraseResult:
    entity_id: str = ""
    entities_erased: int = 0
    events_deleted: int = 0
    merge_log_cleaned: int = 0
    raw_records_deleted: int = 0
    export_targets: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict) -> "EraseResult":
        return _build(cls, data)


@dataclass(frozen=True)
class BuildStatus:
    cursor: int = 0
    total_events: int = 0
    pending_events: int = 0
    dirty: bool = False
    last_build_time: Optional[str] = None
    last_build_mode: Optional[str] = None
    watermark: Optional[str] = None
    definition_hash: str = ""
    source_hash: str = ""
    identity_hash: str = ""
    version: str = ""
    active: bool = False

    @classmethod
    def from_dict(cls, data: dict) -> "BuildStatus":
        return _build(cls, data)


@dataclass(frozen=True)
class ValidationResult:
    valid: bool = True
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict) -> "ValidationResult":
        return _build(cls, data)


@dataclass(frozen=True)
class RegisterResult:
    version: str = ""
    changes: dict = field(default_factory=dict)
    build_mode: str = ""
    warnings: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict) -> "RegisterResult":
        return _build(cls, data)


@dataclass(frozen=True)
class TimelineEntry:
    timestamp: Optional[datetime] = None
    event_type: str = ""
    event_id: str = ""
    effects: list[str] = field(default_factory=list)
    state_before: Optional[str] = None
    state_after: Optional[str] = None

    @classmethod
    def from_dict(cls, data: dict) -> "TimelineEntry":
        return _build(cls, data, timestamp=parse_timestamp)


@dataclass(frozen=True)
class Timeline:
    entity_id: str = ""
    entity_type: str = ""
    entries: list[TimelineEntry] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict) -> "Timeline":
        return _build(cls, data,
                      entries=lambda items: [TimelineEntry.from_dict(e) for e in items or []])

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self):
        return iter(self.entries)
