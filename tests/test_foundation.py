"""Registry, splits, storage and the ingest/split assets through Dagster."""

import os

import dagster as dg
import polars as pl
import pytest

from mmrec_pipeline.data.filtering import user_core
from mmrec_pipeline.data.schema import DataError
from mmrec_pipeline.data.splits import (
    check_no_leak,
    check_temporal_shares,
    filter_and_split,
    make_split,
    split_summary,
)
from mmrec_pipeline.registry import RegistryError, get_dataset, load_registry
from mmrec_pipeline.storage import inside, write_parquet


def test_definitions_load():
    from assets.definitions import defs

    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {"items", "users", "interactions", "split", "metrics", "report", "leaderboard"} <= keys
    assert defs.resolve_job_def("dataset_job") is not None


def test_registry_entries():
    specs = load_registry()
    assert {"sample", "hm", "ml-100k", "amazon-appliances", "amazon-digital-music", "amazon-gift-cards",
            "amazon-health"} <= set(specs)
    assert specs["ml-100k"].split == "loo"
    with pytest.raises(RegistryError, match="unknown dataset 'nope'"):
        get_dataset("nope")


def test_registry_rejects_bad_entries(tmp_path, monkeypatch):
    bad = tmp_path / "d.yaml"
    bad.write_text("datasets:\n  x:\n    source: csv\n")
    monkeypatch.setenv("MMREC_DATASETS", str(bad))
    with pytest.raises(RegistryError, match="source 'csv'"):
        load_registry()
    bad.write_text("datasets:\n  x:\n    source: hm\n    colour: red\n")
    with pytest.raises(RegistryError, match="unknown field"):
        load_registry()


def test_split_profile_gives_every_entry_of_that_split_its_models(tmp_path, monkeypatch):
    """`profiles: {loo: {models: ...}}` reaches every loo entry (a new one included) under its own `models:`,
    which wins field by field; entries of another split do not get it."""
    reg = tmp_path / "d.yaml"
    reg.write_text("profiles:\n  loo:\n    models:\n      sasrec: {adam_beta2: 0.98, patience: 50}\n"
                   "datasets:\n"
                   "  new:\n    source: sequence\n    split: loo\n"
                   "  own:\n    source: sequence\n    split: loo\n    models:\n      sasrec: {patience: 10}\n"
                   "      ease: {l2: 50.0}\n"
                   "  other:\n    source: hm\n")
    monkeypatch.setenv("MMREC_DATASETS", str(reg))
    specs = load_registry()
    assert specs["new"].models == {"sasrec": {"adam_beta2": 0.98, "patience": 50}}
    assert specs["own"].models == {"sasrec": {"adam_beta2": 0.98, "patience": 10}, "ease": {"l2": 50.0}}
    assert specs["other"].models == {}
    reg.write_text("profiles:\n  random:\n    models: {}\ndatasets:\n  x:\n    source: hm\n")
    with pytest.raises(RegistryError, match="profile 'random' is not a split"):
        load_registry()
    reg.write_text("profiles:\n  loo:\n    serving: {k: 5}\ndatasets:\n  x:\n    source: hm\n")
    with pytest.raises(RegistryError, match="profile 'loo', field 'serving'"):
        load_registry()


@pytest.mark.parametrize("model", ["sasrec", "gru4rec", "bert4rec"])
def test_loo_profile_holds_the_sequential_configurations(model):
    """The configurations chosen on Amazon Toys' validation are the loo profile's, so ml-100k (loo, no settings
    of its own for these models) gets them as amazon-toys does."""
    specs = load_registry()
    toys, ml = specs["amazon-toys"].models[model], specs["ml-100k"].models[model]
    shared = {k: v for k, v in toys.items() if k not in ("search_space", "refit")}
    assert shared and shared == ml


