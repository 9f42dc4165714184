"""Thin Dagster wrappers around `mmrec_pipeline`, one module per stage."""

import dagster as dg

from mmrec_pipeline.registry import load_registry
from resources.executors import GPU_OP_TAGS

DATASETS = dg.StaticPartitionsDefinition(list(load_registry()))

# GPU-heavy steps: pool `gpu` (one at a time per instance) and, on Kubernetes, one GPU per step pod.
GPU = {"pool": "gpu", "op_tags": GPU_OP_TAGS}


def op_tags(pool: str | None, long_running: bool = False) -> dict | None:
    """A step's tags: one GPU per pod for the `gpu` pool (Kubernetes), and priority for the long steps (heads of
    the longest chains), which start first when steps run side by side, as the local executor's two do."""
    tags = {**(GPU_OP_TAGS if pool == GPU["pool"] else {}), **({"dagster/priority": "1"} if long_running else {})}
    return tags or None
