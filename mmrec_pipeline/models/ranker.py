"""Two-stage recommender: candidates from the trained models, ordered by a LightGBM `lambdarank` ranker over
their scores and the multimodal features (the H&M Kaggle winners' design), with its ablations.

Stages (`Stage`): the **valid** stage reads train rows only (histories, item and user statistics) and is labelled
with the valid-period items; the **test** stage reads train + valid rows, as every model's test scoring does, and
is scored once. The sources are the checkpoints the model assets saved: fitted on train, chosen on valid. They are
not refitted on train + valid for the test stage (as every other model's test row, they score test users from
their train + valid histories).

- Candidates: the top-N (default 50, `top_n_per_source`) of each source, history masked as the evaluator masks
  it; plus **repurchase** (the user's own items, most recent first, then most often) where the dataset counts
  repeats. Recall@N per source and of the union (the ranker's ceiling) per stage.
- Features per (user, candidate), by family: `sources` (each source's score and rank; null = not retrieved),
  `repurchase`, `user` (history length, distinct items, days since last interaction), `item` (count shares over
  all / 30 / 7 days before the cut, trend, users, age, days since last sale, price, mean rating), `category`
  (the user's share of the candidate's category, price ratio), `multimodal` (cosine between the candidate and the
  user's mean history vector per modality: image, caption, review summary, text; overlap of VQ code histograms).
- Training: the valid users are split (seeded) into a fit half and a holdout half; LightGBM trains on the fit
  users with a hit among their candidates, and `num_leaves` and the number of rounds (early stopping) are chosen
  on the holdout's (with a hit) NDCG@10 over candidates. The `@valid` rows are the shared evaluator's on every
  holdout user, with or without a hit (the fit users are accounted as `users_dropped:ranker_fit`).
- Evaluation: the shared evaluator over the full catalog; items outside a user's candidates get one score below
  every candidate, so they rank after them (ties among them broken by item index, the evaluator's rule).
- Variants: `full`, `no_multimodal` (without the multimodal family), `no_sources` (without the sources' scores
  and ranks; candidates are the same).
- Serving (`save_variants`, `serving_scores`): each variant's booster is saved in LightGBM's text format; as the
  champion, its sources are retrained on every interaction (serving.serve_ranker) and the booster orders the
  candidates and features of a stage whose histories end at the end of the data (`serving_stage`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp
import torch

from mmrec_pipeline.data.dataset import RecDataset
from mmrec_pipeline.data.schema import SPLITS
from mmrec_pipeline.evaluation.metrics import EvalInputs, deterministic_topk
from mmrec_pipeline.evaluation.protocols import (
    DIVERSITY_VECTOR,
    best_on_valid,
    evaluate_model,
    per_user_stage,
    per_user_table,
    protocol_masking,
    valid_on_shared_users,
    valid_values,
)
from mmrec_pipeline.evaluation.sections.ranker import ABLATION_COLUMNS
from mmrec_pipeline.evaluation.significance import bootstrap_ci, paired_tests
from mmrec_pipeline.models.base import ItemFeatures
from mmrec_pipeline.storage import (
    Checkpoint,
    CorruptFileError,
    ModelFolder,
    read_json_file,
    write_json,
    write_text,
)

NAME = "ranker"
# Source -> the model assets (or model/variant) it may come from; the best of them on validation NDCG@10 is used.
SOURCE_MODELS = {
    "popularity_global": ("popularity/global",), "popularity_recent": ("popularity/recent",),
    "item_knn": ("item_knn",), "ease": ("ease",), "content": ("content",),
    "sequential": ("gru4rec", "sasrec", "bert4rec"), "lvlm": ("lvlm_retrieval",),
}
REPURCHASE = "repurchase"
VARIANTS = {"full": (), "no_multimodal": ("multimodal",), "no_sources": ("sources",)}
DAY = 86400.0


@dataclasses.dataclass
class RankerConfig:
    """datasets.yaml `models: {ranker: {...}}`."""

    top_n: int = 50
    top_n_per_source: dict[str, int] = dataclasses.field(default_factory=dict)  # {source: N}, else top_n
    fit_share: float = 0.5  # of the valid users: LightGBM fits on them; the others choose, stop and are @valid
    # chosen on the holdout users (part of validation); min_data_in_leaf 100 and the smaller leaf grid raised
    # every variant's holdout NDCG@10 on sample (docs/BENCHMARKS.md, "Figures behind settings in the code")
    num_leaves: tuple[int, ...] = (7, 31)
    learning_rate: float = 0.05
    max_rounds: int = 300
    early_stopping: int = 30
    min_data_in_leaf: int = 100
    seed: int = 0
    batch_users: int = 512

    @classmethod
    def from_overrides(cls, overrides: dict | None) -> RankerConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(overrides or {}) - fields
        if unknown:
            raise ValueError(f"datasets.yaml models.ranker: unknown field(s) {sorted(unknown)}; allowed: {sorted(fields)}")
        config = cls(**(overrides or {}))
        return dataclasses.replace(config, num_leaves=tuple(config.num_leaves))

    def n_for(self, source: str) -> int:
        return int(self.top_n_per_source.get(source, self.top_n))


# ----------------------------------------------------------------------------------------------------------------
# sources


def choose_sources(metrics: pl.DataFrame) -> dict[str, tuple[str, str]]:
    """{source: (model, variant)}: per source, its model/variant best on validation NDCG@10 (`best_on_valid`)
    among those in `metrics` (sources whose models did not run are left out)."""
    valid = valid_values(metrics)
    chosen = {}
    for source, names in SOURCE_MODELS.items():
        among = [n for n in valid if any(n == name or n.split("/")[0] == name for name in names)]
        if best := best_on_valid(valid, among):
            chosen[source] = tuple(best.split("/", 1))
    return chosen


# ----------------------------------------------------------------------------------------------------------------
# stages and candidates


@dataclasses.dataclass
class Stage:
    """What the features of one stage may read: `rows` (the stages before it) up to their last timestamp `cut`;
    `inputs`: the evaluator's users, histories (the same rows) and relevant items of the stage."""

    name: str
    inputs: EvalInputs
    rows: pl.DataFrame
    cut: int