def _interactions(n_users=40, per_user=10):
    rows = []
    for u in range(n_users):
        for j in range(per_user):
            rows.append({"user_id": f"u{u}", "item_id": f"i{(u + j) % 30}",
                         "ts": pl.datetime(2024, 1, 1) if False else None, "_t": u * 7 + j * 13})
    df = pl.DataFrame(rows).drop("ts")
    return df.with_columns((pl.datetime(2024, 1, 1, time_zone="UTC") + pl.duration(hours=pl.col("_t"))).alias("ts")
                           ).drop("_t")


def test_temporal_split_shares_and_no_leak():
    split = make_split(_interactions(), "temporal")
    ok, meta = check_temporal_shares(split)
    assert ok, meta
    assert check_no_leak(split)[0]
    summary = split_summary(split)
    assert summary["rows_train"] + summary["rows_valid"] + summary["rows_test"] == split.height


def test_loo_split_takes_last_two_per_user():
    split = make_split(_interactions(n_users=5, per_user=6), "loo")
    per_user = split.group_by("user_id").agg(
        (pl.col("split") == "test").sum().alias("test"), (pl.col("split") == "valid").sum().alias("valid"),
        pl.col("ts").filter(pl.col("split") == "test").max().alias("t_test"), pl.col("ts").max().alias("t_max"))
    assert (per_user["test"] == 1).all() and (per_user["valid"] == 1).all()
    assert (per_user["t_test"] == per_user["t_max"]).all()


def test_user_core_and_empty_result():
    inter = _interactions(n_users=3, per_user=4)
    assert user_core(inter, 4).height == 12
    with pytest.raises(DataError, match="no user has at least 5 interactions"):
        user_core(inter, 5)


def test_temporal_user_core_counts_only_rows_before_the_training_cut():
    """A user whose activity is in the valid/test period (here 8 interactions, all after the training cut)
    is not kept by the temporal 5-core, though 8 >= 5; a user with 5 training rows and 1 later row is; the
    returned metadata counts the users dropped. Under `loo` every row counts, so the late user stays."""
    base = _interactions(n_users=40, per_user=10)
    end = base["ts"].max()
    late = pl.DataFrame({"user_id": ["late"] * 8, "item_id": [f"i{j}" for j in range(8)]}).with_columns(
        pl.lit(end).alias("ts"))
    start = base["ts"].min()
    early = pl.DataFrame({"user_id": ["early"] * 6, "item_id": [f"i{j}" for j in range(6)]}).with_columns(
        pl.when(pl.int_range(pl.len()) < 5).then(pl.lit(start)).otherwise(pl.lit(end)).alias("ts"))
    inter = pl.concat([base, late.select(base.columns), early.select(base.columns)])
    split, dropped = filter_and_split(inter, "temporal", 5)
    users = set(split["user_id"])
    assert "late" not in users and "early" in users
    assert dropped["users_dropped_by_filter"] == inter["user_id"].n_unique() - len(users) >= 1
    assert dropped["rows_dropped_by_filter"] == inter.height - split.height
    cut = split.filter(pl.col("split") != "train")["ts"].min()
    counts = split.filter(pl.col("ts") < cut).group_by("user_id").len()
    assert counts.height == len(users) and counts["len"].min() >= 5  # every kept user: 5 rows before the cut
    assert check_temporal_shares(split)[0] and check_no_leak(split)[0]
    assert "late" in set(filter_and_split(inter, "loo", 5)[0]["user_id"])
    assert filter_and_split(inter, "loo", 5)[1]["users_dropped_by_filter"] == 0


def test_paths_stay_inside_the_lake(tmp_path):
    assert inside(tmp_path, "sample", "items.parquet").is_relative_to(tmp_path)
    with pytest.raises(ValueError, match="leave the lake root"):
        inside(tmp_path, "..", "etc")


def test_atomic_write_keeps_old_table_on_failure(tmp_path):
    path = tmp_path / "t.parquet"
    write_parquet(pl.DataFrame({"a": [1]}), path)

    class Boom(pl.DataFrame):
        def write_parquet(self, *a, **k):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_parquet(Boom({"a": [2]}), path)
    assert pl.read_parquet(path)["a"].to_list() == [1]
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]


