"""Resources per environment (`MMREC_ENV` = local / gpu / test)."""

from __future__ import annotations

import os

from resources.compute import ComputeResource
from resources.models import ModelSourcesResource
from resources.storage import LakeIOManager

# Steps the multiprocess executor runs at once (the UI's runs); `mmrec run` runs steps one by one in process.
CONCURRENT_STEPS = 2
CORES = os.cpu_count() or 1

COMPUTE = {
    "local": ComputeResource(device="auto", batch_size=64, num_workers=1,
                             cpu_threads=max(1, CORES // CONCURRENT_STEPS)),
    "gpu": ComputeResource(device="cuda", dtype="bfloat16", batch_size=256, num_workers=4),
    "test": ComputeResource(device="cpu", dtype="float32", batch_size=16, num_workers=0),
}


def resources_for_env(env: str | None = None) -> dict:
    env = env or os.environ.get("MMREC_ENV", "local")
    if env not in ("local", "gpu", "test"):
        raise ValueError(f"MMREC_ENV must be local, gpu or test, got '{env}'")
    # Model sources are the same everywhere: env vars (MMREC_MODEL_<NAME>) or packaged/offline defaults.
    return {"lake": LakeIOManager(), "compute": COMPUTE[env], "model_sources": ModelSourcesResource()}
