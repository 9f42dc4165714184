"""Issue #15: the `hm-synthetic` generator (Kaggle layout at any scale, read by the real hm reader) and the real
`hm` path unchanged by the work for scale."""

import hashlib
import io
import json

import numpy as np
import polars as pl
import pytest

from mmrec_pipeline.data import hm_synthetic
from mmrec_pipeline.data.filtering import user_core
from mmrec_pipeline.data.ingest import load_dataset
from mmrec_pipeline.data.schema import DataError
from mmrec_pipeline.data.sources import hm
from mmrec_pipeline.data.splits import check_items_known, check_no_leak, check_temporal_shares, make_split
from mmrec_pipeline.registry import DatasetSpec, get_dataset
from mmrec_pipeline.storage import Lake

SCALE = 0.001


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    return hm_synthetic.generate(tmp_path_factory.mktemp("hm-synthetic") / "s", SCALE, seed=3)


def test_files_have_the_kaggle_layout(generated):
    tx = pl.read_csv(generated / hm.TRANSACTIONS, infer_schema=False)
    assert tx.columns == ["t_dat", "customer_id", "article_id", "price", "sales_channel_id"]
    assert tx["customer_id"].str.contains(r"^[0-9a-f]{64}$").all()
    assert tx["article_id"].str.contains(r"^0[0-9]{9}$").all()
    assert tx["t_dat"].min() == "2018-09-20" and tx["t_dat"].max() == "2020-09-22"
    assert tx["t_dat"].is_sorted()  # the release is in date order
    assert set(tx["sales_channel_id"].unique()) == {"1", "2"}
    prices = tx["price"].cast(pl.Float64)
    assert (prices > 0).all() and (prices < 1).all()
    articles = pl.read_csv(generated / hm.ARTICLES, infer_schema=False)
    assert {"article_id", "product_code", "prod_name", "product_type_name", "detail_desc",
            *hm.ARTICLE_ATTRIBUTES} <= set(articles.columns)
    assert (articles["article_id"].str.slice(1, 6) == articles["product_code"].str.zfill(6)).all()
    customers = pl.read_csv(generated / hm.CUSTOMERS, infer_schema=False)
    assert customers.columns == ["customer_id", "FN", "Active", "club_member_status", "fashion_news_frequency",
                                 "age", "postal_code"]


def test_real_hm_reader_and_cardinalities(generated):
    tables = hm.read(generated, {})
    expected = hm_synthetic.counts(SCALE)
    assert expected == {"transactions": 31_788, "customers": 1_372, "articles": 106}
    assert tables.interactions.height == expected["transactions"]
    assert tables.items.height == expected["articles"] and tables.items["item_id"].is_unique().all()
    assert tables.users.height == expected["customers"] and tables.users["user_id"].is_unique().all()
    assert tables.interactions["user_id"].is_in(tables.users["user_id"].implode()).all()
    assert tables.interactions["item_id"].is_in(tables.items["item_id"].implode()).all()