def _lake_resources(root) -> dict:
    """The IO manager and the lake resource (`lake_store`) on one lake root, as resources_for_env wires them."""
    from resources.storage import LakeIOManager, LakeResource

    lake = LakeResource(root=str(root))
    return {"lake": LakeIOManager(lake=lake), "lake_store": lake}


def test_missing_dataset_fails_with_how_to_obtain(tmp_path, monkeypatch):
    from assets.ingest import ingest

    monkeypatch.setenv("MMREC_DATA", str(tmp_path))
    result = dg.materialize([ingest], partition_key="amazon-gift-cards", raise_on_error=False,
                            resources=_lake_resources(tmp_path / "lake"))
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = failure.step_failure_data.error.cause.message if failure.step_failure_data.error.cause else \
        failure.step_failure_data.error.message
    assert "amazon/Gift_Cards" in message and "Amazon Reviews 2023" in message


def test_hm_ingest_and_split_through_dagster(shared_data, tmp_path):
    from assets.ingest import ingest
    from assets.splits import split

    root = tmp_path / "lake"
    result = dg.materialize([ingest, split],  # the split checks run in its step
                            partition_key="hm", resources=_lake_resources(root))
    assert result.success
    inter = pl.read_parquet(root / "hm" / "interactions.parquet")
    assert (inter.height, inter["user_id"].n_unique()) == (9925, 1037)
    assert pl.read_parquet(root / "hm" / "items.parquet").height == 4116
    checks = result.get_asset_check_evaluations()
    assert len(checks) == 3 and all(c.passed for c in checks)
    meta = result.asset_materializations_for_node("split")[0].metadata
    assert meta["test_users_without_train_history"].value >= 0