def make_stage(data: RecDataset, name: str) -> Stage:
    rows = data.rows(*SPLITS[: SPLITS.index(name)])
    return Stage(name, data.eval_inputs(name), rows, int(rows["t"].max()) if rows.height else 0)


def masked_scores(model, inputs: EvalInputs, sel: np.ndarray, data: RecDataset) -> torch.Tensor:
    """The model's [len(sel), n_items] scores with the items the evaluator masks for it (the protocol's rule for
    its kind) at -inf."""
    with torch.no_grad():
        s = torch.as_tensor(model.score(inputs.users[sel], [inputs.history[i] for i in sel])).float().clone()
    if protocol_masking(dataclasses.replace(inputs), data, model).exclude_history:
        masked = [np.asarray(inputs.masked(i), dtype=np.int64) for i in sel]
        rows = np.repeat(np.arange(len(sel)), [len(m) for m in masked])
        s[torch.from_numpy(rows), torch.from_numpy(np.concatenate(masked))] = -np.inf
    return s


def source_candidates(sources: dict, inputs: EvalInputs, config: RankerConfig, data: RecDataset) -> pl.DataFrame:
    """row (position in `inputs`), item, and per source `rank_<source>` (1 = best; null = not in its top-N) and
    `score_<source>` (its score for every candidate of the union, retrieved by it or not), in one pass over the
    users: a batch's score matrices are kept until the union of their top-N is known."""
    out = []
    for lo in range(0, len(inputs.users), config.batch_users):
        sel = np.arange(lo, min(lo + config.batch_users, len(inputs.users)))
        scores, ranks = {}, []
        for name, model in sources.items():
            scores[name] = masked_scores(model, inputs, sel, data)
            idx, vals = deterministic_topk(scores[name], config.n_for(name))
            ok = (vals > -np.inf).reshape(-1).numpy()
            ranks.append(pl.DataFrame({
                "row": np.repeat(sel, idx.shape[1])[ok], "item": idx.reshape(-1).numpy()[ok],
                "rank": np.tile(np.arange(1, idx.shape[1] + 1, dtype=np.float64), len(sel))[ok]})
                .with_columns(pl.lit(name).alias("source")))
        batch = pl.concat(ranks).pivot(on="source", index=["row", "item"], values="rank",
                                       aggregate_function="first")
        batch = batch.rename({name: f"rank_{name}" for name in sources if name in batch.columns})
        rows = torch.from_numpy(batch["row"].to_numpy() - lo)
        items = torch.from_numpy(batch["item"].to_numpy().copy())
        out.append(batch.with_columns(pl.Series(f"score_{name}", scores[name][rows, items].numpy())
                                      for name in sources))
    table = pl.concat(out, how="diagonal_relaxed")
    # a candidate another source may still have masked (the recbole protocol's mask differs): no score, not -inf
    return table.select(pl.col("row").cast(pl.Int64), pl.col("item").cast(pl.Int64),
                        *[pl.col(f"{v}_{name}").replace([-np.inf], [None]) if f"{v}_{name}" in table.columns
                          else pl.lit(None, pl.Float64).alias(f"{v}_{name}")
                          for name in sources for v in ("score", "rank")])