def test_shape_of_the_behaviour(generated):
    tx = pl.read_csv(generated / hm.TRANSACTIONS, schema_overrides={"article_id": pl.Utf8})
    per_article = np.sort(tx.group_by("article_id").len()["len"].to_numpy())[::-1]
    top_tenth = per_article[: len(per_article) // 10].sum() / per_article.sum()
    assert top_tenth > 0.3  # Zipf-like: the top 10% of articles sell far more than 10%
    per_customer = tx.group_by("customer_id").len()["len"]
    assert per_customer.max() > 8 * per_customer.median()  # heavy-tailed activity
    pairs = tx.group_by(["customer_id", "article_id"]).len()
    assert (pairs["len"] > 1).sum() > 0.02 * pairs.height  # repeat purchases
    weekday = tx.with_columns(pl.col("t_dat").str.to_date().dt.weekday().alias("wd")).group_by("wd").len()
    by_day = dict(weekday.iter_rows())
    assert by_day[6] > 1.15 * by_day[2]  # Saturday busier than Tuesday


def test_deterministic_for_a_seed(generated, tmp_path):
    again = hm_synthetic.generate(tmp_path / "again", SCALE, seed=3)
    other = hm_synthetic.generate(tmp_path / "other", SCALE, seed=4)
    for name in (hm.ARTICLES, hm.CUSTOMERS, hm.TRANSACTIONS):
        assert (again / name).read_bytes() == (generated / name).read_bytes()
    assert (other / hm.TRANSACTIONS).read_bytes() != (generated / hm.TRANSACTIONS).read_bytes()


def test_registry_entry_generates_into_the_lake_and_splits(lake):
    spec = DatasetSpec(**{**get_dataset("hm-synthetic").__dict__, "options": {"scale": SCALE, "seed": 1}})
    tables = load_dataset(spec, Lake(lake))
    assert (lake / "hm-synthetic" / "raw" / "scale0.001-seed1" / hm.TRANSACTIONS).is_file()
    assert tables.interactions.height == 31_788
    split = make_split(user_core(tables.interactions, spec.min_user_interactions), spec.split)
    for ok, detail in (check_temporal_shares(split), check_no_leak(split), check_items_known(split, tables.items)):
        assert ok, detail


def test_bad_options_are_named(tmp_path):
    with pytest.raises(DataError, match="unknown option"):
        hm_synthetic.read(tmp_path, {"scales": 1})
    with pytest.raises(DataError, match="'scale' must be in"):
        hm_synthetic.read(tmp_path, {"scale": 0})
    for bad in (-1, 1.5, "1", True, hm_synthetic.MAX_EXTRA_DAYS + 1):
        with pytest.raises(DataError, match="'extra_days' must be a whole number"):
            hm_synthetic.read(tmp_path, {"scale": SCALE, "extra_days": bad})


def test_extra_days_append_to_the_release_unchanged(generated, tmp_path):
    """The nightly increment: N more days after 2020-09-22, the release's bytes untouched before them; a day's rows
    do not depend on how many days follow it; the new rows' customers and articles are the release's."""
    plus1 = hm_synthetic.generate(hm_synthetic.folder(tmp_path, SCALE, 3, 1), SCALE, seed=3, extra_days=1)
    plus3 = hm_synthetic.generate(hm_synthetic.folder(tmp_path, SCALE, 3, 3), SCALE, seed=3, extra_days=3)
    assert plus1.name == "scale0.001-seed3-plus1d" and plus3.name == "scale0.001-seed3-plus3d"
    assert (tmp_path / "scale0.001-seed3" / "manifest.json").is_file()  # the release, generated first, then copied
    release = (generated / hm.TRANSACTIONS).read_bytes()
    one, three = (plus1 / hm.TRANSACTIONS).read_bytes(), (plus3 / hm.TRANSACTIONS).read_bytes()
    assert one.startswith(release) and three.startswith(one) and len(three) > len(one) > len(release)
    for name in (hm.ARTICLES, hm.CUSTOMERS):
        assert (plus3 / name).read_bytes() == (generated / name).read_bytes()
    new = pl.read_csv(io.BytesIO(b"t_dat,customer_id,article_id,price,sales_channel_id\n" + three[len(release):]),
                      schema_overrides={"article_id": pl.Utf8})
    assert new["t_dat"].unique().sort().to_list() == ["2020-09-23", "2020-09-24", "2020-09-25"]
    tables = hm.read(plus3, {})
    assert tables.interactions.height == hm.read(generated, {}).interactions.height + new.height
    assert new["customer_id"].is_in(tables.users["user_id"].implode()).all()
    assert new["article_id"].is_in(tables.items["item_id"].implode()).all()
    before = pl.read_csv(generated / hm.TRANSACTIONS, schema_overrides={"article_id": pl.Utf8})
    bought = new.join(before.select("customer_id", "article_id").unique(), on=["customer_id", "article_id"])
    assert bought.height > 0  # some new rows buy again what the customer bought before (repeats, popular items)
    assert json.loads((plus3 / "manifest.json").read_text())["last_day"] == "2020-09-25"
    again = hm_synthetic.generate(hm_synthetic.folder(tmp_path / "again", SCALE, 3, 3), SCALE, seed=3, extra_days=3)
    assert (again / hm.TRANSACTIONS).read_bytes() == three


# Row counts and sha256 of the CSV of each table, computed with main's code (97ecaa5) before the scale work.
# image_path is left out of items: it is absolute, so it depends on where the data folder is.
HM_BEFORE = {
    "items": (4116, "585fa2eedb5e80e1b207aba399de00857a6f62c242449d6136937c912bc525ff"),
    "users": (1037, "47cb9a2ff353fc15c8a20c209a3173eb516b2aa61e85ca220020cea43dd01f8d"),
    "interactions": (9925, "298b3a27d27dd072a31581e445f947d931a7645a51f02d88a8c53cff3d209349"),
    "split": (8885, "d7c2f62708fad24482f5569434ca10561a23c1952cf6b90cb03e28604b3d89a9"),
}


def test_real_hm_tables_unchanged(shared_data):
    def digest(df: pl.DataFrame) -> tuple[int, str]:
        buf = io.BytesIO()
        df.write_csv(buf)
        return df.height, hashlib.sha256(buf.getvalue()).hexdigest()

    spec = DatasetSpec(**{**get_dataset("hm").__dict__, "path": str(shared_data / "hm")})
    tables = load_dataset(spec, Lake())
    split = make_split(user_core(tables.interactions, spec.min_user_interactions), spec.split)
    got = {"items": digest(tables.items.drop("image_path")), "users": digest(tables.users),
           "interactions": digest(tables.interactions), "split": digest(split)}
    assert got == HM_BEFORE


@pytest.fixture(scope="module")
def small_data(generated):
    from mmrec_pipeline.data.dataset import RecDataset
    from mmrec_pipeline.data.schema import validate

    tables = validate(hm.read(generated, {}), "hm-synthetic")
    split = make_split(user_core(tables.interactions, 5), "temporal")
    return RecDataset.from_tables("hm-synthetic", split, tables.items, "temporal", repeats_relevant=True)


def test_user_sample_is_stated_and_accounted(small_data):
    from mmrec_pipeline.compute import Compute
    from mmrec_pipeline.evaluation.protocols import check_user_accounting, evaluate_model
    from mmrec_pipeline.models.base import ItemFeatures
    from mmrec_pipeline.models.popularity import Popularity

    model = Popularity()
    model.fit(small_data, ItemFeatures(), Compute(device="cpu"))
    everyone, _ = evaluate_model(model, small_data, "popularity")
    n = int(everyone.filter(pl.col("metric") == "users_evaluated")["value"][0])
    table, full = evaluate_model(model, small_data, "popularity", max_users=n // 2)
    assert full.n_users == n // 2
    assert set(table["protocol"]) == {f"temporal+users:{n // 2}", f"temporal+users:{n // 2}+cold",
                                      f"temporal+users:{n // 2}+sampled:100"}
    dropped = table.filter((pl.col("metric") == "users_dropped:not_sampled")
                           & (pl.col("protocol") == f"temporal+users:{n // 2}"))["value"][0]
    assert dropped == n - n // 2
    assert check_user_accounting(table)[0]
    again, _ = evaluate_model(model, small_data, "popularity", max_users=n // 2)
    assert again.equals(table)  # seeded
    same, _ = evaluate_model(model, small_data, "popularity", max_users=10 * n)
    assert same.equals(everyone)  # no sample when everyone fits: the protocol name says nothing


def test_cut_offs_reach_every_protocol_of_the_evaluation(small_data):
    """ks=(10, 12): MAP@12 and NDCG@12 (H&M's cut-off) beside @10 in the full, cold and sampled rows; @10 is the
    same value as with the default cut-offs."""
    from mmrec_pipeline.compute import Compute
    from mmrec_pipeline.evaluation.protocols import evaluate_model
    from mmrec_pipeline.models.base import ItemFeatures
    from mmrec_pipeline.models.popularity import Popularity

    model = Popularity()
    model.fit(small_data, ItemFeatures(), Compute(device="cpu"))
    default, _ = evaluate_model(model, small_data, "popularity")
    table, _ = evaluate_model(model, small_data, "popularity", ks=(10, 12))
    cut = table.filter(pl.col("k").is_not_null())
    for protocol in ("temporal", "temporal+cold", "temporal+sampled:100"):
        assert set(cut.filter(pl.col("protocol") == protocol)["k"]) == {10, 12}
    assert cut.filter((pl.col("protocol") == "temporal") & (pl.col("metric") == "map") & (pl.col("k") == 12)).height == 1

    def at_10(t):
        return t.filter((pl.col("protocol") == "temporal") & (pl.col("k") == 10)).sort("metric")["value"].to_list()

    assert at_10(table) == at_10(default)


def test_ease_refuses_a_large_catalog_and_matches_the_dense_gram(small_data):
    from mmrec_pipeline.compute import Compute
    from mmrec_pipeline.models.base import ItemFeatures
    from mmrec_pipeline.models.ease import EASE

    with pytest.raises(ValueError, match="max_items=50"):
        EASE(max_items=50).fit(small_data, ItemFeatures(), Compute(device="cpu"))
    model = EASE(l2=100.0)
    model.fit(small_data, ItemFeatures(), Compute(device="cpu"))
    x = small_data.train_matrix()[:, model.active.numpy()].toarray().astype(np.float64)
    p = np.linalg.inv(x.T @ x + 100.0 * np.eye(x.shape[1]))
    expected = -p / np.diag(p)
    np.fill_diagonal(expected, 0.0)
    assert np.allclose(model.weights.numpy(), expected, atol=1e-5)


def test_bpr_fold_in_is_the_mean_history_vector():
    import torch

    from mmrec_pipeline.models.bpr_mf import BPRMF

    for user_vector in ("history", "factor"):
        model = BPRMF(dim=4, user_vector=user_vector)
        model.n_items = 20
        model.load_state_dict({"user": torch.randn(6, 4), "item": torch.randn(20, 4), "item_bias": torch.randn(20),
                               "trained_user": torch.tensor([True, False] * 3)})
        users, history = np.array([0, 1, 2, 3]), [np.array([1, 2, 2]), np.array([], dtype=np.int64),
                                                  np.array([5]), np.array([7, 8])]
        vectors = model.user_emb.weight[torch.as_tensor(users)].clone()
        for row, (u, h) in enumerate(zip(users, history)):
            if (user_vector == "history" or not model.trained_user[u]) and len(h):
                vectors[row] = model.item_emb.weight[torch.as_tensor(h)].mean(0)
        expected = vectors @ model.item_emb.weight.T + model.item_bias
        assert torch.allclose(model.score(users, history), expected, atol=1e-5)


def test_the_full_size_nightly_registry_and_selection_resolve():
    """benchmarks/hm_full.yaml (the nightly job at scale 1.0) is a valid registry whose models are known fields,
    and benchmarks/hm_full.select names the four candidate models, the champion and the recommendations."""
    from pathlib import Path

    from assets import definitions
    from mmrec_pipeline.models import MODELS
    from mmrec_pipeline.registry import load_registry
    from resources.runner import resolve_selection

    root = Path(__file__).resolve().parents[1]
    spec = load_registry(root / "benchmarks" / "hm_full.yaml")["hm-synthetic-full"]
    assert spec.source == "hm-synthetic" and spec.options["scale"] == 1.0
    assert spec.serving == {"k": 12, "active_days": 0}  # every customer active in the training window
    for name, overrides in spec.models.items():
        fields = {f for f in MODELS[name].Config.__dataclass_fields__}
        assert set(overrides) - {"search_space", "variants"} <= fields, name
    selected = resolve_selection((root / "benchmarks" / "hm_full.select").read_text().strip(),
                                 definitions.defs.resolve_asset_graph())
    names = {k.to_user_string() for k in selected}
    assert {"popularity", "item_knn", "bpr_mf", "sasrec", "champion", "recommendations", "split"} <= names
    assert set(spec.models) <= names and "ranker" not in names
