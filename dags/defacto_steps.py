"""The defacto pipeline as data: its steps, the command line of each, and how to run one.

Both orchestrators read this module and nothing else about defacto: the Airflow DAG
(`airflow/defacto_pipeline.py`) turns each step into a task, the Dagster definitions
(`dagster/defacto_dagster.py`) into an asset. Whatever runs a step — a Kubernetes pod of the
job image, or a local subprocess of the same binary — runs the same argument vector, so a
pipeline tested locally is the pipeline that runs in production.

This module imports neither Airflow nor Dagster.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

# Where the job image reads what the orchestrator hands it. The image's entrypoint is the
# `defacto` binary, so a pod's args are exactly a step's argument vector.
XCOM_RESULT_FILE = "/airflow/xcom/return.json"
PARQUET_OUT_REF = "$(DEFACTO_PARQUET_OUT)"
DEFINITIONS_MOUNT = "/etc/defacto/definitions"
# The definitions folder's parts, each a ConfigMap of the same name suffix (infra/base).
DEFINITION_PARTS = ("entities", "sources", "schemas")


@dataclasses.dataclass(frozen=True)
class Resources:
    """Requests (and equal limits for memory) of one step's container."""

    cpu: str
    memory: str
    cpu_limit: str | None = None

    def requests(self) -> dict[str, str]:
        return {"cpu": self.cpu, "memory": self.memory}

    def limits(self) -> dict[str, str]:
        limits = {"memory": self.memory}
        if self.cpu_limit:
            limits["cpu"] = self.cpu_limit
        return limits


@dataclasses.dataclass(frozen=True)
class Step:
    """One job of the pipeline.

    `per_shard` steps run once per shard (mapped tasks, partitioned assets); `per_source`
    once per source that has files to ingest; the others once per run. An `optional` step
    may have nothing to do in a run (no files to ingest); the step after it runs anyway.
    """

    name: str
    doc: str
    resources: Resources
    per_shard: bool = False
    per_source: bool = False
    optional: bool = False


# The pipeline, in order. Each step needs the one before it to have finished everywhere:
# `resolve` is the single unsharded identity pass the shard builds require; `tick` waits for
# every shard's build because the last shard to finish activates a new version.
STEPS: tuple[Step, ...] = (
    Step(
        "ingest",
        "Append the night's files of one source to the raw ledger.",
        Resources("250m", "512Mi", "1"),
        per_source=True,
        optional=True,
    ),
    Step(
        "normalize",
        "Normalize new raw records into ledger/events (or every record, from_raw).",
        Resources("500m", "1Gi", "2"),
    ),
    Step(
        "resolve",
        "Resolve identity for new events, once, before the shards build.",
        Resources("500m", "2Gi", "2"),
    ),
    Step(
        "build",
        "Build SCD2 history of the entities one shard owns.",
        Resources("1", "4Gi", "2"),
        per_shard=True,
    ),
    Step(
        "tick",
        "Evaluate time rules of one shard's entities as of the run's instant.",
        Resources("500m", "2Gi", "2"),
        per_shard=True,
    ),
    Step(
        "export_warehouse",
        "Write the state tables into the warehouse (the catalog database).",
        Resources("500m", "2Gi", "2"),
    ),
    Step(
        "export_parquet",
        "Write the state tables as Parquet.",
        Resources("500m", "2Gi", "2"),
    ),
)
STEP_NAMES = tuple(step.name for step in STEPS)


def step(name: str) -> Step:
    for s in STEPS:
        if s.name == name:
            return s
    raise KeyError(f"no step '{name}' (steps: {', '.join(STEP_NAMES)})")


# --- run parameters --------------------------------------------------------------------

DEFAULT_PARAMS: dict[str, Any] = {
    "full": False,
    "from_raw": False,
    "version": "",
    "total_shards": 1,
    "as_of": "",
    "ingest": {},
    "parquet_out": "",
}


@dataclasses.dataclass(frozen=True)
class RunParams:
    """What a run (a nightly run, a backfill, a manual trigger) asks for."""

    full: bool = False
    from_raw: bool = False
    version: str = ""
    total_shards: int = 1
    as_of: str = ""
    # source name -> files to ingest before normalizing (paths the job can read)
    ingest: Mapping[str, Sequence[str]] = dataclasses.field(default_factory=dict)
    # where `export --format parquet` writes; empty: the deployment's DEFACTO_PARQUET_OUT
    parquet_out: str = ""

    @classmethod
    def from_mapping(cls, params: Mapping[str, Any]) -> RunParams:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in params.items() if k in known and v is not None}
        run = cls(**values)
        if int(run.total_shards) < 1:
            raise ValueError(f"total_shards must be at least 1, not {run.total_shards}")
        if not isinstance(run.ingest, Mapping):
            raise ValueError("ingest must map each source name to a list of files")
        return dataclasses.replace(run, total_shards=int(run.total_shards))


