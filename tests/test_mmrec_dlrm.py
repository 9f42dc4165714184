"""mmrec_dlrm and the review summaries it reads: no review after the training cut reaches a summary, the refresh
policy, the weighted losses, and a tiny TorchRec DLRM that trains, ranks and round-trips its checkpoint."""

import datetime as dt
import importlib.util
import json
import math

import numpy as np
import polars as pl
import pytest
import torch

from mmrec_pipeline.compute import Compute
from mmrec_pipeline.data.dataset import RecDataset
from mmrec_pipeline.features import summaries
from mmrec_pipeline.models.base import ItemFeatures, MissingFeature
from mmrec_pipeline.storage import Lake
from mmrec_pipeline.weights import ModelSources

# find_spec, not importorskip: importing torchrec (1.7 s) at collection would cost both xdist workers
pytestmark = pytest.mark.skipif(importlib.util.find_spec("torchrec") is None, reason="torchrec is not installed")

from mmrec_pipeline.evaluation.sections.mmrec_dlrm import report_note, report_table
from mmrec_pipeline.models.mmrec_dlrm import (
    MMRecDLRM,
    pos_weight,
    weighted_bce,
)

CPU = Compute(device="cpu")


def _day(d: int) -> dt.datetime:
    return dt.datetime(2024, 1, 1, tzinfo=dt.UTC) + dt.timedelta(days=d)


@pytest.fixture
def echo_summarizer(monkeypatch):
    """The summarizer replaced by one that copies its input reviews, so a test sees exactly what it read."""
    monkeypatch.setattr(summaries, "load_summarizer", lambda *a, **k: (None, None))
    monkeypatch.setattr(summaries, "summarize", lambda model, tok, reviews, cfg, compute: [" | ".join(r) for r in reviews])


def _reviews(item_id: str, days: list[int], stage: str, text: str = "fine") -> pl.DataFrame:
    return pl.DataFrame({"user_id": [f"u{item_id}{d}" for d in days], "item_id": [item_id] * len(days),
                         "ts": [_day(d) for d in days], "review_title": ["t"] * len(days),
                         "review_text": [f"{text} {d}" for d in days], "split": [stage] * len(days)})


ITEMS = pl.DataFrame({"item_id": ["A", "B", "C"], "description": ["Red shirt.", "Blue mug.", "Plain lamp."]})


def test_review_after_the_cut_never_reaches_a_summary(echo_summarizer, tmp_path, monkeypatch):
    split = pl.concat([_reviews("A", [1, 2], "train"), _reviews("B", [3], "train"),
                       _reviews("A", [40], "valid", "LEAK"), _reviews("B", [50], "test", "LEAK")])
    out, stats = summaries.review_summaries(ITEMS, split, ModelSources(), CPU, Lake(tmp_path).feature_cache())
    assert not any("LEAK" in s for s in out["summary"].to_list())
    assert out["n_reviews"].to_list() == [2, 1, 0] and out["n_reviews_summarised"].to_list() == [2, 1, 0]
    assert out["summary_source"].to_list() == ["reviews", "reviews", "description"]
    assert stats["training_cut"] == _day(3).isoformat() and stats["computed"] == 2
    assert summaries.check_training_only(out, split)[0]  # the asset check on review_summaries
    assert not summaries.check_training_only(out.with_columns(pl.col("n_reviews") + 1), split)[0]
    # the ids of the reviews each summary read: A's two training reviews, B's one, none for a description
    ids = summaries.review_rows(split)
    train_ids = {i: set(ids.filter((pl.col("item_id") == i) & (pl.col("split") == "train"))["review_id"])
                 for i in "AB"}
    assert [set(x) for x in out["review_ids"].to_list()] == [train_ids["A"], train_ids["B"], set()]
    ok, meta = summaries.check_training_only(out, split)
    assert meta["review_ids_read"] == 3 and meta["review_ids_not_training"] == 0
    # same counts, but one id read is A's valid-period review: the ids prove the leak the counts cannot see
    leak = ids.filter(pl.col("split") == "valid")["review_id"][0]
    swapped = out.with_columns(pl.when(pl.col("item_id") == "A").then(pl.lit([leak, min(train_ids["A"])]))
                               .otherwise(pl.col("review_ids")).alias("review_ids"))
    ok, meta = summaries.check_training_only(swapped, split)
    assert not ok and meta["leaked_ids"] == [{"item_id": "A", "review_id": leak, "split": "valid"}]
    # the raw-review vectors read the same training rows only: a fake encoder marks a leaked text with 1.0
    def fake_sbert(long, *args):
        vectors = [[1.0 if "LEAK" in t else 0.0, 1.0] for t in long["text"].to_list()]
        return pl.DataFrame({"vector": pl.Series(vectors, dtype=pl.List(pl.Float32))}), {}

    monkeypatch.setattr("mmrec_pipeline.features.text.sbert_vectors", fake_sbert)
    raw, _ = summaries.raw_review_vectors(ITEMS, split, ModelSources(), CPU, Lake(tmp_path).feature_cache(), max_reviews=3)
    assert raw["sbert_reviews"].to_list() == [[0.0, 1.0], [0.0, 1.0], None]
    # unsplit interactions are refused: they would leak valid/test reviews
    with pytest.raises(ValueError, match="split"):
        summaries.review_summaries(ITEMS, split.drop("split"), ModelSources(), CPU, Lake(tmp_path).feature_cache())
    # the training cut is part of the key: same reviews under a later cut are a new key (kept by the policy)
    later = pl.concat([split, _reviews("C", [9], "train")])
    out, stats = summaries.review_summaries(ITEMS, later, ModelSources(), CPU, Lake(tmp_path).feature_cache())
    assert stats["reused"] == 0 and stats["kept_stale"] == 2 and stats["computed"] == 1


