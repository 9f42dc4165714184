"""Deployment: the PostgreSQL instance, steps in two Celery workers (Redis broker), the Kubernetes configuration.

The services (PostgreSQL on 127.0.0.1:5432, Redis on 127.0.0.1:6379) run on every machine of this project and in
CI; a test that cannot reach one fails with the reason. Each module run uses its own database and its own Redis
key prefix, so concurrent sessions never pick up each other's steps; workers are started and stopped here.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from mmrec_pipeline.instance import InstanceError, ensure_database, instance_yaml

REPO = Path(__file__).resolve().parents[1]
PG_SERVER = "postgresql+psycopg2://postgres@127.0.0.1:5432"
REDIS = "redis://127.0.0.1:6379/0"
STEP_TIMEOUT_S = 300  # one subprocess (a run, a worker start); every wait below is bounded


def _require(host: str, port: int, what: str) -> None:
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError as e:
        pytest.fail(f"{what} is not reachable on {host}:{port} ({e}); this project's machines and CI run it")


@pytest.fixture(scope="module")
def pg_url():
    """A fresh database for this module's instance, dropped afterwards."""
    import psycopg2

    _require("127.0.0.1", 5432, "PostgreSQL")
    url = f"{PG_SERVER}/mmrec_test_{uuid.uuid4().hex[:12]}"
    assert ensure_database(url) is True
    assert ensure_database(url) is False  # idempotent
    yield url
    conn = psycopg2.connect("postgresql://postgres@127.0.0.1:5432/postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'drop database if exists "{url.rsplit("/", 1)[1]}" with (force)')
    conn.close()


@pytest.fixture(scope="module")
def deploy_env(pg_url, tmp_path_factory):
    """The environment of launcher and workers: MMREC_ENV=deploy, a PostgreSQL DAGSTER_HOME, an own lake."""
    _require("127.0.0.1", 6379, "Redis")
    home = tmp_path_factory.mktemp("dagster-deploy")
    (home / "dagster.yaml").write_text(instance_yaml("deploy"))
    env = {"MMREC_ENV": "deploy", "DAGSTER_HOME": str(home), "MMREC_POSTGRES_URL": pg_url,
           "MMREC_HOME": str(tmp_path_factory.mktemp("deploy-lake")), "MMREC_CELERY_BROKER": REDIS,
           "MMREC_CELERY_PREFIX": f"mmrec-test-{uuid.uuid4().hex[:8]}:"}
    # This process opens the same instance to read the runs back; the rest stays in the children's environment
    # (MMREC_ENV here would leak into later test modules' Definitions).
    saved = os.environ.get("MMREC_POSTGRES_URL")
    os.environ["MMREC_POSTGRES_URL"] = pg_url
    yield {**os.environ, **env, "PYTHONPATH": str(REPO)}
    import redis  # the session's queue bindings and results: remove them from the shared Redis

    client = redis.Redis.from_url(REDIS)
    for key in client.scan_iter(match=env["MMREC_CELERY_PREFIX"] + "*"):
        client.delete(key)
    client.close()
    if saved is None:
        os.environ.pop("MMREC_POSTGRES_URL", None)
    else:
        os.environ["MMREC_POSTGRES_URL"] = saved


@pytest.fixture(scope="module")
def instance(deploy_env):
    import dagster as dg

    with dg.DagsterInstance.from_config(deploy_env["DAGSTER_HOME"]) as inst:
        yield inst


@pytest.fixture(scope="module")
def workers(deploy_env, tmp_path_factory):
    """Two Celery workers (one step at a time each), started here; yields their pids."""
    logs = tmp_path_factory.mktemp("celery")
    procs = []
    for i in (1, 2):
        cmd = [sys.executable, "-m", "celery", "-A", "resources.celery_app", "worker", "--pool=solo",
               "--loglevel=INFO", "-n", f"mmrec-test-{i}@%h", "--without-gossip", "--without-mingle"]
        with open(logs / f"w{i}.log", "w") as log:  # the child keeps its own descriptor
            procs.append(subprocess.Popen(cmd, cwd=REPO, env=deploy_env, stdout=log, stderr=subprocess.STDOUT))
    try:
        _wait_for_workers(procs, logs)
        yield {p.pid for p in procs}
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def _wait_for_workers(procs, logs: Path) -> None:
    deadline = time.monotonic() + STEP_TIMEOUT_S
    while time.monotonic() < deadline:
        dead = [p for p in procs if p.poll() is not None]
        if dead:
            pytest.fail(f"a Celery worker exited ({dead[0].returncode}):\n" + _tail(logs))
        if all(" ready." in (logs / f"w{i}.log").read_text() for i in (1, 2)):
            return
        time.sleep(0.5)
    pytest.fail("Celery workers not ready in time:\n" + _tail(logs))


def _tail(folder: Path, n: int = 3000) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-n:]}" for p in sorted(folder.iterdir()))