def instant_text(value: datetime | str | None) -> str:
    """An RFC 3339 instant in UTC (`2024-05-01T00:00:00Z`), as the jobs' --as-of takes."""
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def plan(params: RunParams, default_as_of: datetime | str | None = None) -> dict[str, Any]:
    """The argument vector of every step of one run.

    Steps that run once map to one vector; per-shard and per-source steps to a list of
    vectors, one per task instance (the input of dynamic task mapping). `as_of` — the run's
    instant for time rules — defaults to `default_as_of` (the end of the run's data
    interval), so a retried or backfilled run computes what the original run did.
    """
    as_of = params.as_of or instant_text(default_as_of)
    at = ["--as-of", as_of] if as_of else []
    shards = [
        ["--shard-id", str(i), "--total-shards", str(params.total_shards)]
        for i in range(params.total_shards)
    ]
    build_flags = (
        (["--version", params.version] if params.version else [])
        + (["--full"] if params.full else [])
        + (["--from-raw"] if params.from_raw else [])
    )
    # `$(DEFACTO_PARQUET_OUT)` is expanded where the job runs, from the job's environment, as
    # Kubernetes expands it in a container's args (run_local does the same), so a deployment
    # sets the export's destination once, beside DEFACTO_LAKE.
    parquet = ["export", "--format", "parquet", "--out", params.parquet_out or PARQUET_OUT_REF]
    return {
        "ingest": [
            ["ingest", "--source", source, *map(str, files)]
            for source, files in sorted(params.ingest.items())
            if files
        ],
        # normalize --from-raw renormalizes the whole ledger under the global lease and makes
        # an identity reset due; the resolve step that follows performs it once for all shards.
        "normalize": ["normalize", *(["--from-raw"] if params.from_raw else [])],
        "resolve": ["resolve"],
        "build": [["build", *build_flags, *at, *shard] for shard in shards],
        "tick": [["tick", *at, *shard] for shard in shards],
        "export_warehouse": ["export", "--format", "warehouse"],
        "export_parquet": parquet,
    }


# --- settings of the deployment --------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Settings:
    """How this deployment runs the jobs, read from the environment of the scheduler/worker.

    DEFACTO_RUNNER      kubernetes (default): a pod of DEFACTO_IMAGE per task;
                        local: a subprocess of DEFACTO_BIN on the worker.
    DEFACTO_IMAGE       the job image (kubernetes)
    DEFACTO_K8S_NAMESPACE, DEFACTO_SERVICE_ACCOUNT, DEFACTO_K8S_CONFIG (kubernetes)
    DEFACTO_INBOX_CLAIM a PersistentVolumeClaim with the files to ingest, mounted at
                        DEFACTO_INBOX_PATH (kubernetes; optional)
    DEFACTO_BIN         the defacto binary (local)
    DEFACTO_RETRIES     task retries (default 2: every job is safe to re-run)
    DEFACTO_ENTITIES    comma-separated entity names for the assets (default: the entity
                        definitions found under DEFACTO_CONFIG)
    """

    runner: str = "kubernetes"
    image: str = "defacto:latest"
    k8s_namespace: str = "defacto"
    service_account: str = "defacto"
    k8s_config: str = "defacto-config"
    database_secret: str = "defacto-database"
    s3_secret: str = "defacto-s3"
    inbox_claim: str = ""
    inbox_path: str = "/inbox"
    binary: str = "defacto"
    retries: int = 2
    entities: tuple[str, ...] = ()
    namespace: str = "defacto"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        runner = env.get("DEFACTO_RUNNER", "kubernetes").strip().lower()
        if runner not in ("kubernetes", "local"):
            raise ValueError(f"DEFACTO_RUNNER must be 'kubernetes' or 'local', not '{runner}'")
        entities = tuple(
            e.strip() for e in env.get("DEFACTO_ENTITIES", "").split(",") if e.strip()
        ) or entity_names(env.get("DEFACTO_CONFIG", ""))
        return cls(
            runner=runner,
            image=env.get("DEFACTO_IMAGE", cls.image),
            k8s_namespace=env.get("DEFACTO_K8S_NAMESPACE", cls.k8s_namespace),
            service_account=env.get("DEFACTO_SERVICE_ACCOUNT", cls.service_account),
            k8s_config=env.get("DEFACTO_K8S_CONFIG", cls.k8s_config),
            database_secret=env.get("DEFACTO_DATABASE_SECRET", cls.database_secret),
            s3_secret=env.get("DEFACTO_S3_SECRET", cls.s3_secret),
            inbox_claim=env.get("DEFACTO_INBOX_CLAIM", ""),
            inbox_path=env.get("DEFACTO_INBOX_PATH", cls.inbox_path),
            binary=env.get("DEFACTO_BIN", cls.binary),
            retries=int(env.get("DEFACTO_RETRIES", cls.retries)),
            entities=entities,
            namespace=env.get("DEFACTO_NAMESPACE", cls.namespace),
        )