def test_summary_refreshes_only_when_reviews_grew_enough(echo_summarizer, tmp_path):
    cfg = summaries.SummaryConfig(refresh_share=0.2, refresh_reviews=5)
    base = _reviews("A", list(range(10)), "train")
    out, _ = summaries.review_summaries(ITEMS, base, ModelSources(), CPU, Lake(tmp_path).feature_cache(), config=cfg)
    first = out["summary"][0]
    # one more review (10%, < 5): the cached summary stays, and says it covers 10 of 11 reviews
    out, stats = summaries.review_summaries(ITEMS, pl.concat([base, _reviews("A", [20], "train")]), ModelSources(),
                                            CPU, Lake(tmp_path).feature_cache(), config=cfg)
    assert out["summary"][0] == first and stats["kept_stale"] == 1 and stats["computed"] == 0
    assert (out["n_reviews"][0], out["n_reviews_summarised"][0]) == (11, 10)
    # two more (20% of 10): refreshed
    grown = pl.concat([base, _reviews("A", [20, 21], "train")])
    out, stats = summaries.review_summaries(ITEMS, grown, ModelSources(), CPU, Lake(tmp_path).feature_cache(), config=cfg)
    assert stats["computed"] == 1 and "fine 21" in out["summary"][0] and out["n_reviews_summarised"][0] == 12
    # an earlier cut: no cached summary that read a now non-training review may be kept
    early = pl.concat([_reviews("A", list(range(9)), "train"), _reviews("A", [9, 20, 21], "valid")])
    out, stats = summaries.review_summaries(ITEMS, early, ModelSources(), CPU, Lake(tmp_path).feature_cache(), config=cfg)
    assert stats["computed"] == 1 and "fine 9" not in out["summary"][0] and "fine 20" not in out["summary"][0]


def test_weighted_losses_equal_a_hand_computation():
    logits = torch.tensor([2.0, -1.0, 0.5, -0.3, 1.2])
    labels = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0])
    n_pos, n_neg = 3, 2
    for loss, w in (("none", 1.0), ("basic", 2 / 3), ("sqrt", math.sqrt(2 / 3))):
        assert pos_weight(loss, n_pos, n_neg) == pytest.approx(w)
        p = [1 / (1 + math.exp(-x)) for x in logits.tolist()]
        hand = -sum(w * y * math.log(q) + (1 - y) * math.log(1 - q) for y, q in zip(labels.tolist(), p)) / 5
        assert weighted_bce(logits, labels, w).item() == pytest.approx(hand, rel=1e-6)
    with pytest.raises(ValueError, match="unknown loss"):
        pos_weight("focal", 1, 1)


