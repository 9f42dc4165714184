"""Classic baselines on the generated `sample`: each trains, round-trips through safetensors, and the
collaborative ones beat popularity under full-catalog ranking."""

import numpy as np
import polars as pl
import pytest
import torch

from mmrec_pipeline.compute import Compute
from mmrec_pipeline.evaluation.protocols import evaluate_model, headline
from mmrec_pipeline.models import CLASSIC
from mmrec_pipeline.models.base import ItemFeatures, history_matrix


@pytest.fixture(scope="module")
def trained(sample_dataset, tmp_path_factory):
    out = {}
    for name, cls in CLASSIC.items():
        for variant, overrides in cls.variants.items():
            model = cls(cls.Config(**overrides))
            model.fit(sample_dataset, ItemFeatures(), Compute(device="cpu"))
            table, _ = evaluate_model(model, sample_dataset, name, variant, sampled=None)
            out[(name, variant)] = (model, headline(table)[variant])
    return out


def test_save_load_gives_identical_scores(trained, sample_dataset, tmp_path):
    inputs = sample_dataset.eval_inputs("test")
    users, history = inputs.users[:32], inputs.history[:32]
    for (name, variant), (model, _) in trained.items():
        path = model.save(tmp_path / name / variant)
        again = type(model).load(path)
        again.at_stage(sample_dataset, "test")  # the checkpoint holds the fitted state; ranking a stage adapts it
        assert torch.allclose(model.score(users, history), again.score(users, history)), name
        assert not list(path.glob("*.pkl")) and (path / "model.safetensors").exists()


@pytest.mark.parametrize("name", ["item_knn", "bpr_mf", "ease"])
def test_collaborative_models_beat_popularity(trained, name):
    popularity = trained[("popularity", "global")][1]
    assert trained[(name, "default")][1] > popularity, {k: round(v, 4) for k, (_, v) in trained.items()}


def test_best_classic_model_is_well_above_popularity(trained):
    popularity = trained[("popularity", "global")][1]
    best = max(v for (m, _), (_, v) in trained.items() if m != "popularity")
    assert best >= 1.2 * popularity


def test_scores_cover_the_whole_catalog(trained, sample_dataset):
    inputs = sample_dataset.eval_inputs("test")
    for (name, _), (model, _) in trained.items():
        s = model.score(inputs.users[:4], inputs.history[:4])
        assert s.shape == (4, sample_dataset.n_items) and torch.isfinite(s).all(), name
        assert np.unique(s[0].numpy()).size > 1 or name == "popularity"


def test_item_knn_score_is_the_history_times_the_neighbour_similarities(trained, sample_dataset):
    model = trained[("item_knn", "default")][0]
    n = sample_dataset.n_items
    sim = torch.zeros(n, n)
    sim.scatter_(1, model.neighbour_idx, model.neighbour_sim)  # row i: item i's neighbours
    history = [np.array([3, 1, 3]), np.zeros(0, dtype=np.int64), np.arange(n)]  # a repeat counts once
    expected = history_matrix(history, n) @ sim
    assert torch.allclose(model.score(np.arange(3), history), expected, rtol=1e-5, atol=1e-6)
    assert not model.score(np.arange(3), history)[1].any()


