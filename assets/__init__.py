"""Thin Dagster wrappers around `mmrec_pipeline`, one module per stage."""

import dagster as dg

from mmrec_pipeline.registry import load_registry

DATASETS = dg.StaticPartitionsDefinition(list(load_registry()))