def _tiny(ratings: bool = True, seed: int = 0) -> tuple[RecDataset, ItemFeatures]:
    rng = np.random.default_rng(seed)
    n_users, n_items = 30, 24
    items = pl.DataFrame({"item_id": [f"i{j:02d}" for j in range(n_items)], "title": ["t"] * n_items,
                          "description": ["d"] * n_items, "category": [f"c{j % 3}" for j in range(n_items)],
                          "attributes": [json.dumps({"colour": ["red", "blue"][j % 2]}) for j in range(n_items)]})
    rows = [(f"u{u:02d}", f"i{j:02d}", _day(d)) for u in range(n_users) for d, j in
            enumerate(rng.choice(n_items, 8, replace=False))]
    split = pl.DataFrame(rows, schema=["user_id", "item_id", "ts"], orient="row").with_columns(
        pl.when(pl.col("ts") < _day(5)).then(pl.lit("train")).when(pl.col("ts") < _day(6)).then(pl.lit("valid"))
        .otherwise(pl.lit("test")).alias("split"))
    # rating follows a hidden item quality that the "summary" vector reveals
    quality = rng.normal(size=n_items)
    item_index = split["item_id"].str.slice(1).cast(pl.Int64).to_numpy()
    rating = np.clip(np.round(3.5 + 1.5 * quality[item_index] + rng.normal(0, 0.5, split.height)), 1, 5)
    split = split.with_columns(pl.Series("rating", rating if ratings else [None] * split.height, dtype=pl.Float64))
    data = RecDataset.from_tables("tiny", split, items)
    feats = ItemFeatures()
    for col in ("sbert_title", "sbert_description", "sbert_summary", "sbert_caption_offline", "sbert_reviews"):
        vec = rng.normal(size=(n_items, 8)).astype(np.float32)
        if col == "sbert_summary":
            vec[:, 0] = quality
        feats.vectors[col], feats.present[col] = vec, np.ones(n_items, dtype=bool)
    return data, feats


def test_tiny_dlrm_trains_ranks_and_round_trips_its_checkpoint(tmp_path):
    data, feats = _tiny()
    model = MMRecDLRM(modalities="full", loss="basic", dropouts="0.1,0.5", epochs=3, patience=3, batch_size=32,
                      embedding_dim=4, reduce_dim=4, dense_hidden=8, over_hidden="8")
    report = model.fit(data, feats, CPU)
    assert [t["dropout"] for t in report["dropout_grid"]] == [0.1, 0.5]
    assert model.config.dropout in (0.1, 0.5) and report["criterion"] == "valid_auc"
    chosen = next(t for t in report["dropout_grid"] if t["dropout"] == model.config.dropout)
    assert report["best_epoch"] == chosen["best_epoch"] >= 1  # top level: what a refit / serving retrain reads
    assert report["sparse_features"] == ["user", "item", "category", "attr_colour"]
    # the metadata says how many items have each vector read (a budget-limited summary run leaves fewer)
    assert report["metadata"]["items with sbert_summary"] == f"{data.n_items} of {data.n_items}"
    curve = report["curve"]
    assert curve[-1]["loss"] < curve[0]["loss"]  # it learns
    # the pointwise protocol: the paper's metrics, as rows of the long metrics table
    rows = model.extra_metrics(data, "mmrec_dlrm", "full-basic")
    assert set(rows["metric"]) >= {"auc", "accuracy", "fpr", "logloss"}
    assert rows["protocol"].unique().to_list() == ["pointwise:rating>=4"]
    # ranking: the per-user/per-item fast path equals DLRM's own forward pass on every pair
    users, history = np.array([0, 3]), [np.array([1, 2]), np.array([5])]
    scores = model.score(users, history)
    assert scores.shape == (2, data.n_items)
    pairs_u, pairs_i = np.repeat(users, data.n_items), np.tile(np.arange(data.n_items), 2)
    with torch.no_grad():
        ref = model.logits(torch.as_tensor(pairs_u), torch.as_tensor(pairs_i),
                           [v[torch.as_tensor(np.repeat([0, 1], data.n_items))] for v in model.user_means(history)])
    torch.testing.assert_close(scores.reshape(-1), ref, atol=1e-5, rtol=1e-5)
    # checkpoint: config.json + model.safetensors only, same scores after loading
    model.save(tmp_path / "ck")
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["config.json", "model.safetensors"]
    loaded = MMRecDLRM.load(tmp_path / "ck")
    torch.testing.assert_close(loaded.score(users, history), scores)


