"""Serving: pick the champion on validation, retrain it on every interaction, write each active user's top-K,
and compare with the previous run.

- The champion is the model/variant with the best NDCG@10 on the `<protocol>@valid` rows of `metrics` (full
  ranking on the valid stage); test rows are shown next to it, never used to choose.
- Retraining uses the champion's checkpointed config on the whole split relabelled `train`, with the epoch
  count early stopping chose on validation (`fit_report.json` beside the checkpoint) and nothing left to
  validate on, so no early stopping and no peek at test.
- Users are scored in batches and written as Parquet row groups: memory is bounded by one batch of scores.
- Each run keeps the previous table as `serving/recommendations.previous.parquet` and appends its drift
  (Jaccard@K, share of changed top-10, coverage, champion's validation NDCG@10) to `serving/drift.json`.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import torch

from mmrec_pipeline.compute import Compute, Progress
from mmrec_pipeline.data.dataset import RecDataset, index_of
from mmrec_pipeline.evaluation.protocols import valid_on_shared_users
from mmrec_pipeline.models import ranker
from mmrec_pipeline.models.base import Recommender, item_features
from mmrec_pipeline.models.runner import refit_config
from mmrec_pipeline.registry import registry_name
from mmrec_pipeline.storage import (
    Checkpoint,
    CorruptFileError,
    DatasetView,
    FeatureCacheFolder,
    atomic_write,
    is_local,
    read_json_file,
    read_parquet,
    to_path,
    write_json,
)
from mmrec_pipeline.weights import ModelSources

RECOMMENDATIONS_SCHEMA = {"user_id": pl.Utf8, "rank": pl.Int32, "item_id": pl.Utf8, "score": pl.Float32}


@dataclasses.dataclass(frozen=True)
class ServingConfig:
    """datasets.yaml: `serving: {k: 50, active_days: 28, champion: ease/default}` in a dataset's entry."""

    k: int = 50
    active_days: int = 28  # users with an interaction this many days before the dataset's latest one; 0 = all
    batch_users: int = 1024  # users scored at once (one Parquet row group each)
    champion: str | None = None  # pin "model" or "model/variant" instead of the best on validation
    max_top10_changed: float = 0.5  # drift check warns when more users than this share see a new top-10

    @classmethod
    def from_overrides(cls, overrides: dict | None) -> ServingConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(overrides or {}) - fields
        if unknown:
            raise ValueError(f"{registry_name()} serving: unknown field(s) {sorted(unknown)}; "
                             f"allowed: {sorted(fields)}")
        return cls(**(overrides or {}))


def validation_ranking(metrics: pl.DataFrame, protocol: str, per_user: pl.DataFrame | None = None,
                       k: int = 10) -> pl.DataFrame:
    """model, variant, valid and test NDCG@k (full ranking), best on validation first (ties: by name). The valid
    values are compared on the same users (`valid_on_shared_users`: with the two-stage ranker, its holdout users;
    `per_user`: the models' per-user tables)."""
    values, _ = valid_on_shared_users(metrics.filter(pl.col("protocol") == f"{protocol}@valid"), per_user, k)
    if not values:
        raise ValueError(f"metrics has no '{protocol}@valid' ndcg@{k} rows: the champion is chosen on validation "
                         "only; re-materialize the model assets (they write the @valid rows)")
    valid = pl.DataFrame([{"model": n.split("/", 1)[0], "variant": n.split("/", 1)[1], "valid": x}
                          for n, x in values.items()], schema={"model": pl.Utf8, "variant": pl.Utf8, "valid": pl.Float64})
    test = (metrics.filter((pl.col("protocol") == protocol) & (pl.col("metric") == "ndcg") & (pl.col("k") == k))
            .select("model", "variant", pl.col("value").alias("test")))
    ranking = valid.join(test, on=["model", "variant"], how="left")
    return (ranking.sort(["valid", "model", "variant"], descending=[True, False, False])
            .with_row_index("rank", offset=1).with_columns(pl.col("rank").cast(pl.Int32)))