def _launch(args: list[str], env: dict) -> subprocess.Popen:
    """A run launched from its own process (the dagster CLI): orchestration there, steps in the workers."""
    return subprocess.Popen([sys.executable, "-m", "dagster", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen) -> str:
    try:
        out, _ = proc.communicate(timeout=STEP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"run did not finish in {STEP_TIMEOUT_S}s:\n{out[-4000:]}")
    assert proc.returncode == 0, out[-4000:]
    return out


def _steps(instance, run_id: str) -> dict[str, dict]:
    """step key -> pid and start/end time of its STEP_START / STEP_SUCCESS events."""
    from dagster import DagsterEventType

    steps: dict[str, dict] = {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or event.step_key is None:
            continue
        if event.event_type == DagsterEventType.STEP_START:
            steps.setdefault(event.step_key, {}).update(pid=event.pid, start=entry.timestamp)
        elif event.event_type == DagsterEventType.STEP_SUCCESS:
            steps.setdefault(event.step_key, {}).update(end=entry.timestamp)
    return steps


def _latest_run(instance, job_name: str):
    from dagster import DagsterRunStatus, RunsFilter

    runs = instance.get_runs(RunsFilter(job_name=job_name), limit=1)
    assert runs, f"no run of {job_name} in the instance"
    assert runs[0].status == DagsterRunStatus.SUCCESS, runs[0].status
    return runs[0]


def test_deploy_instance_is_postgres_default_stays_sqlite(instance, pg_url, tmp_path, monkeypatch):
    import dagster as dg
    import psycopg2
    from dagster._core.storage.runs import SqliteRunStorage
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

    from resources import cli

    assert isinstance(instance.run_storage, PostgresRunStorage)
    assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
    assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
    assert instance.get_concurrency_config().pool_config.default_pool_limit == 1  # the `gpu` pool's limit

    # The default (`make demo` on a laptop) needs no server: embedded SQLite.
    monkeypatch.setenv("MMREC_ENV", "local")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "local"))
    home = cli.instance_home()
    with dg.DagsterInstance.from_config(str(home)) as local:
        assert isinstance(local.run_storage, SqliteRunStorage)
        # Without a GPU to share, its `gpu` pool is as wide as the local executor: heavy CPU steps run side by side.
        import torch

        from resources import CONCURRENT_STEPS
        expected = 1 if torch.cuda.is_available() else CONCURRENT_STEPS
        assert local.get_concurrency_config().pool_config.default_pool_limit == expected

    # `mmrec` under MMREC_ENV=deploy writes the PostgreSQL instance and creates its database.
    monkeypatch.setenv("MMREC_ENV", "deploy")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "deploy"))
    assert "postgres_url" in (cli.instance_home() / "dagster.yaml").read_text()
    # ... and refuses a DAGSTER_HOME that holds an SQLite instance, naming the file.
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with pytest.raises(InstanceError, match=f"{home}/dagster.yaml is an SQLite instance"):
        cli.instance_home()

    # An unreachable server is an error naming the URL, not a hang or a silent fallback.
    with pytest.raises(InstanceError, match="127.0.0.1:1/postgres is unreachable"):
        ensure_database("postgresql+psycopg2://postgres@127.0.0.1:1/mmrec_nowhere")

    # Runs written through the instance are rows in PostgreSQL.
    run = instance.create_run_for_job(dg.GraphDefinition("noop").to_job(), run_id=str(uuid.uuid4()))
    with psycopg2.connect(pg_url.replace("+psycopg2", "")) as conn, conn.cursor() as cur:
        cur.execute("select count(*) from runs where run_id = %s", (run.run_id,))
        assert cur.fetchone()[0] == 1