def test_recent_popularity_window_ends_where_the_ranked_histories_end():
    """Recent popularity ranks validation with the window ending at the training cut, and test with it ending at
    the end of the valid period, where every other model's input history ends; global counts stay train's."""
    import datetime as dt

    import polars as pl

    from mmrec_pipeline.data.dataset import RecDataset
    from mmrec_pipeline.models.popularity import Popularity

    day = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    rows = ([("a", "i0", 0, "train"), ("b", "i0", 1, "train"), ("c", "i1", 2, "train")]
            + [(u, "i2", 40, "valid") for u in "abc"] + [("a", "i3", 50, "test"), ("b", "i3", 50, "test")])
    split = pl.DataFrame({"user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows],
                          "ts": [day + dt.timedelta(days=r[2]) for r in rows], "split": [r[3] for r in rows]})
    items = pl.DataFrame({"item_id": [f"i{i}" for i in range(4)], "title": ["t"] * 4, "description": [""] * 4,
                          "category": ["c"] * 4})
    data = RecDataset.from_tables("w", split, items)
    recent = Popularity(Popularity.Config(window_days=30))
    recent.fit(data, ItemFeatures(), Compute(device="cpu"))
    assert recent.counts.tolist() == [2, 1, 0, 0]  # validation: the 30 days before the training cut
    evaluate_model(recent, data, "popularity", "recent", sampled=None, cold=False)  # test
    assert recent.stage_counts.tolist() == [0, 0, 3, 0]  # the 30 days before the end of valid: the valid burst
    assert recent.counts.tolist() == [2, 1, 0, 0]  # the fitted counts (the checkpoint's) stay
    evaluate_model(recent, data, "popularity", "recent", sampled=None, stage="valid")
    assert recent.stage_counts.tolist() == [2, 1, 0, 0]
    glob = Popularity(Popularity.Config())
    glob.fit(data, ItemFeatures(), Compute(device="cpu"))
    evaluate_model(glob, data, "popularity", "global", sampled=None, cold=False)
    assert glob.counts.tolist() == [2, 1, 0, 0]


def test_item_features_take_numeric_lists_only():
    """A feature table's list of review ids (review_summaries) is not read as a vector."""
    import datetime as dt

    import polars as pl

    from mmrec_pipeline.data.dataset import RecDataset

    split = pl.DataFrame({"user_id": ["a"], "item_id": ["i0"], "ts": [dt.datetime(2024, 1, 1, tzinfo=dt.UTC)],
                          "split": ["train"]})
    items = pl.DataFrame({"item_id": ["i0", "i1"], "title": ["t"] * 2, "description": [""] * 2, "category": ["c"] * 2})
    table = pl.DataFrame({"item_id": ["i0", "i1"], "sbert_reviews": [[0.5, 1.0], None],
                          "review_ids": [["3fa1", "9b2c"], []]})
    feats = ItemFeatures.from_table(RecDataset.from_tables("f", split, items), table)
    assert list(feats.vectors) == ["sbert_reviews"] and feats.present["sbert_reviews"].tolist() == [True, False]


def test_item_features_are_typed_by_the_modality_of_the_asset_they_come_from(sample_dataset):
    """One assembly (training and serving): image vectors under `image`, caption and summary sentence vectors
    under their own modality, VQ codes under `vq_codes`; every column stays reachable by name."""
    from mmrec_pipeline.models.base import item_features

    ids = sample_dataset.items["item_id"]
    def table(**cols):
        return pl.DataFrame({"item_id": ids, **{c: [[float(i), 1.0] for i in range(len(ids))] for c in cols}})
    feats = item_features(sample_dataset, {
        "image_embeddings": table(efficientnet_lite0=1),
        "text_embeddings": table(sbert_text=1, sbert_caption_offline=1, sbert_title_caption_offline=1,
                                 sbert_summary=1),
        "review_summaries": table(sbert_reviews=1), "vq_codes": table(vq_codes=1), "unknown": None})
    assert list(feats.image) == ["efficientnet_lite0"] and list(feats.text) == ["sbert_text"]
    assert list(feats.caption) == ["sbert_caption_offline", "sbert_title_caption_offline"]
    assert list(feats.summary) == ["sbert_summary", "sbert_reviews"] and list(feats.vq_codes) == ["vq_codes"]
    assert feats.image["efficientnet_lite0"].shape == (sample_dataset.n_items, 2)
    assert feats.get("sbert_text") is feats.text["sbert_text"]
    with pytest.raises(ValueError, match="unknown modality"):
        feats.of("audio")


def test_recent_popularity_checkpoint_keeps_the_training_window(sample_dataset, tmp_path):
    """Ranking test moves recent popularity's window to the end of valid; the checkpoint still holds the counts
    fitted on train, so a model loaded from it (the ranker's sources) reads no valid-period row at the valid stage."""
    from mmrec_pipeline.models.popularity import Popularity

    model = Popularity(window_days=14)
    model.fit(sample_dataset, None, None)
    trained = model.counts.clone()
    model.at_stage(sample_dataset, "test")
    assert not torch.equal(model.stage_counts, trained)
    again = Popularity.load(model.save(tmp_path / "recent"))
    assert torch.equal(again.counts, trained)
