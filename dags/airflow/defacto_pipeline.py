"""Airflow 3 DAG `defacto_pipeline`: the nightly defacto run.

    plan -> ingest (per source, optional) -> normalize -> resolve
         -> build (per shard) -> tick (per shard) -> export_warehouse -> export_parquet

`plan` turns the run's params (the trigger form: full, from_raw, version, total_shards,
as_of, ingest, parquet_out) into the argument vector of every job; the other tasks each run
one job with the vector `plan` gave it, as a pod of the job image (KubernetesPodOperator)
or, with DEFACTO_RUNNER=local, as a subprocess of the same binary on the worker. The steps
and their argument vectors come from `defacto_steps`, shared with the Dagster definitions.

Every job is idempotent and holds catalog leases, so retries are safe; `as_of` defaults to
the end of the run's data interval, so a retry or a backfill computes what the original run
did.
"""

from __future__ import annotations

import os
import sys
from datetime import datetime, timedelta
from typing import Any

# defacto_steps lives one folder up (dags/); make it importable whichever of dags/ or
# dags/airflow/ is the DAGs folder.
_HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.dirname(_HERE) not in sys.path:
    sys.path.insert(0, os.path.dirname(_HERE))

import defacto_steps as steps  # noqa: E402
from airflow.sdk import DAG, Asset, Param, get_current_context, task  # noqa: E402

DAG_ID = "defacto_pipeline"
SETTINGS = steps.Settings.from_env()


def state_assets(settings: steps.Settings) -> list[Asset]:
    """One Asset per entity's state table (SCD2 history), as the warehouse holds it."""
    return [
        Asset(
            name=f"defacto.{settings.namespace}.{entity}_history",
            uri=f"defacto://{settings.namespace}/state/{entity}_history",
            group="defacto",
        )
        for entity in settings.entities
    ]


def parquet_assets(settings: steps.Settings) -> list[Asset]:
    return [
        Asset(
            name=f"defacto.{settings.namespace}.{entity}_parquet",
            uri=f"defacto://{settings.namespace}/parquet/{entity}",
            group="defacto",
        )
        for entity in settings.entities
    ]


# Outlets go on unmapped tasks only: an asset event from one shard's tick would let a
# consumer start before the other shards finish. export_warehouse is the first task that
# runs after every shard, and it publishes the state tables.
OUTLETS = {
    "export_warehouse": state_assets(SETTINGS),
    "export_parquet": parquet_assets(SETTINGS),
}


# --- the two runners: each makes the task of one step -----------------------------------


def kubernetes_task(step: steps.Step, settings: steps.Settings, trigger_rule: str):
    """A KubernetesPodOperator (or its `.partial`, for a mapped step) running the job image.

    The pod's args are the step's argument vector (the image's entrypoint is `defacto`);
    its result JSON lands in /airflow/xcom/return.json and the XCom sidecar hands it over.
    """
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from kubernetes.client import models as k8s

    pod = steps.pod_environment(settings)
    env = [k8s.V1EnvVar(name=k, value=v) for k, v in pod["env"].items()]
    env += [
        k8s.V1EnvVar(
            name=name,
            value_from=k8s.V1EnvVarSource(
                secret_key_ref=k8s.V1SecretKeySelector(name=secret, key=key)
            ),
        )
        for name, (secret, key) in pod["secret_env"].items()
    ]
    env_from = [
        k8s.V1EnvFromSource(config_map_ref=k8s.V1ConfigMapEnvSource(name=pod["env_from_config_map"])),
        # A deployment on a local lake has no S3 credentials.
        k8s.V1EnvFromSource(
            secret_ref=k8s.V1SecretEnvSource(name=pod["env_from_secret"], optional=True)
        ),
    ]
    volumes = []
    for v in pod["volumes"]:
        if "configMap" in v:
            volumes.append(
                k8s.V1Volume(
                    name=v["name"],
                    config_map=k8s.V1ConfigMapVolumeSource(name=v["configMap"]["name"]),
                )
            )
        else:
            claim = v["persistentVolumeClaim"]
            volumes.append(
                k8s.V1Volume(
                    name=v["name"],
                    persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(
                        claim_name=claim["claimName"], read_only=claim["readOnly"]
                    ),
                )
            )
    mounts = [
        k8s.V1VolumeMount(name=m["name"], mount_path=m["mountPath"], read_only=m["readOnly"])
        for m in pod["volume_mounts"]
    ]
    kwargs: dict[str, Any] = dict(
        task_id=step.name,
        doc=step.doc,
        name=f"defacto-{step.name.replace('_', '-')}",
        namespace=settings.k8s_namespace,
        image=settings.image,
        service_account_name=settings.service_account,
        env_vars=env,
        env_from=env_from,
        volumes=volumes,
        volume_mounts=mounts,
        container_resources=k8s.V1ResourceRequirements(
            requests=step.resources.requests(), limits=step.resources.limits()
        ),
        security_context=k8s.V1PodSecurityContext(
            run_as_non_root=True, run_as_user=10001, run_as_group=10001, fs_group=10001
        ),
        container_security_context=k8s.V1SecurityContext(
            allow_privilege_escalation=False,
            capabilities=k8s.V1Capabilities(drop=["ALL"]),
        ),
        labels={"app.kubernetes.io/name": "defacto", "app.kubernetes.io/component": step.name},
        do_xcom_push=True,
        get_logs=True,
        on_finish_action="delete_succeeded_pod",
        startup_timeout_seconds=600,
        outlets=OUTLETS.get(step.name, []),
        trigger_rule=trigger_rule,
    )
    if step.per_shard or step.per_source:
        return KubernetesPodOperator.partial(**kwargs)
    return lambda arguments: KubernetesPodOperator(arguments=arguments, **kwargs)


