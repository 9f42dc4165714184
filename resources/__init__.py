"""Resources per environment (`MMREC_ENV` = local / gpu / test)."""

from __future__ import annotations

import os

from resources.storage import LakeIOManager


def resources_for_env(env: str | None = None) -> dict:
    env = env or os.environ.get("MMREC_ENV", "local")
    if env not in ("local", "gpu", "test"):
        raise ValueError(f"MMREC_ENV must be local, gpu or test, got '{env}'")
    return {"lake": LakeIOManager()}
