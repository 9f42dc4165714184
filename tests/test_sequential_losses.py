"""The sequential models' losses (sampled softmax with and without logQ, gBCE) against hand computations on a
small batch, and that every loss option and the LiGR-gated layers are config fields a dataset can select."""

import math

import numpy as np
import polars as pl
import pytest
import torch

from mmrec_pipeline.compute import Compute
from mmrec_pipeline.data.dataset import RecDataset
from mmrec_pipeline.data.splits import make_split
from mmrec_pipeline.models.runner import build, grid_points
from mmrec_pipeline.models.sasrec import SASRec
from mmrec_pipeline.models.sequential import Block, gbce_loss, sampled_softmax_loss

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Two targets, four items of dimension 2, three shared negatives (item 1 is target 0's own item: left out).
H = torch.tensor([[1.0, 0.5], [-0.5, 2.0]])
W = torch.tensor([[0.2, 0.1], [1.0, -1.0], [0.3, 0.7], [-0.4, 0.2]])
T = torch.tensor([1, 2])
NEG = torch.tensor([0, 1, 3])


def dot(u, i):
    return float(H[u] @ W[i])


def test_sampled_softmax_matches_hand_computation():
    expected = []
    for u, t in enumerate(T.tolist()):
        negatives = [dot(u, j) for j in NEG.tolist() if j != t]
        expected.append(-dot(u, t) + math.log(math.exp(dot(u, t)) + sum(math.exp(s) for s in negatives)))
    got = sampled_softmax_loss(H, T, W, NEG)
    assert float(got) == pytest.approx(np.mean(expected), rel=1e-6)


def test_sampled_softmax_logq_correction_matches_hand_computation():
    log_q = torch.log(torch.tensor([0.1, 0.2, 0.3, 0.4]) * len(NEG))
    expected = []
    for u, t in enumerate(T.tolist()):
        pos = dot(u, t) - float(log_q[t])
        negatives = [dot(u, j) - float(log_q[j]) for j in NEG.tolist() if j != t]
        expected.append(-pos + math.log(math.exp(pos) + sum(math.exp(s) for s in negatives)))
    assert float(sampled_softmax_loss(H, T, W, NEG, log_q=log_q)) == pytest.approx(np.mean(expected), rel=1e-6)
    # Uniform sampling: the correction is one constant on every logit and changes nothing.
    uniform = torch.full((4,), math.log(len(NEG) / 4))
    assert float(sampled_softmax_loss(H, T, W, NEG, log_q=uniform)) == pytest.approx(
        float(sampled_softmax_loss(H, T, W, NEG)), rel=1e-6)


@pytest.mark.parametrize("calibration", [0.0, 0.75, 1.0])
def test_gbce_matches_hand_computation(calibration):
    n_items = 4
    alpha = len(NEG) / (n_items - 1)
    beta = alpha * (calibration * (1 - 1 / alpha) + 1 / alpha)
    expected = []
    for u, t in enumerate(T.tolist()):
        positive = -math.log((1 / (1 + math.exp(-dot(u, t)))) ** beta)  # -log sigmoid(s+)^beta
        negatives = sum(-math.log(1 - 1 / (1 + math.exp(-dot(u, j)))) for j in NEG.tolist() if j != t)
        expected.append((positive + negatives) / (len(NEG) + 1))
    got = gbce_loss(H, T, W, NEG, calibration, n_items)
    assert float(got) == pytest.approx(np.mean(expected), rel=1e-6)


def test_gbce_matches_gsasrec_transformed_positive_logit():
    """gSASRec's train_gsasrec.py: the positive's logit replaced by log(1 / (sigmoid(s)^-beta - 1)), then BCE with
    logits over the N + 1 logits, averaged over them (no negative equals its target here)."""
    neg = torch.tensor([0, 3])
    n_items, calibration = 4, 0.75
    alpha = len(neg) / (n_items - 1)
    beta = alpha * ((1 - 1 / alpha) * calibration + 1 / alpha)
    pos, negs = (H * W[T]).sum(-1, keepdim=True).double(), (H @ W[neg].T).double()
    pos = torch.log(1.0 / (torch.sigmoid(pos).pow(-beta) - 1))
    logits = torch.cat([pos, negs], -1)
    gt = torch.zeros_like(logits)
    gt[:, 0] = 1
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, gt, reduction="none").mean(-1).mean()
    assert float(gbce_loss(H, T, W, neg, calibration, n_items)) == pytest.approx(float(expected), rel=1e-6)