def local_task(step: steps.Step, settings: steps.Settings, trigger_rule: str):
    """A Python task running the same argument vector as a subprocess of DEFACTO_BIN."""

    @task(
        task_id=step.name,
        doc=step.doc,
        outlets=OUTLETS.get(step.name, []),
        trigger_rule=trigger_rule,
    )
    def run(arguments: list[str]) -> dict[str, Any]:
        import logging

        log = logging.getLogger(f"defacto.{step.name}")
        return steps.run_local(arguments, settings.binary, log=log.info)

    if step.per_shard or step.per_source:
        return run.partial()
    return run


RUNNERS = {"kubernetes": kubernetes_task, "local": local_task}


# --- the DAG -------------------------------------------------------------------------------

with DAG(
    dag_id=DAG_ID,
    description="defacto: ingest, normalize, resolve, build and tick per shard, export",
    doc_md=__doc__,
    schedule="0 2 * * *",
    start_date=datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=1,  # the jobs' leases would make a second run wait and fail anyway
    default_args={
        "retries": SETTINGS.retries,
        "retry_delay": timedelta(minutes=5),
        "retry_exponential_backoff": True,
    },
    tags=["defacto"],
    params={
        "full": Param(False, type="boolean", description="Rebuild every entity (build --full)."),
        "from_raw": Param(
            False,
            type="boolean",
            description="Renormalize every raw record, then rebuild (backfill after a source change).",
        ),
        "version": Param(
            "", type="string", description="Build this registered definitions version (empty: the config folder's)."
        ),
        "total_shards": Param(
            1, type="integer", minimum=1, maximum=256, description="Shards the build and tick run in."
        ),
        "as_of": Param(
            "",
            type="string",
            description="The run's instant for time rules, RFC 3339 (empty: the end of the data interval).",
        ),
        "ingest": Param(
            {},
            type="object",
            description='Files to ingest first, by source: {"app": ["/inbox/app.jsonl"]}.',
        ),
        "parquet_out": Param(
            "", type="string", description="Where the Parquet export goes (empty: DEFACTO_PARQUET_OUT where the job runs)."
        ),
    },
) as dag:

    # Dynamic task mapping maps only over a task's return value, so planning is two tasks:
    # `inbox` returns the ingest calls (one per source), `plan` returns one item per shard
    # (its build and tick vectors) and pushes the vector of each unmapped step under the
    # step's name.
    @task(retries=0)
    def inbox() -> list[list[str]]:
        """The ingest calls of this run, one per source with files (none: ingest is skipped)."""
        ctx = get_current_context()
        return steps.plan(steps.RunParams.from_mapping(ctx["params"]))["ingest"]

    @task(retries=0)
    def plan() -> list[dict[str, list[str]]]:
        """The argument vector of every job of this run (see this task's XComs)."""
        ctx = get_current_context()
        default_as_of = ctx.get("data_interval_end") or ctx["dag_run"].run_after
        vectors = steps.plan(steps.RunParams.from_mapping(ctx["params"]), default_as_of)
        for s in steps.STEPS:
            if not (s.per_shard or s.per_source):
                ctx["ti"].xcom_push(key=s.name, value=vectors[s.name])
        sharded = [s.name for s in steps.STEPS if s.per_shard]
        return [dict(zip(sharded, item)) for item in zip(*(vectors[n] for n in sharded))]

    def shard_vectors(name: str):
        return lambda item: item[name]

    calls, planned = inbox(), plan()
    make_task = RUNNERS[SETTINGS.runner]
    previous, after_optional = [calls, planned], False
    for step in steps.STEPS:
        # An optional step with nothing to do is mapped over nothing, which skips it; the
        # next step runs unless something failed.
        rule = "none_failed" if after_optional else "all_success"
        factory = make_task(step, SETTINGS, rule)
        if step.per_source:
            current = factory.expand(arguments=calls)
        elif step.per_shard:
            current = factory.expand(arguments=planned.map(shard_vectors(step.name)))
        else:
            current = factory(planned[step.name])
        previous >> current
        previous, after_optional = current, step.optional