def test_dataset_steps_run_in_celery_workers(instance, workers, deploy_env, shared_data):
    """`mmrec run` of ml-100k ingest -> split (+ its blocking checks) under MMREC_ENV=deploy."""
    proc = subprocess.Popen([sys.executable, "-m", "resources.cli", "run", "--dataset", "ml-100k",
                             "--select", "group:ingest or group:splits"], cwd=REPO, env=deploy_env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert "run succeeded for dataset 'ml-100k'" in _finish(proc)
    run = _latest_run(instance, "__ASSET_JOB")
    steps = _steps(instance, run.run_id)
    assert {"ingest", "split"} <= set(steps), steps
    pids = {s["pid"] for s in steps.values()}
    assert pids <= workers, f"steps ran in {pids}, workers are {workers}"
    assert proc.pid not in pids and os.getpid() not in pids
    lake = Path(deploy_env["MMREC_HOME"]) / "ml-100k"
    assert (lake / "split.parquet").exists() and (lake / "interactions.parquet").exists()


def test_gpu_pool_limit_holds_across_workers(instance, workers, deploy_env):
    proc = _launch(["job", "execute", "-f", str(REPO / "tests" / "celery_probe.py"), "-j", "pool_probe"],
                   deploy_env)
    _finish(proc)
    steps = _steps(instance, _latest_run(instance, "pool_probe").run_id)
    assert set(steps) == {"gpu_a", "gpu_b", "gpu_c", "cpu_a", "cpu_b"}, steps
    assert {s["pid"] for s in steps.values()} == workers  # both workers took steps, the launcher none
    gpu = sorted((steps[k]["start"], steps[k]["end"]) for k in ("gpu_a", "gpu_b", "gpu_c"))
    for (_, end), (next_start, _) in itertools.pairwise(gpu):
        assert next_start >= end, f"two gpu-pool steps overlapped: {gpu}"
    # Outside the pool the two workers do run steps side by side: some CPU step overlaps another step.
    others = [(s["start"], s["end"]) for k, s in steps.items() if k.startswith("cpu")]
    assert any(a < d and c < b for i, (a, b) in enumerate(others) for c, d in others[i + 1:] + gpu), steps


# --- Kubernetes: configuration rendered and checked offline (no cluster here) ---

def _k8s_job(tags: dict):
    """The batch/v1 Job the k8s_job_executor would create for a step with these op tags: the executor config of
    deploy/k8s_executor.yaml merged with the step's `dagster-k8s/config` tag, as its step handler merges them."""
    from types import SimpleNamespace

    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import (
        UserDefinedDagsterK8sConfig,
        construct_dagster_k8s_job,
        get_user_defined_k8s_config,
    )

    from resources.executors import k8s_executor_config

    cfg = k8s_executor_config()
    context = K8sContainerContext(
        namespace=cfg["job_namespace"], env_vars=cfg["env_vars"], env_secrets=cfg["env_secrets"],
        volumes=cfg["volumes"], volume_mounts=cfg["volume_mounts"],
        run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(cfg["step_k8s_config"]),
    ).merge(K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(tags)))
    # What the Helm chart's K8sRunLauncher passes (instance ConfigMap, DAGSTER_HOME, PostgreSQL secret).
    launcher = SimpleNamespace(job_image=None, dagster_home="/opt/dagster/dagster_home",
                               instance_config_map="dagster-instance",
                               postgres_password_secret="dagster-postgresql-secret")
    job_config = context.get_k8s_job_config("registry.example.com/mmrec-pipeline:0.1.0", launcher)
    return construct_dagster_k8s_job(job_config=job_config, args=["dagster", "api", "execute_step"],
                                     job_name="dagster-step-x", pod_name="dagster-step-x",
                                     component="step_worker", user_defined_k8s_config=context.run_k8s_config,
                                     labels={}, env_vars=[])


def test_k8s_executor_config_gpu_steps_request_one_gpu(monkeypatch):
    import dagster as dg
    from dagster._config import process_config, resolve_to_config_type
    from dagster_k8s.executor import _K8S_EXECUTOR_CONFIG_SCHEMA
    from kubernetes.client import ApiClient
    from kubernetes.utils import parse_quantity

    from assets.definitions import defs
    from resources import executor
    from resources.executors import k8s_executor_config

    checked = process_config(resolve_to_config_type(dg.Shape(_K8S_EXECUTOR_CONFIG_SCHEMA)), k8s_executor_config())
    assert checked.success, checked.errors
    assert executor("k8s").name == "k8s"  # MMREC_ENV=k8s selects the k8s_job_executor
    assert executor("deploy").name == "celery" and executor("local").name == "multiprocess"

    gpu, cpu = [], []
    for node in defs.resolve_implicit_global_asset_job_def().graph.node_defs:
        (gpu if node.pool == "gpu" else cpu).append(node)
    assert {"image_embeddings", "captions", "review_summaries", "vq_tokenizer", "vq_codes",
            "mm_llmrec"} <= {n.name for n in gpu}
    for node in gpu + cpu:
        job = _k8s_job({k: json.dumps(v) if not isinstance(v, str) else v for k, v in node.tags.items()})
        manifest = ApiClient().sanitize_for_serialization(job)
        pod = manifest["spec"]["template"]["spec"]
        resources = pod["containers"][0]["resources"]
        assert manifest["apiVersion"] == "batch/v1" and manifest["kind"] == "Job"
        assert parse_quantity(resources["requests"]["cpu"]) >= 1
        assert {"name": "MMREC_ENV", "value": "k8s"} in pod["containers"][0]["env"]
        assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "mmrec-lake"
        if node in gpu:
            assert resources["limits"]["nvidia.com/gpu"] == "1", node.name
            assert resources["requests"]["nvidia.com/gpu"] == "1", node.name
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        else:
            assert "nvidia.com/gpu" not in json.dumps(manifest), node.name


def test_helm_values_and_dockerfile_agree_with_the_project():
    values = yaml.safe_load((REPO / "deploy" / "helm-values.yaml").read_text())
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    assert deployment["dagsterApiGrpcArgs"][:2] == ["--module-name", "assets.definitions"]
    env = {e["name"]: e["value"] for e in deployment["env"]}
    assert env["MMREC_ENV"] == "k8s"
    assert deployment["includeConfigInLaunchedRuns"]["enabled"] is True
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["concurrency"]["pools"]["defaultLimit"] == 1  # the `gpu` pool, as in every instance here
    assert values["postgresql"]["enabled"] is False and values["postgresql"]["postgresqlDatabase"]
    # The chart's ports and the image's gRPC server agree; every COPY source of the Dockerfile exists.
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    assert f'"{deployment["port"]}"' in dockerfile and "assets.definitions" in dockerfile
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (REPO / src).exists(), f"Dockerfile copies {src}, which is not in the project"
