"""Train every variant of one model on one dataset: tune it on validation, save the chosen checkpoint, score
test once with the chosen point (over several seeds when asked). The chosen point's valid rows are the ones
the serving champion is chosen from.

Tuning: each model declares a small search space next to its config (`Recommender.search_space_for`). For each
point of the grid the variant is fitted on train and ranked on the valid stage by the shared evaluator
(`evaluate_model(stage="valid")`, full catalog, NDCG@10); the best point (the first one on ties) is kept. Test
rows never enter the choice: only the chosen model is evaluated on test, after the grid is done. The grid with
each point's validation NDCG@10 goes into the checkpoint's config.json (`tuning`) and the asset's metadata, and
the chosen point's validation rows into the metrics table as protocol `<protocol>@valid`.

Runner keys of a dataset's model overrides (datasets.yaml `models: {<model>: {...}}`), beside config fields:
- `search_space: {field: [values, ...]}` replaces the declared grid (a larger one for a real dataset; `{}` = none);
- `seeds: N` refits the chosen point with seeds seed, seed+1, … seed+N-1 and reports the mean of every test
  metric, with `<metric>_std` rows (sample std over seeds) and a `seeds` row (1 for single-seed rows). Models
  without a `seed` field are deterministic and always run once. The per-user table holds every seed's test
  values (column `seed`); the row's mean over seeds is the mean over users of each user's mean over seeds;
- `variants: [name, ...]` trains only those of the model's variants (the others are reported as skipped);
- `refit: true` also retrains the chosen point on train + valid for its validation-chosen epochs and scores test
  again, as protocol `<protocol>+refit` (`refit_test`): a protocol of its own (what serving does), not the one of
  a published leave-one-out figure trained on train only. The checkpoint and the `<protocol>` rows stay the
  train-only model's.
A config field the dataset sets explicitly is never tuned.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import time
from pathlib import Path

import numpy as np
import polars as pl

from mmrec_pipeline.compute import Compute
from mmrec_pipeline.data.dataset import RecDataset
from mmrec_pipeline.evaluation.facts import report_facts
from mmrec_pipeline.evaluation.protocols import evaluate_model, is_sampled, per_user_table
from mmrec_pipeline.models.base import ItemFeatures, MissingFeature, Recommender
from mmrec_pipeline.storage import FeatureCacheFolder, ModelFolder, write_json
from mmrec_pipeline.weights import ModelSources

RUNNER_KEYS = ("search_space", "seeds", "variants", "refit")
SELECTION_METRIC = ("ndcg", 10)  # chosen on the valid stage, full-catalog ranking


@dataclasses.dataclass
class VariantRun:
    variant: str
    model: Recommender
    report: dict
    metrics: pl.DataFrame  # test rows (mean over seeds) + the chosen point's `@valid` rows
    eval_seconds: float
    grid: list[dict] = dataclasses.field(default_factory=list)  # {**point, "valid_ndcg@10", "fit_seconds"}
    chosen: dict = dataclasses.field(default_factory=dict)
    seeds: int = 1
    tune_seconds: float = 0.0  # fitting + validating the points that were not chosen
    # metric@10 per evaluated user (CIs and paired tests): test rows for every seed (column `seed`), and the chosen
    # point's validation rows (protocol `<protocol>@valid`)
    per_user: pl.DataFrame | None = None


def build(cls: type[Recommender], variant_overrides: dict, dataset_overrides: dict | None,
          sources: ModelSources | None = None, feature_cache: FeatureCacheFolder | None = None) -> Recommender:
    """Config = class defaults, then the registry variant, then the dataset's overrides from datasets.yaml;
    pretrained weights from `sources` (default: the environment's); `feature_cache`: the lake's, for the models
    that read it (`Recommender.feature_cache`)."""
    merged = {**variant_overrides, **{k: v for k, v in (dataset_overrides or {}).items() if k not in RUNNER_KEYS}}
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    unknown = set(merged) - fields
    if unknown:
        raise ValueError(f"{cls.name}: unknown config field(s) {sorted(unknown)}; allowed: {sorted(fields)} "
                         f"(and the runner keys {list(RUNNER_KEYS)})")
    model = cls(cls.Config(**merged))
    model.sources, model.feature_cache = sources or model.sources, feature_cache
    return model


def grid_points(space: dict[str, tuple | list], pinned=()) -> list[dict]:
    """Every combination of the search space's values, in declaration order; keys in `pinned` are left out.
    Always at least one point (the empty one: the config as it is)."""
    keys = [k for k in space if k not in set(pinned)]
    for k in keys:
        if not isinstance(space[k], (list, tuple)) or not len(space[k]):
            raise ValueError(f"search space '{k}' must be a non-empty list of values, got {space[k]!r}")
    return [dict(zip(keys, values)) for values in itertools.product(*(space[k] for k in keys))]


def selection_value(valid_table: pl.DataFrame) -> float:
    metric, k = SELECTION_METRIC
    t = valid_table.filter((pl.col("metric") == metric) & (pl.col("k") == k)
                           & ~is_sampled())
    return float(t["value"][0]) if t.height else float("nan")


def choose(grid: list[dict]) -> int:
    """Index of the best validation value (the first on ties; NaN never wins unless every value is NaN)."""
    values = np.array([g["valid_ndcg@10"] for g in grid], dtype=np.float64)
    return 0 if np.isnan(values).all() else int(np.nanargmax(values))


def seed_summary(tables: list[pl.DataFrame], protocol: str) -> pl.DataFrame:
    """Mean of every row over the seeds' test tables, `<metric>_std` rows for the ranking metrics, `seeds` row."""
    keys = ["model", "variant", "protocol", "metric", "k"]
    stacked = pl.concat(tables)
    mean = stacked.group_by(keys, maintain_order=True).agg(pl.col("value").mean())
    rows = [mean]
    if len(tables) > 1:
        std = (stacked.filter(pl.col("k").is_not_null()).group_by(keys, maintain_order=True)
               .agg(pl.col("value").std()).with_columns(pl.col("metric") + "_std"))
        rows.append(std)
    first = tables[0]
    rows.append(pl.DataFrame({"model": first["model"][0], "variant": first["variant"][0], "protocol": protocol,
                              "metric": "seeds", "k": None, "value": float(len(tables))}, schema=first.schema))
    return pl.concat(rows).select(first.columns)


def tune_variant(name: str, cls: type[Recommender], variant: str, overrides: dict, data: RecDataset,
                 features: ItemFeatures, compute: Compute, dataset_overrides: dict | None, item_vectors=None,
                 log: logging.Logger | None = None, sources: ModelSources | None = None,
                 feature_cache: FeatureCacheFolder | None = None):
    """(model, fit report, valid table, grid, chosen point, seconds spent on the other points, the chosen point's
    full-ranking validation result) for one variant. Only train rows (fit) and valid rows (choice) are read.
    Raises `MissingFeature` when the variant cannot fit."""
    dataset_overrides = dataset_overrides or {}
    base = build(cls, overrides, dataset_overrides, sources, feature_cache)
    space = dataset_overrides.get("search_space")
    space = cls.search_space_for(base.config) if space is None else space
    points = grid_points(space, pinned=[k for k in dataset_overrides if k not in RUNNER_KEYS]) or [{}]
    grid, best, spent = [], None, []
    for point in points:
        model = build(cls, {**overrides, **point}, dataset_overrides, sources, feature_cache)
        start = time.perf_counter()
        report = model.fit(data, features, compute, log)
        valid, valid_full = evaluate_model(model, data, name, variant, item_vectors=item_vectors, sampled=None,
                                           stage="valid")
        seconds = time.perf_counter() - start
        grid.append({**point, "valid_ndcg@10": selection_value(valid), "fit_seconds": round(seconds, 2)})
        spent.append(seconds)
        if log and len(points) > 1:
            log.info(f"{name}/{variant} grid point {len(grid)}/{len(points)} {point}: "
                     f"valid NDCG@10 {grid[-1]['valid_ndcg@10']:.4f} ({seconds:.1f}s)")
        if choose(grid) == len(grid) - 1:
            best = (model, report, valid, valid_full)
    chosen = choose(grid)
    model, report, valid, valid_full = best
    if log and len(points) > 1:
        log.info(f"{name}/{variant}: chose {points[chosen]} on validation")
    return model, report, valid, grid, points[chosen], sum(spent) - spent[chosen], valid_full


def train_variants(name: str, cls: type[Recommender], variants: dict[str, dict], data: RecDataset,
                   features: ItemFeatures, compute: Compute, out_dir: Path, dataset_overrides: dict | None = None,
                   item_vectors=None, log: logging.Logger | None = None, sources: ModelSources | None = None,
                   feature_cache: FeatureCacheFolder | None = None) -> tuple[list[VariantRun], dict[str, str]]:
    """Runs of the variants that could train, and {variant: reason} for those skipped for lack of a feature
    (e.g. image strategies on a dataset without images)."""
    runs, skipped = [], {}
    n_seeds = int((dataset_overrides or {}).get("seeds", 1))
    chosen_variants = (dataset_overrides or {}).get("variants")
    for variant, overrides in variants.items():
        if chosen_variants is not None and variant not in chosen_variants:
            skipped[variant] = f"not in this dataset's `variants` for {name} ({', '.join(chosen_variants)})"
            continue
        if log:
            log.info(f"{name}/{variant}: training on {data.train.height} interactions "
                     f"({data.n_users} users, {data.n_items} items)")
        try:
            model, report, valid, grid, chosen, tune_seconds, valid_full = tune_variant(
                name, cls, variant, overrides, data, features, compute, dataset_overrides, item_vectors, log, sources,
                feature_cache)
        except MissingFeature as e:
            skipped[variant] = str(e)
            if log:
                log.warning(f"{name}/{variant} skipped: {e}")
            continue
        seeded = n_seeds > 1 and hasattr(model.config, "seed")
        if n_seeds > 1 and not seeded and log:
            log.info(f"{name}: no `seed` field (deterministic), trained once instead of {n_seeds} times")
        start = time.perf_counter()
        seed0 = int(getattr(model.config, "seed", 0))
        first, full = evaluate_model(model, data, name, variant, item_vectors=item_vectors)
        tables = [first]
        test_by_seed = [selection_value(tables[0])]
        per_user = [with_seed(per_user_table(full, data, name, variant, data.protocol), seed0),
                    with_seed(per_user_table(valid_full, data, name, variant, f"{data.protocol}@valid"), seed0)]
        for s in range(1, n_seeds if seeded else 1):
            other = build(cls, {**overrides, **chosen, "seed": seed0 + s},
                          {k: v for k, v in (dataset_overrides or {}).items() if k != "seed"}, sources, feature_cache)
            other.fit(data, features, compute, log)
            table, other_full = evaluate_model(other, data, name, variant, item_vectors=item_vectors)
            tables.append(table)
            test_by_seed.append(selection_value(tables[-1]))
            per_user.append(with_seed(per_user_table(other_full, data, name, variant, data.protocol), seed0 + s))
        eval_seconds = time.perf_counter() - start
        tuning = {"selected_on": f"{data.protocol}@valid ndcg@10 (full catalog)", "grid": grid, "chosen": chosen,
                  "seeds": len(tables), "test_ndcg@10_by_seed": test_by_seed}
        checkpoint = ModelFolder(out_dir).checkpoint(variant)
        model.save(checkpoint.path, tuning=tuning)
        # Beside the checkpoint: what retraining on all interactions needs (best_epoch chosen on valid).
        write_json(fit_summary(report), checkpoint.fit_report)
        write_json(report_facts(model, data), checkpoint.report_facts)
        metrics = pl.concat([seed_summary(tables, data.protocol), valid])
        extra = model.extra_metrics(data, name, variant)  # protocols beside ranking, e.g. mmrec_dlrm's pointwise one
        if extra is not None:
            metrics = pl.concat([metrics, extra])
        if (dataset_overrides or {}).get("refit"):
            refit, _ = refit_test(cls, model.config, report, data, features, compute, name, variant, item_vectors,
                                  log, model.sources, model.feature_cache)
            metrics = pl.concat([metrics, refit])
        runs.append(VariantRun(variant, model, report, metrics, eval_seconds, grid, chosen, len(tables), tune_seconds,
                               per_user=pl.concat(per_user)))
    return runs, skipped


def with_seed(per_user: pl.DataFrame, seed: int) -> pl.DataFrame:
    """The per-user table with the training seed that produced it (column `seed`, after `protocol`)."""
    return per_user.with_columns(pl.lit(seed, dtype=pl.Int64).alias("seed")).select(
        "model", "variant", "protocol", "seed", pl.exclude("model", "variant", "protocol", "seed"))


def refit_config(cls: type[Recommender], config: dict, report: dict) -> tuple[object, dict]:
    """`config` with the settings chosen on validation fixed for a retrain without validation data; returns
    (config, fixed). A model that trained without epochs (EASE, a non-learned strategy) reports no best_epoch."""
    fixed = {}
    if "epochs" in config and report.get("best_epoch", 0) > 0:
        fixed["epochs"] = report["best_epoch"]
    if "mf_epochs" in config and report.get("mf", {}).get("best_epoch", 0) > 0:  # hybrid's BPR-MF part
        fixed["mf_epochs"] = report["mf"]["best_epoch"]
    if "alphas" in config and "alpha" in config:  # hybrid chose alpha on validation: keep it
        fixed["alphas"] = [config["alpha"]]
    return cls.Config(**{**config, **fixed}), fixed


def refit_test(cls: type[Recommender], config, report: dict, data: RecDataset, features: ItemFeatures,
               compute: Compute, name: str, variant: str, item_vectors=None, log: logging.Logger | None = None,
               sources: ModelSources | None = None, feature_cache: FeatureCacheFolder | None = None):
    """(test rows, protocol `<protocol>+refit`, and the full-ranking result) of `config` retrained on train + valid
    with the settings its validation run chose (`report`: best_epoch). Nothing is chosen here; test is scored once.
    `config`: the chosen point's `cls.Config`."""
    refit_data = data.valid_as_train()
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}  # shallow: nested configs stay
    model_config, fixed = refit_config(cls, fields, report)
    model = cls(model_config)
    model.sources, model.feature_cache = sources or model.sources, feature_cache
    if log:
        log.info(f"{name}/{variant}: refit on train + valid ({refit_data.train.height} interactions) with {fixed}")
    model.fit(refit_data, features, compute, log)
    table, full = evaluate_model(model, refit_data, name, variant, item_vectors=item_vectors, sampled=None, cold=False)
    return table.with_columns(pl.col("protocol") + "+refit"), full


def fit_summary(report: dict) -> dict:
    """The fit report without learning curves: plain numbers and strings, one level of nesting (hybrid's mf)."""
    def plain(d: dict) -> dict:
        return {k: v for k, v in d.items() if isinstance(v, (int, float, str, bool)) or v is None}
    return {**plain(report), **{k: plain(v) for k, v in report.items() if isinstance(v, dict)}}


def check_tuning_records(models_dir: Path) -> tuple[bool, dict]:
    """Every variant checkpoint under `models_dir` holds its grid's validation argmax (asset check)."""
    failures, variants = [], 0
    for path in ModelFolder(models_dir).configs().values():
        meta, variants = json.loads(path.read_text()), variants + 1
        tuning = meta.get("tuning")
        if not tuning or not tuning.get("grid"):
            failures.append(f"{path.parent.name}: no tuning record (trained before validation tuning?)")
            continue
        best = tuning["grid"][choose(tuning["grid"])]
        chosen = tuning["chosen"]
        if any(best[k] != v or meta["config"].get(k) != v for k, v in chosen.items()):
            failures.append(f"{path.parent.name}: config {chosen}, validation argmax {best}")
    return variants > 0 and not failures, {"variants": variants, "failures": failures}
