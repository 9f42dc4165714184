"""Bad input and faults (issue 19): names and paths that would leave the lake, timestamps in the wrong unit,
identifiers that break the catalog, errors a user can read, registry types, debris of killed runs, file modes."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from mmrec_pipeline.data.schema import DataError
from mmrec_pipeline.data.sources import amazon, hm
from mmrec_pipeline.registry import RegistryError, load_registry
from mmrec_pipeline.storage import Lake, write_parquet

REPO = Path(__file__).resolve().parents[1]


def registry(tmp_path: Path, text: str, monkeypatch) -> Path:
    path = tmp_path / "datasets.yaml"
    path.write_text(text)
    monkeypatch.setenv("MMREC_DATASETS", str(path))
    return path


# ---------------------------------------------------------------- 1, 3, 6: the registry


@pytest.mark.parametrize("name", ["../escape", "a/b", 'q"x', "dagster", ".hidden"])
def test_registry_rejects_unsafe_dataset_names(tmp_path, monkeypatch, name):
    registry(tmp_path, f"datasets:\n  '{name}': {{source: sample}}\n", monkeypatch)
    with pytest.raises(RegistryError, match=r"dataset name .* is not allowed: use letters, digits, '-' and '_'"):
        load_registry()


def test_registry_path_outside_data_root_must_be_absolute(tmp_path, monkeypatch):
    registry(tmp_path, "datasets:\n  x: {source: hm, path: ../../hm}\n", monkeypatch)
    with pytest.raises(RegistryError, match=r"dataset 'x', field 'path': '../../hm' leaves \$MMREC_DATA"):
        load_registry()
    registry(tmp_path, f"datasets:\n  x: {{source: hm, path: {tmp_path / 'hm'}}}\n", monkeypatch)
    assert load_registry()["x"].data_dir(Lake(tmp_path / "lake")) == tmp_path / "hm"


def test_registry_types_checked_at_load_one_line_each(tmp_path, monkeypatch):
    registry(tmp_path, "datasets:\n"
                       "  k: {source: hm, min_user_interactions: five, options: category=Toys}\n"
                       "  l: [source, hm]\n"
                       "  s: '-ab'\n"
                       "  ok: {source: hm, min_user_interactions: '3'}\n", monkeypatch)
    with pytest.raises(RegistryError) as e:
        load_registry()
    lines = str(e.value).splitlines()
    assert len(lines) == 4, lines
    assert "dataset 'k', field 'min_user_interactions'" in lines[0] and "'five'" in lines[0]
    assert "dataset 'k', field 'options': Input should be a valid dictionary" in lines[1]
    assert "dataset 'l': expected a mapping of fields" in lines[2] and "got a list" in lines[2]
    assert "dataset 's': expected a mapping of fields" in lines[3] and "got a str" in lines[3]


def test_registry_duplicate_key_names_the_key_and_both_lines(tmp_path, monkeypatch):
    path = registry(tmp_path, "datasets:\n"
                              "  toys: {source: amazon, path: toys}\n"
                              "  hm: {source: hm, path: hm}\n"
                              "  toys: {source: amazon, path: toys-2023}\n", monkeypatch)
    with pytest.raises(RegistryError, match=rf"^{re.escape(str(path))}: duplicate key 'toys' at lines 2 and 4"):
        load_registry()
    registry(tmp_path, "datasets:\n  hm: {source: hm, path: hm, split: loo, split: temporal}\n", monkeypatch)
    with pytest.raises(RegistryError, match="duplicate key 'split' at lines 2 and 2"):
        load_registry()


def test_messages_name_the_registry_file_mmrec_datasets_points_at(tmp_path, monkeypatch):
    from mmrec_pipeline.data.ingest import load_dataset

    path = registry(tmp_path, "datasets:\n  gone: {source: hm, path: gone}\n", monkeypatch)
    monkeypatch.setenv("MMREC_DATA", str(tmp_path))
    with pytest.raises(DataError, match=rf"change its path in {re.escape(str(path))}\."):
        load_dataset(load_registry()["gone"], Lake(tmp_path / "lake"))


def test_io_manager_refuses_a_partition_outside_the_lake(tmp_path):
    from resources.storage import LakeIOManager, LakeResource

    @dg.asset(partitions_def=dg.StaticPartitionsDefinition(["../escape"]), io_manager_key="lake")
    def items() -> pl.DataFrame:
        return pl.DataFrame({"item_id": ["a"]})

    root = tmp_path / "lake"
    result = dg.materialize([items], partition_key="../escape", raise_on_error=False,
                            resources={"lake": LakeIOManager(lake=LakeResource(root=str(root)))})
    assert not result.success
    error = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error
    assert "would leave the lake root" in (error.cause or error).message
    assert not (tmp_path / "escape").exists() and not list(tmp_path.rglob("*.parquet"))


def test_catalog_quotes_identifiers_and_skips_an_unreadable_table(tmp_path):
    import duckdb

    from mmrec_pipeline.catalog import CATALOG, CatalogError, refresh_catalog
    from resources.cli import refresh_catalog_or_warn

    write_parquet(pl.DataFrame({"a": [1]}), tmp_path / 'q"x' / "items.parquet")
    write_parquet(pl.DataFrame({"a": [2]}), tmp_path / "good" / "items.parquet")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "items.parquet").write_bytes(b"not parquet")
    with pytest.raises(CatalogError, match="broken/items.parquet"):
        refresh_catalog(Lake(tmp_path))
    with duckdb.connect(str(tmp_path / CATALOG)) as con:
        assert con.execute('select a from "q""x".items').fetchall() == [(1,)]
        assert con.execute("select a from good.items").fetchall() == [(2,)]
    refresh_catalog_or_warn(Lake(tmp_path))  # warns, never raises


# ---------------------------------------------------------------- 2: Amazon timestamps


def test_amazon_timestamp_unit_and_plausibility(tmp_path):
    meta = tmp_path / "meta_Tools.jsonl"
    meta.write_text(json.dumps({"parent_asin": "P1", "title": "Drill"}) + "\n")

    def read(stamps, options=None):
        lines = [json.dumps({"user_id": f"U{i}", "parent_asin": "P1", "timestamp": t}) for i, t in enumerate(stamps)]
        (tmp_path / "Tools.jsonl").write_text("\n".join(lines) + "\n")
        return amazon.read(tmp_path, {"category": "Tools", **(options or {})}).interactions["ts"]

    ts = read([1588687728, 1588687728000, "1588687728"])  # seconds, milliseconds, seconds as text
    assert ts.cast(pl.Int64).to_list() == [1588687728_000_000] * 3  # microseconds: 2020-05-05 14:08:48 UTC
    assert read([1588687728000], {"timestamp_unit": "ms"}).dt.year().to_list() == [2020]
    with pytest.raises(DataError, match=r"Tools.jsonl: line 2: field 'timestamp' = 5 read as seconds is before"):
        read([1588687728, 5])
    with pytest.raises(DataError, match=r"line 1: .* read as seconds is in the future"):
        read([1588687728000], {"timestamp_unit": "s"})
    with pytest.raises(DataError, match="option timestamp_unit = 'hours'"):
        read([1588687728], {"timestamp_unit": "hours"})


# ---------------------------------------------------------------- 4, 5: what `mmrec run` prints


def test_mmrec_run_ends_with_the_root_cause_per_failed_step(tmp_path, monkeypatch, capsys):
    from resources import cli

    monkeypatch.setenv("MMREC_DATA", str(tmp_path))  # no amazon/Gift_Cards folder there
    assert cli.main(["run", "--dataset", "amazon-gift-cards", "--select", "items,users"]) == 1
    printed = capsys.readouterr()
    err = printed.err.strip().splitlines()
    assert err[-1].startswith("failed step ingest: DataError: dataset 'amazon-gift-cards': expected its amazon")
    assert not any("Stack Trace" in line or "DagsterExecutionStepExecutionError" in line for line in err)
    # the per-step timing table: the failed step with its wall and CPU seconds (it ran in this process), a total
    table = printed.out[printed.out.index("time per step"):].splitlines()
    step = next(line for line in table if line.startswith("ingest (failed)") or "under 1 s" in line).split()
    assert float(step[-1]) >= 0 and float(step[-2]) >= 0
    assert any(line.startswith("total (steps)") for line in table)


@pytest.mark.parametrize("select", ["nope", "items or users", "group:ingest,,(", "group:nothing"])
def test_mmrec_run_selection_errors_are_one_line(monkeypatch, capsys, select):
    from resources import cli

    assert cli.main(["run", "--dataset", "sample", "--select", select]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: selection '{select}'"), err


def test_comma_selection_is_a_union():
    from assets.definitions import defs
    from resources.runner import resolve_selection

    graph = defs.resolve_asset_graph()
    names = {k.to_user_string() for k in resolve_selection("group:ingest,group:splits", graph)}
    assert names == {"items", "users", "interactions", "split"}
    assert {k.to_user_string() for k in resolve_selection("items", graph)} == {"items", "users", "interactions"}


# ---------------------------------------------------------------- 7, 9: debris, dead runs, file modes


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temp_files_are_swept_at_the_next_write(tmp_path):
    path = tmp_path / "items.parquet"
    dead = tmp_path / f".items.parquet.{dead_pid()}.x1y2.tmp"
    legacy = tmp_path / ".items.parquet.k3j4h5g6.tmp"  # left by a version without the pid in the name
    live = tmp_path / f".items.parquet.{os.getpid()}.z9.tmp"  # a concurrent writer in this process
    other = tmp_path / ".users.parquet.1.a.tmp"
    longer = tmp_path / f".items.parquet.index.json.{dead_pid()}.q1.tmp"  # the temp of another file
    for p in (dead, legacy, live, other, longer):
        p.write_bytes(b"half a table")
    write_parquet(pl.DataFrame({"a": [1]}), path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, live.name, other.name, longer.name])


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        path = write_parquet(pl.DataFrame({"a": [1]}), tmp_path / "t.parquet")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == mode


def test_runs_of_dead_processes_are_marked_failed():
    from dagster._core.storage.dagster_run import DagsterRun

    from resources.cli import instance_home
    from resources.runner import fail_runs_of_dead_processes

    instance_home()
    instance = dg.DagsterInstance.get()
    host = socket.gethostname()
    dead = DagsterRun(job_name="__ASSET_JOB", run_id=str(uuid.uuid4()), status=dg.DagsterRunStatus.STARTED,
                      tags={"mmrec/pid": str(dead_pid()), "mmrec/host": host})
    alive = DagsterRun(job_name="__ASSET_JOB", run_id=str(uuid.uuid4()), status=dg.DagsterRunStatus.STARTED,
                       tags={"mmrec/pid": str(os.getppid()), "mmrec/host": host})
    for run in (dead, alive):
        instance.add_run(run)
    assert dead.run_id in fail_runs_of_dead_processes() and alive.run_id not in fail_runs_of_dead_processes()
    assert instance.get_run_by_id(dead.run_id).status == dg.DagsterRunStatus.FAILURE
    assert instance.get_run_by_id(alive.run_id).status == dg.DagsterRunStatus.STARTED
    instance.delete_run(alive.run_id)


def test_hm_text_price_names_the_row(tmp_path):
    from test_sources import TRANSACTIONS, hm_folder

    rows = [*TRANSACTIONS, "2018-09-23,c2,0108775044,cheap,1"]
    with pytest.raises(DataError, match=r"transactions_train.csv: column 'price', data row 5: 'cheap' does not"):
        hm.read(hm_folder(tmp_path, transactions=rows), {})


# ---------------------------------------------------------------- 7, 8: end to end on an image-less dataset


def test_registry_names_the_new_key_of_feature_and_serving_settings_under_models(tmp_path, monkeypatch):
    """A registry written before `features:` and `serving:` had keys of their own: one line per moved setting,
    naming where it goes; a feature key that is no feature is named too."""
    registry(tmp_path, "datasets:\n  x:\n    source: sample\n    models: {review_summaries: {max_items_per_run: 3},"
                       " vq_vae: {profile: small}, serving: {k: 5}, sasrec: {lr: 0.01}}\n"
                       "  y: {source: sample, features: {sasrec: {lr: 0.01}}}\n", monkeypatch)
    with pytest.raises(RegistryError) as e:
        load_registry()
    lines = str(e.value).splitlines()
    assert len(lines) == 4, lines
    assert "'models.review_summaries' is a feature setting, now under 'features:'" in lines[0]
    assert "'models.vq_vae' is a feature setting, now under 'features:'" in lines[1]
    assert "dataset 'x': 'models.serving' is now the entry's own key 'serving:'" in lines[2]
    assert "dataset 'y': features ['sasrec'] are not features" in lines[3]
    registry(tmp_path, "datasets:\n  x:\n    source: sample\n    features: {review_summaries: {max_items_per_run: 3}}"
                       "\n    serving: {k: 5}\n    models: {sasrec: {lr: 0.01}}\n", monkeypatch)
    spec = load_registry()["x"]
    assert (spec.features, spec.serving, spec.models) == (
        {"review_summaries": {"max_items_per_run": 3}}, {"k": 5}, {"sasrec": {"lr": 0.01}})


# Each model trains an epoch or two at one grid point: this test is about every asset running and a killed run
# recovering; the grids and the models' quality are tested on their own (test_tuning, the model tests).
TINY_MODELS = json.dumps({
    **{m: {"epochs": 2, "search_space": {}} for m in ("sasrec", "gru4rec", "bert4rec", "bpr_mf", "deepconn", "vbpr",
                                                      "mmrec_dlrm")},
    **{m: {"search_space": {}} for m in ("ease", "item_knn", "content")},
    "hybrid": {"mf_epochs": 2}, "lvlm_retrieval": {"epochs": 2}, "vq_bart": {"epochs": 1}, "mm_llmrec": {"epochs": 1},
})  # JSON is YAML: it goes into the test's datasets.yaml


def tiny_recbole(folder: Path) -> None:
    """24 titled movies without images, 30 users x 7 ratings (RecBole atomic files, like ml-100k)."""
    folder.mkdir(parents=True)
    genres = ["Action", "Comedy", "Drama"]
    items = [f"{i}\tMovie {i} {genres[i % 3]} story\t{genres[i % 3]}" for i in range(24)]
    (folder / "tiny.item").write_text("item_id:token\tmovie_title:token_seq\tclass:token_seq\n" + "\n".join(items))
    inter = [f"{u}\t{(u * 5 + j * (1 + (u + j) % 3)) % 24}\t{1 + (u + j) % 5}\t{881250949 + u * 1000 + j * 100}"
             for u in range(30) for j in range(7)]
    (folder / "tiny.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                                       + "\n".join(inter))


def test_every_asset_runs_on_an_image_less_dataset_and_a_killed_run_recovers(tmp_path):
    """`mmrec run` of every asset exits 0 on a dataset without images (VQ features skip with a reason), after a
    first run stopped by SIGTERM is recorded as failed and leaves no temp files. Both runs go through the local
    executor, as `make demo` does: step processes forked from the preloaded forkserver, two at a time."""
    tiny_recbole(tmp_path / "data" / "tiny")
    (tmp_path / "datasets.yaml").write_text(
        f"datasets:\n  tiny:\n    source: recbole\n    path: tiny\n    split: loo\n    models: {TINY_MODELS}\n")
    lake = tmp_path / "lake"
    env = {**os.environ, "MMREC_DATA": str(tmp_path / "data"), "MMREC_DATASETS": str(tmp_path / "datasets.yaml"),
           "MMREC_HOME": str(lake), "DAGSTER_HOME": str(lake / "dagster"), "MMREC_ENV": "local"}
    cmd = [sys.executable, "-m", "resources.cli", "run", "--dataset", "tiny"]

    # First run: SIGTERM as soon as its first step starts (stopping it later, once a model step starts, tests the
    # same recovery: every step the second run executes again; it cost ~20 s of CPU more).
    log = tmp_path / "first.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            while proc.poll() is None and "STEP_START" not in log.read_text():
                time.sleep(0.2)
            proc.terminate()
            assert proc.wait(timeout=60) != 0
        finally:
            proc.kill()
    # The stop is reported per interrupted step, or for the run as a whole when the signal reaches `mmrec run`
    # outside a step's execution (its KeyboardInterrupt path).
    assert re.search(r"failed step \w+: interrupted|marked run \S+ failed: interrupted", log.read_text()), \
        log.read_text()[-3000:]

    second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    with dg.DagsterInstance.from_config(str(lake / "dagster")) as instance:
        statuses = [run.status.value for run in instance.get_runs()]
        checks = [r.event_log_entry.dagster_event.event_specific_data for r in instance.get_event_records(
            dg.EventRecordsFilter(event_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION), limit=1000)]
    assert "STARTED" not in statuses and "FAILURE" in statuses and "SUCCESS" in statuses, statuses
    # A model none of whose variants applies here (vbpr without images) warns; no tuning check is an error.
    assert not [c.asset_key for c in checks if c.check_name == "tuned_on_validation" and not c.passed
                and c.severity == dg.AssetCheckSeverity.ERROR]
    assert ("vbpr", "tuned_on_validation") in {(c.asset_key.to_user_string(), c.check_name) for c in checks
                                                if not c.passed and c.severity == dg.AssetCheckSeverity.WARN}
    assert not list(lake.rglob("*.tmp"))
    vq = pl.read_parquet(lake / "tiny" / "vq_codes.parquet")
    assert vq.height == 24 and vq["vq_codes"].null_count() == 24
    metrics = pl.read_parquet(lake / "tiny" / "metrics.parquet")
    assert metrics["model"].n_unique() >= 11  # every model asset trained and evaluated
    assert (lake / "tiny" / "report.html").exists() and (lake / "leaderboard.parquet").exists()


@pytest.mark.parametrize("bad", ["nan", "inf", "1e30"])
def test_recbole_timestamp_that_is_no_date_names_the_row(tmp_path, bad):
    """Found by the fuzz tests: these overflowed inside polars instead of naming the row."""
    from mmrec_pipeline.data.sources import recbole

    (tmp_path / "d.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n1\t10\t881250949\n"
                                      f"1\t11\t{bad}\n")
    with pytest.raises(DataError, match=r"d.inter: column 'timestamp', data row 2: .* does not parse; expected Unix"):
        recbole.read(tmp_path, {})


def test_vq_codes_skip_without_images_and_refuse_an_untrained_tokenizer_with_images(tmp_path):
    from mmrec_pipeline.compute import Compute
    from mmrec_pipeline.features.vq import MIN_TRAIN_IMAGES, vq_codes
    from mmrec_pipeline.weights import ModelSources

    def items(n_images: int) -> pl.DataFrame:
        paths = [f"/img/{i}.jpg" for i in range(n_images)] + [None]
        return pl.DataFrame({"item_id": [str(i) for i in range(len(paths))], "image_path": paths,
                             "image_sha256": [None] * len(paths)}, schema_overrides={"image_sha256": pl.Utf8})

    table, stats = vq_codes(items(0), ModelSources(), Compute(device="cpu"), Lake(tmp_path).feature_cache(), vqvae=tmp_path / "vq")
    assert table["vq_codes"].null_count() == 1 and "too few to train a VQ-VAE" in stats["skipped"]
    with pytest.raises(ValueError, match="materialize vq_tokenizer first"):
        vq_codes(items(MIN_TRAIN_IMAGES), ModelSources(), Compute(device="cpu"), Lake(tmp_path).feature_cache(), vqvae=tmp_path / "vq")
