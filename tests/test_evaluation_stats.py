"""Comparisons a reader can trust: bootstrap CIs, paired tests with Holm, the Pareto front, the accounting of
test users, the cold-start protocol, the `recbole` protocol's filtering and masking, and the report."""

import datetime as dt

import numpy as np
import polars as pl
import pytest
import torch

from mmrec_pipeline.data.dataset import RecDataset
from mmrec_pipeline.data.filtering import user_item_core
from mmrec_pipeline.data.splits import make_split
from mmrec_pipeline.evaluation.protocols import (
    COLD_UNSCORABLE,
    METRICS_SCHEMA,
    best_on_valid,
    check_user_accounting,
    evaluate_model,
    is_cold,
    is_main,
    is_pointwise,
    is_refit,
    is_sampled,
    is_test_stage,
    per_user_table,
    valid_values,
)
from mmrec_pipeline.evaluation.report import (
    build_report,
    champion_margin,
    cold_start_table,
    leaderboard,
    leaderboard_with_ci,
    user_accounting,
    valid_on_shared_users,
)
from mmrec_pipeline.evaluation.significance import (
    EXACT_MAX_PAIRS,
    bootstrap_ci,
    holm,
    paired_p_value,
    paired_tests,
    pareto_front,
)

# --- statistics ---------------------------------------------------------------------------------


def test_bootstrap_ci_brackets_the_mean_with_the_normal_width_and_is_seeded():
    values = np.random.default_rng(0).normal(0.3, 0.2, size=2000)
    lo, hi = bootstrap_ci(values)
    assert lo < values.mean() < hi
    half = 1.96 * values.std() / np.sqrt(len(values))  # the CLT interval the bootstrap should approximate
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.15)
    assert bootstrap_ci(values) == (lo, hi)  # seeded
    assert bootstrap_ci(np.full(50, 0.5)) == (0.5, 0.5)
    assert np.isnan(bootstrap_ci(np.array([np.nan]))[0])


def test_holm_hand_example():
    # sorted p 0.01, 0.03, 0.04, 0.5 times 4, 3, 2, 1 = 0.04, 0.09, 0.08 -> 0.09 (monotone), 0.5
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.5]), [0.04, 0.09, 0.09, 0.5])
    assert holm([0.9, 0.8]).max() == 1.0  # capped


def _per_user(values: dict[str, np.ndarray]) -> pl.DataFrame:
    return pl.concat([pl.DataFrame({"model": name.split("/")[0], "variant": name.split("/")[1],
                                    "protocol": "temporal", "user_id": [str(u) for u in range(len(v))],
                                    "ndcg@10": v, "recall@10": v}) for name, v in values.items()])


def test_paired_tests_find_a_real_difference_and_not_a_tie():
    rng = np.random.default_rng(1)
    base = rng.uniform(0, 1, 300)
    per_user = _per_user({"a/x": base, "b/x": base + rng.normal(0.05, 0.05, 300), "c/x": base.copy()})
    out = {r["name"]: r for r in paired_tests(per_user, "ndcg@10", "a/x").iter_rows(named=True)}
    assert out["b/x"]["p_holm"] < 1e-6 and out["b/x"]["diff"] > 0
    assert out["c/x"]["p"] == 1.0 and out["c/x"]["diff"] == 0.0
    assert out["b/x"]["p_holm"] >= out["b/x"]["p"]


def test_small_samples_get_scipys_wilcoxon_p_value():
    """Up to 13 pairs with ties or zeros, paired_p_value runs scipy's exhaustive sign-flip test itself (vectorized):
    the p-value must be scipy's, whatever the ties, zeros and size."""
    from scipy.stats import wilcoxon

    rng = np.random.default_rng(0)
    cases = [rng.normal(size=EXACT_MAX_PAIRS),  # no ties: scipy's exact distribution
             rng.integers(-3, 4, size=EXACT_MAX_PAIRS).astype(float),  # ties and zeros: its sign-flip test
             np.round(rng.normal(size=9), 1), np.array([0.0, 0.5, 0.5]), np.array([0.0, 0.2]),  # one left: scipy
             rng.integers(-3, 4, size=EXACT_MAX_PAIRS + 1).astype(float)]  # past the limit: scipy (asymptotic)
    for diff in cases:
        assert paired_p_value(diff, np.zeros(diff.size)) == pytest.approx(
            wilcoxon(diff, zero_method="wilcox").pvalue, rel=1e-12, abs=1e-15), diff