def repurchase_candidates(stage: Stage, n: int) -> pl.DataFrame:
    """The user's own past items, most recent first, then most often bought; score = times bought."""
    rows = user_rows(stage)
    return (rows.group_by("row", "item").agg(pl.len().alias("score"), pl.col("t").max().alias("last"))
            .sort(["row", "last", "score", "item"], descending=[False, True, True, False])
            .with_columns(pl.int_range(1, pl.len() + 1).over("row").alias("rank"))
            .filter(pl.col("rank") <= n)
            .select(pl.col("row").cast(pl.Int64), pl.col("item").cast(pl.Int64), pl.col("score").cast(pl.Float64),
                    pl.col("rank").cast(pl.Float64)))


def user_rows(stage: Stage) -> pl.DataFrame:
    """The stage's readable rows of its evaluated users, keyed by `row` (position in `stage.inputs`)."""
    users = pl.DataFrame({"user_idx": stage.inputs.users, "row": np.arange(len(stage.inputs.users), dtype=np.int64)})
    return stage.rows.join(users, on="user_idx").select("row", pl.col("item_idx").alias("item"), "t",
                                                        *(["rating"] if "rating" in stage.rows.columns else []))


def candidates(stage: Stage, sources: dict, config: RankerConfig, data: RecDataset) -> pl.DataFrame:
    """One row per (row, item) in the union of the sources' top-N: `score_<source>`, `rank_<source>` (null rank =
    not retrieved by that source) and `label` (1 = a relevant item of the stage)."""
    table = source_candidates(sources, stage.inputs, config, data)
    if data.repeats_relevant:
        own = repurchase_candidates(stage, config.n_for(REPURCHASE)).rename(
            {"score": f"score_{REPURCHASE}", "rank": f"rank_{REPURCHASE}"})
        table = table.join(own, on=["row", "item"], how="full", coalesce=True)
    return table.join(relevant_table(stage.inputs), on=["row", "item"], how="left").with_columns(
        pl.col("label").fill_null(0)).sort("row", "item")


def relevant_table(inputs: EvalInputs) -> pl.DataFrame:
    lengths = [len(np.unique(r)) for r in inputs.relevant]
    items = np.concatenate([np.unique(r) for r in inputs.relevant]) if lengths else np.zeros(0)
    return pl.DataFrame({"row": np.repeat(np.arange(len(lengths)), lengths).astype(np.int64),
                         "item": items.astype(np.int64), "label": np.ones(len(items), dtype=np.int32)})


def candidate_recall(cands: pl.DataFrame, inputs: EvalInputs, stage: str, config: RankerConfig) -> pl.DataFrame:
    """Recall@N of each source and of the union (mean over the stage's users of hits / relevant items), with
    the mean number of candidates per user."""
    n_rel = np.array([len(np.unique(r)) for r in inputs.relevant], dtype=np.float64)
    sources = [c.removeprefix("rank_") for c in cands.columns if c.startswith("rank_")]
    out = []
    for name in [*sources, "union"]:
        got = cands if name == "union" else cands.filter(pl.col(f"rank_{name}").is_not_null())
        hits = np.bincount(got.filter(pl.col("label") == 1)["row"].to_numpy(), minlength=len(n_rel))
        per_user = np.bincount(got["row"].to_numpy(), minlength=len(n_rel))
        out.append({"stage": stage, "source": name, "N": "" if name == "union" else str(config.n_for(name)),
                    "recall": float(np.mean(hits / np.maximum(n_rel, 1))) if len(n_rel) else float("nan"),
                    "candidates_per_user": float(per_user.mean()) if len(n_rel) else 0.0})
    return pl.DataFrame(out)


# ----------------------------------------------------------------------------------------------------------------
# features


@dataclasses.dataclass
class ItemVectors:
    """Per modality an L2-normalised [n_items, d] matrix and which items have it; `vq`: code histograms."""

    vectors: dict[str, np.ndarray]
    present: dict[str, np.ndarray]

    @classmethod
    def from_features(cls, features: ItemFeatures) -> ItemVectors:
        """One column per modality of the feature tables' `ItemFeatures` (`base.item_features`): the first image
        vector, the first caption vector (`sbert_caption_<model>`), `sbert_summary`, the text vector the
        leaderboard's diversity uses; the VQ codes as histograms."""
        picks = {"image": next(iter(features.image), None),
                 "caption": next((c for c in features.caption if c.startswith("sbert_caption_")), None),
                 "summary": "sbert_summary" if "sbert_summary" in features.summary else None,
                 "text": DIVERSITY_VECTOR if DIVERSITY_VECTOR in features.text else None}
        vectors, present = {}, {}
        for modality, column in picks.items():
            if column is not None:
                mat = features.vectors[column].copy()
                mat /= np.maximum(np.linalg.norm(mat, axis=1, keepdims=True), 1e-12)
                vectors[modality], present[modality] = mat, features.present[column]
        for column, codes in features.vq_codes.items():  # one column: `vq_codes`
            has = features.present[column]
            ids = codes[has].astype(np.int64)
            hist = np.zeros((len(codes), int(ids.max()) + 1), dtype=np.float32)
            np.add.at(hist, (np.repeat(np.flatnonzero(has), ids.shape[1]), ids.ravel()), 1.0 / ids.shape[1])
            vectors["vq"], present["vq"] = hist, has
        return cls(vectors, present)


