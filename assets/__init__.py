"""Thin Dagster wrappers around `mmrec_pipeline`, one module per stage."""

import dagster as dg

from mmrec_pipeline.registry import load_registry
from resources.executors import GPU_OP_TAGS

DATASETS = dg.StaticPartitionsDefinition(list(load_registry()))

# GPU-heavy steps: pool `gpu` (one at a time per instance) and, on Kubernetes, one GPU per step pod.
GPU = {"pool": "gpu", "op_tags": GPU_OP_TAGS}