def test_pareto_front():
    x = np.array([0.1, 0.5, 0.3, 0.9, 0.2])
    y = np.array([0.9, 0.5, 0.4, 0.1, 0.9])  # (0.3, 0.4) is beaten by (0.5, 0.5); (0.1, 0.9) by (0.2, 0.9)
    assert pareto_front(x, y).tolist() == [4, 1, 3]


# --- a hand-made dataset ------------------------------------------------------------------------


def _day(d: int) -> dt.datetime:
    return dt.datetime(2024, 1, 1) + dt.timedelta(days=d)


def tiny(protocol: str = "temporal") -> RecDataset:
    return RecDataset.from_tables("tiny", *tiny_tables(), protocol=protocol)


def tiny_tables() -> tuple[pl.DataFrame, pl.DataFrame]:
    """(split, items): Items 0..5 ("i0".."i5"); i3 and i5 never occur in train (i3 nowhere). Test-period users:
    u1 history [i0, i1], test [i2, i5] (i5 cold) | u2 no history, test [i0] | u3 history [i0], test [i0] (a repeat)
    | u4 history [i1, i2], test [i4] (no cold item) | u5 train only."""
    rows = [("u1", "i0", 0, "train"), ("u1", "i1", 1, "train"), ("u1", "i2", 9, "test"), ("u1", "i5", 9, "test"),
            ("u2", "i0", 9, "test"), ("u3", "i0", 1, "train"), ("u3", "i0", 9, "test"),
            ("u4", "i1", 2, "train"), ("u4", "i2", 3, "train"), ("u4", "i4", 9, "test"),
            ("u5", "i4", 1, "train")]
    split = pl.DataFrame({"user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows],
                          "ts": [_day(r[2]) for r in rows], "split": [r[3] for r in rows]})
    items = pl.DataFrame({"item_id": [f"i{i}" for i in range(6)], "title": [f"t{i}" for i in range(6)],
                          "description": [""] * 6, "category": ["a", "b", "a", "b", "a", "b"]})
    return split, items


class TableModel:
    """Scores = a fixed per-item vector, the same for every user; a general model (the `RankedModel` contract)."""

    kind = "general"

    def at_stage(self, data, stage):
        """Fixed scores: nothing depends on where the stage's histories end."""

    def __init__(self, item_scores):
        self.item_scores = torch.as_tensor(item_scores, dtype=torch.float32)

    def score(self, users, history):
        return self.item_scores.expand(len(users), -1).clone()


def test_every_protocol_the_code_writes_is_classified_once():
    """The predicates every table filters by, on each protocol string the evaluator, the runner and mmrec_dlrm
    write (protocols.py docstring)."""
    expected = {  # protocol: (main, test stage, sampled, cold, refit, pointwise)
        "temporal": (True, True, False, False, False, False),
        "temporal@valid": (False, False, False, False, False, False),
        "temporal+cold": (False, True, False, True, False, False),
        "temporal+sampled:100": (False, True, True, False, False, False),
        "temporal+sampled:100@valid": (False, False, True, False, False, False),
        "temporal+users:500": (False, True, False, False, False, False),
        "temporal+users:500+cold": (False, True, False, True, False, False),
        "loo+refit": (False, True, False, False, True, False),
        "loo+cold+refit": (False, True, False, True, True, False),
        "pointwise:rating>=4": (False, True, False, False, False, True),
    }
    predicates = (is_main, is_test_stage, is_sampled, is_cold, is_refit, is_pointwise)
    table = pl.DataFrame({"protocol": list(expected)}).with_columns(
        p().alias(p.__name__) for p in predicates)
    for row in table.iter_rows(named=True):
        assert tuple(row[p.__name__] for p in predicates) == expected[row["protocol"]], row


