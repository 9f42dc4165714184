"""Resources and executor per environment (`MMREC_ENV` = local / gpu / test / deploy / k8s).

`deploy`: PostgreSQL instance, steps in Celery workers; `k8s`: PostgreSQL instance, one Kubernetes job per step
(the instance itself is `dagster.yaml`, see mmrec_pipeline/instance.py and deploy/).
"""

from __future__ import annotations

import os

import dagster as dg

from resources.compute import ComputeResource
from resources.executors import executor_for_env
from resources.models import ModelSourcesResource
from resources.storage import LakeIOManager, LakeResource


def concurrent_steps() -> int:
    """Steps the local multiprocess executor runs at once (the UI's runs and `mmrec run` alike): 2, or
    `MMREC_CONCURRENT_STEPS` (1 where two steps of a large dataset would not fit the memory side by side; each
    step then gets every core's torch thread)."""
    raw = os.environ.get("MMREC_CONCURRENT_STEPS", "2")
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"MMREC_CONCURRENT_STEPS must be a whole number >= 1, got '{raw}'")
    return int(raw)


CONCURRENT_STEPS = concurrent_steps()
# Step processes (the local executor's forkserver and the steps it forks) start with this environment. glibc's
# default of up to 8 malloc arenas per core lets each thread (torch's, polars') keep its freed memory apart from the
# others', so a model step at H&M's full size held far more than it used (docs/BENCHMARKS.md, "The asset path's
# memory at full size"). A value the user set is kept.
os.environ.setdefault("MALLOC_ARENA_MAX", "2")
CORES = os.cpu_count() or 1

COMPUTE = {
    # No image-decoding worker: each step has its share of the cores already, and decoding an image costs a
    # tenth of the CNN's forward (docs/BENCHMARKS.md, "Figures behind settings in the code").
    "local": ComputeResource(device="auto", batch_size=64, num_workers=0,
                             cpu_threads=max(1, CORES // CONCURRENT_STEPS)),
    "gpu": ComputeResource(device="cuda", dtype="bfloat16", batch_size=256, num_workers=4),
    "test": ComputeResource(device="cpu", dtype="float32", batch_size=16, num_workers=0),
    # A Celery worker runs one step at a time; workers on one machine share its cores like the local executor's.
    "deploy": ComputeResource(device="auto", batch_size=64, num_workers=1,
                              cpu_threads=max(1, CORES // CONCURRENT_STEPS)),
    # Each step has its own pod: GPU steps get a GPU (bf16 where supported), the others the pod's CPUs.
    "k8s": ComputeResource(device="auto", dtype="auto", batch_size=256, num_workers=4),
}
ENVS = tuple(COMPUTE)


def env_name(env: str | None = None) -> str:
    env = env or os.environ.get("MMREC_ENV", "local")
    if env not in ENVS:
        raise ValueError(f"MMREC_ENV must be one of {', '.join(ENVS)}, got '{env}'")
    return env


def resources_for_env(env: str | None = None) -> dict:
    env = env_name(env)
    # Model sources are the same everywhere: env vars (MMREC_MODEL_<NAME>) or packaged/offline defaults.
    # One lake (MMREC_HOME) for the tables (IO manager `lake`) and every other file (`lake_store`).
    lake = LakeResource()
    return {"lake": LakeIOManager(lake=lake), "lake_store": lake, "compute": COMPUTE[env],
            "model_sources": ModelSourcesResource()}


def executor(env: str | None = None) -> dg.ExecutorDefinition:
    """Multiprocess (`CONCURRENT_STEPS` at a time) locally, Celery for `deploy`, Kubernetes jobs for `k8s`."""
    return executor_for_env(env_name(env), CONCURRENT_STEPS)
