"""Constructor options: where storage lives, dead letters, shards."""

from __future__ import annotations

import json

from defacto import Defacto


def test_database_and_cold_ledger_outlive_the_instance(definitions, events, tmp_path):
    options = dict(database=str(tmp_path / "catalog.db"), cold_ledger=str(tmp_path / "lake"))
    with Defacto(definitions, **options) as d:
        d.ingest("app", events, process=True)
    assert (tmp_path / "catalog.db").exists() and (tmp_path / "lake").is_dir()
    with Defacto(definitions, **options) as d:
        assert d.ledger.count() == 4
        assert len(d.table("customer").execute()) == 2
        assert d.build().mode == "SKIP"


def test_a_folder_config_shares_storage_with_the_command_line(quickstart, defacto_bin):
    with Defacto(str(quickstart)) as d:
        d.ingest("helpdesk", [json.loads(line) for line in
                              (quickstart / "data" / "helpdesk.jsonl").read_text().splitlines()])
        d.build()
    assert (quickstart / ".defacto").is_dir()
    cli = json.loads(defacto_bin("--config", str(quickstart), "ledger", "count",
                                 "--format", "json").stdout)
    with Defacto(str(quickstart)) as d:
        assert d.ledger.count() == cli["count"] > 0


def test_dead_letters_to_a_file(definitions, events, tmp_path):
    sink = tmp_path / "dead.jsonl"
    with Defacto(definitions, dead_letter={"type": "file", "path": str(sink)}) as d:
        result = d.ingest("app", events + [{"type": "teleport", "ts": "2024-01-12T00:00:00Z"}])
        assert result.events_ingested == 4
        assert result.events_failed == 1
        assert "Unknown event type 'teleport'" in result.failures[0].error
    lines = [json.loads(line) for line in sink.read_text().splitlines()]
    assert len(lines) == 1 and lines[0]["stage"] == "normalization"


def test_shards_build_their_part(definitions, events, tmp_path):
    options = dict(database=str(tmp_path / "catalog.db"), cold_ledger=str(tmp_path / "lake"))
    with Defacto(definitions, **options) as d:
        d.ingest("app", events)
        assert d.resolve().events_resolved == 4
        built = 0
        for shard in range(2):
            with Defacto(definitions, **options, shard_id=shard, total_shards=2) as s:
                built += s.build().events_processed
                assert s.build_status().pending_events == 0
        assert built >= 4
        assert len(d.table("customer").execute()) == 2