def choose_champion(ranking: pl.DataFrame, pin: str | None = None) -> dict:
    """The first row of `ranking` (or the pinned model's best variant) and its margin to the runner-up."""
    chosen = ranking
    if pin:
        model, _, variant = pin.partition("/")
        chosen = ranking.filter((pl.col("model") == model) & ((pl.col("variant") == variant) if variant else True))
        if chosen.height == 0:
            names = (ranking["model"] + "/" + ranking["variant"]).to_list()
            raise ValueError(f"pinned champion '{pin}' has no validation rows; known: {', '.join(names)}")
    best = chosen.row(0, named=True)
    others = ranking.filter((pl.col("model") != best["model"]) | (pl.col("variant") != best["variant"]))
    runner_up = others.row(0, named=True) if others.height else None
    return {"model": best["model"], "variant": best["variant"], "valid_ndcg@10": best["valid"],
            "test_ndcg@10": best["test"], "pinned": bool(pin),
            "runner_up": f"{runner_up['model']}/{runner_up['variant']}" if runner_up else None,
            "margin": best["valid"] - runner_up["valid"] if runner_up else None}


def all_interactions(split: pl.DataFrame, name: str, items: pl.DataFrame, protocol: str,
                     repeats_relevant: bool) -> RecDataset:
    """Every row of the split as training data (nothing held out: the epoch count was chosen before)."""
    return RecDataset.from_tables(name, split.with_columns(pl.lit("train").alias("split")), items, protocol,
                                  repeats_relevant)


