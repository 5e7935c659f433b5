"""Errors: the seed's classes, all under DefactoError, with the jobs' messages."""

from __future__ import annotations

import json
import shutil

import pytest

from defacto import (ConfigError, Defacto, DefactoError, DefinitionError, NotFoundError,
                     QueryError, StorageError)


def test_bad_definitions_raise_definition_error_with_the_message_of_validate(
        quickstart, defacto_bin):
    ticket = quickstart / "entities" / "ticket.yaml"
    text = ticket.read_text()
    assert "{ transition: { to: pending } }" in text
    ticket.write_text(text.replace("{ transition: { to: pending } }",
                                   "{ transition: { to: pendng } }", 1))
    cli = defacto_bin("--config", str(quickstart), "validate", check=False)
    assert cli.returncode == 1
    cli_errors = [line[len("error: "):] for line in cli.stdout.splitlines()
                  if line.startswith("error: ")]
    assert cli_errors, cli.stdout

    with pytest.raises(DefinitionError) as caught:
        Defacto(str(quickstart))
    error = caught.value
    assert isinstance(error, DefactoError)
    assert error.details["errors"] == cli_errors
    assert str(error) == (cli_errors[0] if len(cli_errors) == 1
                          else "Invalid definitions: " + "; ".join(cli_errors))
    assert "unknown state 'pendng'" in str(error)


def test_bad_definitions_dict_raises_definition_error(definitions):
    definitions["entities"]["customer"]["states"]["lead"]["when"]["signup"]["effects"].append(
        {"increment": {"property": "nope"}})
    with pytest.raises(DefinitionError) as caught:
        Defacto(definitions)
    assert isinstance(caught.value, DefactoError)
    assert "nope" in str(caught.value)


def test_unknown_entity_is_not_found(definitions, events):
    with Defacto(definitions) as d:
        d.ingest("app", events, process=True)
        with pytest.raises(NotFoundError) as caught:
            d.table("nobody").execute()
        assert isinstance(caught.value, DefactoError)
        assert "Unknown entity type 'nobody'" in str(caught.value)
        with pytest.raises(NotFoundError):
            d.history("nobody").filter("TRUE").execute()
        with pytest.raises(NotFoundError):
            d.tables("nobody")


def test_bad_sql_is_query_error(definitions, events):
    with Defacto(definitions) as d:
        d.ingest("app", events, process=True)
        with pytest.raises(QueryError) as caught:
            d.query("SELECT * FROM nowhere").execute()
        assert isinstance(caught.value, DefactoError)
        assert "Unknown table 'nowhere'" in str(caught.value)
        with pytest.raises(QueryError, match="Unknown column"):
            d.query("SELECT no_such_column FROM customer").execute()
        with pytest.raises(QueryError):
            d.query("SELEKT 1").execute()
        with pytest.raises(QueryError):
            d.table("customer").filter("no_such_column > 1").execute()


def test_unknown_source_is_not_found(definitions, events):
    with Defacto(definitions) as d:
        with pytest.raises(NotFoundError, match="Source 'nowhere' not found"):
            d.ingest("nowhere", events)


def test_configuration_errors(definitions, tmp_path):
    with pytest.raises(ConfigError):
        Defacto(definitions, database="mysql://localhost/x")
    with pytest.raises(ConfigError):
        Defacto(definitions, shard_id=2, total_shards=2)
    with pytest.raises(ConfigError):
        Defacto(str(tmp_path / "missing"))
    with pytest.raises(ConfigError):
        Defacto(definitions, dead_letter={"type": "kafka", "topic": "x"})
    d = Defacto(definitions)
    d.close()
    with pytest.raises(ConfigError, match="closed"):
        d.table("customer").execute()


def test_every_error_class_derives_from_defacto_error():
    import defacto

    for name in ("ConfigError", "DefinitionError", "IngestError", "ValidationError",
                 "BuildError", "StorageError", "IdentityError", "NotFoundError",
                 "ConsumerError", "QueryError"):
        assert issubclass(getattr(defacto, name), DefactoError), name
    assert StorageError("x").recoverable is True
