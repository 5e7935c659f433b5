"""The showcase example through the Python API and through the ``defacto`` binary, each on its
own copy: the same ledger, the same history, row for row and value for value."""

from __future__ import annotations

import json
import math
from datetime import datetime

import pandas as pd
import pytest

from defacto import Defacto

from conftest import read_jsonl

BUILD_AS_OF = "2024-05-01T00:00:00Z"
TICK_AS_OF = "2024-05-15T00:00:00Z"
ENTITIES = ("customer", "subscription", "order")


def run_cli(defacto_bin, config) -> dict:
    """The demo's steps with the binary; returns each entity's history as its JSON rows."""
    c = ["--config", str(config)]
    for source in ("app", "billing"):
        defacto_bin(*c, "ingest", "--source", source, str(config / "data" / f"{source}.jsonl"))
        defacto_bin(*c, "normalize")
    defacto_bin(*c, "build", "--as-of", BUILD_AS_OF)
    defacto_bin(*c, "tick", "--as-of", TICK_AS_OF)
    return {e: json.loads(defacto_bin(*c, "table", e, "--history", "--format", "json").stdout)
            for e in ENTITIES}


def parseable_records(path) -> list[dict]:
    """The records of a JSON-lines file that are JSON objects (a malformed line cannot be
    handed to the Python API as a dict; the binary sends it to the dead letters)."""
    records = []
    for line in path.read_text().splitlines():
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            records.append(value)
    return records


@pytest.fixture
def both(showcase, tmp_path, defacto_bin):
    import shutil

    cli_copy = tmp_path / "cli"
    shutil.copytree(showcase, cli_copy)
    cli_rows = run_cli(defacto_bin, cli_copy)
    d = Defacto(str(showcase))
    for source in ("app", "billing"):
        d.ingest(source, parseable_records(showcase / "data" / f"{source}.jsonl"))
    d.build(as_of=BUILD_AS_OF)
    d.tick(as_of=TICK_AS_OF)
    yield d, cli_rows
    d.close()


def test_history_rows_are_identical(both):
    d, cli_rows = both
    for entity in ENTITIES:
        py_rows = d.history(entity).to_records()
        assert py_rows == cli_rows[entity], entity
        assert len(py_rows) > 0


def test_dataframes_carry_the_same_values(both):
    d, cli_rows = both
    for entity in ENTITIES:
        df = d.history(entity).execute()
        expected = cli_rows[entity]
        assert len(df) == len(expected)
        for row, want in zip(df.to_dict("records"), expected):
            for column, value in row.items():
                assert same(value, want.get(column)), (entity, column, value, want.get(column))


def same(value, expected) -> bool:
    """A DataFrame cell against the JSON value the binary printed (absent means null)."""
    if expected is None:
        return value is None or (not isinstance(value, (list, dict)) and pd.isna(value))
    if isinstance(value, (pd.Timestamp, datetime)):
        return pd.Timestamp(value) == pd.Timestamp(expected)
    if isinstance(value, float) and isinstance(expected, (int, float)):
        return math.isclose(value, expected)
    if isinstance(expected, (list, dict)):
        return json.loads(json.dumps(_plain(value))) == expected
    return value == expected


def _plain(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def test_ledger_counts_match(both, showcase, defacto_bin):
    d, _ = both
    app = parseable_records(showcase / "data" / "app.jsonl")
    assert d.ledger.count(source="app") <= len(app)
    assert d.ledger.count() == d.ledger.count(source="app") + d.ledger.count(source="billing")


def test_current_state_and_as_of_match_the_binary(both, tmp_path, defacto_bin):
    d, _ = both
    config = tmp_path / "cli"
    for entity in ENTITIES:
        current = json.loads(defacto_bin("--config", str(config), "table", entity,
                                         "--format", "json").stdout)
        assert d.table(entity).to_records() == current
        at = json.loads(defacto_bin("--config", str(config), "table", entity, "--as-of",
                                    "2024-03-01T00:00:00Z", "--format", "json").stdout)
        assert d.history(entity).as_of("2024-03-01").to_records() == at