def test_untied_output_table_scores_the_items():
    """tied_output=False (gSASRec's default): a separate output table, the one the loss and scoring read."""
    model = build(SASRec, {}, {"tied_output": False, "hidden_size": 8, "n_layers": 1, "n_heads": 1,
                               "inner_size": 16, "max_len": 4})
    model.n_items = 5
    model.net = model.build_network()
    assert model.item_weights() is model.net.out_emb.weight and model.item_weights().shape == (5, 8)
    assert model.item_weights().data_ptr() != model.net.item_emb.weight.data_ptr()


def test_negatives_per_target_match_the_shared_set_row_by_row():
    """[T, N] negatives (one row per target, RecTools's sampling): a row equal to the shared set gives the shared
    loss; a row of its own changes only its target's term."""
    rows = NEG[None, :].expand(len(T), -1)
    assert float(sampled_softmax_loss(H, T, W, rows)) == pytest.approx(float(sampled_softmax_loss(H, T, W, NEG)))
    assert float(gbce_loss(H, T, W, rows, 0.75, 4)) == pytest.approx(float(gbce_loss(H, T, W, NEG, 0.75, 4)))
    own = torch.stack([NEG, torch.tensor([0, 0, 2])])  # target 1 (item 2) meets itself once: left out
    pos, negatives = dot(1, 2), [dot(1, 0), dot(1, 0)]
    second = -pos + math.log(math.exp(pos) + sum(math.exp(s) for s in negatives))
    first = float(sampled_softmax_loss(H[:1], T[:1], W, NEG))
    assert float(sampled_softmax_loss(H, T, W, own)) == pytest.approx((first + second) / 2, rel=1e-6)


def tiny_dataset() -> RecDataset:
    """30 users, 6 items each, over a 12-item catalog (enough for one short epoch and a validation)."""
    users = [f"u{u}" for u in range(30) for _ in range(6)]
    items = [f"i{(u + j) % 12}" for u in range(30) for j in range(6)]
    inter = pl.DataFrame({"user_id": users, "item_id": items, "ts": [j * 86400 for _ in range(30) for j in range(6)]})
    inter = inter.with_columns(pl.from_epoch("ts", time_unit="s").dt.replace_time_zone("UTC"))
    catalog = pl.DataFrame({"item_id": [f"i{i}" for i in range(12)], "title": "", "description": ""})
    return RecDataset.from_tables("tiny", make_split(inter, "loo"), catalog, protocol="loo")


def test_loss_options_and_gates_are_selectable_config_fields():
    model = build(SASRec, {}, {"loss": "gbce", "negatives": 8, "negatives_per": "target", "gated": True,
                               "sampling": "popularity",
                               "patience": 1, "epochs": 2, "max_train_seconds": 1e-9, "hidden_size": 16,
                               "n_layers": 1, "n_heads": 1, "inner_size": 32, "max_len": 8, "batch_size": 8})
    assert isinstance(model.build_network().blocks[0], Block) and model.config.gated
    report = model.fit(tiny_dataset(), None, Compute(device="cpu"))
    assert report["stopped_by"] == "time_budget" and report["epochs"] == 1  # the budget ends the run
    assert np.isfinite(report["curve"][0]["loss"])
    # The validation search can tune each option: they are plain config fields.
    points = grid_points({"loss": ["ce", "gbce"], "negatives": [0, 256], "logq": [False, True],
                          "gated": [False, True], "negatives_per": ["batch", "target"]})
    for point in points:
        build(SASRec, point, None)
    with pytest.raises(ValueError, match="gbce' needs negatives"):
        m = build(SASRec, {"loss": "gbce", "negatives": 0}, None)
        m.n_items = 4
        m.net = m.build_network()
        m.loss(torch.zeros(1, 1, 2), torch.zeros(1, 1, dtype=torch.long), torch.Generator())
