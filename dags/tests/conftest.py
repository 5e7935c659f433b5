"""Fixtures of the orchestration tests: a private Airflow home with a migrated SQLite
metadata database, the defacto binary, scratch copies of the showcase project, and the
tables a direct run of the binary produces (what every orchestrated run must reproduce).

Airflow reads its configuration when first imported, so the environment is set here, before
any test module imports it.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DAGS = ROOT / "dags"
SHOWCASE = ROOT / "examples" / "showcase"
ENTITIES = ("customer", "subscription", "order")
# The showcase's run: events up to the end of April, time rules as of mid-May.
AS_OF = "2024-05-15T00:00:00Z"
DEFAULT_BIN = Path.home() / ".cache" / "defacto-target" / "debug" / "defacto"

_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="defacto-airflow-home-"))
os.environ.update(
    {
        "AIRFLOW_HOME": str(_AIRFLOW_HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS / "airflow"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_AIRFLOW_HOME}/airflow.db",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "True",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        # Failures should fail the test at once, not wait for a retry.
        "DEFACTO_RETRIES": "0",
    }
)
sys.path.insert(0, str(DAGS))


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_AIRFLOW_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def airflow_db():
    """Airflow's metadata database, migrated once per session (what `dag.test()` needs)."""
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        check=True,
        capture_output=True,
        env=os.environ.copy(),
    )
    return _AIRFLOW_HOME


@pytest.fixture(scope="session")
def defacto_bin() -> str:
    path = os.environ.get("DEFACTO_BIN") or str(DEFAULT_BIN)
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.skip(
            f"the defacto binary is not at {path}: build it (cargo build -p defacto-jobs) "
            "or set DEFACTO_BIN"
        )
    return path


class Project:
    """A scratch copy of the showcase's definitions with its own lake and SQLite catalog."""

    def __init__(self, base: Path, binary: str):
        self.dir = base
        self.defs = base / "defs"
        self.binary = binary
        for part in ("entities", "sources", "schemas"):
            shutil.copytree(SHOWCASE / part, self.defs / part)
        self.env = {
            "DEFACTO_CONFIG": str(self.defs),
            "DEFACTO_LAKE": str(base / "lake"),
            "DEFACTO_DATABASE": f"sqlite://{base / 'catalog.db'}",
            "DEFACTO_PARQUET_OUT": str(base / "parquet"),
            "DEFACTO_BIN": binary,
        }
        self.parquet_out = self.env["DEFACTO_PARQUET_OUT"]

    @staticmethod
    def inbox() -> dict[str, list[str]]:
        """Every showcase data file by source (the source is the file's stem)."""
        return {p.stem: [str(p)] for p in sorted((SHOWCASE / "data").glob("*.jsonl"))}

    def run(self, *args: str) -> str:
        proc = subprocess.run(
            [self.binary, *args],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, f"defacto {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}"
        return proc.stdout

    def tables(self) -> dict[str, list[dict]]:
        """Current state and full history of every showcase entity, as `defacto table` prints them."""
        out = {}
        for entity in ENTITIES:
            out[entity] = json.loads(self.run("table", entity, "--format", "json"))
            out[f"{entity}_history"] = json.loads(
                self.run("table", entity, "--history", "--format", "json")
            )
        return out


@pytest.fixture
def project(tmp_path, defacto_bin, monkeypatch) -> Project:
    """A fresh project whose settings are in this process's environment (the DAG's local
    runner and Dagster's subprocess client pass it on to the jobs)."""
    p = Project(tmp_path, defacto_bin)
    for key, value in p.env.items():
        monkeypatch.setenv(key, value)
    return p


@pytest.fixture(scope="session")
def reference_tables(tmp_path_factory, defacto_bin) -> dict[str, list[dict]]:
    """The showcase run by hand, unsharded, as `make demo` does (build and tick at AS_OF)."""
    p = Project(tmp_path_factory.mktemp("reference"), defacto_bin)
    for source, files in Project.inbox().items():
        p.run("ingest", "--source", source, *files)
    p.run("normalize")
    p.run("build", "--as-of", AS_OF)
    p.run("tick", "--as-of", AS_OF)
    tables = p.tables()
    for entity in ENTITIES:
        assert tables[entity], f"the reference run produced no {entity} rows"
    return tables
