"""The defacto pipeline as Dagster assets, run through Dagster Pipes.

    ledger_raw -> ledger_events -> ledger_assignments
        -> entity_history[shard] -> ticked_history[shard] -> warehouse_tables -> parquet_tables

Each asset is one step of `defacto_steps.STEPS` and runs that step's argument vector:
as a pod of the job image through `PipesK8sClient` (DEFACTO_RUNNER=kubernetes, the
default) or as a subprocess of DEFACTO_BIN through `PipesSubprocessClient`
(DEFACTO_RUNNER=local). The per-shard steps are partitioned by shard (DEFACTO_TOTAL_SHARDS
partitions, "0".."N-1"); one run materializes any range of shards, so the nightly job runs
every shard in one run, and one shard can be rebuilt by hand.

The run's parameters (full, from_raw, version, as_of, ingest, parquet_out) are the config of
the `defacto_run` resource, set in the launchpad or a schedule's run config.
"""

import json
import os
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

_HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.dirname(_HERE) not in sys.path:
    sys.path.insert(0, os.path.dirname(_HERE))

import defacto_steps as steps  # noqa: E402
from dagster import (  # noqa: E402
    AllPartitionMapping,
    AssetDep,
    AssetExecutionContext,
    AssetSelection,
    BackfillPolicy,
    ConfigurableResource,
    Definitions,
    MaterializeResult,
    PipesClient,
    PipesSubprocessClient,
    ResourceParam,
    RunRequest,
    ScheduleEvaluationContext,
    StaticPartitionsDefinition,
    asset,
    define_asset_job,
    schedule,
)
from pydantic import Field  # noqa: E402

SETTINGS = steps.Settings.from_env()
TOTAL_SHARDS = int(os.environ.get("DEFACTO_TOTAL_SHARDS", "1"))
SHARDS = StaticPartitionsDefinition([str(i) for i in range(TOTAL_SHARDS)])
GROUP = "defacto"
# One run materializes a whole range of shards; the unsharded assets take the same policy so
# that a run over all shards may include them (as `dagster asset materialize
# --partition-range` and the schedule's run do).
ONE_RUN = BackfillPolicy.single_run()


class DefactoRun(ConfigurableResource):
    """What one run asks for — the same parameters as the Airflow DAG's trigger form."""

    full: bool = Field(default=False, description="Rebuild every entity (build --full).")
    from_raw: bool = Field(default=False, description="Renormalize every raw record, then rebuild.")
    version: str = Field(default="", description="Build this registered definitions version.")
    as_of: str = Field(
        default="", description="The run's instant for time rules, RFC 3339 (empty: the run's start)."
    )
    ingest: dict[str, list[str]] = Field(
        default_factory=dict, description="Files to ingest first, by source."
    )
    parquet_out: str = Field(default="", description="Where the Parquet export goes.")
    shard_parallelism: int = Field(
        default=1 if SETTINGS.runner == "local" else 64,
        description="Shards of one run that build or tick at the same time.",
    )

    def vectors(self, context: AssetExecutionContext) -> dict[str, Any]:
        params = steps.RunParams(
            full=self.full,
            from_raw=self.from_raw,
            version=self.version,
            total_shards=TOTAL_SHARDS,
            as_of=self.as_of,
            ingest=self.ingest,
            parquet_out=self.parquet_out,
        )
        # A run's instant defaults to its creation time, fixed once per run so every asset
        # and every retry of this run uses the same one.
        created = context.instance.get_run_record_by_id(context.run_id)
        default_as_of = created.create_timestamp if created else None
        return steps.plan(params, default_as_of)


# --- launching one step through Pipes ----------------------------------------------------