def retrain_config(cls: type[Recommender], checkpoint: Path) -> tuple[object, dict]:
    """The champion's checkpointed config with its validation-chosen settings fixed; returns (config, fixed).
    A model that trained without epochs (EASE, a non-learned retrieval strategy) reports no best_epoch."""
    checkpoint = Checkpoint(checkpoint)
    report_path = checkpoint.fit_report
    try:
        meta = checkpoint.read_config()
        if not report_path.exists():
            raise ValueError(f"{report_path} not found: re-materialize the '{cls.name}' asset so the settings chosen "
                             "on validation (best_epoch) are known")
        report = read_json_file(report_path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{checkpoint.config} not found: materialize the '{cls.name}' asset first") from None
    except CorruptFileError as e:
        raise e.moved_aside(f"re-materialize the '{cls.name}' asset to train it again") from e
    return refit_config(cls, dict(meta["config"]), report)


def active_users(data: RecDataset, days: int) -> np.ndarray:
    """User indices with an interaction within `days` before the latest interaction of the dataset (0 = all)."""
    last = data.split.group_by("user_idx").agg(pl.col("t").max()).sort("user_idx")
    if days > 0:
        last = last.filter(pl.col("t") >= data.split["t"].max() - days * 86400)
    return last["user_idx"].to_numpy().astype(np.int64)


def write_top_k(model: Recommender, data: RecDataset, users: np.ndarray, path: Path, k: int = 50,
                batch_users: int = 1024, log: logging.Logger | None = None) -> dict:
    """Score `users` against the whole catalog in batches; write user_id, rank, item_id, score (one row group per
    batch) atomically to `path`. History items are excluded unless the dataset counts repeats."""
    history = data.sequences("train")
    item_ids = data.items["item_id"].to_numpy()
    exclude = not data.repeats_relevant
    progress = Progress("recommendations users", len(users), log)
    rows = 0

    def write(tmp: Path) -> None:
        nonlocal rows
        writer = pq.ParquetWriter(tmp, pl.DataFrame(schema=RECOMMENDATIONS_SCHEMA).to_arrow().schema,
                                  compression="zstd")
        try:
            for lo in range(0, len(users), batch_users):
                batch = users[lo:lo + batch_users]
                hist = [history[u] for u in batch]
                with torch.no_grad():
                    scores = model.score(batch, hist).float().cpu()
                if exclude:
                    r = np.repeat(np.arange(len(batch)), [len(h) for h in hist])
                    scores[torch.as_tensor(r), torch.as_tensor(np.concatenate(hist), dtype=torch.long)] = -torch.inf
                top, idx = torch.topk(scores, min(k, data.n_items), dim=1)
                keep = torch.isfinite(top).numpy()  # a user with fewer than k unseen items gets fewer rows
                n = keep.sum(1)
                table = pl.DataFrame({
                    "user_id": np.repeat(data.user_ids[batch], n).astype(str),
                    "rank": np.concatenate([np.arange(1, c + 1) for c in n]).astype(np.int32),
                    "item_id": item_ids[idx.numpy()[keep]].astype(str),
                    "score": top.numpy()[keep].astype(np.float32)}, schema=RECOMMENDATIONS_SCHEMA)
                writer.write_table(table.to_arrow(), row_group_size=max(table.height, 1))
                rows += table.height
                progress.update(len(batch))
        finally:
            writer.close()

    atomic_write(path, write)
    return {"users": len(users), "rows": rows, "seconds": progress.seconds, "users_per_second": progress.rate}


def drift(current: pl.DataFrame, previous: pl.DataFrame | None, n_items: int, top: int = 10) -> dict:
    """Run-to-run change: mean Jaccard of each user's list (users in both), share of those users whose top-10
    (as an ordered list) changed, and catalog coverage of this run. The text ids are compared as enum codes (one
    mapping for both tables), not as text: at H&M's full size each table has ~10M rows of 64-character user ids."""
    out = {"users": current["user_id"].n_unique(), "coverage": current["item_id"].n_unique() / max(n_items, 1)}
    if previous is None or previous.height == 0:
        return {**out, "compared_users": 0, "mean_jaccard": None, "top10_changed_share": None}

    # one enum per id column over both tables' ids, so that a code means the same id in both
    enums = {c: pl.Enum(pl.concat([current[c].unique(), previous[c].unique()]).unique()) for c in ("user_id", "item_id")}
    current, previous = (df.select(*(pl.col(c).cast(e).to_physical() for c, e in enums.items()), "rank")
                         for df in (current, previous))

    def sizes(df: pl.DataFrame, col: str) -> pl.DataFrame:
        return df.group_by("user_id").agg(pl.len().alias(col))

    both = sizes(current, "n_cur").join(sizes(previous, "n_prev"), on="user_id")
    common = current.join(previous, on=["user_id", "item_id"]).group_by("user_id").agg(pl.len().alias("common"))
    both = both.join(common, on="user_id", how="left").with_columns(pl.col("common").fill_null(0))
    jaccard = both["common"] / (both["n_cur"] + both["n_prev"] - both["common"])

    def tops(df: pl.DataFrame) -> pl.DataFrame:
        return df.filter(pl.col("rank") <= top).sort("user_id", "rank").group_by("user_id").agg("item_id")

    pair = tops(current).join(tops(previous), on="user_id", suffix="_prev")
    changed = (pair["item_id"] != pair["item_id_prev"]).sum() if pair.height else 0
    return {**out, "compared_users": both.height, "mean_jaccard": float(jaccard.mean()) if both.height else None,
            "top10_changed_share": changed / pair.height if pair.height else None}


def rotate_previous(path: Path, previous: Path) -> pl.DataFrame | None:
    """Copy the current table to `previous` (atomically) before it is replaced; return it for the comparison."""
    path = to_path(path)
    if not path.exists():
        return None
    atomic_write(previous, lambda tmp: shutil.copyfile(path, tmp) if is_local(path) else path.fs.get_file(path.path, tmp))
    return read_parquet(previous)


def append_history(path: Path, entry: dict, keep: int = 100) -> list[dict]:
    path = to_path(path)
    history = read_json_file(path) if path.exists() else []
    history = [*history, entry][-keep:]
    write_json(history, path)
    return history


def retrain(cls: type[Recommender], checkpoint: Path, data: RecDataset, feature_tables: dict[str, pl.DataFrame],
            compute: Compute, log: logging.Logger | None = None, sources: ModelSources | None = None,
            feature_cache: FeatureCacheFolder | None = None) -> tuple[Recommender, dict, dict]:
    """(model, fixed settings, fit report): `cls` from its checkpointed config, with its validation-chosen
    settings fixed, fitted on every interaction of `data` (`all_interactions`). `sources`, `feature_cache`: as
    `runner.build` takes them."""
    model_config, fixed = retrain_config(cls, checkpoint)
    model = cls(model_config)
    model.sources, model.feature_cache = sources or model.sources, feature_cache
    if log:
        log.info(f"retraining {cls.name} on all {data.train.height} interactions with {fixed or 'its config'}")
    return model, fixed, model.fit(data, item_features(data, feature_tables), compute, log)


def publish(model, data: RecDataset, artifacts: DatasetView | Path, config: ServingConfig,
            log: logging.Logger | None = None) -> dict:
    """Write the active users' top-K of `model` as the dataset's `recommendations` table, keeping the previous
    one; returns facts."""
    users = active_users(data, config.active_days)
    artifacts = DatasetView.at(artifacts)
    path = artifacts.table("recommendations")
    previous = rotate_previous(path, artifacts.previous_recommendations)
    written = write_top_k(model, data, users, path, config.k, config.batch_users, log)
    return {"path": path, "active_users": len(users), "users_total": data.n_users, "previous": previous,
            "data": data, **written}


def serve(cls: type[Recommender], checkpoint: Path, split: pl.DataFrame, items: pl.DataFrame, name: str,
          protocol: str, repeats_relevant: bool, feature_tables: dict[str, pl.DataFrame], compute: Compute,
          artifacts: DatasetView | Path, config: ServingConfig, log: logging.Logger | None = None,
          sources: ModelSources | None = None, feature_cache: FeatureCacheFolder | None = None) -> dict:
    """Retrain the champion on all interactions and write the dataset's `recommendations` table (`artifacts`: its
    view, or its lake folder); returns facts. `sources`, `feature_cache`: as `runner.build` takes them."""
    data = all_interactions(split, name, items, protocol, repeats_relevant)
    model, fixed, report = retrain(cls, checkpoint, data, feature_tables, compute, log, sources, feature_cache)
    return {"fixed": fixed, "retrain_seconds": report.get("seconds"), **publish(model, data, artifacts, config, log)}


def serve_ranker(checkpoint: Path, source_models: dict[str, tuple[type[Recommender], Path, dict]],
                 split: pl.DataFrame, items: pl.DataFrame, name: str, protocol: str, repeats_relevant: bool,
                 ranker_tables: dict[str, pl.DataFrame], compute: Compute, artifacts: DatasetView | Path,
                 config: ServingConfig, log: logging.Logger | None = None, sources: ModelSources | None = None,
                 feature_cache: FeatureCacheFolder | None = None) -> dict:
    """The two-stage ranker as champion: each of its sources ({source: (class, checkpoint, its feature tables)})
    retrained on all interactions as a single champion is, candidates and features rebuilt with histories that end
    at the end of the data (`ranker_tables`: the multimodal feature tables), the variant's saved booster applied;
    writes the `recommendations` table as `serve` does."""
    data = all_interactions(split, name, items, protocol, repeats_relevant)
    booster, meta = ranker.load_variant(checkpoint)
    retrained, fixed, seconds = {}, {}, 0.0
    for source, (cls, source_checkpoint, tables) in source_models.items():
        retrained[source], fixed[source], report = retrain(cls, source_checkpoint, data, tables, compute, log, sources,
                                                              feature_cache)
        seconds += report.get("seconds") or 0.0
    vectors = ranker.ItemVectors.from_features(item_features(data, ranker_tables))
    scorer = ranker.serving_scores(data, active_users(data, config.active_days), retrained, vectors, booster, meta)
    return {"fixed": fixed, "retrain_seconds": seconds, **publish(scorer, data, artifacts, config, log)}


def check_recommendations(recs: pl.DataFrame, data: RecDataset, users: np.ndarray, k: int) -> dict[str, tuple]:
    """{check: (passed, metadata)} for the table just written: K items per active user, no unknown item ids,
    no history items (unless the dataset counts repeats). Compared as integer indices, not joined on the text ids:
    at H&M's full size a join of 10M recommended and 25M seen (user id, item id) strings alone held gigabytes."""
    user_idx = index_of(pl.Series(data.user_ids).cast(pl.Utf8), recs["user_id"])
    item_idx = index_of(data.items["item_id"].cast(pl.Utf8), recs["item_id"])
    unknown = recs["item_id"].filter(item_idx < 0).unique()
    listed = np.bincount(user_idx[user_idx >= 0], minlength=data.n_users)[users]
    # K, or fewer when the catalog minus the user's (excluded) history is smaller than K.
    seen = None if data.repeats_relevant else np.unique(data.split["user_idx"].to_numpy() * data.n_items
                                                        + data.split["item_idx"].to_numpy())
    history = 0 if seen is None else np.bincount(seen // data.n_items, minlength=data.n_users)[users]
    short = np.flatnonzero(listed < np.minimum(k, data.n_items - history))
    both = (user_idx >= 0) & (item_idx >= 0)
    in_history = 0 if seen is None else int(np.isin(user_idx[both] * data.n_items + item_idx[both], seen).sum())
    return {
        "k_items_per_active_user": (len(short) == 0, {"active_users": len(users), "k": k, "users_short": len(short),
                                                      "examples": [str(u) for u in data.user_ids[users[short[:5]]]]}),
        "no_unknown_items": (unknown.len() == 0, {"unknown_items": unknown.len(),
                                                  "examples": unknown.head(5).to_list()}),
        "no_history_items": (data.repeats_relevant or in_history == 0,
                             {"rows_in_history": in_history, "repeats_relevant": data.repeats_relevant}),
    }


def beats_popularity(ranking: pl.DataFrame, champion: dict) -> tuple[bool, dict]:
    """The champion's validation NDCG@10 is above the best popularity variant's."""
    pop = ranking.filter(pl.col("model") == "popularity")
    if pop.height == 0:
        return False, {"reason": "no popularity rows on validation to compare with"}
    best = pop.row(0, named=True)
    return champion["valid_ndcg@10"] > best["valid"], {
        "champion": f"{champion['model']}/{champion['variant']}", "champion_valid_ndcg@10": champion["valid_ndcg@10"],
        "popularity": f"popularity/{best['variant']}", "popularity_valid_ndcg@10": best["valid"]}


def example_lists(dataset: DatasetView | Path, n_users: int = 3, top: int = 5) -> str:
    """The first `n_users` users' top-`top` with titles, as text (printed at the end of `mmrec run`)."""
    dataset = DatasetView.at(dataset)
    recs = pl.scan_parquet(dataset.table("recommendations"))
    users = recs.select("user_id").unique().sort("user_id").head(n_users).collect()["user_id"].to_list()
    titles = pl.read_parquet(dataset.table("items"), columns=["item_id", "title"])
    rows = (recs.filter(pl.col("user_id").is_in(users) & (pl.col("rank") <= top)).collect()
            .join(titles, on="item_id", how="left").sort("user_id", "rank"))
    lines = []
    for user in users:
        lines.append(f"  user {user}:")
        lines += [f"    {r['rank']}. {r['title'] or '(no title)'}  [{r['item_id']}, score {r['score']:.3f}]"
                  for r in rows.filter(pl.col("user_id") == user).iter_rows(named=True)]
    return "\n".join(lines)