def profile_affinity(pairs: pl.DataFrame, history: sp.csr_matrix, mat: np.ndarray, has: np.ndarray,
                     overlap: bool, chunk: int = 65536) -> np.ndarray:
    """Per (row, item) pair: cosine between the item's vector and the mean vector of the row's history items
    that have one (or, `overlap`, the histogram intersection); NaN where either side has none."""
    h = history.multiply(has[None, :].astype(np.float32)).tocsr()
    counts = np.asarray(h.sum(axis=1)).ravel()
    profile = np.asarray(h @ mat) / np.maximum(counts, 1)[:, None]
    if not overlap:
        profile /= np.maximum(np.linalg.norm(profile, axis=1, keepdims=True), 1e-12)
    rows, items = pairs["row"].to_numpy(), pairs["item"].to_numpy()
    out = np.empty(len(rows), dtype=np.float32)
    for lo in range(0, len(rows), chunk):
        r, i = rows[lo:lo + chunk], items[lo:lo + chunk]
        a, b = profile[r], mat[i]
        out[lo:lo + chunk] = np.minimum(a, b).sum(axis=1) if overlap else (a * b).sum(axis=1)
    out[(counts[rows] == 0) | ~has[items]] = np.nan
    return out


def features(stage: Stage, cands: pl.DataFrame, data: RecDataset, vectors: ItemVectors) -> pl.DataFrame:
    """`cands` with the feature columns added; everything is computed from `stage.rows` (rows before the cut)."""
    rows = user_rows(stage)
    cut = stage.cut
    age = (cut - pl.col("t")) / DAY
    user = rows.group_by("row").agg(pl.len().alias("user_history"), pl.col("item").n_unique().alias("user_items"),
                                    age.min().alias("user_days_since_last"))
    total = max(stage.rows.height, 1)

    def window(days: float) -> pl.Expr:  # rows in the last `days` before the cut
        return (pl.col("t") > cut - days * DAY).sum()

    all_rows = stage.rows.select(pl.col("item_idx").alias("item"), "t", pl.col("user_idx"),
                                 *(["rating"] if "rating" in stage.rows.columns else []))
    item = all_rows.group_by("item").agg(
        (pl.len() / total).alias("item_share_all"), (window(30) / total).alias("item_share_30d"),
        (window(7) / total).alias("item_share_7d"), pl.col("user_idx").n_unique().alias("item_users"),
        age.max().alias("item_age_days"), age.min().alias("item_days_since_last"),
        *([pl.col("rating").mean().alias("item_mean_rating")] if "rating" in all_rows.columns else []),
    ).with_columns((pl.col("item_share_7d") / (pl.col("item_share_30d") + 1.0 / total)).alias("item_trend_7_30"))
    catalog = data.items.select(pl.int_range(0, pl.len(), dtype=pl.Int64).alias("item"), "category",
                                pl.col("price").alias("item_price"))
    repurchase = rows.group_by("row", "item").agg(pl.len().alias("rep_count"), age.min().alias("rep_days_since"))
    hist_cat = rows.join(catalog, on="item", how="left")
    category = (hist_cat.group_by("row", "category").agg(pl.len().alias("n"))
                .join(user.select("row", "user_history"), on="row")
                .select("row", "category", (pl.col("n") / pl.col("user_history")).alias("cat_user_share")))
    user_price = hist_cat.group_by("row").agg(pl.col("item_price").mean().alias("user_mean_price"))
    out = (cands.join(user, on="row", how="left").join(item, on="item", how="left")
           .join(catalog, on="item", how="left").join(repurchase, on=["row", "item"], how="left")
           .join(category, on=["row", "category"], how="left").join(user_price, on="row", how="left")
           .with_columns(pl.col("rep_count").fill_null(0), pl.col("cat_user_share").fill_null(0.0),
                         pl.col("item_share_all").fill_null(0.0), pl.col("item_share_30d").fill_null(0.0),
                         pl.col("item_share_7d").fill_null(0.0), pl.col("item_users").fill_null(0),
                         (pl.col("item_price") / pl.col("user_mean_price")).alias("cat_price_ratio"))
           .drop("category", "user_mean_price").sort("row", "item"))
    history = sp.csr_matrix((np.ones(rows.height, dtype=np.float32), (rows["row"].to_numpy(), rows["item"].to_numpy())),
                            shape=(len(stage.inputs.users), data.n_items))
    history.data[:] = 1.0  # sum_duplicates above counted repeats; a profile is over distinct items
    for modality, mat in vectors.vectors.items():
        value = profile_affinity(out, history, mat, vectors.present[modality], overlap=modality == "vq")
        out = out.with_columns(pl.Series(f"mm_{modality}", value))
    return out


