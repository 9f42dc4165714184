"""Train every variant of one model on one dataset, save its checkpoints, evaluate it on test (and on valid,
the rows the serving champion is chosen from)."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import polars as pl

from mmrec_pipeline.compute import Compute
from mmrec_pipeline.data.dataset import RecDataset
from mmrec_pipeline.evaluation.protocols import evaluate_model, per_user_table
from mmrec_pipeline.models.base import ItemFeatures, MissingFeature, Recommender
from mmrec_pipeline.storage import write_json

FIT_REPORT = "fit_report.json"


@dataclasses.dataclass
class VariantRun:
    variant: str
    model: Recommender
    report: dict
    metrics: pl.DataFrame
    eval_seconds: float
    per_user: pl.DataFrame | None = None  # test metric@10 per evaluated user (for CIs and paired tests)


def build(cls: type[Recommender], variant_overrides: dict, dataset_overrides: dict | None) -> Recommender:
    """Config = class defaults, then the registry variant, then the dataset's overrides from datasets.yaml."""
    merged = {**variant_overrides, **(dataset_overrides or {})}
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    unknown = set(merged) - fields
    if unknown:
        raise ValueError(f"{cls.name}: unknown config field(s) {sorted(unknown)}; allowed: {sorted(fields)}")
    return cls(cls.Config(**merged))


def train_variants(name: str, cls: type[Recommender], variants: dict[str, dict], data: RecDataset,
                   features: ItemFeatures, compute: Compute, out_dir: Path, dataset_overrides: dict | None = None,
                   item_vectors=None, log: logging.Logger | None = None) -> tuple[list[VariantRun], dict[str, str]]:
    """Runs of the variants that could train, and {variant: reason} for those skipped for lack of a feature
    (e.g. image strategies on a dataset without images)."""
    runs, skipped = [], {}
    for variant, overrides in variants.items():
        model = build(cls, overrides, dataset_overrides)
        if log:
            log.info(f"{name}/{variant}: training on {data.train.height} interactions "
                     f"({data.n_users} users, {data.n_items} items)")
        try:
            report = model.fit(data, features, compute, log)
        except MissingFeature as e:
            skipped[variant] = str(e)
            if log:
                log.warning(f"{name}/{variant} skipped: {e}")
            continue
        model.save(Path(out_dir) / variant)
        # Beside the checkpoint: what retraining on all interactions needs (best_epoch chosen on valid).
        write_json(fit_summary(report), Path(out_dir) / variant / FIT_REPORT)
        start = time.perf_counter()
        metrics, full = evaluate_model(model, data, name, variant, item_vectors=item_vectors)
        valid, _ = evaluate_model(model, data, name, variant, item_vectors=item_vectors, sampled=None, stage="valid")
        metrics = pl.concat([metrics, valid])
        if hasattr(model, "extra_metrics"):  # protocols beside ranking, e.g. mmrec_dlrm's pointwise one
            metrics = pl.concat([metrics, model.extra_metrics(data, name, variant)])
        runs.append(VariantRun(variant, model, report, metrics, time.perf_counter() - start,
                               per_user_table(full, data, name, variant, data.protocol)))
    return runs, skipped


def fit_summary(report: dict) -> dict:
    """The fit report without learning curves: plain numbers and strings, one level of nesting (hybrid's mf)."""
    def plain(d: dict) -> dict:
        return {k: v for k, v in d.items() if isinstance(v, (int, float, str, bool)) or v is None}
    return {**plain(report), **{k: plain(v) for k, v in report.items() if isinstance(v, dict)}}
