"""The Airflow DAG `defacto_pipeline` in the real Airflow: it imports, its tasks are in
pipeline order with build and tick mapped over shards, each Kubernetes task renders a valid
pod, and in local mode `dag.test()` runs the showcase end to end (then a from_raw backfill)
and leaves exactly the tables a direct run of the binary leaves."""

import json
from datetime import datetime, timezone
from pathlib import Path

import defacto_steps as steps
import kubernetes_validate
import pytest
from conftest import AS_OF, DAGS, ENTITIES, SHOWCASE, Project

DAG_ID = "defacto_pipeline"
TASKS = ("inbox", "plan", *steps.STEP_NAMES)


def load_dag(monkeypatch, runner: str):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("DEFACTO_RUNNER", runner)
    bag = DagBag(dag_folder=str(DAGS / "airflow"))
    assert bag.import_errors == {}
    return bag.dags[DAG_ID]


@pytest.mark.parametrize("runner", ["kubernetes", "local"])
def test_the_dag_imports_with_either_runner(monkeypatch, runner):
    dag = load_dag(monkeypatch, runner)
    assert set(dag.task_ids) == set(TASKS)
    assert set(dag.params.keys()) == set(steps.DEFAULT_PARAMS)
    assert dag.max_active_runs == 1


def test_the_whole_dags_folder_holds_only_this_dag(monkeypatch):
    """With dags/ as the DAGs folder, .airflowignore keeps Dagster and the tests out."""
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("DEFACTO_RUNNER", "local")
    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    assert list(bag.dags) == [DAG_ID]


@pytest.mark.parametrize("runner", ["kubernetes", "local"])
def test_tasks_follow_the_pipeline_and_map_build_and_tick_over_shards(monkeypatch, runner):
    # The scheduler finds the entity names (for the assets) in the definitions folder.
    monkeypatch.setenv("DEFACTO_CONFIG", str(SHOWCASE))
    dag = load_dag(monkeypatch, runner)
    for before, after in zip(steps.STEP_NAMES, steps.STEP_NAMES[1:]):
        assert dag.get_task(before).downstream_task_ids == {after}, before
    for name in steps.STEP_NAMES:
        assert "plan" in dag.get_task(name).upstream_task_ids
    assert "inbox" in dag.get_task("ingest").upstream_task_ids
    mapped = {t.task_id for t in dag.tasks if getattr(t, "is_mapped", False)}
    assert mapped == {"ingest", "build", "tick"}
    # Nothing to ingest skips ingest; normalize runs all the same.
    assert dag.get_task("normalize").trigger_rule == "none_failed"
    assert all(dag.get_task(n).trigger_rule == "all_success" for n in ("resolve", "export_parquet"))
    # The state tables are published once every shard has ticked, not per shard.
    outlets = {t.task_id: [a.uri for a in t.outlets] for t in dag.tasks if t.outlets}
    assert outlets["export_warehouse"] == [f"defacto://defacto/state/{e}_history" for e in sorted(ENTITIES)]
    assert set(outlets) == {"export_warehouse", "export_parquet"}


