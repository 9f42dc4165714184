"""vq_bart: code pooling, the FAISS index against exact search, and a tiny fit with a checkpoint round trip."""

import dataclasses

import numpy as np
import pytest
import torch

from mmrec_pipeline.compute import Compute
from mmrec_pipeline.models.base import ItemFeatures, MissingFeature
from mmrec_pipeline.models.vq_bart import VectorIndex, VQBart, item_texts, pool_codes
from mmrec_pipeline.storage import Lake

TINY = {"d_model": 32, "layers": 1, "heads": 2, "ffn": 64, "max_item_tokens": 8, "max_target_tokens": 8,
        "epochs": 1, "examples_per_epoch": 128, "batch_size": 32, "valid_users": 16, "history": 3}


def test_pool_codes_takes_the_most_frequent_code_of_each_block():
    grid = np.zeros((16, 16), dtype=np.int64)
    grid[:8, 8:] = 5  # top-right quarter
    grid[8:, :8] = 7  # bottom-left quarter
    grid[0, 0] = 9  # a minority code inside the top-left block does not win it
    pooled = pool_codes(grid.reshape(1, -1), 2)
    assert pooled.tolist() == [[0, 5, 7, 0]]
    assert pool_codes(grid.reshape(1, -1), 16).shape == (1, 256)


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_vector_index_returns_the_exact_top_k(kind):
    rng = np.random.default_rng(0)
    catalog = rng.normal(size=(400, 24)).astype(np.float32)
    catalog /= np.linalg.norm(catalog, axis=1, keepdims=True)
    queries = catalog[rng.choice(400, 15, replace=False)] + 0.3 * rng.normal(size=(15, 24)).astype(np.float32)
    exact = np.argsort(-(queries @ catalog.T), axis=1, kind="stable")[:, :10]
    index = VectorIndex(catalog, kind=kind)
    _, found = index.search(queries, 10)
    assert index.kind == kind
    assert (found == exact).all()
    # full-catalog scores rank the same items first
    scores = index.scores(queries, k=10)
    assert scores.shape == (15, 400)
    assert (torch.topk(scores, 10).indices.numpy() == exact).all()


def test_item_texts_name_title_category_and_attributes(sample_dataset):
    text = item_texts(sample_dataset.items.head(50))
    row = sample_dataset.items.row(0, named=True)
    assert text[0].startswith(row["title"]) and row["category"] in text[0]
    assert any("budget" in t or "premium" in t or "mid" in t for t in text)  # price band from `attributes`


@pytest.fixture(scope="module")
def fake_codes(sample_dataset):
    """Fixed pseudo-random image codes (a real VQ-VAE is too slow for a unit test); a few items lack images."""
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 32, size=(sample_dataset.n_items, 256)).astype(np.float32)
    present = np.ones(sample_dataset.n_items, dtype=bool)
    present[:5] = False
    codes[~present] = 0
    return ItemFeatures({"vq_codes": codes}, {"vq_codes": present})


def test_image_variant_needs_vq_codes(sample_dataset):
    with pytest.raises(MissingFeature, match="vq_codes"):
        VQBart(use_image=True, **TINY).fit(sample_dataset, ItemFeatures(), Compute(device="cpu"))


@pytest.fixture(scope="module")
def tiny_image_model(sample_dataset, fake_codes):
    model = VQBart(use_image=True, image_grid=2, **TINY)
    model.feature_cache = Lake().feature_cache()  # the session's lake (MMREC_HOME)
    return model, model.fit(sample_dataset, fake_codes, Compute(device="cpu"))


def test_tiny_fit_and_checkpoint_round_trip(sample_dataset, fake_codes, tiny_image_model, tmp_path):
    model, report = tiny_image_model
    assert report["epochs"] == 1 and report["image_tokens_per_item"] == 4 and np.isfinite(report["curve"][0]["loss"])
    # inputs hold the image tokens of every item that has an image, none for the others
    tok = model.item_tokens
    assert ((tok >= model.vocab.image_offset).sum(1)[:-1] == torch.where(
        torch.from_numpy(fake_codes.present["vq_codes"]), 4, 0)).all()

    inputs = sample_dataset.eval_inputs("test")
    users, history = inputs.users[:12], inputs.history[:12]
    scores = model.score(users, history)
    assert scores.shape == (12, sample_dataset.n_items) and torch.isfinite(scores).all()  # exact index: all items
    texts = model.generate(history)

    loaded = VQBart.load(model.save(tmp_path / "image"))
    assert loaded.generate(history) == texts
    assert torch.allclose(loaded.score(users, history), scores, atol=1e-6)

    # the likelihood scorer re-orders retrieval's top-k and leaves the rest below
    loaded.config = dataclasses.replace(loaded.config, scorer="likelihood", rerank_k=8)
    reranked = loaded.score(users[:2], history[:2])
    for r in range(2):
        assert set(torch.topk(reranked[r], 8).indices.tolist()) == set(torch.topk(scores[r], 8).indices.tolist())


def test_generation_section_puts_bertscore_beside_ranking(sample_dataset, tiny_image_model, tmp_path):
    import polars as pl

    from mmrec_pipeline.evaluation.facts import report_facts
    from mmrec_pipeline.evaluation.protocols import evaluate_model
    from mmrec_pipeline.evaluation.report import build_report
    from mmrec_pipeline.evaluation.sections.vq_bart import generation_section
    from mmrec_pipeline.models.popularity import Popularity
    from mmrec_pipeline.storage import DatasetView, write_json

    model, _ = tiny_image_model
    popularity = Popularity()
    popularity.fit(sample_dataset, ItemFeatures(), Compute(device="cpu"))
    # what the assets save beside their checkpoints when they train; the section reads only these
    artifacts = DatasetView(tmp_path, "sample")
    write_json(report_facts(model, sample_dataset, max_users=40), artifacts.report_facts("vq_bart", "image"))
    write_json(report_facts(popularity, sample_dataset, max_users=40), artifacts.report_facts("popularity", "global"))
    metrics = pl.concat([evaluate_model(model, sample_dataset, "vq_bart", "image", sampled=None)[0],
                         evaluate_model(popularity, sample_dataset, "popularity", "global", sampled=None)[0]])
    section = generation_section(metrics, sample_dataset, artifacts, max_users=40)
    assert "BERTScore" in section.title and "40 test users" in section.note and "LPIPS" in section.note
    assert section.tables[0]["model"].to_list() == ["vq_bart/image", "popularity/global"]
    assert len(section.examples) == 3  # history -> generated text -> top-5
    assert all(len(e.recommended) == 5 and e.generated is not None and e.recent for e in section.examples)
    page, md = build_report("sample", metrics, {}, "temporal", sections=[section])
    assert "| vq_bart/image |" in md and "| popularity/global |" in md and md.count("→ generated:") == 3
    assert "vq_bart: generated text (BERTScore) vs ranking</h2>" in page and "<i>" in page


def test_bertscore_ranks_a_close_text_above_an_unrelated_one_and_empty_at_zero():
    from mmrec_pipeline.evaluation.sections.vq_bart import bertscore

    ref = ["Kestrel Green Ziggy Fedora. hats. cotton, premium"]
    close = bertscore(["Kestrel Green Fedora. hats. cotton"], ref)["F1"]
    far = bertscore(["Tidewell Bedside Lamp. lamps. rattan"], ref)["F1"]
    assert 0 < far < close <= 1
    assert bertscore([""], ref) == {"P": 0.0, "R": 0.0, "F1": 0.0}
