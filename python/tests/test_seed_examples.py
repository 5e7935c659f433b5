"""The seed's examples (api-reference), as written there, on a small customer definition."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone

import pandas as pd
import pytest

from defacto import (BuildResult, BuildStatus, Defacto, Definitions, IngestResult, TickResult,
                     Timeline, ValidationResult, validate_definitions)


def test_construction_from_a_dict_a_folder_and_a_definitions_object(definitions, quickstart):
    d = Defacto(definitions)
    try:
        assert d.validate_definitions().valid
    finally:
        d.close()
    with Defacto(str(quickstart)) as d:
        assert d.validate_definitions().valid
    with Defacto(Definitions.from_dict(definitions), batch_size=100, workers=1,
                 namespace="defacto", log_level="INFO", log_format="console") as d:
        assert d.validate_definitions().valid


def test_with_block_ingest_process_true_and_current_table(definitions, events):
    with Defacto(definitions) as d:
        result = d.ingest("app", events, process=True)
        assert isinstance(result, IngestResult)
        assert result.events_ingested == 4
        assert result.events_failed == 0 and result.failures == []
        assert isinstance(result.build_result, BuildResult)
        assert result.build_result.mode in ("FULL", "INCREMENTAL")
        assert result.build_result.entities_created == 2

        df = d.table("customer").execute()
        assert isinstance(df, pd.DataFrame)
        assert len(df) == 2
        rows = {r.email: r for r in df.itertuples()}
        assert rows["alice@example.com"].customer_state == "active"
        assert rows["alice@example.com"].plan == "pro"
        assert rows["alice@example.com"].mrr == 99.0
        assert rows["bob@example.com"].customer_state == "churned"
        assert pd.isna(rows["bob@example.com"].valid_to)


def test_results_are_frozen_dataclasses(definitions, events):
    with Defacto(definitions) as d:
        result = d.ingest("app", events)
        assert dataclasses.is_dataclass(result)
        with pytest.raises(dataclasses.FrozenInstanceError):
            result.events_ingested = 0  # type: ignore[misc]
        assert result.build_result is None  # process=None: appended (and normalized) only


def test_build_build_status_and_tick(definitions, events):
    with Defacto(definitions) as d:
        d.ingest("app", events)
        status = d.build_status()
        assert isinstance(status, BuildStatus)
        assert status.pending_events == 4
        first = d.build()
        assert first.mode in ("FULL", "INCREMENTAL") and first.events_processed == 4
        again = d.build()
        assert again.mode == "SKIP"
        status = d.build_status()
        assert status.pending_events == 0 and not status.dirty
        assert status.last_build_mode == first.mode and status.last_build_time
        tick = d.tick(as_of="2024-03-01T00:00:00Z")
        assert isinstance(tick, TickResult)
        assert tick.effects_produced == 0  # no time rules in these definitions


def test_history_and_as_of(definitions, events):
    with Defacto(definitions) as d:
        d.ingest("app", events, process=True)
        history = d.history("customer").execute()
        # alice: signup, upgrade; bob: signup, cancel
        assert len(history) == 4
        assert set(history.columns) >= {"customer_id", "customer_state", "valid_from",
                                         "valid_to", "email", "plan", "mrr"}
        assert str(history["valid_from"].dtype).startswith("datetime64")

        df = d.history("customer").as_of("2024-01-15").execute()
        assert len(df) == 2
        assert set(df["customer_state"]) == {"active"}
        assert set(df["plan"]) == {"free"}

        later = d.history("customer").as_of(datetime(2024, 2, 15, tzinfo=timezone.utc)).execute()
        assert sorted(later["customer_state"]) == ["active", "churned"]


def test_tables_collection(definitions, events, tmp_path):
    with Defacto(definitions) as d:
        d.ingest("app", events, process=True)
        collection = d.tables()  # all entity types
        assert collection.names == ["customer"]
        assert len(collection["customer"].execute()) == 2
        frames = dict((name, t.execute()) for name, t in collection)
        assert list(frames) == ["customer"]
        assert len(collection.history().to_pandas()["customer"]) == 4


def test_query_raw_sql(definitions, events):
    with Defacto(definitions) as d:
        d.ingest("app", events, process=True)
        df = d.query("SELECT * FROM customer_history WHERE mrr > 50").execute()
        assert list(df["email"]) == ["alice@example.com"]
        ordered = d.query("SELECT email FROM customer ORDER BY email DESC")
        assert ordered.sql() == "SELECT email FROM customer ORDER BY email DESC"
        assert list(ordered.execute()["email"]) == ["bob@example.com", "alice@example.com"]


def test_timeline_and_assert_entity(definitions, events):
    with Defacto(definitions) as d:
        d.ingest("app", events, process=True)
        alice = d.identity.lookup("alice@example.com")
        assert alice
        timeline = d.timeline(alice)
        assert isinstance(timeline, Timeline)
        assert timeline.entity_type == "customer"
        assert [e.state_after for e in timeline.entries] == ["active", "active"]
        assert timeline.entries[0].effects[0] == "Entity created"
        assert timeline.entries[0].timestamp == datetime(2024, 1, 10, 9, tzinfo=timezone.utc)
        assert timeline.entries[1].event_type == "upgrade"

        d.assert_entity(alice, state="active", plan="pro", mrr=99.0)
        d.assert_entity(alice, mrr=99)  # numbers compare numerically
        with pytest.raises(AssertionError, match="plan"):
            d.assert_entity(alice, state="active", plan="enterprise")
        with pytest.raises(AssertionError, match="not found in any entity type"):
            d.assert_entity("no-such-entity", state="active")


def test_ledger_and_identity_inspection(definitions, events):
    with Defacto(definitions) as d:
        d.ingest("app", events, process=True)
        assert d.ledger.count() == 4
        assert d.ledger.count(source="app") == 4
        assert d.ledger.count(source="billing") == 0
        bob = d.identity.lookup("bob@example.com")
        events_for = d.ledger.events_for(bob)
        assert [e["event_type"] for e in events_for] == ["signup", "cancel"]
        assert set(events_for[0]) == {"sequence", "event_id", "event_type", "timestamp"}
        assert d.identity.hints(bob) == {"email": ["bob@example.com"]}
        assert d.identity.lookup("nobody@example.com") is None
        assert d.identity.hints("no-such-entity") == {}


def test_standalone_validation(definitions):
    result = validate_definitions(definitions)
    assert isinstance(result, ValidationResult)
    assert result.valid is True
    assert result.errors == []
    assert isinstance(result.warnings, list)

    broken = customer_with_bad_target(definitions)
    result = validate_definitions(broken)
    assert result.valid is False
    assert any("unknown state 'actve'" in e for e in result.errors)


def customer_with_bad_target(definitions: dict) -> dict:
    lead = definitions["entities"]["customer"]["states"]["lead"]
    lead["when"]["signup"]["effects"][2] = {"transition": {"to": "actve"}}
    return definitions


def test_merge_and_erase(definitions, events):
    with Defacto(definitions) as d:
        d.ingest("app", events, process=True)
        alice = d.identity.lookup("alice@example.com")
        bob = d.identity.lookup("bob@example.com")
        merged = d.merge(bob, alice, reason="same person")
        assert merged.from_entity_id == bob and merged.into_entity_id == alice
        current = d.table("customer").execute()
        assert list(current["customer_id"]) == [alice]
        with_merged = d.table("customer").resolve_merges().execute()
        assert set(with_merged["customer_id"]) == {alice, bob}
        # composed with SQL, the same rows come from a recursive query
        resolved = d.table("customer").resolve_merges()
        assert resolved.filter("TRUE").to_records() == resolved.to_records()

        erased = d.erase(alice)
        assert erased.entity_id == alice
        assert erased.entities_erased == 2
        assert erased.events_deleted == 5  # the four events and the merge's system event
        assert len(d.history("customer").execute()) == 0
        assert d.ledger.count() == 0
