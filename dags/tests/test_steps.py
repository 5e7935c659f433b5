"""The step table and the argument vectors both orchestrators run (defacto_steps)."""

from datetime import datetime, timezone

import defacto_steps as steps
import pytest


def test_steps_run_in_pipeline_order():
    assert steps.STEP_NAMES == (
        "ingest",
        "normalize",
        "resolve",
        "build",
        "tick",
        "export_warehouse",
        "export_parquet",
    )
    assert [s.name for s in steps.STEPS if s.per_shard] == ["build", "tick"]
    assert [s.name for s in steps.STEPS if s.optional] == ["ingest"]


def test_a_nightly_run_builds_and_ticks_every_shard_at_the_end_of_its_interval():
    end = datetime(2024, 5, 15, tzinfo=timezone.utc)
    v = steps.plan(steps.RunParams(total_shards=3), default_as_of=end)
    assert v["ingest"] == []
    assert v["normalize"] == ["normalize"]
    assert v["resolve"] == ["resolve"]
    assert v["build"] == [
        ["build", "--as-of", "2024-05-15T00:00:00Z", "--shard-id", str(i), "--total-shards", "3"]
        for i in range(3)
    ]
    assert v["tick"] == [
        ["tick", "--as-of", "2024-05-15T00:00:00Z", "--shard-id", str(i), "--total-shards", "3"]
        for i in range(3)
    ]
    assert v["export_warehouse"] == ["export", "--format", "warehouse"]
    # The destination is the deployment's, expanded where the job runs.
    assert v["export_parquet"] == ["export", "--format", "parquet", "--out", "$(DEFACTO_PARQUET_OUT)"]


def test_a_backfill_renormalizes_once_and_rebuilds_every_shard():
    run = steps.RunParams.from_mapping(
        {
            "full": True,
            "from_raw": True,
            "version": "v-abc",
            "total_shards": "2",
            "as_of": "2024-06-01T00:00:00Z",
            "ingest": {"billing": ["/inbox/b.jsonl"], "app": ["/inbox/a1.jsonl", "/inbox/a2.jsonl"]},
            "parquet_out": "s3://lake/exports",
            "unknown": "ignored",
        }
    )
    v = steps.plan(run, default_as_of=datetime(2030, 1, 1))
    assert v["ingest"] == [
        ["ingest", "--source", "app", "/inbox/a1.jsonl", "/inbox/a2.jsonl"],
        ["ingest", "--source", "billing", "/inbox/b.jsonl"],
    ]
    assert v["normalize"] == ["normalize", "--from-raw"]
    assert v["resolve"] == ["resolve"]
    assert v["build"][1] == [
        "build",
        "--version",
        "v-abc",
        "--full",
        "--from-raw",
        "--as-of",
        "2024-06-01T00:00:00Z",
        "--shard-id",
        "1",
        "--total-shards",
        "2",
    ]
    assert v["export_parquet"] == ["export", "--format", "parquet", "--out", "s3://lake/exports"]


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="total_shards"):
        steps.RunParams.from_mapping({"total_shards": 0})
    with pytest.raises(ValueError, match="ingest"):
        steps.RunParams.from_mapping({"ingest": ["a.jsonl"]})
    with pytest.raises(ValueError, match="DEFACTO_RUNNER"):
        steps.Settings.from_env({"DEFACTO_RUNNER": "docker"})


def test_assets_are_named_after_the_configured_entities(tmp_path):
    (tmp_path / "entities").mkdir()
    (tmp_path / "entities" / "a.yaml").write_text("customer:\n  starts: lead\n")
    (tmp_path / "entities" / "b.yaml").write_text("order: {starts: pending}\nrefund: {}\n")
    assert steps.Settings.from_env({"DEFACTO_CONFIG": str(tmp_path)}).entities == (
        "customer",
        "order",
        "refund",
    )
    assert steps.Settings.from_env({"DEFACTO_ENTITIES": "x, y"}).entities == ("x", "y")


def test_a_failed_job_names_its_exit_status(tmp_path):
    fake = tmp_path / "defacto"
    fake.write_text("#!/bin/sh\necho 'error: too many' >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(steps.StepFailed, match="exited 3 \\(too many failed events\\)"):
        steps.run_local(["build"], str(fake), log=lambda line: None)


def test_arguments_refer_to_the_job_environment_as_kubernetes_args_do():
    env = {"DEFACTO_PARQUET_OUT": "s3://lake/out", "X": "1"}
    assert steps.expand(["--out", "$(DEFACTO_PARQUET_OUT)", "a$(X)b", "$X"], env) == [
        "--out",
        "s3://lake/out",
        "a1b",
        "$X",
    ]
    with pytest.raises(steps.StepFailed, match="DEFACTO_PARQUET_OUT is not set"):
        steps.expand(["$(DEFACTO_PARQUET_OUT)"], {})