def test_each_kubernetes_task_renders_its_pod(monkeypatch, airflow_db):
    """A whole run in Kubernetes mode where each pod is built, not sent: the real template
    rendering, XCom resolution and task mapping, then the pod as the operator would create it."""
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from kubernetes.client import ApiClient

    monkeypatch.setenv("DEFACTO_IMAGE", "registry.example.com/defacto:1.2.3")
    monkeypatch.setenv("DEFACTO_K8S_NAMESPACE", "data-jobs")
    pods: list[tuple[str, int, dict]] = []

    def build_pod_only(self, context):
        pod = self.build_pod_request_obj(context, dry_run=True)
        pods.append((self.task_id, context["ti"].map_index, ApiClient().sanitize_for_serialization(pod)))
        return {"pod": pod.metadata.name}

    monkeypatch.setattr(KubernetesPodOperator, "execute", build_pod_only)
    dag = load_dag(monkeypatch, "kubernetes")
    run = dag.test(
        run_conf={"total_shards": 3, "as_of": AS_OF, "ingest": {"app": ["/inbox/app.jsonl"]}}
    )
    assert run.state == "success"

    order = [task for task, _, _ in pods]
    assert order == ["ingest", "normalize", "resolve", *["build"] * 3, *["tick"] * 3,
                     "export_warehouse", "export_parquet"]
    args = {(task, index): pod["spec"]["containers"][0]["args"] for task, index, pod in pods}
    assert args[("ingest", 0)] == ["ingest", "--source", "app", "/inbox/app.jsonl"]
    assert args[("normalize", -1)] == ["normalize"]
    for i in range(3):
        shard = ["--as-of", AS_OF, "--shard-id", str(i), "--total-shards", "3"]
        assert args[("build", i)] == ["build", *shard]
        assert args[("tick", i)] == ["tick", *shard]
    assert args[("export_warehouse", -1)] == ["export", "--format", "warehouse"]
    assert args[("export_parquet", -1)] == ["export", "--format", "parquet", "--out", "$(DEFACTO_PARQUET_OUT)"]

    for task, index, pod in pods:
        step = steps.step(task)
        spec = pod["spec"]
        job, sidecar = spec["containers"]
        assert pod["metadata"]["namespace"] == "data-jobs"
        assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == task
        assert spec["serviceAccountName"] == "defacto"
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["restartPolicy"] == "Never"
        assert job["image"] == "registry.example.com/defacto:1.2.3"
        assert not job.get("command"), "the image's entrypoint (defacto) must run"
        env = {e["name"]: e for e in job["env"]}
        assert env["DEFACTO_RESULT_FILE"]["value"] == "/airflow/xcom/return.json"
        assert env["DEFACTO_CONFIG"]["value"] == "/etc/defacto/definitions"
        assert env["DEFACTO_LOG_FORMAT"]["value"] == "json"
        assert env["DEFACTO_DATABASE"]["valueFrom"]["secretKeyRef"] == {
            "name": "defacto-database",
            "key": "url",
        }
        assert {"configMapRef": {"name": "defacto-config"}} in job["envFrom"]
        assert {"secretRef": {"name": "defacto-s3", "optional": True}} in job["envFrom"]
        assert job["resources"] == {
            "requests": step.resources.requests(),
            "limits": step.resources.limits(),
        }
        mounts = {m["mountPath"]: m["name"] for m in job["volumeMounts"]}
        assert mounts["/airflow/xcom"] == "xcom"
        for part in steps.DEFINITION_PARTS:
            assert f"/etc/defacto/definitions/{part}" in mounts
        # The XCom sidecar reads the result file from the shared volume.
        assert sidecar["name"] == "airflow-xcom-sidecar"
        assert {"mountPath": "/airflow/xcom", "name": "xcom"} in sidecar["volumeMounts"]
        assert {"name": "xcom", "emptyDir": {}} in spec["volumes"]
        kubernetes_validate.validate(pod, "1.33", strict=True)
        if index >= 0:
            assert pod["metadata"]["labels"]["map_index"] == str(index)


@pytest.fixture(scope="module")
def nightly(tmp_path_factory, defacto_bin, airflow_db):
    """The DAG in local mode on a fresh showcase project: ingest both sources, two shards."""
    with pytest.MonkeyPatch.context() as mp:
        project = Project(tmp_path_factory.mktemp("airflow-project"), defacto_bin)
        for key, value in project.env.items():
            mp.setenv(key, value)
        dag = load_dag(mp, "local")
        run = dag.test(
            run_conf={
                "total_shards": 2,
                "as_of": AS_OF,
                "ingest": Project.inbox(),
                # parquet_out left empty: the worker's DEFACTO_PARQUET_OUT is the destination
            }
        )
        yield project, run, mp


def states(run) -> dict[tuple[str, int], str]:
    return {(ti.task_id, ti.map_index): ti.state for ti in run.get_task_instances()}


def test_local_run_of_the_showcase_leaves_the_tables_of_a_direct_run(nightly, reference_tables):
    project, run, _ = nightly
    assert run.state == "success", states(run)
    got = states(run)
    assert got[("build", 0)] == got[("build", 1)] == "success"
    assert got[("tick", 0)] == got[("tick", 1)] == "success"
    assert {k: v for k, v in got.items() if v != "success"} == {}
    assert project.tables() == reference_tables
    assert any(Path(project.parquet_out).rglob("*.parquet")), "the Parquet export wrote no file"


def test_a_from_raw_backfill_rebuilds_the_same_tables(nightly, reference_tables):
    project, _, mp = nightly
    dag = load_dag(mp, "local")
    # No as_of: a backfill's instant is the end of its data interval, here the same instant
    # the nightly run was given.
    run = dag.test(
        logical_date=datetime(2024, 5, 15, tzinfo=timezone.utc),
        run_conf={
            "from_raw": True,
            "full": True,
            "total_shards": 2,
        },
    )
    assert run.state == "success", states(run)
    assert states(run)[("ingest", -1)] == "skipped"
    # The catalog's run log: both shards rebuilt everything from the renormalized ledger.
    runs = json.loads(project.run("status"))["recent_runs"]
    builds = [r["result"]["mode"] for r in runs if r["job"] == "build"][:2]
    assert builds == ["FULL_RENORMALIZE", "FULL_RENORMALIZE"], runs
    assert project.tables() == reference_tables
