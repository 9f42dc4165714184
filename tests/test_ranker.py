"""The two-stage ranker (models/ranker.py) on a toy dataset: no feature reads a row after the cut of the stage it
is built for, candidates and their recall add up, and the ranker trains and produces evaluator rows."""

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from mmrec_pipeline import serving
from mmrec_pipeline.compute import Compute
from mmrec_pipeline.data.dataset import RecDataset
from mmrec_pipeline.evaluation.protocols import check_metrics
from mmrec_pipeline.models import ranker
from mmrec_pipeline.models.base import ItemFeatures, item_features
from mmrec_pipeline.models.ease import EASE
from mmrec_pipeline.models.item_knn import ItemKNN
from mmrec_pipeline.models.popularity import Popularity
from mmrec_pipeline.serving import ServingConfig
from mmrec_pipeline.storage import Checkpoint, CorruptFileError, ModelFolder, write_json

N_USERS, N_ITEMS, N_CATS = 120, 60, 4


def toy_tables(seed: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(split, items): users who mostly buy in one category, and buy some items again; a global temporal split."""
    rng = np.random.default_rng(seed)
    cats = np.arange(N_ITEMS) % N_CATS
    items = pl.DataFrame({"item_id": [f"i{i:03d}" for i in range(N_ITEMS)], "title": [f"item {i}" for i in range(N_ITEMS)],
                          "description": "", "category": [f"c{c}" for c in cats], "attributes": "{}",
                          "price": rng.uniform(5, 50, N_ITEMS), "image_path": None, "image_sha256": None})
    rows = []
    start = datetime(2024, 1, 1, tzinfo=UTC)
    for u in range(N_USERS):
        taste = rng.integers(N_CATS)
        pool = np.flatnonzero(cats == taste)
        bought = []
        for _ in range(rng.integers(6, 14)):
            i = rng.choice(bought) if bought and rng.random() < 0.2 else (
                rng.choice(pool) if rng.random() < 0.8 else rng.integers(N_ITEMS))
            bought.append(i)
            day = rng.uniform(85 if i >= N_ITEMS - 4 else 0, 100)  # the last items are new: cold in test
            rows.append((f"u{u:03d}", f"i{i:03d}", start + timedelta(days=float(day))))
    split = pl.DataFrame(rows, schema=["user_id", "item_id", "ts"], orient="row").with_columns(
        pl.col("ts").dt.cast_time_unit("us"), pl.lit(4.0).alias("rating"))
    q75, q90 = split["ts"].quantile(0.75), split["ts"].quantile(0.9)
    split = split.with_columns(pl.when(pl.col("ts") <= q75).then(pl.lit("train")).when(pl.col("ts") <= q90)
                               .then(pl.lit("valid")).otherwise(pl.lit("test")).alias("split"))
    return split.sort("user_id", "ts"), items


def toy_vectors(data: RecDataset) -> ranker.ItemVectors:
    return ranker.ItemVectors.from_features(item_features(data, toy_feature_tables(data)))


def toy_feature_tables(data: RecDataset) -> dict[str, pl.DataFrame]:
    """Item vectors that know the category (image, text) and VQ codes, for the multimodal family."""
    rng = np.random.default_rng(1)
    cats = data.items["category"].str.slice(1).cast(pl.Int64).to_numpy()
    image = tuple(np.eye(N_CATS)[cats] + 0.3 * rng.normal(size=(N_ITEMS, N_CATS)))
    text = tuple(rng.normal(size=(N_ITEMS, 8)))
    codes = [list(rng.integers(0, 16, 32) + 16 * (c % 2)) for c in cats]
    ids = data.items["item_id"]
    return {"image_embeddings": pl.DataFrame({"item_id": ids, "efficientnet_lite0": [list(v) for v in image]}),
            "text_embeddings": pl.DataFrame({"item_id": ids, "sbert_text": [list(v) for v in text]}),
            "vq_codes": pl.DataFrame({"item_id": ids, "vq_codes": pl.Series(codes, dtype=pl.List(pl.Int32))})}


def sources_for(data: RecDataset) -> dict:
    out = {}
    for name, model in {"popularity_global": Popularity(), "item_knn": ItemKNN(ItemKNN.Config(neighbours=20)),
                        "ease": EASE()}.items():
        model.fit(data, ItemFeatures(), Compute(device="cpu"))  # train rows only, as the model assets fit
        out[name] = (f"{model.name}/default", model)
    return out


@pytest.fixture(scope="module")
def toy():
    split, items = toy_tables()
    data = RecDataset.from_tables("toy", split, items, repeats_relevant=True)
    return split, items, data, sources_for(data), toy_vectors(data)


def stage_features(data: RecDataset, stage: str, sources: dict, vectors) -> pl.DataFrame:
    s = ranker.make_stage(data, stage)
    config = ranker.RankerConfig(top_n=10)
    cands = ranker.candidates(s, {k: m for k, (_, m) in sources.items()}, config, data)
    return ranker.features(s, cands, data, vectors)


@pytest.mark.parametrize("stage", ["valid", "test"])
def test_no_feature_reads_a_row_after_the_cut(toy, stage):
    """Every row from the stage on (its labels and later) gets another item and time: the stage's candidates and
    features do not change, only the labels may. The sources stay the train-fitted models."""
    split, items, data, sources, vectors = toy
    later = ("valid", "test") if stage == "valid" else ("test",)
    rng = np.random.default_rng(5)
    moved = split.with_columns(
        pl.when(pl.col("split").is_in(later)).then(pl.Series([f"i{i:03d}" for i in rng.integers(0, N_ITEMS, split.height)]))
        .otherwise(pl.col("item_id")).alias("item_id"),
        pl.when(pl.col("split").is_in(later)).then(pl.col("ts") + pl.duration(days=3)).otherwise(pl.col("ts")).alias("ts"))
    changed = RecDataset.from_tables("toy", moved, items, repeats_relevant=True)
    a, b = (stage_features(d, stage, sources, vectors) for d in (data, changed))
    assert a.height > 0 and np.array_equal(data.user_ids, changed.user_ids)
    assert a.drop("label").equals(b.drop("label"))
    assert not a["label"].equals(b["label"])  # the perturbation did reach the labels
    # and each stage reads exactly the rows before it
    s = ranker.make_stage(data, stage)
    assert set(s.rows["split"].unique()) == ({"train"} if stage == "valid" else {"train", "valid"})
    assert s.cut < data.rows(stage)["t"].min()


def test_candidates_recall_and_families(toy):
    _, _, data, sources, vectors = toy
    table = stage_features(data, "test", sources, vectors)
    recall = ranker.candidate_recall(table, ranker.make_stage(data, "test").inputs, "test", ranker.RankerConfig(top_n=10))
    union = recall.filter(pl.col("source") == "union")["recall"][0]
    assert set(recall["source"]) == {"popularity_global", "item_knn", "ease", "repurchase", "union"}
    assert (recall["recall"] <= union + 1e-12).all() and union > 0
    assert table.group_by("row").len()["len"].max() <= 10 * 4  # at most N per source
    families = {ranker.family(c) for c in ranker.feature_columns(table)}
    assert families == {"sources", "repurchase", "user", "item", "category", "multimodal"}
    assert {"mm_image", "mm_text", "mm_vq"} <= set(table.columns)
    # a repurchase candidate is in the user's history: its count feature says how often
    rep = table.filter(pl.col("rank_repurchase").is_not_null())
    assert rep.height and (rep["rep_count"] >= 1).all() and (rep["score_repurchase"] == rep["rep_count"]).all()


def test_ranker_trains_and_produces_evaluator_rows(toy):
    split, items, _, _, _ = toy
    data = RecDataset.from_tables("toy", split, items)  # repeats not relevant: history masked, no repurchase
    sources, vectors = sources_for(data), toy_vectors(data)
    config = ranker.RankerConfig(top_n=15, num_leaves=(7,), max_rounds=30, early_stopping=10, min_data_in_leaf=5)
    run = ranker.run_ranker(data, sources, vectors, config)
    ok, meta = check_metrics(run.metrics, data.protocol)
    assert ok, meta
    assert set(run.metrics["variant"]) == set(ranker.VARIANTS)
    assert "repurchase" not in set(run.recall["source"])
    # every valid user is in one half; the @valid rows cover the holdout half, hits or not
    assert run.users["fit"] + run.users["holdout"] == len(data.eval_inputs("valid").users)
    valid_users = run.metrics.filter((pl.col("protocol") == "temporal@valid") & (pl.col("metric") == "users_evaluated"))
    assert (valid_users["value"] == run.users["holdout"]).all()
    fit_users = run.metrics.filter((pl.col("protocol") == "temporal@valid") & (pl.col("metric") == "users_dropped:ranker_fit"))
    assert (fit_users["value"] == run.users["fit"]).all()
    # its per-user `@valid` rows (the report compares every model on these users) are the holdout's
    valid_per_user = run.per_user.filter(pl.col("protocol") == "temporal@valid")
    assert sorted(valid_per_user.group_by("variant").len()["len"]) == [run.users["holdout"]] * len(ranker.VARIANTS)
    assert set(run.gains.filter(pl.col("variant") == "no_multimodal")["family"]) <= {"sources", "user", "item",
                                                                                     "category", "repurchase"}
    assert "sources" not in set(run.gains.filter(pl.col("variant") == "no_sources")["family"])
    # the ablation table: CIs around each mean, a paired test against a reference on the same users
    reference = run.per_user.filter(pl.col("variant") == "no_sources").with_columns(pl.lit("ref").alias("model"))
    table = ranker.ablation_table(pl.concat([run.per_user, reference]), run.metrics, "ref/no_sources")
    assert table.height == 4
    assert (table["ci_low"] <= table["test_ndcg@10"]).all() and (table["test_ndcg@10"] <= table["ci_high"]).all()
    assert table.filter(pl.col("name") == "ranker/full")["p_holm"][0] is not None
    versus_full = table.filter(pl.col("name").is_in(["ranker/no_multimodal", "ranker/no_sources"]))["p_holm_vs_full"]
    assert versus_full.is_not_null().all() and table.filter(pl.col("name") == "ranker/full")["p_holm_vs_full"][0] is None


def test_candidate_scores_rank_candidates_first():
    table = pl.DataFrame({"row": [0, 0, 1], "item": [3, 1, 2], "label": [0, 0, 0]})
    scorer = ranker.CandidateScores(np.array([10, 11]), table, np.array([-5.0, 2.0, 0.5]), n_items=5)
    s = scorer.score(np.array([11, 10]), [np.zeros(0)] * 2).numpy()
    assert s[1].argsort()[::-1][:2].tolist() == [1, 3]  # user 10: item 1 (2.0), then 3 (-5.0), then the rest
    assert (s[1][[0, 2, 4]] < -5.0).all() and s[0].argmax() == 2


def test_without_multimodal_features_no_multimodal_is_the_full_fit(toy):
    split, items, _, _, _ = toy
    data = RecDataset.from_tables("toy", split, items)
    config = ranker.RankerConfig(top_n=15, num_leaves=(7,), max_rounds=30, early_stopping=10, min_data_in_leaf=5)
    run = ranker.run_ranker(data, sources_for(data), ranker.ItemVectors({}, {}), config)
    rows = {v: run.metrics.filter(pl.col("variant") == v).drop("variant") for v in ("full", "no_multimodal")}
    assert rows["full"].equals(rows["no_multimodal"]) and run.chosen["full"] == run.chosen["no_multimodal"]
    assert "multimodal" not in set(run.gains["family"])


def test_sources_are_chosen_on_validation_skipping_nan():
    rows = [("ease", "default", 0.2), ("sasrec", "default", float("nan")), ("gru4rec", "default", 0.1),
            ("popularity", "global", 0.05), ("popularity", "recent", 0.3), ("ranker", "full", 0.9)]
    metrics = pl.DataFrame([{"model": m, "variant": v, "protocol": "temporal@valid", "metric": "ndcg", "k": 10,
                             "value": x} for m, v, x in rows])
    assert ranker.choose_sources(metrics) == {"ease": ("ease", "default"), "sequential": ("gru4rec", "default"),
                                              "popularity_global": ("popularity", "global"),
                                              "popularity_recent": ("popularity", "recent")}


def test_the_ranker_serves_from_its_saved_booster_over_retrained_sources(toy, tmp_path):
    """`recommendations` with the ranker as champion: each source retrained on every interaction from its
    checkpoint, candidates and features rebuilt with histories ending at the end of the data, the variant's
    booster (LightGBM's text format, sha256 checked) applied; every active user gets K items outside their
    history, ordered by the booster's scores over their candidates."""
    split, items, _, _, _ = toy
    data = RecDataset.from_tables("toy", split, items)
    sources, vectors = sources_for(data), toy_vectors(data)
    config = ranker.RankerConfig(top_n=15, num_leaves=(7,), max_rounds=30, early_stopping=10, min_data_in_leaf=5)
    run = ranker.run_ranker(data, sources, vectors, config)
    lake = tmp_path / "toy"
    source_models = {}
    for source, (name, model) in sources.items():  # the checkpoints the model assets save, with their fit report
        model_name, variant = name.split("/")
        checkpoint = ModelFolder(lake / "models" / model_name).variant(variant)
        model.save(checkpoint)
        write_json({}, Checkpoint(checkpoint).fit_report)
        source_models[source] = (type(model), checkpoint, {})
    ranker.save_variants(run, ModelFolder(lake / "models" / ranker.NAME), config)
    checkpoint = ModelFolder(lake / "models" / ranker.NAME).variant("full")
    assert Checkpoint(checkpoint).booster.read_text().startswith("tree")  # LightGBM's own text model

    serving_config = ServingConfig(k=10, active_days=0)
    facts = serving.serve_ranker(checkpoint, source_models, split, items, "toy", "temporal", False,
                                 toy_feature_tables(data), Compute(device="cpu"), lake, serving_config)
    recs = pl.read_parquet(facts["path"])
    everything = facts["data"]
    users = serving.active_users(everything, 0)
    checks = serving.check_recommendations(recs, everything, users, 10)
    assert all(ok for ok, _ in checks.values()), checks
    # the features read every interaction: the stage's cut is the last one, not the test stage's
    stage = ranker.serving_stage(everything, users)
    assert stage.cut == int(everything.split["t"].max()) > ranker.make_stage(data, "test").cut
    # each user's first item is their best candidate by the saved booster over the retrained sources' features
    booster, meta = ranker.load_variant(checkpoint)
    retrained = {s: serving.retrain(cls, c, everything, {}, Compute(device="cpu"))[0]
                 for s, (cls, c, _) in source_models.items()}
    scorer = ranker.serving_scores(everything, users, retrained, vectors, booster, meta)
    scores = scorer.score(users, [np.zeros(0)] * len(users)).float().numpy()
    position = {str(everything.user_ids[u]): i for i, u in enumerate(users)}
    index = {item: j for j, item in enumerate(everything.items["item_id"].to_list())}
    first = recs.filter(pl.col("rank") == 1)
    best = [scores[position[u], index[i]] for u, i in first.select("user_id", "item_id").iter_rows()]
    assert np.array_equal(best, scores[[position[u] for u in first["user_id"]]].max(axis=1))
    assert np.allclose(first["score"].to_numpy(), best)
    Checkpoint(checkpoint).booster.write_text(Checkpoint(checkpoint).booster.read_text() + " ")
    with pytest.raises(CorruptFileError):
        ranker.load_variant(checkpoint)