def entity_names(config_dir: str) -> tuple[str, ...]:
    """Entity names declared under `<config>/entities/`, without loading the definitions.

    Entity files are mappings whose top-level keys are entity names; reading only those
    keys keeps the parse of a DAG file cheap.
    """
    folder = Path(config_dir) / "entities" if config_dir else None
    if folder is None or not folder.is_dir():
        return ()
    import yaml  # both orchestrators depend on PyYAML

    names: list[str] = []
    for path in sorted(folder.glob("*.y*ml")):
        try:
            doc = yaml.safe_load(path.read_text())
        except yaml.YAMLError:
            continue
        if isinstance(doc, dict):
            names.extend(str(k) for k in doc)
    return tuple(names)


# --- the Kubernetes pod of a step -------------------------------------------------------


def pod_environment(settings: Settings) -> dict[str, Any]:
    """What every job pod gets besides its args, as plain data (each orchestrator turns it
    into its own objects): the shared configuration ConfigMap and S3 credentials as env,
    the catalog URL from its Secret, JSON logs, the result file the XCom sidecar reads,
    and the definitions mounted from their ConfigMaps.
    """
    volumes = [
        {"name": f"definitions-{part}", "configMap": {"name": f"defacto-{part}"}}
        for part in DEFINITION_PARTS
    ]
    mounts = [
        {
            "name": f"definitions-{part}",
            "mountPath": f"{DEFINITIONS_MOUNT}/{part}",
            "readOnly": True,
        }
        for part in DEFINITION_PARTS
    ]
    if settings.inbox_claim:
        volumes.append(
            {
                "name": "inbox",
                "persistentVolumeClaim": {"claimName": settings.inbox_claim, "readOnly": True},
            }
        )
        mounts.append({"name": "inbox", "mountPath": settings.inbox_path, "readOnly": True})
    return {
        "env": {
            "DEFACTO_CONFIG": DEFINITIONS_MOUNT,
            "DEFACTO_LOG_FORMAT": "json",
            "DEFACTO_RESULT_FILE": XCOM_RESULT_FILE,
        },
        "env_from_config_map": settings.k8s_config,
        "env_from_secret": settings.s3_secret,
        "secret_env": {"DEFACTO_DATABASE": (settings.database_secret, "url")},
        "volumes": volumes,
        "volume_mounts": mounts,
    }


# --- a local run of a step --------------------------------------------------------------

_VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand(argv: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """`$(NAME)` in an argument replaced by NAME's value in `env`, as Kubernetes expands a
    container's args; a reference to an unset variable is an error here (Kubernetes would
    pass it on literally, which no job wants)."""

    def value(match: re.Match) -> str:
        name = match.group(1)
        if name not in env:
            raise StepFailed(argv, 2, f"error: {name} is not set (the job's arguments use $({name}))")
        return env[name]

    return [_VAR_REF.sub(value, arg) for arg in argv]



class StepFailed(RuntimeError):
    """A job exited non-zero. `status` follows the CLI: 1 the run failed, 2 bad usage or
    configuration, 3 more events failed than allowed."""

    MEANING = {1: "the run failed", 2: "bad usage or configuration", 3: "too many failed events"}

    def __init__(self, argv: Sequence[str], status: int, stderr: str):
        self.argv = list(argv)
        self.status = status
        self.stderr = stderr
        meaning = self.MEANING.get(status, "unexpected exit status")
        tail = "\n".join(stderr.strip().splitlines()[-20:])
        super().__init__(f"defacto {' '.join(argv)} exited {status} ({meaning}):\n{tail}")


def run_local(
    argv: Sequence[str],
    binary: str,
    env: Mapping[str, str] | None = None,
    log=print,
) -> dict[str, Any]:
    """Runs one step as a subprocess of the binary and returns its result JSON.

    The job writes its result to a private `--result-file` (DEFACTO_RESULT_FILE), the local
    twin of the pod's `/airflow/xcom/return.json`; its logs go to `log` line by line.
    """
    with tempfile.TemporaryDirectory(prefix="defacto-step-") as tmp:
        result_file = Path(tmp) / "result.json"
        full_env = {**os.environ, **(env or {}), "DEFACTO_RESULT_FILE": str(result_file)}
        proc = subprocess.run(
            [binary, *expand(argv, full_env)],
            env=full_env,
            capture_output=True,
            text=True,
            check=False,
        )
        for line in proc.stderr.splitlines():
            log(line)
        if proc.returncode != 0:
            raise StepFailed(argv, proc.returncode, proc.stderr)
        if result_file.exists():
            return json.loads(result_file.read_text())
        # A job that writes no result file (none does today) still prints it on stdout.
        out = proc.stdout.strip()
        return json.loads(out) if out else {}