def test_without_ratings_it_ranks_and_skips_the_pointwise_protocol():
    data, feats = _tiny(ratings=False)
    model = MMRecDLRM(modalities="summary", loss="sqrt", dropouts="0.3", epochs=1, batch_size=64,
                      embedding_dim=4, reduce_dim=4, dense_hidden=8, over_hidden="8")
    report = model.fit(data, feats, CPU)
    assert report["criterion"] == "valid_ndcg@10" and not report["has_ratings"]
    assert report["training_examples"] == 5 * data.rows("train").height  # purchases + 4 sampled each
    assert model.extra_metrics(data, "mmrec_dlrm", "summary-sqrt").height == 0
    table = report_table(pl.DataFrame({"model": ["mmrec_dlrm"], "variant": ["summary-sqrt"], "protocol": ["temporal"],
                                       "metric": ["ndcg"], "k": [10], "value": [0.1]}))
    assert "no ratings" in report_note(table, None, "full catalog")
    # a variant whose vectors the dataset lacks is skipped with the asset to materialize
    del feats.vectors["sbert_reviews"], feats.present["sbert_reviews"]
    with pytest.raises(MissingFeature, match="review_summaries"):
        MMRecDLRM(modalities="raw").fit(data, feats, CPU)


def test_report_table_and_note_compare_full_with_raw_reviews():
    rows = []
    for variant, (fpr, auc) in {"raw-sqrt": (0.4, 0.70), "full-sqrt": (0.3, 0.72)}.items():
        rows += [("mmrec_dlrm", variant, "pointwise:rating>=4", "fpr", None, fpr),
                 ("mmrec_dlrm", variant, "pointwise:rating>=4", "auc", None, auc),
                 ("mmrec_dlrm", variant, "temporal", "ndcg", 10, 0.05)]
    metrics = pl.DataFrame(rows, schema=["model", "variant", "protocol", "metric", "k", "value"], orient="row")
    table = report_table(metrics, {"raw-sqrt": 0.1, "full-sqrt": 0.5})
    assert table.columns == ["variant", "fpr", "auc", "ndcg@10", "dropout"]
    note = report_note(table, 4.0, "full catalog")
    assert "training-period reviews only" in note
    assert "full-sqrt vs raw-sqrt: FPR 0.3000 vs 0.4000, AUC 0.7200 vs 0.7000: lower FPR" in note


def test_seed_audit_puts_the_papers_fpr_beside_our_pointwise_row_and_says_where_it_has_none():
    from mmrec_pipeline.evaluation.audit import audit_table

    rows = [("mmrec_dlrm", "full-sqrt", "pointwise:rating>=4", "fpr", None, 0.5),
            ("mmrec_dlrm", "full-sqrt", "temporal", "ndcg", 10, 0.05),
            ("mmrec_dlrm", "full-sqrt", "temporal@valid", "ndcg", 10, 0.06)]
    metrics = pl.DataFrame(rows, schema=["model", "variant", "protocol", "metric", "k", "value"], orient="row")
    table = audit_table(metrics, "mmrec_dlrm", MMRecDLRM.paper, "temporal")
    assert table["fpr"].to_list() == [0.1816, 0.5, None]  # paper, ours (pointwise), ours (ranking: no FPR)
    assert "fpr not computed under `temporal`" in table["measured as"][2]
    assert table["protocol"].to_list() == ["pointwise, split not stated", "pointwise:rating>=4", "temporal"]
    no_ratings = audit_table(metrics.filter(pl.col("protocol") != "pointwise:rating>=4"), "mmrec_dlrm",
                             MMRecDLRM.paper, "temporal")
    assert no_ratings["fpr"].to_list() == [0.1816, None, None]
