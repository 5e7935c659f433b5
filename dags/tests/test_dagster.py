"""The Dagster definitions in the real Dagster: the asset graph, the pods PipesK8sClient
would create, and `materialize` in local mode (PipesSubprocessClient) on the showcase,
which must leave exactly the tables a direct run of the binary leaves."""

import importlib.util
import sys
from pathlib import Path

import defacto_steps as steps
import kubernetes_validate
import pytest
from conftest import AS_OF, DAGS, Project

MODULE = DAGS / "dagster" / "defacto_dagster.py"
ASSET_STEPS = {
    "ledger_raw": "ingest",
    "ledger_events": "normalize",
    "ledger_assignments": "resolve",
    "entity_history": "build",
    "ticked_history": "tick",
    "warehouse_tables": "export_warehouse",
    "parquet_tables": "export_parquet",
}


def load(monkeypatch, runner: str, shards: int):
    """A fresh import of the definitions under this runner and number of shards (both are
    read when the module loads, as a code location reads them)."""
    monkeypatch.setenv("DEFACTO_RUNNER", runner)
    monkeypatch.setenv("DEFACTO_TOTAL_SHARDS", str(shards))
    name = f"defacto_dagster_{runner}_{shards}"
    spec = importlib.util.spec_from_file_location(name, MODULE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_definitions_load_and_assets_follow_the_pipeline(monkeypatch):
    from dagster import AssetKey

    dd = load(monkeypatch, "kubernetes", 4)
    defs = dd.defs
    graph = defs.resolve_asset_graph()
    keys = [AssetKey(name) for name in ASSET_STEPS]
    assert set(graph.get_all_asset_keys()) == set(keys)
    for before, after in zip(keys, keys[1:]):
        assert graph.get(after).parent_keys == {before}, after
    assert [k.path[0] for k in keys if graph.get(k).partitions_def is not None] == [
        "entity_history",
        "ticked_history",
    ]
    assert dd.SHARDS.get_partition_keys() == ["0", "1", "2", "3"]
    # One run may cover every shard and the steps around them.
    assert all(a.backfill_policy == dd.ONE_RUN for a in dd.ASSETS)
    assert defs.get_job_def("defacto_nightly") is not None
    assert defs.get_schedule_def("defacto_nightly_schedule").cron_schedule == "0 2 * * *"
    assert type(defs.resources["pipes_client"]).__name__ == "PipesK8sClient"
    assert type(load(monkeypatch, "local", 1).defs.resources["pipes_client"]).__name__ == (
        "PipesSubprocessClient"
    )


def test_the_nightly_schedule_runs_every_shard_at_its_scheduled_instant(monkeypatch):
    from datetime import datetime, timezone

    from dagster import build_schedule_context

    dd = load(monkeypatch, "kubernetes", 3)
    at = datetime(2024, 5, 15, 2, 0, tzinfo=timezone.utc)
    request = dd.defacto_nightly_schedule(build_schedule_context(scheduled_execution_time=at))
    assert request.tags["dagster/asset_partition_range_start"] == "0"
    assert request.tags["dagster/asset_partition_range_end"] == "2"
    assert request.run_config["resources"]["defacto_run"]["config"]["as_of"] == "2024-05-15T02:00:00Z"


def test_kubernetes_materialization_creates_one_valid_pod_per_job(monkeypatch):
    """Every asset through a PipesK8sClient that builds its pod body and stops there."""
    from dagster import materialize
    from dagster_k8s import PipesK8sClient
    from dagster_k8s.pipes import build_pod_body
    from kubernetes.client import ApiClient

    monkeypatch.setenv("DEFACTO_IMAGE", "registry.example.com/defacto:1.2.3")
    dd = load(monkeypatch, "kubernetes", 2)
    pods = []

    class BuildPodOnly(PipesK8sClient):
        def run(self, *, context, image=None, command=None, namespace=None, env=None,
                base_pod_meta=None, base_pod_spec=None, **kwargs):
            body = build_pod_body(
                pod_name="defacto-test",
                image=image,
                command=command,
                env_vars={"DAGSTER_PIPES_CONTEXT": "x", **(env or {})},
                base_pod_meta=base_pod_meta,
                base_pod_spec=base_pod_spec,
            )
            pods.append((namespace, ApiClient().sanitize_for_serialization(body)))

    result = materialize(
        dd.ASSETS,
        resources={"pipes_client": BuildPodOnly(), "defacto_run": dd.DefactoRun(as_of=AS_OF)},
        tags=dd.ALL_SHARDS_TAGS,
    )
    assert result.success
    args = [pod["spec"]["containers"][0]["args"] for _, pod in pods]
    shard = lambda i: ["--as-of", AS_OF, "--shard-id", str(i), "--total-shards", "2"]  # noqa: E731
    assert args == [
        ["normalize"],
        ["resolve"],
        ["build", *shard(0)],
        ["build", *shard(1)],
        ["tick", *shard(0)],
        ["tick", *shard(1)],
        ["export", "--format", "warehouse"],
        ["export", "--format", "parquet", "--out", "$(DEFACTO_PARQUET_OUT)"],
    ]
    for namespace, pod in pods:
        assert namespace == "defacto"
        job = pod["spec"]["containers"][0]
        step = steps.step(pod["metadata"]["labels"]["app.kubernetes.io/component"])
        assert job["image"] == "registry.example.com/defacto:1.2.3"
        assert not job.get("command"), "the image's entrypoint (defacto) must run"
        env = {e["name"]: e for e in job["env"]}
        assert env["DEFACTO_DATABASE"]["valueFrom"]["secretKeyRef"]["name"] == "defacto-database"
        assert "DAGSTER_PIPES_CONTEXT" in env
        assert job["resources"]["requests"] == step.resources.requests()
        assert pod["spec"]["serviceAccountName"] == "defacto"
        # The client sends the body to the pods endpoint, which implies the kind.
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "Pod", **pod}, "1.33", strict=True)


def test_local_materialization_of_the_showcase_leaves_the_tables_of_a_direct_run(
    monkeypatch, project, reference_tables
):
    from dagster import materialize

    dd = load(monkeypatch, "local", 2)
    result = materialize(
        dd.ASSETS,
        resources={
            "pipes_client": dd.pipes_client(),
            # Both shards at once: two concurrent job processes on one lake and catalog.
            "defacto_run": dd.DefactoRun(
                as_of=AS_OF,
                ingest=Project.inbox(),
                parquet_out=project.parquet_out,
                shard_parallelism=2,
            ),
        },
        tags=dd.ALL_SHARDS_TAGS,
    )
    assert result.success
    materialized = {
        (e.asset_key.path[0], e.partition) for e in result.get_asset_materialization_events()
    }
    assert ("entity_history", "0") in materialized and ("entity_history", "1") in materialized
    assert ("ticked_history", "1") in materialized and ("parquet_tables", None) in materialized
    build = result.asset_materializations_for_node("entity_history")[0].metadata
    assert "results" in build
    assert project.tables() == reference_tables
    assert any(Path(project.parquet_out).rglob("*.parquet")), "the Parquet export wrote no file"