def family(column: str) -> str | None:
    """The feature family of a column (None: not a feature)."""
    if column.startswith(("score_", "rank_")):
        return REPURCHASE if column.endswith(REPURCHASE) else "sources"
    for prefix, fam in (("rep_", REPURCHASE), ("user_", "user"), ("item_", "item"), ("cat_", "category"),
                        ("mm_", "multimodal")):
        if column.startswith(prefix):
            return fam
    return None


def feature_columns(table: pl.DataFrame, drop: tuple[str, ...] = ()) -> list[str]:
    return [c for c in table.columns if family(c) is not None and family(c) not in drop]


# ----------------------------------------------------------------------------------------------------------------
# the ranker


def group_sizes(table: pl.DataFrame) -> np.ndarray:
    return table.group_by("row", maintain_order=True).len()["len"].to_numpy()


def fit_lightgbm(train: pl.DataFrame, holdout: pl.DataFrame, columns: list[str], config: RankerConfig,
                 threads: int) -> tuple[object, dict, list[dict]]:
    """(booster, chosen point, grid): one lambdarank model per `num_leaves`, each stopped early on the holdout's
    NDCG@10 over candidates; the best holdout value wins (the first on ties)."""
    import lightgbm as lgb  # imported here: the code location loads this module in every process

    def dataset(t: pl.DataFrame, reference=None):
        return lgb.Dataset(t.select(columns).to_numpy().astype(np.float32), label=t["label"].to_numpy(),
                           group=group_sizes(t), feature_name=columns, reference=reference, free_raw_data=False)

    fit_set = dataset(train)
    hold_set = dataset(holdout, reference=fit_set)
    grid, best = [], None
    for leaves in config.num_leaves:
        params = {"objective": "lambdarank", "metric": "ndcg", "eval_at": [10], "num_leaves": leaves,
                  "learning_rate": config.learning_rate, "min_data_in_leaf": config.min_data_in_leaf,
                  "num_threads": threads, "seed": config.seed, "deterministic": True, "force_row_wise": True,
                  "verbosity": -1}
        booster = lgb.train(params, fit_set, num_boost_round=config.max_rounds, valid_sets=[hold_set],
                            callbacks=[lgb.early_stopping(config.early_stopping, verbose=False)])
        value = float(booster.best_score["valid_0"]["ndcg@10"])
        grid.append({"num_leaves": leaves, "rounds": int(booster.best_iteration), "holdout_ndcg@10": value})
        if best is None or value > best[1]:
            best = (booster, value, grid[-1])
    return best[0], best[2], grid


class CandidateScores:
    """A score function for the shared evaluator: the ranker's scores on each user's candidates and, for every
    other item, one score below all of them (those items rank after the candidates, ties by item index)."""

    kind = "general"  # the evaluator masks its history under `recbole`, as for every non-sequential model

    def at_stage(self, data, stage: str) -> None:
        """The scores are fixed per stage when built: nothing to move."""

    def __init__(self, users: np.ndarray, table: pl.DataFrame, scores: np.ndarray, n_items: int):
        order = np.lexsort((table["item"].to_numpy(), table["row"].to_numpy()))
        self.items = table["item"].to_numpy()[order]
        self.scores = scores[order].astype(np.float64)
        rows = table["row"].to_numpy()[order]
        self.start = np.searchsorted(rows, np.arange(len(users) + 1))
        self.position = {int(u): i for i, u in enumerate(users)}
        self.floor = float(self.scores.min()) - 1.0 if len(self.scores) else 0.0
        self.n_items = n_items

    def score(self, users, history) -> torch.Tensor:
        out = torch.full((len(users), self.n_items), self.floor, dtype=torch.float64)
        for j, u in enumerate(users):
            i = self.position[int(u)]
            lo, hi = self.start[i], self.start[i + 1]
            out[j, torch.as_tensor(self.items[lo:hi])] = torch.as_tensor(self.scores[lo:hi])
        return out


