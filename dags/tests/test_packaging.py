"""Packaging and deployment files, checked without Docker or a cluster: the Dockerfiles
with hadolint, the compose file with Docker Compose's own validation, and the kustomize
manifests rendered by kustomize (kubectl's) and validated against the Kubernetes schemas
(kubernetes-validate, which bundles them)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from conftest import ROOT, SHOWCASE

INFRA = ROOT / "infra"
OVERLAYS = ("dev", "prod")
# Kubernetes versions the manifests must be valid for (CronJob timeZone and per-index
# backoff limits are GA from 1.33 on).
K8S_VERSIONS = ("1.33", "1.37")


def venv_tool(name: str) -> str:
    return str(Path(sys.executable).parent / name)


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "infra/airflow/Dockerfile"])
def test_dockerfile_passes_hadolint(dockerfile):
    proc = subprocess.run(
        [venv_tool("hadolint"), "--config", str(ROOT / ".hadolint.yaml"), str(ROOT / dockerfile)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_image_runs_defacto_as_a_numeric_non_root_user():
    lines = [l.strip() for l in (ROOT / "Dockerfile").read_text().splitlines()]
    stages = [l for l in lines if l.startswith("FROM ")]
    assert len(stages) == 2 and stages[-1] == "FROM debian:bookworm-slim"
    assert "USER 10001:10001" in lines
    assert 'ENTRYPOINT ["defacto"]' in lines
    assert any("ca-certificates" in l for l in lines)
    assert any("for job in normalize build tick export" in l for l in lines)
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert "target/" in ignored and ".git/" in ignored


def test_compose_file_is_valid():
    import compose

    binary = Path(compose.__file__).parent / "docker-compose"
    proc = subprocess.run(
        [str(binary), "-f", str(INFRA / "compose.yaml"), "config", "--quiet"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    services = yaml.safe_load((INFRA / "compose.yaml").read_text())["services"]
    assert {"postgres", "minio", "airflow", "defacto"} <= set(services)
    assert services["airflow"]["environment"]["DEFACTO_RUNNER"] == "local"


def render(path: Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (which embeds kustomize) is not installed")
    proc = subprocess.run(
        [kubectl, "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(path)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.fixture(scope="module", params=["base", *OVERLAYS])
def manifests(request):
    path = INFRA / "base" if request.param == "base" else INFRA / "overlays" / request.param
    return request.param, render(path)


def by_kind(docs, kind):
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_specs(docs):
    for d in docs:
        if d["kind"] == "Job":
            yield d["metadata"]["name"], d["spec"]["template"]["spec"]
        elif d["kind"] == "CronJob":
            yield d["metadata"]["name"], d["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def test_rendered_manifests_match_the_kubernetes_schemas(manifests):
    _, docs = manifests
    assert docs
    for doc in docs:
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


def test_every_reference_resolves_to_a_rendered_object(manifests):
    name, docs = manifests
    config_maps = set(by_kind(docs, "ConfigMap"))
    secrets = set(by_kind(docs, "Secret"))
    accounts = set(by_kind(docs, "ServiceAccount"))
    external_secrets = {"defacto-database", "defacto-s3"} if name != "dev" else set()
    for job, spec in pod_specs(docs):
        assert spec["serviceAccountName"] in accounts, job
        for volume in spec["volumes"]:
            assert volume["configMap"]["name"] in config_maps, (job, volume)
        for c in spec.get("initContainers", []) + spec["containers"]:
            for source in c["envFrom"]:
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in config_maps, job
                else:
                    assert source["secretRef"]["name"] in secrets | external_secrets, job
            for env in c.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] in secrets | external_secrets, job


def test_the_definitions_configmaps_hold_the_showcase(manifests):
    _, docs = manifests
    maps = by_kind(docs, "ConfigMap")
    for part in ("entities", "sources", "schemas"):
        (generated,) = [m for n, m in maps.items() if n.startswith(f"defacto-{part}-")]
        files = sorted(p.name for p in (SHOWCASE / part).glob("*.yaml"))
        assert sorted(generated["data"]) == files
        for f in files:
            assert generated["data"][f] == (SHOWCASE / part / f).read_text()
    (config,) = [m for n, m in maps.items() if n.startswith("defacto-config-")]
    assert config["data"]["DEFACTO_CONFIG"] == "/etc/defacto/definitions"
    assert config["data"]["DEFACTO_LAKE"].startswith("s3://")
    # The CronJob's Parquet export refers to it.
    assert config["data"]["DEFACTO_PARQUET_OUT"].startswith("s3://")


def test_the_nightly_cronjob_runs_the_pipeline_in_order(manifests):
    _, docs = manifests
    cron = by_kind(docs, "CronJob")["defacto-nightly"]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    spec = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    steps_in_order = [c["args"] for c in spec["initContainers"] + spec["containers"]]
    assert steps_in_order == [
        ["normalize"],
        ["build"],
        ["tick"],
        ["export", "--format", "warehouse"],
        ["export", "--format", "parquet", "--out", "$(DEFACTO_PARQUET_OUT)"],
    ]


def test_indexed_jobs_give_each_pod_its_shard(manifests):
    name, docs = manifests
    jobs = by_kind(docs, "Job")
    expected_shards = {"base": 1, "dev": 2, "prod": 8}[name]
    for job_name in ("defacto-build-shards", "defacto-tick-shards"):
        spec = jobs[job_name]["spec"]
        assert spec["completionMode"] == "Indexed"
        assert spec["suspend"] is True
        assert spec["completions"] == spec["parallelism"] == expected_shards
        (container,) = spec["template"]["spec"]["containers"]
        args = container["args"]
        assert args[args.index("--shard-id") + 1] == "$(JOB_COMPLETION_INDEX)"
        assert args[args.index("--total-shards") + 1] == str(expected_shards)
        env = {e["name"]: e for e in container["env"]}
        assert env["JOB_COMPLETION_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == (
            "metadata.annotations['batch.kubernetes.io/job-completion-index']"
        )
    assert jobs["defacto-resolve"]["spec"]["template"]["spec"]["containers"][0]["args"] == ["resolve"]


def test_overlays_set_image_and_namespace():
    for overlay, namespace, image in (
        ("dev", "defacto-dev", "defacto:dev"),
        ("prod", "defacto", "registry.example.com/data/defacto:0.1.0"),
    ):
        docs = render(INFRA / "overlays" / overlay)
        for doc in docs:
            if doc["kind"] != "Namespace":
                assert doc["metadata"]["namespace"] == namespace
        for _, spec in pod_specs(docs):
            for c in spec.get("initContainers", []) + spec["containers"]:
                assert c["image"] == image


def build_stage_run_command() -> str:
    """The shell command of the Dockerfile's build-stage RUN, without its BuildKit flags."""
    text = (ROOT / "Dockerfile").read_text()
    stage = text.split("FROM debian:bookworm-slim")[0]
    run = stage[stage.index("\nRUN ") + 5 :]
    joined = " ".join(part.strip() for part in run.split("\\\n"))
    joined = joined.split("\n")[0]
    return " ".join(w for w in joined.split() if not w.startswith("--mount="))


