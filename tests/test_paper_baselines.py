"""VBPR and DeepCoNN (the MM-GPT2Rec paper's baselines, trained for real) and the seed audit's table."""

import numpy as np
import polars as pl
import pytest
import torch

from mmrec_pipeline.compute import Compute
from mmrec_pipeline.data.dataset import RecDataset
from mmrec_pipeline.evaluation.audit import audit_table, published_systems, validation_best
from mmrec_pipeline.models import MODELS
from mmrec_pipeline.models.base import ItemFeatures, MissingFeature, PaperClaim
from mmrec_pipeline.models.deepconn import DeepCoNN
from mmrec_pipeline.models.vbpr import VBPR

TINY_DEEPCONN = {"epochs": 2, "doc_len": 32, "word_dim": 16, "filters": 16, "vocab": 2000}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def vbpr(sample_dataset):
    """Trained on stand-in image vectors (fixed random, a tenth of the items without one): the mechanics under
    test do not depend on what the vectors encode, and the CNN features would cost a minute to compute."""
    rng = np.random.default_rng(0)
    present = rng.random(sample_dataset.n_items) > 0.1
    vectors = rng.random((sample_dataset.n_items, 48)).astype(np.float32) * present[:, None]
    features = ItemFeatures({"resnet18": vectors}, {"resnet18": present}, {"resnet18": "image"})
    model = VBPR(VBPR.Config(dim=16, visual_dim=8, epochs=4, eval_every=2))
    return model, model.fit(sample_dataset, features, Compute(device="cpu"))


def test_vbpr_scores_unseen_items_through_their_images(vbpr, sample_dataset, tmp_path):
    model, report = vbpr
    assert np.isfinite(report["curve"][-1]["valid_ndcg@10"])
    inputs = sample_dataset.eval_inputs("test")
    users, history = inputs.users[:16], inputs.history[:16]
    again = VBPR.load(model.save(tmp_path / "vbpr"))
    assert torch.allclose(model.score(users, history), again.score(users, history))
    # The image projection is learned (not left at its start) and separates items BPR-MF cannot tell apart.
    assert model.visual_bias.abs().max() > 0 and model.visual_item.std() > 0
    unseen = np.setdiff1d(np.arange(sample_dataset.n_items), sample_dataset.train["item_idx"].unique().to_numpy())
    assert len(unseen) and len(np.unique(model.visual_bias[unseen].numpy().round(6))) > 1


def test_vbpr_without_images_names_the_feature_asset(sample_dataset):
    with pytest.raises(MissingFeature, match="image_embeddings"):
        VBPR(VBPR.Config(epochs=1)).fit(sample_dataset, ItemFeatures(), Compute(device="cpu"))


def test_deepconn_learns_ratings_from_training_reviews_only(sample_tables, sample_dataset, tmp_path):
    model = DeepCoNN(DeepCoNN.Config(**TINY_DEEPCONN))
    report = model.fit(sample_dataset, ItemFeatures(), Compute(device="cpu"))
    assert np.isfinite(report["curve"][-1]["valid_ndcg@10"])
    # The regression learned from the text: its training-pair predictions beat the mean rating.
    train = sample_dataset.train
    users, items = (torch.as_tensor(train[c].to_numpy().copy()) for c in ("user_idx", "item_idx"))
    ratings = train["rating"].to_numpy()
    model.net.eval()
    with torch.no_grad():
        pred = model.net.pairs(model.net.user_tower(model.user_docs[users]),
                               model.net.item_tower(model.item_docs[items])).numpy()
    assert np.mean((pred - ratings) ** 2) < 0.95 * ratings.var()
    inputs = sample_dataset.eval_inputs("test")
    again = DeepCoNN.load(model.save(tmp_path / "deepconn"))
    assert torch.allclose(model.score(inputs.users[:16], inputs.history[:16]),
                          again.score(inputs.users[:16], inputs.history[:16]))
    # Reviews written in valid/test never reach a document: rewriting them leaves the documents unchanged.
    tables, split = sample_tables
    later = pl.col("split") != "train"
    altered = RecDataset.from_tables("sample", split.with_columns(
        pl.when(later).then(pl.lit("zebra zebra zebra")).otherwise(pl.col("review_text")).alias("review_text")),
        tables.items)
    other = DeepCoNN(DeepCoNN.Config(**TINY_DEEPCONN))
    other.build_documents(altered)
    assert torch.equal(other.user_docs, model.user_docs) and torch.equal(other.item_docs, model.item_docs)


def test_audit_reads_the_validation_best_variant_and_the_reproduced_protocol():
    claim = PaperClaim(system="S", source="x.txt", claim="HR@5 = 0.8", protocol="sampled", metric="hr", k=5,
                       value=0.8, reproduce={"sampled": "{protocol}+sampled:100"}, baselines=("vbpr",))
    rows = [("m", "a", "temporal@valid", "ndcg", 10, 0.02), ("m", "b", "temporal@valid", "ndcg", 10, 0.03),
            ("m", "a", "temporal", "hr", 5, 0.30), ("m", "b", "temporal", "hr", 5, 0.20),  # a is best on test
            ("m", "b", "temporal+sampled:100", "hr", 5, 0.70), ("vbpr", "default", "temporal", "hr", 5, 0.10)]
    metrics = pl.DataFrame(rows, schema=["model", "variant", "protocol", "metric", "k", "value"], orient="row")
    t = audit_table(metrics, "m", claim, "temporal")
    ours = t.filter(pl.col("row") == "ours")
    assert ours["model"].to_list() == ["m/b", "m/b"]  # chosen on validation, not on test
    assert ours["hr@5"].to_list() == [0.70, 0.20]
    baseline = t.filter(pl.col("row").str.starts_with("baseline"))
    assert baseline["hr@5"].to_list() == [None, 0.10]
    assert "not computed" in baseline["measured as"][0]
    assert t["protocol"].to_list()[:3] == ["the paper's own", "temporal+sampled:100", "temporal+sampled:100"]
    assert {"mm_llmrec", "lvlm_retrieval"} <= set(published_systems(MODELS))


def test_audit_never_picks_a_variant_whose_validation_value_is_nan():
    rows = [("m", "a", "temporal@valid", "ndcg", 10, float("nan")), ("m", "b", "temporal@valid", "ndcg", 10, 0.01)]
    metrics = pl.DataFrame(rows, schema=["model", "variant", "protocol", "metric", "k", "value"], orient="row")
    assert validation_best(metrics, "m", "temporal") == "b"


def test_audit_never_sets_a_refit_row_beside_a_published_figure():
    """A claim whose reproduction names a `+refit` protocol is refused: refit rows are a protocol of their own."""
    claim = PaperClaim(system="S", source="x.txt", claim="NDCG@10 = 0.058", protocol="loo", metric="ndcg", k=10,
                       value=0.058, reproduce={"refit": "{protocol}+refit"}, protocol_name="loo")
    rows = [("m", "a", "loo@valid", "ndcg", 10, 0.06), ("m", "a", "loo+refit", "ndcg", 10, 0.066)]
    metrics = pl.DataFrame(rows, schema=["model", "variant", "protocol", "metric", "k", "value"], orient="row")
    with pytest.raises(ValueError, match="protocol of its own"):
        audit_table(metrics, "m", claim, "loo")
