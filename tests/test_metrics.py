"""Tests of the shared ranking evaluator: hand-computed examples, properties, batched == naive."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmrec_pipeline.evaluation.metrics import (
    EvalInputs,
    auc_accuracy_fpr,
    deterministic_topk,
    evaluate,
    naive_evaluate,
    sampled_candidates,
)


def table_fn(table):
    """A score function that looks up a fixed [n_users, n_items] score table."""
    table = torch.as_tensor(np.asarray(table, dtype=np.float32))
    return lambda users, history: table[torch.as_tensor(users)]


def inputs(n_items, history, relevant, **kwargs):
    history = [np.asarray(x, dtype=np.int64) for x in history]
    relevant = [np.asarray(x, dtype=np.int64) for x in relevant]
    return EvalInputs(n_items, np.arange(len(history)), history, relevant, **kwargs)


def by_key(result):
    return {(r["metric"], r["k"]): r["value"] for r in result.rows}


def assert_same(a, b, tol=1e-9):
    ra, rb = by_key(a), by_key(b)
    assert ra.keys() == rb.keys()
    for key in ra:
        assert ra[key] == pytest.approx(rb[key], abs=tol, nan_ok=True), key
    assert a.n_users == b.n_users and a.skipped_users == b.skipped_users
    for key in a.per_user:
        np.testing.assert_allclose(a.per_user[key], b.per_user[key], atol=tol, err_msg=key)


# --- deterministic top-k -----------------------------------------------------------------------


def test_topk_matches_stable_argsort_with_heavy_ties():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (50, 300), generator=gen).float()
    scores[5] = -math.inf  # a row with nothing rankable
    scores[6, 10:] = -math.inf  # a row with fewer finite items than k
    idx, vals = deterministic_topk(scores, 20)
    ref = np.argsort(-scores.numpy(), axis=1, kind="stable")[:, :20]
    np.testing.assert_array_equal(idx.numpy(), ref)
    np.testing.assert_array_equal(vals.numpy(), np.take_along_axis(scores.numpy(), ref, 1))


@pytest.mark.parametrize("levels", [4, 1000, None])
def test_topk_on_long_rows_matches_stable_argsort(levels):
    # rows long enough for the two-level top-k (chunk maxima first); few levels = ties across chunk boundaries
    gen = torch.Generator().manual_seed(levels or 0)
    n = 32 * 200 + 7  # a ragged tail after the last full chunk
    if levels is None:
        scores = torch.randn(30, n, generator=gen)
    else:
        scores = torch.randint(0, levels, (30, n), generator=gen).float()
    scores[3] = -math.inf
    scores[4, 40:] = -math.inf
    scores[5, -3:] = scores[5].max() + 1  # the best items in the tail
    idx, vals = deterministic_topk(scores, 21)
    ref = np.argsort(-scores.numpy(), axis=1, kind="stable")[:, :21]
    np.testing.assert_array_equal(idx.numpy(), ref)
    np.testing.assert_array_equal(vals.numpy(), np.take_along_axis(scores.numpy(), ref, 1))


@pytest.mark.parametrize("levels", [2, None])
def test_topk_with_a_mask_matches_stable_argsort_of_the_masked_scores(levels):
    gen = torch.Generator().manual_seed(1)
    n = 32 * 100 + 9
    scores = torch.randn(20, n, generator=gen) if levels is None else torch.randint(0, levels, (20, n), generator=gen).float()
    order = scores.argsort(dim=1, descending=True, stable=True)
    masked_items = [torch.cat([order[r, : 5 * r], torch.tensor([n - 1, n - 3])]) for r in range(20)]  # best and tail
    keys = torch.cat([r * n + items for r, items in enumerate(masked_items)]).sort().values
    expected = scores.clone()
    expected.view(-1)[keys] = -math.inf
    before = scores.clone()
    idx, vals = deterministic_topk(scores, 21, keys)
    ref = np.argsort(-expected.numpy(), axis=1, kind="stable")[:, :21]
    np.testing.assert_array_equal(idx.numpy(), ref)
    np.testing.assert_array_equal(vals.numpy(), np.take_along_axis(expected.numpy(), ref, 1))
    assert torch.equal(scores, before)  # the mask is applied without writing to the scores


def test_nan_score_is_found_on_long_rows():
    scores = torch.randn(4, 32 * 200)
    scores[2, 1234] = math.nan
    _, vals = deterministic_topk(scores, 21)
    assert bool(torch.isnan(vals[2]).any())


def test_topk_orders_ties_inside_the_top_by_index():
    scores = torch.tensor([[0.0, 5.0, 1.0, 5.0, 5.0, 2.0]])
    idx, _ = deterministic_topk(scores, 4)
    assert idx.tolist() == [[1, 3, 4, 5]]


# --- hand-computed examples --------------------------------------------------------------------


def test_hand_example_with_history_masking():
    # item 3 is history (masked): ranking = 1, 2, 4, 5, 0; relevant = {2, 5}
    data = inputs(6, [[3]], [[2, 5]])
    res = evaluate(table_fn([[0.1, 0.9, 0.5, 0.7, 0.3, 0.2]]), data, ks=(2, 4))
    v = by_key(res)
    d2 = 1 / math.log2(3)
    assert v["hr", 2] == 1 and v["precision", 2] == 0.5 and v["recall", 2] == 0.5
    assert v["ndcg", 2] == pytest.approx(d2 / (1 + d2))
    assert v["mrr", 2] == 0.5
    assert v["map", 2] == pytest.approx(0.5 / 2)
    assert v["precision", 4] == 0.5 and v["recall", 4] == 1.0
    assert v["ndcg", 4] == pytest.approx((d2 + 1 / math.log2(5)) / (1 + d2))
    assert v["map", 4] == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert v["coverage", 2] == pytest.approx(2 / 6) and v["coverage", 4] == pytest.approx(4 / 6)


def test_repeat_purchases_count_when_history_is_not_excluded():
    data = inputs(6, [[3]], [[3]], exclude_history=False)
    v = by_key(evaluate(table_fn([[0.1, 0.9, 0.5, 0.7, 0.3, 0.2]]), data, ks=(2,)))
    assert v["hr", 2] == 1 and v["mrr", 2] == 0.5
    masked = by_key(evaluate(table_fn([[0.1, 0.9, 0.5, 0.7, 0.3, 0.2]]), inputs(6, [[3]], [[3]]), ks=(2,)))
    assert masked["hr", 2] == 0


def test_ties_at_the_k_boundary_go_to_the_lower_item_index():
    # items 1, 2, 3 tie; catalog order puts 1 and 2 in the top 2, item 3 third
    table = [[1.0, 2.0, 2.0, 2.0, 0.0]] * 2
    data = inputs(5, [[], []], [[3], [2]], exclude_history=True)
    res = evaluate(table_fn(table), data, ks=(2, 3))
    assert res.per_user["hr@2"].tolist() == [0.0, 1.0]
    assert res.per_user["mrr@2"].tolist() == [0.0, 0.5]
    assert res.per_user["mrr@3"].tolist() == pytest.approx([1 / 3, 0.5])


def test_several_relevant_items_map_and_ndcg():
    # ranking 0, 1, 2, 3, 4; relevant {0, 2, 4}
    data = inputs(5, [[]], [[4, 0, 2, 2]])  # duplicates in relevant count once
    res = evaluate(table_fn([[5.0, 4.0, 3.0, 2.0, 1.0]]), data, ks=(5, 2))
    v = by_key(res)
    assert v["map", 5] == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    assert v["map", 2] == pytest.approx(1 / 2)  # (1/1) / min(3, 2)
    assert v["recall", 5] == 1.0 and v["recall", 2] == pytest.approx(1 / 3)
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert v["ndcg", 5] == pytest.approx((1 + 1 / math.log2(4) + 1 / math.log2(6)) / idcg)
    assert v["ndcg", 2] == pytest.approx(1 / (1 + 1 / math.log2(3)))


def test_empty_relevant_sets_are_skipped_and_counted():
    data = inputs(4, [[], [], []], [[1], [], [0]])
    res = evaluate(table_fn(np.tile([0.0, 1.0, 2.0, 3.0], (3, 1))), data, ks=(1,))
    assert res.n_users == 2 and res.skipped_users == 1
    assert res.users.tolist() == [0, 2]
    assert len(res.per_user["hr@1"]) == 2


def test_no_users_at_all_gives_nan_rows():
    res = evaluate(table_fn(np.zeros((1, 3))), inputs(3, [[]], [[]]), ks=(1,))
    assert res.n_users == 0 and res.skipped_users == 1
    assert math.isnan(by_key(res)["ndcg", 1])


def test_fewer_finite_items_than_k():
    # 4 items, 2 in history: only items 2 and 3 are rankable; K=5 exceeds even the catalog
    data = inputs(4, [[0, 1]], [[3]])
    res = evaluate(table_fn([[1.0, 1.0, 1.0, 1.0]]), data, ks=(1, 5), train_counts=np.array([3, 1, 0, 0]))
    v = by_key(res)
    assert v["hr", 1] == 0 and v["hr", 5] == 1
    assert v["precision", 5] == pytest.approx(1 / 5)  # empty slots are misses
    assert v["ndcg", 5] == pytest.approx(1 / math.log2(3))
    assert v["coverage", 5] == pytest.approx(2 / 4)  # masked items never count as recommended
    assert v["novelty", 5] == pytest.approx(3.0)  # p = 1/8 for both rankable items


def test_minus_inf_scores_never_beat_finite_ones():
    data = inputs(4, [[]], [[0]])
    res = evaluate(table_fn([[-math.inf, -math.inf, 0.0, -math.inf]]), data, ks=(3,))
    assert by_key(res)["hr", 3] == 0
    assert by_key(res)["coverage", 3] == pytest.approx(1 / 4)


def test_candidates_restrict_the_ranking():
    data = inputs(6, [[]], [[4]], candidates=[np.array([0, 4, 5])])
    res = evaluate(table_fn([[0.1, 0.9, 0.8, 0.7, 0.3, 0.2]]), data, ks=(1, 5))
    v = by_key(res)
    assert v["hr", 1] == 1 and v["coverage", 5] == pytest.approx(3 / 6)


def test_diversity_from_categories_and_vectors_and_novelty():
    scores = [[3.0, 2.0, 1.0, 0.0]]
    data = inputs(4, [[]], [[0]])
    cats = np.array(["a", "a", "b", "c"])
    v = by_key(evaluate(table_fn(scores), data, ks=(1, 3), item_categories=cats))
    assert v["diversity", 3] == pytest.approx(2 / 3)  # pairs (0,1)=0, (0,2)=1, (1,2)=1
    assert math.isnan(v["diversity", 1])  # one item: no pairs
    vectors = np.array([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0], [1.0, 1.0]])
    v = by_key(evaluate(table_fn(scores), data, ks=(2, 3), item_vectors=vectors))
    assert v["diversity", 2] == pytest.approx(1.0)  # orthogonal
    assert v["diversity", 3] == pytest.approx((1 + 2 + 1) / 3)  # 1 - cos: 1, 2 (opposite), 1
    counts = np.array([3, 1, 0, 0])  # p = 4/8, 2/8, 1/8, 1/8 -> -log2 p = 1, 2, 3, 3
    v = by_key(evaluate(table_fn(scores), data, ks=(2, 3), train_counts=counts))
    assert v["novelty", 2] == pytest.approx(1.5) and v["novelty", 3] == pytest.approx(2.0)
    assert ("diversity", 2) not in v  # skipped without vectors or categories


def test_score_fn_output_is_not_mutated_and_may_be_expanded():
    popularity = torch.tensor([3.0, 1.0, 2.0, 0.0])
    data = inputs(4, [[0], [2]], [[2], [0]])
    res = evaluate(lambda users, hist: popularity.expand(len(users), -1), data, ks=(1,))
    assert res.per_user["hr@1"].tolist() == [1.0, 1.0]
    assert popularity.tolist() == [3.0, 1.0, 2.0, 0.0]


def test_bad_scores_raise():
    data = inputs(3, [[]], [[0]])
    with pytest.raises(ValueError, match="NaN"):
        evaluate(table_fn([[0.0, float("nan"), 1.0]]), data)
    with pytest.raises(ValueError, match="shape"):
        evaluate(table_fn([[0.0, 1.0]]), data)
    with pytest.raises(ValueError, match="out of range"):
        evaluate(table_fn([[0.0, 1.0, 2.0], [0.0, 1.0, 2.0]]), inputs(3, [[3], []], [[0], [0]]))
    with pytest.raises(ValueError, match="out of range"):
        evaluate(table_fn([[0.0, 1.0, 2.0]]), inputs(3, [[]], [[-1]]))
    with pytest.raises(ValueError, match="cut-offs"):
        evaluate(table_fn([[0.0, 1.0, 2.0]]), data, ks=(0, 5))


# --- batched == naive --------------------------------------------------------------------------


def random_case(seed, n_users=40, n_items=30, levels=4):
    rng = np.random.default_rng(seed)
    table = rng.integers(0, levels, size=(n_users, n_items)).astype(np.float32)  # many ties
    table[rng.random(table.shape) < 0.05] = -math.inf
    history = [rng.choice(n_items, size=rng.integers(0, 8), replace=False) for _ in range(n_users)]
    relevant = [rng.choice(n_items, size=rng.integers(0, 5), replace=False) for _ in range(n_users)]
    extras = {
        "item_vectors": rng.normal(size=(n_items, 6)),
        "item_categories": rng.integers(0, 3, size=n_items),
        "train_counts": rng.integers(0, 20, size=n_items),
    }
    return table, history, relevant, extras


@pytest.mark.parametrize("batch_size", [1, 3, 16, 1000])
@pytest.mark.parametrize("exclude_history", [True, False])
def test_batched_equals_naive(batch_size, exclude_history):
    table, history, relevant, extras = random_case(batch_size)
    data = inputs(30, history, relevant, exclude_history=exclude_history)
    for kw in (extras, {"item_categories": extras["item_categories"]}):
        fast = evaluate(table_fn(table), data, ks=(1, 5, 10, 40), batch_size=batch_size, **kw)
        slow = naive_evaluate(table_fn(table), data, ks=(1, 5, 10, 40), **kw)
        assert_same(fast, slow)


@pytest.mark.parametrize("levels", [3, None])
def test_batched_equals_naive_on_long_rows_with_the_best_items_in_history(levels):
    # long rows take the two-level top-k, where the history mask is applied to chunk maxima and candidates
    # instead of a masked copy: put each user's best items (and some of the ragged tail) in their history
    rng = np.random.default_rng(7)
    n_users, n_items = 24, 32 * 150 + 5
    table = rng.normal(size=(n_users, n_items)) if levels is None else rng.integers(0, levels, (n_users, n_items))
    table = table.astype(np.float32)
    table[3, :] = -math.inf
    best = np.argsort(-table, axis=1, kind="stable")
    history = [np.r_[best[u, : rng.integers(0, 60)], n_items - 1 - rng.integers(0, 5, size=2)] for u in range(n_users)]
    relevant = [rng.choice(n_items, size=rng.integers(1, 5), replace=False) for _ in range(n_users)]
    relevant[0] = best[0, 10:14]  # hits among the best items that are not masked
    data = inputs(n_items, history, relevant)
    fast = evaluate(table_fn(table), data, ks=(1, 5, 20), batch_size=7, train_counts=np.arange(n_items))
    assert_same(fast, naive_evaluate(table_fn(table), data, ks=(1, 5, 20), train_counts=np.arange(n_items)))
    assert fast.value("hr", 20) > 0


@pytest.mark.parametrize("batch_size", [2, 64])
def test_batched_equals_naive_with_candidates(batch_size):
    table, history, relevant, extras = random_case(100 + batch_size)
    data = inputs(30, history, relevant)
    data.candidates = sampled_candidates(data, n_negatives=6, seed=1)
    fast = evaluate(table_fn(table), data, ks=(5, 10), batch_size=batch_size, **extras)
    assert_same(fast, naive_evaluate(table_fn(table), data, ks=(5, 10), **extras))


# --- properties --------------------------------------------------------------------------------


@st.composite
def cases(draw, distinct=False):
    n_users = draw(st.integers(1, 6))
    n_items = draw(st.integers(2, 25))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    if distinct:  # no ties anywhere: every score unique
        table = np.stack([rng.permutation(n_items) for _ in range(n_users)]).astype(np.float32)
    else:
        table = rng.integers(0, 3, size=(n_users, n_items)).astype(np.float32)
    history = [rng.choice(n_items, size=rng.integers(0, n_items), replace=False) for _ in range(n_users)]
    relevant = [rng.choice(n_items, size=rng.integers(0, n_items + 1), replace=False) for _ in range(n_users)]
    exclude = draw(st.booleans())
    return table, inputs(n_items, history, relevant, exclude_history=exclude), rng


@settings(max_examples=60, deadline=None)
@given(cases())
def test_every_metric_is_in_unit_interval(case):
    table, data, rng = case
    cats = rng.integers(0, 3, size=data.n_items)
    counts = rng.integers(0, 10, size=data.n_items)
    res = evaluate(table_fn(table), data, ks=(1, 3, 10), item_categories=cats, train_counts=counts)
    for row in res.rows:
        if math.isnan(row["value"]):
            continue
        if row["metric"] == "novelty":
            assert row["value"] > 0
        else:
            assert 0.0 <= row["value"] <= 1.0, row
    for key, values in res.per_user.items():
        values = values[~np.isnan(values)]
        assert (values >= 0).all() and (key.startswith("novelty") or (values <= 1).all())


@settings(max_examples=60, deadline=None)
@given(cases(distinct=True))
def test_relabelling_items_changes_nothing(case):
    table, data, rng = case
    perm = rng.permutation(data.n_items)  # old item i becomes perm[i]
    new_table = np.empty_like(table)
    new_table[:, perm] = table
    relabelled = inputs(
        data.n_items,
        [perm[h] for h in data.history],
        [perm[r] for r in data.relevant],
        exclude_history=data.exclude_history,
    )
    cats = rng.integers(0, 3, size=data.n_items)
    counts = rng.integers(0, 10, size=data.n_items)
    new_cats, new_counts = np.empty_like(cats), np.empty_like(counts)
    new_cats[perm], new_counts[perm] = cats, counts
    a = evaluate(table_fn(table), data, ks=(1, 3, 10), item_categories=cats, train_counts=counts)
    b = evaluate(
        table_fn(new_table), relabelled, ks=(1, 3, 10), item_categories=new_cats, train_counts=new_counts
    )
    assert_same(a, b)


@settings(max_examples=60, deadline=None)
@given(cases(distinct=True), st.integers(1, 12))
def test_ndcg_is_one_when_relevant_items_are_the_top(case, k):
    table, data, _ = case
    # make each user's relevant items exactly its top-|rel| unmasked items
    relevant = []
    for row, hist in zip(table, data.history):
        allowed = np.arange(data.n_items)
        if data.exclude_history:
            allowed = np.setdiff1d(allowed, hist)
        ranked = allowed[np.argsort(-row[allowed], kind="stable")]
        relevant.append(ranked[: max(1, len(ranked) // 3)] if len(ranked) else np.array([], dtype=np.int64))
    data.relevant = relevant
    res = evaluate(table_fn(table), data, ks=(k,))
    if res.n_users:
        np.testing.assert_allclose(res.per_user[f"ndcg@{k}"], 1.0)
        np.testing.assert_allclose(res.per_user[f"map@{k}"], 1.0)


# --- sampled protocol --------------------------------------------------------------------------


def test_sampled_candidates():
    data = inputs(50, [[0, 1, 2], [5]], [[3, 4], [5, 6]])
    cands = sampled_candidates(data, n_negatives=10, seed=7)
    for cand, hist, rel in zip(cands, data.history, data.relevant):
        assert set(rel) <= set(cand.tolist())
        negatives = set(cand.tolist()) - set(rel.tolist())
        assert len(negatives) == 10 * len(rel) and not negatives & set(hist.tolist())  # per positive
        assert all(0 <= c < 50 for c in cand)
    again = sampled_candidates(data, n_negatives=10, seed=7)
    assert all((a == b).all() for a, b in zip(cands, again))
    small = sampled_candidates(inputs(6, [[0, 1]], [[2]]), n_negatives=10, seed=0)
    assert small[0].tolist() == [2, 3, 4, 5]  # fewer free items than asked: all of them


# --- pointwise metrics -------------------------------------------------------------------------


def test_auc_accuracy_fpr_hand_examples():
    out = auc_accuracy_fpr([1, 0, 1, 0], [0.9, 0.1, 0.4, 0.6])
    assert out["auc"] == pytest.approx(3 / 4)  # the pair (0.4, 0.6) is the only one ordered wrong
    assert out["accuracy"] == pytest.approx(2 / 4)
    assert out["fpr"] == pytest.approx(1 / 2)
    assert auc_accuracy_fpr([1, 0], [0.5, 0.5])["auc"] == 0.5  # a tie counts half
    tied = auc_accuracy_fpr([1, 1, 0, 0, 0], [0.7, 0.3, 0.3, 0.3, 0.1])
    assert tied["auc"] == pytest.approx((3 + 0.5 * 2 + 1) / 6)
    assert math.isnan(auc_accuracy_fpr([1, 1], [0.2, 0.8])["auc"])
    assert math.isnan(auc_accuracy_fpr([1, 1], [0.2, 0.8])["fpr"])
    assert auc_accuracy_fpr([0, 1], [0.5, 0.2], threshold=0.5)["fpr"] == 1.0  # score == threshold is positive


def test_auc_matches_pairwise_definition():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 200)
    scores = rng.integers(0, 10, 200) / 10  # ties
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairwise = ((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean()
    assert auc_accuracy_fpr(labels, scores)["auc"] == pytest.approx(pairwise)


def test_cutoff_tie_share():
    """cutoff_tie@k: the k-th listed item ties with the first one left out (the tie order chose the list)."""
    table = [[5, 4, 3, 3, 1, 0],   # 3rd and 4th tie: inside a tie at K=3, not at K=2 or K=4
             [5, 4, 3, 2, 1, 0],   # distinct scores: never
             [1, 1, 1, 1, 1, 1]]   # one score for all (an unseen-items model): at every K
    inp = inputs(6, [[5], [5], [5]], [[0], [0], [0]], exclude_history=True)
    res = evaluate(table_fn(table), inp, ks=(2, 3, 4, 5))
    assert res.per_user["cutoff_tie@3"].tolist() == [1.0, 0.0, 1.0]
    assert res.per_user["cutoff_tie@2"].tolist() == [0.0, 0.0, 1.0]
    assert res.per_user["cutoff_tie@4"].tolist() == [0.0, 0.0, 1.0]
    assert res.per_user["cutoff_tie@5"].tolist() == [0.0, 0.0, 0.0]  # the item after the 5th is masked (history)
    assert res.value("cutoff_tie", 3) == pytest.approx(2 / 3)
    assert_same(res, naive_evaluate(table_fn(table), inp, ks=(2, 3, 4, 5)))