def test_the_build_stage_commands_work_outside_docker(tmp_path):
    """Runs the build stage's own RUN command outside Docker: cargo is a shim that checks the
    exact arguments and runs the same build in the debug profile (a release build takes most
    of an hour on a CI machine), so `--locked`, the package and the targets are real; the copy
    and the links run as written, into a scratch folder instead of /out."""
    command = build_stage_run_command()
    assert command.startswith("cargo build --release --locked -p defacto-jobs --bins && ")
    shim = tmp_path / "bin" / "cargo"
    shim.parent.mkdir()
    real_cargo = shutil.which("cargo")
    target = Path.home() / ".cache" / "defacto-target"
    shim.write_text(
        "#!/usr/bin/env bash\n"
        "set -euo pipefail\n"
        '[[ "$*" == "build --release --locked -p defacto-jobs --bins" ]] || { echo "unexpected cargo $*" >&2; exit 9; }\n'
        f'CARGO_TARGET_DIR="{target}" "{real_cargo}" build --locked -p defacto-jobs --bins --quiet\n'
        'mkdir -p target/release\n'
        f'cp "{target}/debug/defacto" target/release/defacto\n'
    )
    shim.chmod(0o755)
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns("target", ".git", ".defacto*"))
    out = tmp_path / "out"
    script = command.replace("/out", str(out))
    env = {**os.environ, "PATH": f"{shim.parent}:{os.environ['PATH']}"}
    proc = subprocess.run(["bash", "-c", script], cwd=src, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["build", "defacto", "export", "normalize", "tick"]
    for job in ("normalize", "build", "tick", "export"):
        assert (out / job).is_symlink() and os.readlink(out / job) == "defacto"
        help_text = subprocess.run([str(out / job), "--help"], capture_output=True, text=True).stdout
        assert f"Usage: defacto {job} " in help_text, help_text[:300]
