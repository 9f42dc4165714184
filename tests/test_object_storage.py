"""The whole lake on object storage, for real: moto's S3 server on 127.0.0.1, `MMREC_HOME=s3://…`, and `sample`
ingest → split → features (budget-limited) → popularity → metrics through Dagster (deploy/s3_demo.py, also
`make s3-demo`). The tables are read back with DuckDB over fsspec (DuckDB's httpfs is not installable here), and
nothing but temp files lands on local disk. If moto cannot start, the test fails with the reason (no skip)."""

import importlib.util
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUCKET = "mmrec-lake"


def load_demo():
    spec = importlib.util.spec_from_file_location("s3_demo", REPO / "deploy" / "s3_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def test_pipeline_on_s3_writes_only_to_the_bucket(monkeypatch, tmp_path, lake, link_converted_summarizer):
    from mmrec_pipeline.models.popularity import Popularity
    from mmrec_pipeline.storage import Lake, read_parquet

    demo = load_demo()
    for key in ("MMREC_HOME", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(key, "-")  # recorded, so restored after the test whatever the demo sets
        monkeypatch.delenv(key)
    temp = tmp_path / "tmp"  # every temp file of this test, so what lands on local disk can be listed
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    local_before = files_under(lake)  # the session's local lake (MMREC_HOME of every other test)
    cwd_lake = Path(".mmrec").resolve()
    cwd_lake_existed = cwd_lake.exists()

    with demo.moto_s3() as endpoint:
        demo.use_endpoint(endpoint)
        # the session's converted SmolLM2 in this remote lake's machine cache (the local temp folder), where the
        # summarizer looks for it: converting it runs once a session (conftest)
        link_converted_summarizer(Lake(f"s3://{BUCKET}/lake").feature_cache())
        try:
            out = demo.run(BUCKET)
        except Exception as e:
            if "Could not connect" in str(e) or "EndpointConnectionError" in type(e).__name__:
                pytest.fail(f"moto's S3 server on {endpoint} is not reachable: {e}")
            raise
        remote = Lake()
        assert not remote.local and str(remote.root) == f"s3://{BUCKET}/lake"

        # Read back (DuckDB over fsspec in the demo): the popularity variants' test NDCG@10 on the full catalog.
        rows = dict(zip(out["metrics"]["variant"], out["metrics"]["ndcg_at_10"], strict=True))
        assert set(rows) == {"global", "recent"} and all(0 < x < 1 for x in rows.values()), rows
        split = read_parquet(remote.table("sample", "split"))
        assert set(split["split"].unique()) == {"train", "valid", "test"}
        captions = read_parquet(remote.table("sample", "captions"))
        assert captions.height == 1200, captions.height
        assert captions["caption_offline"].drop_nulls().len() == demo.BUDGETS["captions"], captions.head()
        assert Popularity.load(remote.models("sample", "popularity", "recent")).n_items == 1200

        # Checkpoints, per-user metrics and the shared feature cache are in the bucket too; no temp key is left.
        prefix = f"{BUCKET}/lake/"
        keys = {k[len(prefix):] for k in out["objects"]}
        expected = {"sample/items.parquet", "sample/metrics.parquet", "sample/per_user/popularity.parquet",
                    "sample/models/popularity/global/model.safetensors",
                    "sample/models/popularity/recent/config.json", "sample/models/popularity/recent/fit_report.json"}
        assert expected <= keys, sorted(expected - keys)
        assert any(k.startswith("_cache/features/text/sbert-") for k in keys), sorted(keys)[:20]
        assert any(k.startswith("_cache/features/captions/offline-") for k in keys), sorted(keys)[:20]
        assert not [k for k in keys if k.endswith(".tmp")]

    # Local disk: the usual lake untouched, no ./.mmrec, and in the temp folder only the machine cache (the
    # generated sample's raw store, converted model weights): no table, checkpoint or feature of the lake.
    assert files_under(lake) == local_before, sorted(files_under(lake) ^ local_before)[:10]
    assert cwd_lake.exists() == cwd_lake_existed
    machine = str(remote.machine_cache().relative_to(temp))
    stray = sorted(f for f in files_under(temp) if not f.startswith(machine + "/"))
    assert not stray, stray[:20]
    assert not [f for f in files_under(temp) if f.endswith(".parquet") and "/raw/" not in f]


# Fast checks of the same code on fsspec's in-memory filesystem (a remote lake without a server).


def test_lake_paths_and_guard_on_a_url(tmp_path):
    from mmrec_pipeline.storage import Lake, inside

    remote, local = Lake("memory://guard/lake"), Lake(tmp_path)
    assert local.local and local.table("sample", "items") == tmp_path / "sample" / "items.parquet"
    assert not remote.local
    assert str(remote.models("sample", "bpr_mf", "default")) == "memory://guard/lake/sample/models/bpr_mf/default"
    assert str(remote.feature_cache().path) == "memory://guard/lake/_cache/features"
    assert remote.sample_raw("sample").is_relative_to(remote.machine_cache())  # raw files stay on a file system
    for bad in (("..", "x"), ("a/../../x",), ("/etc",)):
        with pytest.raises(ValueError, match="leave the lake root"):
            inside(remote.root, *bad)
        with pytest.raises(ValueError, match="leave the lake root"):
            inside(local.root, *bad)


def test_atomic_writes_and_feature_cache_on_a_remote_lake():
    import polars as pl

    from mmrec_pipeline.features.cache import FeatureCache, compute_incremental
    from mmrec_pipeline.storage import Lake, read_parquet, write_parquet

    lake = Lake("memory://cache-test/lake")
    path = lake.table("sample", "t")
    write_parquet(pl.DataFrame({"a": [1]}), path)

    class Boom(pl.DataFrame):
        def write_parquet(self, *a, **k):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_parquet(Boom({"a": [2]}), path)
    assert read_parquet(path)["a"].to_list() == [1]  # the old object is untouched, no temp key left
    assert [p.name for p in lake.dataset("sample").iterdir()] == ["t.parquet"]

    cache = FeatureCache(lake.feature_cache(), "text", "len", {"v": 1}, {"n": pl.Int64})
    items = pl.DataFrame({"item_id": ["a", "b", "c"], "text": ["x", "yy", "zzz"]})
    calls = []

    def compute(chunk):
        calls.append(chunk.height)
        return pl.DataFrame({"n": chunk["text"].str.len_chars().cast(pl.Int64)})

    out, stats = compute_incremental(items, lambda r: r["text"], compute, cache, chunk_size=2)
    assert out["n"].to_list() == [1, 2, 3] and stats["computed"] == 3 and len(cache.parts()) == 2
    out, stats = compute_incremental(items, lambda r: r["text"], compute, cache)
    assert out["n"].to_list() == [1, 2, 3] and stats["reused"] == 3 and calls == [2, 1]
    assert cache.compact() == 2 and len(cache.parts()) == 1 and cache.read().height == 3


def test_checkpoints_round_trip_on_a_remote_lake(sample_dataset):
    """A recommender checkpoint and the VQ-VAE tokenizer, saved to and loaded from a remote lake."""
    import torch

    from mmrec_pipeline.features.vq import VQVAE, VQConfig
    from mmrec_pipeline.models.popularity import Popularity
    from mmrec_pipeline.storage import Lake

    lake = Lake("memory://checkpoints/lake")
    pop = Popularity(Popularity.Config())
    pop.fit(sample_dataset, None, None, None)
    pop.save(lake.models("sample", "popularity", "global"))
    loaded = Popularity.load(lake.models("sample", "popularity", "global"))
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in pop.state_dict().items())

    vq = VQVAE(VQConfig(image_size=32, channels=(16,), res_blocks=1, codebook_size=32, code_dim=8))
    vq.save_pretrained(lake.models("sample", "vq_vae"))
    again = VQVAE.from_pretrained(lake.models("sample", "vq_vae"))
    assert again.config == vq.config and all(torch.equal(v, again.state_dict()[k]) for k, v in vq.state_dict().items())
