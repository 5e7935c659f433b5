"""Fixtures of the Python API tests: a small definitions document in the seed's style, its
events, copies of the repository's examples, and the ``defacto`` binary for comparisons."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def customer_definitions() -> dict:
    """A customer known by email: lead → active (signup) → pro plan (upgrade) → churned."""
    return {
        "entities": {
            "customer": {
                "starts": "lead",
                "identity": {"email": {"match": "exact"}},
                "properties": {
                    "email": {"type": "string"},
                    "plan": {"type": "string", "default": "free"},
                    "mrr": {"type": "number", "default": 0},
                },
                "states": {
                    "lead": {
                        "when": {
                            "signup": {"effects": [
                                "create",
                                {"set": {"property": "email", "from": "event.email"}},
                                {"transition": {"to": "active"}},
                            ]},
                        },
                    },
                    "active": {
                        "when": {
                            "upgrade": {"effects": [
                                {"set": {"property": "plan", "from": "event.plan"}},
                                {"set": {"property": "mrr", "from": "event.mrr"}},
                            ]},
                            "cancel": {"effects": [{"transition": {"to": "churned"}}]},
                        },
                    },
                    "churned": {},
                },
            },
        },
        "sources": {
            "app": {
                "event_type": "type",
                "timestamp": "ts",
                "events": {
                    "signup": {
                        "mappings": {"email": {"from": "email"}},
                        "hints": {"customer": ["email"]},
                    },
                    "upgrade": {
                        "mappings": {
                            "email": {"from": "email"},
                            "plan": {"from": "plan"},
                            "mrr": {"from": "mrr", "type": "number"},
                        },
                        "hints": {"customer": ["email"]},
                    },
                    "cancel": {
                        "mappings": {"email": {"from": "email"}},
                        "hints": {"customer": ["email"]},
                    },
                },
            },
        },
    }


def customer_events() -> list[dict]:
    return [
        {"type": "signup", "ts": "2024-01-10T09:00:00Z", "email": "alice@example.com"},
        {"type": "signup", "ts": "2024-01-11T09:00:00Z", "email": "bob@example.com"},
        {"type": "upgrade", "ts": "2024-01-20T09:00:00Z", "email": "alice@example.com",
         "plan": "pro", "mrr": 99.0},
        {"type": "cancel", "ts": "2024-02-01T09:00:00Z", "email": "bob@example.com"},
    ]


@pytest.fixture
def definitions() -> dict:
    return customer_definitions()


@pytest.fixture
def events() -> list[dict]:
    return customer_events()


@pytest.fixture
def showcase(tmp_path) -> Path:
    """A scratch copy of examples/showcase (definitions and data), so storage starts empty."""
    target = tmp_path / "showcase"
    shutil.copytree(EXAMPLES / "showcase", target,
                    ignore=shutil.ignore_patterns(".defacto"))
    return target


@pytest.fixture
def quickstart(tmp_path) -> Path:
    target = tmp_path / "quickstart"
    shutil.copytree(EXAMPLES / "quickstart", target,
                    ignore=shutil.ignore_patterns(".defacto"))
    return target


@pytest.fixture
def defacto_bin():
    """The ``defacto`` binary (DEFACTO_BIN), or a skip saying why."""
    path = os.environ.get("DEFACTO_BIN") or str(
        Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/defacto-target"))
        / "debug" / "defacto")
    if not os.access(path, os.X_OK):
        pytest.skip(f"the defacto binary is not built at {path} (cargo build --bins)")

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([path, *args], capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise AssertionError(f"defacto {' '.join(args)} failed ({proc.returncode}):\n"
                                 f"{proc.stderr}{proc.stdout}")
        return proc

    return run


def read_jsonl(path: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