def kubernetes_pod(argv: Sequence[str], step: steps.Step, settings: steps.Settings) -> dict:
    """The `run` arguments of PipesK8sClient for one step: the job image with the step's
    argument vector as args (the image's entrypoint is `defacto`), the same environment,
    secrets, definitions volumes and resources as the Airflow pods."""
    pod = steps.pod_environment(settings)
    env = [{"name": k, "value": v} for k, v in pod["env"].items() if k != "DEFACTO_RESULT_FILE"]
    env += [
        {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
        for name, (secret, key) in pod["secret_env"].items()
    ]
    container = {
        "name": "defacto",
        "image": settings.image,
        "args": list(argv),
        "env": env,
        "envFrom": [
            {"configMapRef": {"name": pod["env_from_config_map"]}},
            {"secretRef": {"name": pod["env_from_secret"], "optional": True}},
        ],
        "resources": {"requests": step.resources.requests(), "limits": step.resources.limits()},
        "volumeMounts": pod["volume_mounts"],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    return {
        "namespace": settings.k8s_namespace,
        "base_pod_meta": {
            "labels": {"app.kubernetes.io/name": "defacto", "app.kubernetes.io/component": step.name}
        },
        "base_pod_spec": {
            "serviceAccountName": settings.service_account,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 10001,
                "runAsGroup": 10001,
                "fsGroup": 10001,
            },
            "containers": [container],
            "volumes": pod["volumes"],
        },
    }


def launch(
    context: AssetExecutionContext, client: Any, step: steps.Step, argv: Sequence[str]
) -> dict[str, Any]:
    """Runs one job through the Pipes client and returns its result JSON when the job ran
    locally (a pod's result stays in its log and in the catalog's run log)."""
    context.log.info("defacto %s", " ".join(argv))
    if isinstance(client, PipesSubprocessClient):
        with tempfile.TemporaryDirectory(prefix="defacto-step-") as tmp:
            result_file = Path(tmp) / "result.json"
            client.run(
                context=context,
                command=[SETTINGS.binary, *steps.expand(argv, os.environ)],
                env={"DEFACTO_RESULT_FILE": str(result_file)},
            )
            return json.loads(result_file.read_text()) if result_file.exists() else {}
    client.run(context=context, **kubernetes_pod(argv, step, SETTINGS))
    return {}


def run_step(context: AssetExecutionContext, client: Any, defacto_run: DefactoRun, name: str):
    step = steps.step(name)
    argv = defacto_run.vectors(context)[name]
    result = launch(context, client, step, argv)
    return MaterializeResult(metadata=metadata(argv, result))


def run_sharded(context: AssetExecutionContext, client: Any, defacto_run: DefactoRun, name: str):
    """Runs a per-shard step for every shard of this run's partition range."""
    step = steps.step(name)
    vectors = defacto_run.vectors(context)[name]
    shards = [int(key) for key in context.partition_keys]
    workers = max(1, min(defacto_run.shard_parallelism, len(shards)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda i: launch(context, client, step, vectors[i]), shards))
    for i, result in zip(shards, results):
        context.log.info("shard %s: %s", i, json.dumps(result))
    return MaterializeResult(
        metadata={
            "shards": [str(i) for i in shards],
            "results": json.dumps(dict(zip(map(str, shards), results))),
        }
    )


def metadata(argv: Sequence[str], result: dict[str, Any]) -> dict[str, Any]:
    counters = {
        k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    return {"command": "defacto " + " ".join(argv), **counters, "result": json.dumps(result)}


# --- the assets ---------------------------------------------------------------------------


@asset(group_name=GROUP, backfill_policy=ONE_RUN, description=steps.step("ingest").doc)
def ledger_raw(context: AssetExecutionContext, pipes_client: ResourceParam[PipesClient], defacto_run: DefactoRun):
    calls = defacto_run.vectors(context)["ingest"]
    step = steps.step("ingest")
    results = [launch(context, pipes_client, step, argv) for argv in calls]
    return MaterializeResult(metadata={"calls": len(calls), "results": json.dumps(results)})


@asset(group_name=GROUP, deps=[ledger_raw], backfill_policy=ONE_RUN, description=steps.step("normalize").doc)
def ledger_events(context: AssetExecutionContext, pipes_client: ResourceParam[PipesClient], defacto_run: DefactoRun):
    return run_step(context, pipes_client, defacto_run, "normalize")


@asset(group_name=GROUP, deps=[ledger_events], backfill_policy=ONE_RUN, description=steps.step("resolve").doc)
def ledger_assignments(context: AssetExecutionContext, pipes_client: ResourceParam[PipesClient], defacto_run: DefactoRun):
    return run_step(context, pipes_client, defacto_run, "resolve")


@asset(
    group_name=GROUP,
    deps=[ledger_assignments],
    partitions_def=SHARDS,
    backfill_policy=ONE_RUN,
    description=steps.step("build").doc,
)
def entity_history(context: AssetExecutionContext, pipes_client: ResourceParam[PipesClient], defacto_run: DefactoRun):
    return run_sharded(context, pipes_client, defacto_run, "build")


@asset(
    group_name=GROUP,
    # Every shard's build before any tick: the last shard to build activates a new version.
    deps=[AssetDep(entity_history, partition_mapping=AllPartitionMapping())],
    partitions_def=SHARDS,
    backfill_policy=ONE_RUN,
    description=steps.step("tick").doc,
)
def ticked_history(context: AssetExecutionContext, pipes_client: ResourceParam[PipesClient], defacto_run: DefactoRun):
    return run_sharded(context, pipes_client, defacto_run, "tick")


@asset(group_name=GROUP, deps=[ticked_history], backfill_policy=ONE_RUN, description=steps.step("export_warehouse").doc)
def warehouse_tables(context: AssetExecutionContext, pipes_client: ResourceParam[PipesClient], defacto_run: DefactoRun):
    return run_step(context, pipes_client, defacto_run, "export_warehouse")


@asset(group_name=GROUP, deps=[warehouse_tables], backfill_policy=ONE_RUN, description=steps.step("export_parquet").doc)
def parquet_tables(context: AssetExecutionContext, pipes_client: ResourceParam[PipesClient], defacto_run: DefactoRun):
    return run_step(context, pipes_client, defacto_run, "export_parquet")


ASSETS = [
    ledger_raw,
    ledger_events,
    ledger_assignments,
    entity_history,
    ticked_history,
    warehouse_tables,
    parquet_tables,
]

# One run over every shard: the partition range tags make the single-run backfill policy
# hand each sharded asset all shards at once.
ALL_SHARDS_TAGS = {
    "dagster/asset_partition_range_start": SHARDS.get_partition_keys()[0],
    "dagster/asset_partition_range_end": SHARDS.get_partition_keys()[-1],
}

nightly_job = define_asset_job(
    "defacto_nightly", selection=AssetSelection.groups(GROUP), partitions_def=SHARDS
)


@schedule(job=nightly_job, cron_schedule="0 2 * * *", execution_timezone="UTC")
def defacto_nightly_schedule(context: ScheduleEvaluationContext):
    # as_of: the scheduled instant, so a re-executed run computes what the first one did.
    as_of = steps.instant_text(context.scheduled_execution_time)
    return RunRequest(
        tags=ALL_SHARDS_TAGS,
        run_config={"resources": {"defacto_run": {"config": {"as_of": as_of}}}},
    )


def pipes_client(settings: steps.Settings = SETTINGS):
    """The Pipes client of the configured runner."""
    if settings.runner == "local":
        return PipesSubprocessClient()
    from dagster_k8s import PipesK8sClient

    return PipesK8sClient()


defs = Definitions(
    assets=ASSETS,
    jobs=[nightly_job],
    schedules=[defacto_nightly_schedule],
    resources={"pipes_client": pipes_client(), "defacto_run": DefactoRun()},
)
