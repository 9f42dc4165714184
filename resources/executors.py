"""Executors per environment: steps in local processes, in Celery workers (`deploy`) or in Kubernetes jobs (`k8s`).

`deploy` runs each step as a Celery task in workers on any machine that shares the PostgreSQL instance, the broker
and the lake. Celery rather than Dask: dagster-celery's orchestrator claims the instance's pool slots before it
submits a step (`InstanceConcurrencyContext`), so the `gpu` pool limit holds across workers; dagster-dask submits
every ready step to the cluster and ignores pools.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import yaml

from mmrec_pipeline.backbones import bitsandbytes_installed
from resources.runs import PoolWaitingConcurrencyContext, use_pool_waiting_context, watch_run_process

K8S_EXECUTOR_YAML = Path(__file__).resolve().parents[1] / "deploy" / "k8s_executor.yaml"

# Op tags of the `gpu`-pool assets. Kubernetes reads them (k8s_job_executor): one GPU per step pod, merged over the
# CPU-only `step_k8s_config` of deploy/k8s_executor.yaml; every other executor ignores them. CPU and memory are
# sized for the LVLM captioners (7B in 4 bits, image batches); they are requests to adjust per cluster, not measured.
GPU_OP_TAGS = {"dagster-k8s/config": {
    "container_config": {"resources": {"requests": {"cpu": "4", "memory": "24Gi", "nvidia.com/gpu": "1"},
                                       "limits": {"memory": "48Gi", "nvidia.com/gpu": "1"}}},
    "pod_spec_config": {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
}}

# Broker and result backend of the Celery workers: the machine's Redis by default (RabbitMQ, dagster-celery's own
# default, is MMREC_CELERY_BROKER=pyamqp://guest@127.0.0.1:5672// with the rpc:// backend; not run here). The key
# prefix keeps deployments that share one Redis apart (each test session uses its own).
DEFAULT_BROKER = "redis://127.0.0.1:6379/0"


def celery_app_args() -> dict:
    """What both the executor and the workers build their Celery app from (they must agree)."""
    broker = os.environ.get("MMREC_CELERY_BROKER", DEFAULT_BROKER)
    backend = os.environ.get("MMREC_CELERY_BACKEND", broker if broker.startswith("redis") else "rpc://")
    prefix = os.environ.get("MMREC_CELERY_PREFIX", "mmrec:")
    transport = {"global_keyprefix": prefix, "max_retries": 3, "interval_start": 0, "interval_step": 0.2,
                 "interval_max": 0.5}
    return {"broker": broker, "backend": backend, "include": [], "config_source": {
        "broker_transport_options": transport, "result_backend_transport_options": {"global_keyprefix": prefix},
        # One step at a time per worker process: a step takes seconds to hours, prefetching would only queue
        # steps behind a busy worker while another is idle.
        "worker_prefetch_multiplier": 1, "task_acks_late": True}}


def k8s_executor_config() -> dict:
    """deploy/k8s_executor.yaml: the `k8s_job_executor`'s config (namespace, env, CPU-only step resources)."""
    return yaml.safe_load(K8S_EXECUTOR_YAML.read_text())


STEP_PRELOAD = ["assets.definitions", "transformers.modeling_utils", "dagster._core.storage.sqlite_storage",
                "alembic.command", "alembic.runtime.migration"]
# What the training steps (the Trainer's schedules import peft) and the steps that embed text import, preloaded only
# where bitsandbytes is absent (the `gpu` extra is not installed): its import initialises CUDA, after which a
# forked step could not use the GPU.
CPU_STEP_PRELOAD = ["transformers.optimization", "sentence_transformers"]


def step_preload() -> list[str]:
    return STEP_PRELOAD + ([] if bitsandbytes_installed() else CPU_STEP_PRELOAD)


# Wherever the code location is loaded (the run process, the forkserver the step processes fork from): steps
# blocked on a pool wait without spinning and give up in time, and a step process stops when its run process dies.
use_pool_waiting_context()
watch_run_process()


def executor_for_env(env: str, concurrent_steps: int) -> dg.ExecutorDefinition:
    if env == "deploy":
        from dagster_celery import celery_executor, core_execution_loop

        # Its orchestration loop claims pool slots as the local executors do: wait there the same way.
        core_execution_loop.InstanceConcurrencyContext = PoolWaitingConcurrencyContext

        args = celery_app_args()
        return celery_executor.configured({k: args[k] for k in ("broker", "backend", "config_source")})
    if env == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor.configured(k8s_executor_config())
    # forkserver: each step process forks from one that imported, once, what every step would otherwise import
    # again, often most of a short step's time (docs/BENCHMARKS.md, Speed): the code location (torch,
    # Dagster), transformers' model code, the SQLite instance storage each step opens (SQLAlchemy, alembic),
    # and on a machine without bitsandbytes the Trainer's schedules and sentence-transformers
    # (CPU_STEP_PRELOAD). A module that fails to import is skipped.
    return dg.multiprocess_executor.configured({"max_concurrent": concurrent_steps, "start_method": {
        "forkserver": {"preload_modules": step_preload()}}})
