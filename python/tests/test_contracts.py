"""Contracts of CONTRACTS.md that are about the inline ``process`` style of ingestion, which only
the Python API offers: H4 (mixed ingest styles) and G10 (inline equals deferred)."""

from __future__ import annotations

from defacto import Defacto


def _history(d: Defacto) -> list[dict]:
    return d.history("customer").order_by("customer_id", "valid_from").to_records()


def _identity(d: Defacto) -> list[dict]:
    return sorted(d.identity.list(), key=lambda r: sorted(r.items()))


# CONTRACTS H4
def test_append_only_then_process_builds_both(definitions, events):
    with Defacto(definitions) as d:
        appended = d.ingest("app", events[:1])
        assert appended.build_result is None
        assert d.build_status().pending_events == 1
        processed = d.ingest("app", events[1:2], process=True)
        assert processed.build_result is not None
        emails = sorted(r["email"] for r in d.table("customer").to_records())
        assert emails == ["alice@example.com", "bob@example.com"]
        assert d.build().mode == "SKIP"


# CONTRACTS G10 (the definitions have no time rules, so the builds' sweeps change nothing)
def test_inline_processing_equals_one_deferred_build(definitions, events):
    with Defacto(definitions) as inline, Defacto(definitions) as deferred:
        for event in events:
            result = inline.ingest("app", [event], process=True)
            assert result.build_result.events_failed == 0
        deferred.ingest("app", events)
        built = deferred.build()
        # A version's first build is INCREMENTAL from cursor 0 (its build state is seeded).
        assert built.mode == "INCREMENTAL" and built.events_failed == 0

        assert len(_history(inline)) == 4
        assert _history(inline) == _history(deferred)
        assert _identity(inline) == _identity(deferred)
        assert inline.ledger.count() == deferred.ledger.count() == 4
        for row in inline.table("customer").to_records():
            entity = row["customer_id"]
            assert inline.identity.hints(entity) == deferred.identity.hints(entity)
            assert inline.timeline(entity) == deferred.timeline(entity)
