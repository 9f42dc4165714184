"""The runner's tuning on `sample`: the chosen point is the validation argmax, test rows never enter the
choice, the grid is recorded in config.json, and `seeds: N` reports mean and std."""

import json
import logging

import numpy as np
import polars as pl
import pytest

from mmrec_pipeline.compute import Compute
from mmrec_pipeline.data.dataset import RecDataset
from mmrec_pipeline.evaluation.protocols import evaluate_model, headline
from mmrec_pipeline.models import BASELINES, CLASSIC, LVLM, MM_LLMREC, SEQUENTIAL
from mmrec_pipeline.models.base import ItemFeatures
from mmrec_pipeline.models.bpr_mf import BPRMF
from mmrec_pipeline.models.item_knn import ItemKNN
from mmrec_pipeline.models.lvlm_retrieval import FIXED
from mmrec_pipeline.models.runner import grid_points, train_variants, tune_variant

SPACE = {"neighbours": [5, 50], "shrink": [0.0, 50.0]}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_grid_points_pins_what_the_dataset_sets():
    assert grid_points({"a": (1, 2), "b": (3,)}) == [{"a": 1, "b": 3}, {"a": 2, "b": 3}]
    assert grid_points({"a": (1, 2), "b": (3, 4)}, pinned=["a"]) == [{"b": 3}, {"b": 4}]
    assert grid_points({}) == [{}]
    with pytest.raises(ValueError, match="non-empty list"):
        grid_points({"a": ()})


def test_every_model_declares_a_small_grid_of_real_config_fields():
    neural = {*SEQUENTIAL, *MM_LLMREC, "deepconn", "vbpr", "bpr_mf"}  # each point is a full training run
    for name, cls in {**CLASSIC, **SEQUENTIAL, **MM_LLMREC, **LVLM, **BASELINES}.items():
        for variant, overrides in cls.variants.items():
            config = cls.Config(**overrides)
            space = cls.search_space_for(config)
            assert set(space) <= set(cls.Config.__dataclass_fields__), name
            limit = 1 if name == "lvlm_retrieval" and config.strategy not in FIXED else 2 if name in neural else 12
            assert len(grid_points(space)) <= limit, (name, variant)


def test_chosen_point_is_the_validation_argmax(sample_dataset, tmp_path):
    runs, _ = train_variants("item_knn", ItemKNN, {"default": {}}, sample_dataset, ItemFeatures(),
                             Compute(device="cpu"), tmp_path, {"search_space": SPACE})
    run = runs[0]
    assert len(run.grid) == 4
    # Each point's value is what that config scores on the valid stage, computed independently here.
    for g in run.grid:
        model = ItemKNN(ItemKNN.Config(neighbours=g["neighbours"], shrink=g["shrink"]))
        model.fit(sample_dataset, ItemFeatures(), Compute(device="cpu"))
        valid, _ = evaluate_model(model, sample_dataset, "item_knn", stage="valid", sampled=None)
        ndcg10 = valid.filter((pl.col("metric") == "ndcg") & (pl.col("k") == 10))["value"][0]
        assert g["valid_ndcg@10"] == pytest.approx(ndcg10, abs=1e-12)
    values = [g["valid_ndcg@10"] for g in run.grid]
    assert len(set(values)) > 1  # the grid matters, so the choice is a real one
    best = run.grid[int(np.argmax(values))]
    assert run.chosen == {"neighbours": best["neighbours"], "shrink": best["shrink"]}
    assert (run.model.config.neighbours, run.model.config.shrink) == (best["neighbours"], best["shrink"])
    # The metrics table: test rows plus the chosen point's `<protocol>@valid` rows.
    valid_rows = run.metrics.filter((pl.col("protocol") == "temporal@valid") & (pl.col("metric") == "ndcg")
                                    & (pl.col("k") == 10))
    assert valid_rows["value"][0] == pytest.approx(max(values))
    assert run.metrics.filter(pl.col("protocol") == "temporal").height > 0
    saved = json.loads((tmp_path / "default" / "config.json").read_text())
    assert saved["tuning"]["chosen"] == run.chosen and len(saved["tuning"]["grid"]) == 4
    assert saved["config"]["neighbours"] == best["neighbours"]


