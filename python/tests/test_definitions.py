"""d.definitions: versions, activation and drafts, as in the seed."""

from __future__ import annotations

import pytest

from defacto import (Defacto, DefinitionError, NotFoundError, RegisterResult, ValidationResult)


def test_versions_active_get(definitions, events):
    with Defacto(definitions) as d:
        d.ingest("app", events, process=True)
        versions = d.definitions.versions()
        active = d.definitions.active()
        assert active in versions
        doc = d.definitions.get(active)
        assert "customer" in doc["entities"]
        with pytest.raises(NotFoundError):
            d.definitions.get("no-such-version")


def test_register_and_activate(definitions, events):
    with Defacto(definitions) as d:
        d.ingest("app", events, process=True)
        v1 = d.definitions.active()
        changed = dict(definitions)
        changed["entities"]["customer"]["properties"]["seats"] = {"type": "integer", "default": 1}
        registered = d.definitions.register("v2", changed)
        assert isinstance(registered, RegisterResult)
        assert registered.version == "v2"
        assert registered.build_mode == "FULL"
        assert "v2" in d.definitions.versions()
        assert d.definitions.active() == v1  # registering does not activate
        with pytest.raises(DefinitionError, match="already exists"):
            d.definitions.register("v2", changed)
        d.build(version="v2")
        d.definitions.activate("v2")
        assert d.definitions.active() == "v2"


def test_draft_operations_as_in_the_seed(definitions, events):
    with Defacto(definitions) as d:
        d.ingest("app", events, process=True)
        v1 = d.definitions.active()
        draft = d.definitions.draft("v2", based_on=v1)
        draft.add_property("customer", "ltv", {"type": "number", "default": 0})
        draft.add_state("customer", "suspended", {
            "when": {"reactivate": {"effects": [{"transition": {"to": "active"}}]}}})
        draft.add_transition("customer", "active", "suspended", "suspend", {})
        draft.add_handler("customer", "active", "downgrade", {
            "effects": [{"set": {"property": "plan", "value": "free"}}]})
        draft.update_identity("customer", {"email": {"match": "exact"}})
        draft.add_property("customer", "old_field", {"type": "string"})
        draft.remove_property("customer", "old_field")
        draft.add_state("customer", "deprecated_state", {})
        draft.remove_state("customer", "deprecated_state")

        result = draft.validate()
        assert isinstance(result, ValidationResult)
        assert result.valid, result.errors
        diff = draft.diff()
        modified = diff["modified"]["customer"]
        assert modified["added_properties"] == ["ltv"]
        assert modified["added_states"] == ["suspended"]
        impact = draft.impact()
        assert impact["build_mode"] == "FULL"
        assert impact["reason"] == "entity definitions changed"
        registered = draft.register()
        assert registered.version == "v2"
        stored = d.definitions.get("v2")
        assert "ltv" in stored["entities"]["customer"]["properties"]
        assert "suspended" in stored["entities"]["customer"]["states"]


def test_draft_errors_are_definition_errors(definitions, events):
    with Defacto(definitions) as d:
        d.ingest("app", events, process=True)
        draft = d.definitions.draft("v2")
        with pytest.raises(DefinitionError, match="already exists"):
            draft.add_property("customer", "plan", {"type": "string"})
        with pytest.raises(DefinitionError, match="not found"):
            draft.add_property("nobody", "x", {"type": "string"})
        with pytest.raises(NotFoundError):
            d.definitions.draft("v3", based_on="no-such-version")