def test_compute_resource_sets_torch_threads_per_step():
    """Steps that run side by side must not each spin up a thread per core (they slow each other several-fold)."""
    import torch

    from resources import CONCURRENT_STEPS, CORES, resources_for_env
    from resources.compute import ComputeResource

    before = torch.get_num_threads()
    try:
        with dg.build_resources({"compute": ComputeResource(cpu_threads=1)}):
            assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert resources_for_env("local")["compute"].cpu_threads == max(1, CORES // CONCURRENT_STEPS)


def test_step_processes_start_with_two_malloc_arenas():
    """Set when the Dagster layer is imported, before the executor starts its step processes, which inherit it."""
    import resources  # noqa: F401

    assert os.environ["MALLOC_ARENA_MAX"].isdigit()


def test_concurrent_steps_setting(monkeypatch):
    """MMREC_CONCURRENT_STEPS: one step at a time where two steps of a large dataset do not fit in memory."""
    from resources import concurrent_steps

    monkeypatch.setenv("MMREC_CONCURRENT_STEPS", "1")
    assert concurrent_steps() == 1
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("MMREC_CONCURRENT_STEPS", bad)
        with pytest.raises(ValueError, match="MMREC_CONCURRENT_STEPS"):
            concurrent_steps()


def test_auto_dtype_is_float32_where_onednn_is_capped_below_bf16():
    """`ONEDNN_MAX_CPU_ISA=AVX2` (how an older CPU is emulated) leaves oneDNN no bf16 convolution: `dtype: auto` must
    then pick float32 even on a CPU whose flags show bf16, as it does on a CPU without them."""
    import subprocess
    import sys

    code = "from mmrec_pipeline.compute import Compute; print(Compute(device='cpu').inference_dtype)"
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "torch.float32", out


def test_an_image_cnn_keeps_freed_tensor_memory_for_the_next_tensor():
    """A convolution with a 25 MiB activation, three times: with glibc's defaults the activation's pages go back to
    the kernel and fault in again each time (12.5k faults); once an image CNN is set up for inference on CPU the
    process keeps them. A `Compute` alone leaves glibc's defaults (an evaluation's heap would never shrink). In
    fresh processes: the setting is process-wide. (Kept, it is 0 faults nearly always, but 3 runs of ~30 here, all
    in the minutes after a full suite, faulted exactly one activation's 6,272 pages in once, cause not found: hence
    a ratio, not a bound near 0.)"""
    import subprocess
    import sys

    code = """
import resource, sys, torch
from mmrec_pipeline.compute import Compute
from mmrec_pipeline.features.image import for_inference
compute = Compute(device="cpu")
if sys.argv[1] == "cnn":
    for_inference(torch.nn.Identity(), compute)
x, w = torch.rand(4, 3, 224, 224), torch.rand(32, 3, 3, 3)
torch.nn.functional.conv2d(x, w, padding=1).relu_().mean()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    torch.nn.functional.conv2d(x, w, padding=1).relu_().mean()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
    faults = {arg: int(subprocess.run([sys.executable, "-c", code, arg], capture_output=True, text=True,
                                      check=True).stdout.split()[-1]) for arg in ("plain", "cnn")}
    assert faults["plain"] > 30_000 and faults["cnn"] < faults["plain"] / 5, faults


def test_new_items_sensor_requests_one_features_run_per_gap(tmp_path, monkeypatch):
    """Items without captions (a new catalog version, or a budget-limited backfill) → one features run for that
    dataset; the same gap is not requested twice; no gap → no request."""
    from assets.definitions import items_missing_features
    from resources.storage import LakeResource

    monkeypatch.setenv("MMREC_HOME", str(tmp_path))
    sample = tmp_path / "sample"
    sample.mkdir()
    ids = ["a", "b", "c"]
    write_parquet(pl.DataFrame({"item_id": ids, "image_sha256": ["x", "y", None]}), sample / "items.parquet")
    write_parquet(pl.DataFrame({"item_id": ids, "caption_offline": ["red dress", None, None]}),
                  sample / "captions.parquet")  # c has no image: not a gap

    context = dg.build_sensor_context(resources={"lake_store": LakeResource(root=str(tmp_path))},
                                      instance=dg.DagsterInstance.ephemeral())
    requests = list(items_missing_features(context))
    assert [(r.partition_key, r.run_key) for r in requests] == [("sample", "sample:captions=1")]
    assert requests[0].tags["mmrec/backfill"] == "final"  # no budget on captions: this run catches up

    write_parquet(pl.DataFrame({"item_id": ids, "caption_offline": ["red dress", "blue bag", None]}),
                  sample / "captions.parquet")
    assert list(items_missing_features(context)) == []


def test_backfill_runs_say_what_remains_and_whether_they_catch_up():
    """sample's budget of 32 review summaries a run: 952 missing is a partial run with an ETA (the UI shows the
    run's tags); 20 missing is the final run, after which the models retrain."""
    from assets.definitions import backfill_tags
    from mmrec_pipeline.registry import get_dataset

    features = get_dataset("sample").features
    tags = backfill_tags({"review_summaries": 952, "captions": 3}, features, cadence_s=600)
    assert tags == {"mmrec/backfill": "partial", "mmrec/backfill_remaining": "captions=3, review_summaries=952",
                    "mmrec/backfill_eta": "~5.0 h (30 runs, one per ~10 min)"}
    assert backfill_tags({"review_summaries": 20}, features, 600) == {
        "mmrec/backfill": "final", "mmrec/backfill_remaining": "review_summaries=20"}


def test_metadata_floats_are_shown_to_four_significant_digits():
    from assets.checks import check_result
    from assets.metadata import plain

    meta = plain({"users_per_second": 10011.344144036268, "ndcg@10": 0.0123456, "users": 3, "nan": float("nan"),
                  "name": "x", "fixed": True})
    assert meta["users_per_second"] == 10010.0 and meta["ndcg@10"] == 0.01235 and meta["users"] == 3
    assert meta["name"] == "x" and meta["nan"] != meta["nan"]
    assert check_result(True, {"share": 0.333333333}, "d").metadata["share"].value == 0.3333