def test_test_rows_never_enter_the_choice(sample_tables, sample_dataset):
    """Scrambling every test interaction's item changes the test score but not one validation figure."""
    tables, split = sample_tables
    catalog = tables.items["item_id"].to_numpy()
    is_test = (split["split"] == "test").to_numpy()
    scrambled = split["item_id"].to_numpy().copy()
    scrambled[is_test] = np.random.default_rng(0).choice(catalog, int(is_test.sum()))
    altered = RecDataset.from_tables("sample", split.with_columns(pl.Series("item_id", scrambled)), tables.items)

    def tune(data):
        _, _, _, grid, chosen, _, _ = tune_variant("item_knn", ItemKNN, "default", {}, data, ItemFeatures(),
                                                Compute(device="cpu"), {"search_space": SPACE})
        return grid, chosen

    (grid, chosen), (grid_alt, chosen_alt) = tune(sample_dataset), tune(altered)
    assert chosen == chosen_alt
    assert [g["valid_ndcg@10"] for g in grid] == [g["valid_ndcg@10"] for g in grid_alt]
    model = ItemKNN(ItemKNN.Config(**chosen))
    model.fit(sample_dataset, ItemFeatures(), Compute(device="cpu"))
    test = headline(evaluate_model(model, sample_dataset, "item_knn", sampled=None)[0])["default"]
    test_alt = headline(evaluate_model(model, altered, "item_knn", sampled=None)[0])["default"]
    assert test != pytest.approx(test_alt)  # the alteration is one the test stage sees


def test_seeds_report_mean_and_std(sample_dataset, tmp_path):
    """`seeds: 3`: the per-user table holds every seed's test values (and the chosen point's validation ones);
    the row is the mean over seeds, the same as the mean over users of each user's mean over seeds, and the
    report's leaderboard says 3 seeds."""
    from mmrec_pipeline.evaluation.protocols import per_user_stage
    from mmrec_pipeline.evaluation.report import leaderboard_with_ci

    tiny = {"dim": 8, "epochs": 1, "eval_every": 1}
    runs, _ = train_variants("bpr_mf", BPRMF, {"default": tiny}, sample_dataset, ItemFeatures(),
                             Compute(device="cpu"), tmp_path, {"search_space": {}, "seeds": 3})
    run, t = runs[0], runs[0].metrics
    by_seed = json.loads((tmp_path / "default" / "config.json").read_text())["tuning"]["test_ndcg@10_by_seed"]
    assert run.seeds == 3 and len(by_seed) == 3 and by_seed[0] != by_seed[1]
    row = t.filter((pl.col("protocol") == "temporal") & (pl.col("k") == 10))
    assert row.filter(pl.col("metric") == "ndcg")["value"][0] == pytest.approx(np.mean(by_seed))
    assert row.filter(pl.col("metric") == "ndcg_std")["value"][0] == pytest.approx(np.std(by_seed, ddof=1))
    assert t.filter(pl.col("metric") == "seeds")["value"].to_list() == [3.0]
    pu = run.per_user
    test = pu.filter(pl.col("protocol") == "temporal")
    seed0 = BPRMF.Config().seed
    assert sorted(test["seed"].unique().to_list()) == [seed0, seed0 + 1, seed0 + 2]
    assert test.group_by("seed").len()["len"].n_unique() == 1  # the same users under every seed
    for i, s in enumerate(sorted(test["seed"].unique().to_list())):
        assert test.filter(pl.col("seed") == s)["ndcg@10"].mean() == pytest.approx(by_seed[i])
    assert pu.filter(pl.col("protocol") == "temporal@valid")["seed"].unique().to_list() == [seed0]
    users = per_user_stage(pu, "test")
    assert users.height == test.height // 3 and users["seeds"].unique().to_list() == [3]
    assert users["ndcg@10"].mean() == pytest.approx(np.mean(by_seed))
    board = leaderboard_with_ci(t, pu, n_resamples=50)
    assert board["seeds"].to_list() == [3]