def test_every_test_user_is_accounted_for():
    data = tiny()
    inputs = data.eval_inputs("test")
    assert [data.user_ids[u] for u in inputs.users] == ["u1", "u4"]
    assert inputs.stage_users == 4 and inputs.dropped == {"no_history": 1, "all_repeats": 1}
    cold = data.eval_inputs("test", cold=True)
    assert [data.user_ids[u] for u in cold.users] == ["u1"] and cold.relevant[0].tolist() == [5]
    assert cold.dropped == {"no_history": 1, "all_repeats": 1, "no_cold_item": 1}
    table, _ = evaluate_model(TableModel([6, 5, 4, 3, 2, 1]), data, "m", sampled=None)
    count = {(r["protocol"], r["metric"]): r["value"] for r in table.filter(pl.col("k").is_null()).iter_rows(named=True)}
    for protocol in ("temporal", "temporal+cold"):
        dropped = sum(v for (p, m), v in count.items() if p == protocol and m.startswith("users_dropped:"))
        assert count[(protocol, "users_total")] == count[(protocol, "users_evaluated")] + dropped == 4
    assert check_user_accounting(table) == (True, {"checked": 2, "mismatches": []})
    broken = table.with_columns(pl.when(pl.col("metric") == "users_evaluated").then(0.0).otherwise(pl.col("value"))
                                .alias("value"))
    assert not check_user_accounting(broken)[0]


def test_cold_protocol_is_nan_for_a_model_that_scores_unseen_items_alike():
    data = tiny()
    popularity = TableModel([3, 2, 1, 0, 1, 0])  # the unseen i3 and i5 score alike
    table, _ = evaluate_model(popularity, data, "pop", sampled=None)
    cold = table.filter((pl.col("protocol") == "temporal+cold") & pl.col("k").is_not_null())
    assert cold.height and cold["value"].is_nan().all()
    # a content model tells unseen items apart: i5 first -> u1's cold item at rank 1
    content = TableModel([0, 0, 0, 0, 0, 1])
    table, _ = evaluate_model(content, data, "content", sampled=None)
    ndcg = table.filter((pl.col("protocol") == "temporal+cold") & (pl.col("metric") == "ndcg") & (pl.col("k") == 10))
    assert ndcg["value"].to_list() == [1.0]
    shown = cold_start_table(pl.concat([evaluate_model(popularity, data, "pop", sampled=None)[0], table]))
    assert shown.filter(pl.col("model") == "pop/default")["note"].to_list() == [COLD_UNSCORABLE]


# --- the recbole protocol -----------------------------------------------------------------------