@dataclasses.dataclass
class RankerRun:
    metrics: pl.DataFrame  # ranker rows of the long metrics table (test, +cold, +sampled, @valid on the holdout)
    per_user: pl.DataFrame  # metric@10 per user, per variant: test, and `@valid` on the holdout users
    recall: pl.DataFrame  # candidate recall per source and stage
    gains: pl.DataFrame  # variant, family, gain, share
    chosen: dict  # variant -> {num_leaves, rounds, holdout_ndcg@10, grid}
    sources: dict  # source -> model/variant
    users: dict  # fit / holdout / test user counts
    seconds: dict
    boosters: dict  # variant -> (LightGBM booster at its chosen round, its feature columns): what serving applies


def split_valid_users(table: pl.DataFrame, n_rows: int, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, holdout rows): a seeded split of all the valid stage's rows (users). The holdout's ranking is the
    `@valid` row, so it keeps the users without a hit among their candidates (they score 0, as they would in
    production); LightGBM trains and stops on the users of each side who have one (a group without a relevant
    item carries no gradient and no NDCG)."""
    shuffled = np.random.default_rng(seed).permutation(n_rows)
    n_fit = round(n_rows * share)
    fit, hold = np.sort(shuffled[:n_fit]), np.sort(shuffled[n_fit:])
    with_hit = np.unique(table.filter(pl.col("label") == 1)["row"].to_numpy())
    if not (np.isin(fit, with_hit).any() and np.isin(hold, with_hit).any()):
        raise ValueError(f"ranker: {len(with_hit)} of {n_rows} valid users have a relevant item among their "
                         "candidates; the fit and the holdout users each need some")
    return fit, hold


def run_ranker(data: RecDataset, sources: dict[str, tuple[str, object]], vectors: ItemVectors,
               config: RankerConfig, threads: int = 1, item_vectors: np.ndarray | None = None,
               log: logging.Logger | None = None) -> RankerRun:
    """Candidates and features for the valid and test stages, the three variants fitted on valid users and
    scored on test once. `sources`: {source: (model/variant, loaded Recommender)}."""
    clock = {}
    start = time.perf_counter()
    models = {name: model for name, (_, model) in sources.items()}
    stages, tables, recall = {}, {}, []
    for name in ("valid", "test"):
        stage = make_stage(data, name)
        for model in models.values():  # as evaluate_model does: a source's stage-dependent state (recent window)
            model.at_stage(data, name)
        cands = candidates(stage, models, config, data)
        recall.append(candidate_recall(cands, stage.inputs, name, config))
        tables[name], stages[name] = features(stage, cands, data, vectors), stage
        if log:
            log.info(f"ranker: {name} stage, {len(stage.inputs.users)} users, {cands.height} candidates, "
                     f"union recall {recall[-1]['recall'][-1]:.4f}")
    clock["candidates_and_features"] = time.perf_counter() - start
    valid = tables["valid"]
    fit_rows, hold_rows = split_valid_users(valid, len(stages["valid"].inputs.users), config.fit_share, config.seed)
    hit = valid.filter(pl.col("label") == 1)["row"].unique()
    train_t, hold_t = (valid.filter(pl.col("row").is_in(r.tolist()) & pl.col("row").is_in(hit)) for r in (fit_rows, hold_rows))
    hold_users = stages["valid"].inputs.users[hold_rows]
    metrics, per_user, gains, chosen = [], [], [], {}
    boosters = {}
    fitted = {}  # columns -> its fit and rows: a variant that drops no column (e.g. no multimodal feature) reuses
    for variant, drop in VARIANTS.items():
        t0 = time.perf_counter()
        columns = feature_columns(valid, drop)
        if tuple(columns) not in fitted:
            fitted[tuple(columns)] = fit_and_score(data, stages, tables, train_t, hold_t, hold_users, columns, config,
                                                   threads, item_vectors, variant)
        booster, point, grid, rows, users_rows = fitted[tuple(columns)]
        chosen[variant] = {**point, "features": len(columns), "grid": grid}
        boosters[variant] = (booster, columns)
        gain = booster.feature_importance("gain", iteration=booster.best_iteration)
        gains.append(pl.DataFrame({"variant": variant, "family": [family(c) for c in columns], "gain": gain})
                     .group_by("variant", "family").agg(pl.col("gain").sum()))
        metrics.append(rows.with_columns(pl.lit(variant).alias("variant")))
        per_user.append(users_rows.with_columns(pl.lit(variant).alias("variant")))
        if log:
            ndcg = rows.filter((pl.col("protocol") == data.protocol) & (pl.col("metric") == "ndcg") & (pl.col("k") == 10))
            log.info(f"ranker/{variant}: {point}, test NDCG@10 {ndcg['value'][0]:.4f} ({time.perf_counter() - t0:.1f}s)")
    gains = pl.concat(gains).with_columns((pl.col("gain") / pl.col("gain").sum().over("variant")).alias("share"))
    clock["total"] = time.perf_counter() - start
    return RankerRun(pl.concat(metrics), pl.concat(per_user), pl.concat(recall),
                     gains.sort("variant", "gain", descending=[False, True]), chosen,
                     {s: ref for s, (ref, _) in sources.items()},
                     {"fit": len(fit_rows), "holdout": len(hold_rows), "test": len(stages["test"].inputs.users)},
                     {k: round(v, 2) for k, v in clock.items()}, boosters)


def fit_and_score(data: RecDataset, stages: dict, tables: dict, train_t: pl.DataFrame, hold_t: pl.DataFrame,
                  hold_users: np.ndarray, columns: list[str], config: RankerConfig, threads: int,
                  item_vectors: np.ndarray | None, variant: str):
    """(booster, chosen point, grid, metric rows, per-user test and `@valid` rows) of one feature set."""
    booster, point, grid = fit_lightgbm(train_t, hold_t, columns, config, threads)
    predict = {name: booster.predict(tables[name].select(columns).to_numpy().astype(np.float32),
                                     num_iteration=booster.best_iteration) for name in tables}
    # @valid: the holdout users only (the fit users' rows would flatter it)
    scorer = CandidateScores(stages["valid"].inputs.users, tables["valid"], predict["valid"], data.n_items)
    valid, valid_full = evaluate_model(scorer, data, NAME, variant, item_vectors=item_vectors, sampled=None,
                                       stage="valid", users=hold_users, users_dropped="ranker_fit")
    scorer = CandidateScores(stages["test"].inputs.users, tables["test"], predict["test"], data.n_items)
    test, full = evaluate_model(scorer, data, NAME, variant, item_vectors=item_vectors)
    per_user = pl.concat([per_user_table(full, data, NAME, variant, data.protocol),
                          per_user_table(valid_full, data, NAME, variant, f"{data.protocol}@valid")])
    return booster, point, grid, pl.concat([valid, test]), per_user


# ----------------------------------------------------------------------------------------------------------------
# serving: the saved booster over candidates and features rebuilt from every interaction

def save_variants(run: RankerRun, folder: ModelFolder, config: RankerConfig) -> None:
    """Per variant, in its folder: the booster at its chosen round (LightGBM's text format) and `config.json`
    (its feature columns, the sources' model/variant, the candidate settings and the booster's sha256)."""
    for variant, (booster, columns) in run.boosters.items():
        text = booster.model_to_string(num_iteration=booster.best_iteration)
        checkpoint = Checkpoint(folder.variant(variant))
        write_text(text, checkpoint.booster)
        write_json({"columns": columns, "sources": run.sources, "config": dataclasses.asdict(config),
                    "booster_sha256": hashlib.sha256(text.encode()).hexdigest()}, checkpoint.config)


def load_variant(checkpoint: Path) -> tuple[object, dict]:
    """(booster, its config.json) of one saved variant; a booster whose bytes differ from the recorded sha256
    raises `CorruptFileError`."""
    import lightgbm as lgb

    checkpoint = Checkpoint(checkpoint)
    if not checkpoint.config.exists():
        raise FileNotFoundError(f"{checkpoint.config} not found: materialize the '{NAME}' asset again "
                                "(it saves each variant's booster for serving)")
    meta = read_json_file(checkpoint.config)
    text = checkpoint.booster.read_text()
    if hashlib.sha256(text.encode()).hexdigest() != meta["booster_sha256"]:
        raise CorruptFileError(checkpoint.booster, "sha256 differs from the one recorded when it was written")
    return lgb.Booster(model_str=text), meta


def serving_stage(data: RecDataset, users: np.ndarray) -> Stage:
    """The stage `recommendations` ranks: every row of `data` (all interactions, labelled train) is readable, so
    histories and item statistics end at the end of the data; `users` get no labels."""
    history = data.sequences("train")
    inputs = EvalInputs(n_items=data.n_items, users=users, history=[history[u] for u in users],
                        relevant=[np.zeros(0, dtype=np.int64)] * len(users), exclude_history=not data.repeats_relevant)
    rows = data.rows("train")
    return Stage("serve", inputs, rows, int(rows["t"].max()) if rows.height else 0)


def serving_scores(data: RecDataset, users: np.ndarray, sources: dict, vectors: ItemVectors, booster,
                   meta: dict) -> CandidateScores:
    """The saved booster's scores for `users` over candidates and features rebuilt from every interaction of
    `data` with the `sources` retrained on it ({source: Recommender}, the names the booster was fitted with).
    A feature column the fit had and these tables lack (a modality no longer there) is missing, as LightGBM
    reads a null."""
    stage = serving_stage(data, users)
    config = RankerConfig.from_overrides(meta["config"])
    table = features(stage, candidates(stage, sources, config, data), data, vectors)
    x = table.select([pl.col(c) if c in table.columns else pl.lit(None, pl.Float64).alias(c) for c in meta["columns"]])
    return CandidateScores(users, table, booster.predict(x.to_numpy().astype(np.float32)), data.n_items)


# ----------------------------------------------------------------------------------------------------------------
# the ablation table and the report


def ablation_table(per_user: pl.DataFrame, metrics: pl.DataFrame, reference: str | None,
                   metric: str = "ndcg@10") -> pl.DataFrame:
    """One row per ranker variant and the reference (the validation-best single model): valid and test
    NDCG@10, the test value's 95% bootstrap CI, the Wilcoxon + Holm test against the reference on the same
    test users (Holm over the three variants), and each ablation's against `ranker/full` (Holm over the two): does
    the dropped family help? `per_user`: the ranker's per-user rows and the reference model's (its file: every
    variant, seed and stage): the test rows (each user's mean over the seeds) give the test columns, the `@valid`
    rows the validation column, on the users every row was validated on (the ranker's holdout)."""
    wanted = [*[f"{NAME}/{v}" for v in VARIANTS], *([reference] if reference else [])]
    test = per_user_stage(per_user, "test").with_columns(
        (pl.col("model") + "/" + pl.col("variant")).alias("name")).filter(pl.col("name").is_in(wanted))
    if reference and reference not in set(test["name"]):
        raise ValueError(f"{reference}: its per-user rows hold no test rows")
    tests = paired_tests(test, metric, reference) if reference else pl.DataFrame(
        schema={"name": pl.Utf8, "diff": pl.Float64, "p": pl.Float64, "p_holm": pl.Float64})
    vs_full = paired_tests(test.filter(pl.col("model") == NAME), metric, f"{NAME}/full").select(
        "name", pl.col("diff").alias("diff_vs_full"), pl.col("p_holm").alias("p_holm_vs_full"))
    # validation values on the same users for every row: the holdout's (the ranker's `@valid` users)
    named = metrics.filter((pl.col("model") + "/" + pl.col("variant")).is_in(wanted))
    valid = pl.DataFrame(list(valid_on_shared_users(named, per_user)[0].items()), orient="row",
                         schema={"name": pl.Utf8, "valid_ndcg@10": pl.Float64})
    rows = []
    for name in wanted:
        values = test.filter(pl.col("name") == name)[metric].to_numpy()
        if not len(values):
            continue
        low, high = bootstrap_ci(values)
        rows.append({"name": name, "test_ndcg@10": float(np.nanmean(values)), "ci_low": low, "ci_high": high,
                     "users": len(values)})
    table = (pl.DataFrame(rows).join(valid, on="name", how="left").join(tests, on="name", how="left")
             .join(vs_full, on="name", how="left"))
    return table.rename({"diff": "diff_vs_reference"}).select(ABLATION_COLUMNS)


def write_summary(run: RankerRun, ablation: pl.DataFrame, reference: str | None, path: Path) -> dict:
    """What the report section reads (`DatasetView.ranker_summary`)."""
    summary = {"reference": reference, "sources": run.sources, "users": run.users, "seconds": run.seconds,
               "chosen": run.chosen, "recall": run.recall.to_dicts(), "gains": run.gains.to_dicts(),
               "ablation": ablation.to_dicts()}
    write_json(summary, path)
    return summary


def check_run(run: RankerRun, metrics: pl.DataFrame, reference: str | None, protocol: str) -> tuple[bool, dict]:
    """What must hold (the asset check): per stage the union's recall is at least every source's; the ranker's
    test rows cover the same users as the reference's; its `@valid` rows cover the holdout users only."""
    failures = []
    for stage, t in run.recall.group_by("stage"):
        union = t.filter(pl.col("source") == "union")["recall"][0]
        if (t["recall"] > union + 1e-12).any():
            failures.append(f"{stage[0]}: a source's recall exceeds the union's {union:.4f}")

    def evaluated(table: pl.DataFrame, proto: str, name: str) -> set[float]:
        model, variant = name.split("/")
        return set(table.filter((pl.col("model") == model) & (pl.col("variant") == variant)
                                & (pl.col("protocol") == proto) & (pl.col("metric") == "users_evaluated"))["value"])

    for variant in VARIANTS:
        name = f"{NAME}/{variant}"
        if reference and evaluated(run.metrics, protocol, name) != evaluated(metrics, protocol, reference):
            failures.append(f"{name}: test users differ from {reference}'s")
        if evaluated(run.metrics, f"{protocol}@valid", name) != {float(run.users["holdout"])}:
            failures.append(f"{name}: @valid users are not the {run.users['holdout']} holdout users")
    return not failures, {"failures": failures, "users": run.users}