def test_refit_adds_test_rows_of_the_model_retrained_on_train_and_valid(sample_dataset, tmp_path, caplog):
    """`refit: true`: the chosen point retrained on train + valid for its best epoch count, scored on test as
    `<protocol>+refit`; the train-only rows and the checkpoint are unchanged."""
    tiny = {"dim": 8, "epochs": 3, "eval_every": 1}
    plain, _ = train_variants("bpr_mf", BPRMF, {"default": tiny}, sample_dataset, ItemFeatures(),
                              Compute(device="cpu"), tmp_path / "plain", {"search_space": {}})
    with caplog.at_level("INFO"):
        runs, _ = train_variants("bpr_mf", BPRMF, {"default": tiny}, sample_dataset, ItemFeatures(),
                                 Compute(device="cpu"), tmp_path / "refit", {"search_space": {}, "refit": True},
                                 log=logging.getLogger("refit"))
    t = runs[0].metrics
    ndcg = t.filter((pl.col("metric") == "ndcg") & (pl.col("k") == 10))
    by_protocol = dict(zip(ndcg["protocol"], ndcg["value"]))
    assert {"temporal", "temporal@valid", "temporal+refit"} <= set(by_protocol)
    assert not any(p.startswith("temporal+refit+") for p in by_protocol)  # refit: plain full ranking only
    assert by_protocol["temporal"] == plain[0].metrics.filter(
        (pl.col("metric") == "ndcg") & (pl.col("k") == 10) & (pl.col("protocol") == "temporal"))["value"][0]
    assert 0 < by_protocol["temporal+refit"] != by_protocol["temporal"]
    best = runs[0].report["best_epoch"]
    train_valid = sample_dataset.rows("train", "valid").height
    assert f"refit on train + valid ({train_valid} interactions) with {{'epochs': {best}}}" in caplog.text
    assert t.filter(pl.col("protocol") == "temporal+refit")["metric"].is_in(["users_evaluated"]).any()


def test_unknown_override_names_the_runner_keys(sample_dataset, tmp_path):
    with pytest.raises(ValueError, match="runner keys"):
        train_variants("item_knn", ItemKNN, {"default": {}}, sample_dataset, ItemFeatures(), Compute(device="cpu"),
                       tmp_path, {"neighbors": 5})


def test_dataset_variants_key_trains_only_the_named_variants(sample_dataset, tmp_path):
    from mmrec_pipeline.models.popularity import Popularity

    runs, skipped = train_variants("popularity", Popularity, Popularity.variants, sample_dataset,
                                   ItemFeatures(), Compute(device="cpu"), tmp_path, {"variants": ["global"]})
    assert [r.variant for r in runs] == ["global"] and "not in this dataset's `variants`" in skipped["recent"]


def test_tuning_check_reads_the_checkpoints(sample_dataset, tmp_path):
    from mmrec_pipeline.models.runner import check_tuning_records

    train_variants("item_knn", ItemKNN, {"default": {}}, sample_dataset, ItemFeatures(), Compute(device="cpu"),
                   tmp_path, {"search_space": {"neighbours": [5, 50]}})
    assert check_tuning_records(tmp_path) == (True, {"variants": 1, "failures": []})
    path = tmp_path / "default" / "config.json"
    meta = json.loads(path.read_text())
    meta["config"]["neighbours"] = 7  # a checkpoint that is not the chosen point
    path.write_text(json.dumps(meta))
    ok, info = check_tuning_records(tmp_path)
    assert not ok and "validation argmax" in info["failures"][0]


def test_the_runner_saves_what_the_report_shows_beside_the_checkpoint(sample_dataset, tmp_path):
    """The report reads a variant's top items for its sampled test users from its report facts, never the checkpoint:
    they are the trained model's own ranking, as the evaluator masks it."""
    from mmrec_pipeline.evaluation.facts import REPORT_TOP_K, report_users, top_items
    from mmrec_pipeline.evaluation.protocols import restrict_users
    from mmrec_pipeline.storage import ModelFolder, read_json_file

    runs, _ = train_variants("item_knn", ItemKNN, {"default": {}}, sample_dataset, ItemFeatures(),
                             Compute(device="cpu"), tmp_path, {"search_space": {}})
    facts = read_json_file(ModelFolder(tmp_path).report_facts("default"))
    users = report_users(sample_dataset)
    assert sorted(facts["top"], key=int) == [str(u) for u in users] and len(users) > 3
    picked = restrict_users(sample_dataset.eval_inputs("test"), users[:1])
    assert facts["top"][str(users[0])] == top_items(runs[0].model, picked, REPORT_TOP_K)[0]