def test_user_item_core_is_the_iterative_5_core():
    # item "rare" has 4 interactions; removing it leaves user "c" with 4, who must then go too (a second round)
    rows = [(u, f"i{j}") for u in "abdeg" for j in range(5)] + [("c", f"i{j}") for j in range(4)]
    rows += [(u, "rare") for u in "cdef"]
    df = pl.DataFrame({"user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows]})
    out = user_item_core(df, 5)
    assert "rare" not in out["item_id"].to_list() and "c" not in out["user_id"].to_list()
    assert out.group_by("user_id").len()["len"].min() >= 5 and out.group_by("item_id").len()["len"].min() >= 5
    assert set(out["user_id"].unique().to_list()) == set("abdeg") and out.height == 25


def test_recbole_split_remaps_the_pool_keeps_repeat_users_and_masks_by_model_type():
    data = tiny("recbole")  # the catalog is remapped to the split's items: i3 goes; i0 i1 i2 i4 i5 -> 0..4
    assert data.n_items == 5
    inputs = data.eval_inputs("test")
    ids = [data.user_ids[u] for u in inputs.users]
    assert "u3" in ids and inputs.dropped == {"no_history": 1}  # the all-repeat user is kept
    u3 = ids.index("u3")
    assert inputs.relevant[u3].tolist() == [0] and inputs.mask[u3].tolist() == []  # RecBole: used - positives
    # a general model that ranks i0 first hits u3's repeat (RecBole does not mask test items)
    table, full = evaluate_model(TableModel([9, 0, 0, 0, 0]), data, "ease", sampled=None, cold=False)
    assert full.per_user["hr@5"][u3] == 1.0
    assert table["protocol"].unique().to_list() == ["recbole"]
    pool = pl.DataFrame({"user_id": ["a"] * 3, "item_id": ["x", "y", "z"], "ts": [_day(d) for d in range(3)],
                         "split": ["train", "valid", "test"]})
    catalog = pl.DataFrame({"item_id": ["w", "x", "y", "z"], "category": ["c"] * 4})
    assert RecDataset.from_tables("p", pool, catalog, protocol="recbole").n_items == 3
    assert RecDataset.from_tables("p", pool, catalog, protocol="loo").n_items == 4


def test_recbole_protocol_does_not_mask_history_for_sequential_models(monkeypatch):
    from mmrec_pipeline.evaluation import protocols

    data = tiny("recbole")
    model = TableModel([0, 9, 0, 0, 0])  # i1, in u1's and u4's history, ranked first
    monkeypatch.setattr(protocols, "is_sequential", lambda m: True)
    _, seq = evaluate_model(model, data, "sasrec", sampled=None, cold=False)
    monkeypatch.setattr(protocols, "is_sequential", lambda m: False)
    _, gen = evaluate_model(model, data, "ease", sampled=None, cold=False)
    assert seq.per_user["mrr@5"].sum() < gen.per_user["mrr@5"].sum()  # i1 takes rank 1 only when unmasked


def test_early_stopping_validates_with_the_recbole_masking_rule(monkeypatch):
    """training.Validator masks as test ranking does under `recbole`: nothing for a sequential model, the history
    minus the stage's items for a general one, also on a user subsample; its value is evaluate_model's."""
    from mmrec_pipeline.evaluation import protocols
    from mmrec_pipeline.models.training import Validator

    split, items = tiny_tables()
    data = RecDataset.from_tables("tiny", split.with_columns(pl.col("split").replace("test", "valid")), items,
                                  protocol="recbole")
    model = TableModel([9, 8, 0, 0, 0])  # i0 (u3's repeat) and i1 (in u1's and u4's history) first
    for sequential in (True, False):
        monkeypatch.setattr(protocols, "is_sequential", lambda m, s=sequential: s)
        validator = Validator(data, k=10, model=model)
        assert validator.inputs.exclude_history is (not sequential)
        table, _ = evaluate_model(model, data, "m", sampled=None, stage="valid")
        expected = table.filter((pl.col("metric") == "ndcg") & (pl.col("k") == 10))["value"][0]
        assert validator(model.score) == pytest.approx(expected)
        sub = Validator(data, k=10, max_users=2, model=model).inputs  # a subsample keeps RecBole's mask
        assert len(sub.users) == 2 and sub.mask is not None and sub.exclude_history is (not sequential)


def test_make_split_recbole_is_loo_on_the_core():
    rng = np.random.default_rng(0)
    n = 400
    df = pl.DataFrame({"user_id": rng.integers(0, 30, n).astype(str), "item_id": rng.integers(0, 40, n).astype(str),
                       "ts": [_day(int(d)) for d in rng.integers(0, 300, n)]})
    out = make_split(df, "recbole")
    assert out.height == user_item_core(df, 5).height
    assert (out.filter(pl.col("split") == "test").group_by("user_id").len()["len"] == 1).all()


# --- the report ---------------------------------------------------------------------------------


def test_report_shows_cis_markers_accounting_and_cold_start():
    data = tiny()
    models = {("popularity", "global"): [3, 2, 1, 0, 1, 0], ("content", "default"): [0, 0, 3, 2, 0, 1],
              ("ease", "default"): [1, 2, 3, 4, 0, 0]}
    tables, per_user = [], []
    for (name, variant), scores in models.items():
        table, full = evaluate_model(TableModel(scores), data, name, variant, sampled=2)
        tables.append(table)
        per_user.append(per_user_table(full, data, name, variant, data.protocol))
    metrics, per_user = pl.concat(tables + [valid_rows({"popularity/global": 0.2, "content/default": 0.1,
                                                        "ease/default": 0.3})]), pl.concat(per_user)
    model_groups = {"popularity": "classic", "ease": "classic", "content": "content"}
    board = leaderboard_with_ci(metrics, per_user, model_groups, n_resamples=200)
    assert board["group"].to_list()[:2] == ["classic", "classic"]  # grouped, in the groups' order
    assert board.filter(pl.col("model") == "popularity/global")["vs popularity"].to_list() == ["reference"]
    assert all("[" in v for v in board["NDCG@10 [95% CI]"].to_list())
    assert board.filter(pl.col("model") == "ease/default")["vs best"].to_list() == ["reference"]
    assert set(board["seeds"].to_list()) == {1} and "ties@10" in board.columns
    accounting = user_accounting(metrics)
    assert accounting.filter((pl.col("protocol") == "temporal") & (pl.col("users") == "total"))["count"][0] == "4"
    page, md = build_report("tiny", metrics, {"items": 6}, "temporal", per_user=per_user, model_groups=model_groups)
    for text in ("Users accounted for", "dropped: no_history", "Cold start", "Wilcoxon", "Holm", "95%",
                 "Accuracy vs coverage", COLD_UNSCORABLE, "never chosen on test", "ties@10",
                 "it is optimistic"):
        assert text in md and (text in page or text.replace("%", "") in page), text
    _, bare = build_report("tiny", metrics, {"items": 6}, "temporal")  # no per-user files: said plainly
    assert "No per-user values were found" in bare


def valid_rows(values: dict[str, float], protocol: str = "temporal@valid") -> pl.DataFrame:
    """`@valid` NDCG@10 rows of the metrics table, as the runner writes them, with the given values."""
    return pl.DataFrame([{"model": n.split("/")[0], "variant": n.split("/")[1], "protocol": protocol,
                          "metric": "ndcg", "k": 10, "value": v} for n, v in values.items()], schema=METRICS_SCHEMA)


def test_report_references_are_chosen_on_validation_not_test():
    """A model that wins on test but loses on validation is not the `vs best` / `vs popularity` reference, nor
    the champion; the champion's margin over the runner-up is tested on the validation users' values; the
    users the k-core dropped before the split are in the user accounting."""
    data = tiny()
    # on test (relevant: u1 {i2, i5}, u4 {i4}), pop/test_winner ranks i2 and i4 first, pop/valid_winner buries them
    models = {("popularity", "test_winner"): [0, 0, 5, 0, 5, 0], ("popularity", "valid_winner"): [5, 4, 0, 3, 0, 2],
              ("ease", "default"): [1, 2, 3, 4, 0, 0]}
    tables, per_user = [], []
    for (name, variant), scores in models.items():
        table, full = evaluate_model(TableModel(scores), data, name, variant, sampled=None)
        tables.append(table)
        pu = per_user_table(full, data, name, variant, data.protocol)
        # validation values per user: the valid winner scores 1 for every user, the others 0
        valid_pu = pu.with_columns(pl.lit("temporal@valid").alias("protocol"),
                                   pl.lit(1.0 if variant == "valid_winner" else 0.0).alias("ndcg@10"))
        per_user += [pu, valid_pu]
    metrics = pl.concat(tables + [valid_rows({"popularity/test_winner": 0.1, "popularity/valid_winner": 0.5,
                                              "ease/default": 0.2})])
    per_user = pl.concat(per_user)
    test_best = leaderboard(metrics)["name"][0]
    assert test_best == "popularity/test_winner"  # the premise: it wins on test
    board = leaderboard_with_ci(metrics, per_user, n_resamples=50)
    ref = {r["model"]: (r["vs best"], r["vs popularity"]) for r in board.iter_rows(named=True)}
    assert ref["popularity/valid_winner"] == ("reference", "reference")
    assert ref["popularity/test_winner"][0] != "reference" and ref["popularity/test_winner"][0].startswith(("▲", "≈"))
    margin = champion_margin(metrics, per_user)
    assert margin.row(0, named=True) == pytest.approx({
        "champion (best on valid)": "popularity/valid_winner", "valid NDCG@10": 0.5, "runner-up": "ease/default",
        "runner-up valid NDCG@10": 0.2, "margin (paired, valid users)": 1.0,
        "Wilcoxon p": margin["Wilcoxon p"][0], "valid users": 2})
    assert margin["Wilcoxon p"][0] == pytest.approx(paired_p_value(np.ones(2), np.zeros(2)))
    _, md = build_report("tiny", metrics, {"items": 6}, "temporal", per_user=per_user,
                         filtered={"dropped by the user 5-core on rows before the training cut": 7})
    assert "Champion on validation" in md and "| (before the split) | dropped by the user 5-core" in md


def test_best_on_valid_never_lets_a_missing_or_nan_value_win():
    """The one choice on validation (references, champion, the ranker's sources, the audit's variant)."""
    assert best_on_valid({"a/x": float("nan"), "b/y": 0.1, "c/z": None}) == "b/y"
    assert best_on_valid({"a/x": float("nan")}) is None and best_on_valid({}) is None
    assert best_on_valid({"b/y": 0.2, "a/x": 0.2}) == "a/x"  # ties: the first by name
    assert best_on_valid({"a/x": 0.3, "b/y": 0.1}, among=["b/y", "c/z"]) == "b/y"
    metrics = valid_rows({"m/a": float("nan"), "m/b": 0.01})
    assert valid_values(metrics) == {"m/b": 0.01}


def test_validation_choices_compare_every_row_on_the_users_the_ranker_was_validated_on():
    """The two-stage ranker is validated only on its holdout valid users (v3, v4), the single models on every
    valid user. `ease` is below the ranker on its own `@valid` value (0.5 < 0.8) but above it on the holdout users
    (1.0): compared on the same users, `ease` is the reference and the champion. Each row's own `@valid` value
    would pick the ranker."""
    data = tiny()
    models = {("ease", "default"): [1, 2, 3, 4, 0, 0], ("popularity", "global"): [3, 2, 1, 0, 1, 0],
              ("ranker", "full"): [0, 0, 5, 0, 5, 0]}
    valid_per_user = {"ease/default": {"v1": 0.0, "v2": 0.0, "v3": 1.0, "v4": 1.0},
                      "popularity/global": {"v1": 0.1, "v2": 0.1, "v3": 0.1, "v4": 0.1},
                      "ranker/full": {"v3": 0.8, "v4": 0.8}}
    tables, per_user = [], []
    for (name, variant), scores in models.items():
        table, full = evaluate_model(TableModel(scores), data, name, variant, sampled=None)
        tables.append(table)
        values = valid_per_user[f"{name}/{variant}"]
        per_user += [per_user_table(full, data, name, variant, data.protocol),
                     pl.DataFrame({"model": name, "variant": variant, "protocol": "temporal@valid",
                                   "user_id": list(values), "ndcg@10": list(values.values())})]
    metrics = pl.concat(tables + [valid_rows({"ease/default": 0.5, "popularity/global": 0.1, "ranker/full": 0.8})])
    per_user = pl.concat(per_user, how="diagonal_relaxed")
    assert best_on_valid(valid_values(metrics)) == "ranker/full"  # each row's own value: not the same users
    valid, shared = valid_on_shared_users(metrics, per_user)
    assert shared == {"v3", "v4"}
    assert valid == pytest.approx({"ease/default": 1.0, "popularity/global": 0.1, "ranker/full": 0.8})
    board = leaderboard_with_ci(metrics, per_user, n_resamples=50)
    rows = {r["model"]: r for r in board.iter_rows(named=True)}
    assert rows["ease/default"]["vs best"] == "reference" and rows["ranker/full"]["vs best"] != "reference"
    assert rows["ease/default"]["valid NDCG@10"] == "1.000"
    margin = champion_margin(metrics, per_user).row(0, named=True)
    assert margin["champion (best on valid)"] == "ease/default" and margin["runner-up"] == "ranker/full"
    assert margin["valid users"] == 2 and margin["margin (paired, valid users)"] == pytest.approx(0.2)
    _, md = build_report("tiny", metrics, {"items": 6}, "temporal", per_user=per_user)
    assert "2 valid users every row was validated on" in md
    # without the ranker every row was validated on the same users: each row's own value
    singles = per_user.filter(pl.col("model") != "ranker")
    assert valid_on_shared_users(metrics.filter(pl.col("model") != "ranker"), singles) == (
        {"ease/default": 0.5, "popularity/global": 0.1}, None)
    # a ranker row validated on fewer users (its `users_evaluated`) without per-user values cannot be compared
    counts = pl.DataFrame([{"model": n.split("/")[0], "variant": n.split("/")[1], "protocol": "temporal@valid",
                            "metric": "users_evaluated", "k": None, "value": x}
                           for n, x in {"ease/default": 4.0, "popularity/global": 4.0, "ranker/full": 2.0}.items()],
                          schema=METRICS_SCHEMA)
    valid, shared = valid_on_shared_users(pl.concat([metrics, counts]), singles)
    assert valid == pytest.approx({"ease/default": 0.5, "popularity/global": 0.1}) and len(shared) == 4
    assert valid_on_shared_users(pl.concat([metrics, counts]), None) == (  # no per-user values at all
        {"ease/default": 0.5, "popularity/global": 0.1}, None)


def test_report_escapes_every_text_from_the_data():
    """Titles, generated text, model/variant names and user ids reach report.html escaped, never as markup."""
    from mmrec_pipeline.evaluation.facts import top_items
    from mmrec_pipeline.evaluation.report import Section, qualitative_examples

    attack = "<script>alert('x')</script>"
    data = tiny()
    data.items = data.items.with_columns(pl.lit(attack).alias("title"))
    table, _ = evaluate_model(TableModel([6, 5, 4, 3, 2, 1]), data, "popularity", attack, sampled=None)
    inputs = data.eval_inputs("test")  # the report facts a model's asset saves: its top items per test user
    facts = {"top": {str(int(u)): t for u, t in zip(inputs.users, top_items(TableModel([6, 5, 4, 3, 2, 1]),
                                                                               inputs, 5), strict=True)}}
    examples = qualitative_examples(facts, data, "examples")
    examples.examples[0].generated = attack
    custom = Section("a model's section", f"**note** with `{attack}`", [pl.DataFrame({"caption": [attack]})])
    page, md = build_report("tiny", table, {"items": 6}, "temporal", sections=[examples, custom])
    assert "<script>" not in page and "<script>" not in md
    assert page.count("&lt;script&gt;") >= 4  # leaderboard row, example tiles, generated text, table cell
    assert "<b>note</b>" in page and "<code>&lt;script&gt;" in page  # the note's own marks still render
    assert "| popularity/&lt;script&gt;alert('x')&lt;/script&gt; |" in md


def test_each_model_that_ran_adds_its_own_report_section(monkeypatch, tmp_path):
    """assets/evaluation asks every model with rows for its `report_section`; none of them is hard-coded."""
    import types

    import assets.evaluation as ev
    from mmrec_pipeline.evaluation.report import Section
    from mmrec_pipeline.storage import Lake

    class Toy:
        @classmethod
        def report_section(cls, inputs):
            return Section("toy: its own table", f"{inputs.data.n_items} items", [inputs.metrics.head(1)])

    class Silent:
        report_section = None

    monkeypatch.setenv("MMREC_HOME", str(tmp_path))
    monkeypatch.setattr(ev, "MODELS", {"toy": Toy, "silent": Silent, "not_run": Toy})
    data, (split, items) = tiny(), tiny_tables()
    metrics = pl.concat([evaluate_model(TableModel([6, 5, 4, 3, 2, 1]), data, m, "default", sampled=None)[0]
                         for m in ("toy", "silent")])
    spec = types.SimpleNamespace(name="tiny", split="temporal", repeats_relevant=False)
    sections = ev.model_sections(spec, metrics, split, items, Lake(str(tmp_path)))
    assert [s.title for s in sections] == ["toy: its own table"] and sections[0].note == "6 items"
