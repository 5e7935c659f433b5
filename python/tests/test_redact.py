"""redact(): the entity's sensitive values replaced in its ledger rows and its history."""

from __future__ import annotations

from defacto import Defacto


def test_redact_masks_the_sensitive_email(definitions, events):
    definitions["entities"]["customer"]["properties"]["email"].update(
        {"sensitive": "pii", "treatment": "mask"})
    with Defacto(definitions) as d:
        d.ingest("app", events, process=True)
        alice = d.identity.lookup("alice@example.com")
        count = d.redact(alice)
        assert isinstance(count, int)
        assert count == 2  # alice's signup and upgrade
        emails = set(d.history("customer").filter(f"customer_id = '{alice}'")
                     .execute()["email"])
        assert "alice@example.com" not in emails
        bob = d.table("customer").filter("customer_state = 'churned'").execute()
        assert list(bob["email"]) == ["bob@example.com"]
