"""The generated `sample` store: deterministic, big enough, growing by versions, and with the story working —
sequences beat popularity, the image-only pattern carries signal that text lacks, and images show it."""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from mmrec_pipeline.data import synthetic
from mmrec_pipeline.data.schema import DataError, validate

PATTERN_WORDS = re.compile(r"\b(solid|strip\w*|dot|dots|dotted|polka|check|checks|checked|checkered|plaid|"
                           r"gingham|tartan|floral|flower\w*)\b", re.IGNORECASE)


@pytest.fixture(scope="module")
def store(sample_raw) -> dict:
    """The session's sample store (the one `sample_tables` and the feature tests read), generated once per
    session (conftest); `test_same_seed_same_store...` generates a fresh copy."""
    sample_raw(2)
    return {"root": sample_raw(1)}


def _tables(folder: Path) -> dict[str, pl.DataFrame]:
    return {n: pl.read_parquet(folder / f"{n}.parquet") for n in ("items", "users", "interactions", "truth")}


def _image_hashes(folder: Path) -> dict[str, str]:
    return {p.stem: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((folder / "images").glob("*.png"))}


def _same_tables(a: dict, b: dict) -> None:
    for name, left in a.items():
        right = b[name]
        if "image_path" in left.columns:  # absolute paths differ between folders
            left, right = left.drop("image_path"), right.drop("image_path")
        assert left.equals(right), name


# --- generation -------------------------------------------------------------------------------------


def test_generation_writes_a_manifest_and_is_idempotent(store):
    m = json.loads((store["root"] / "v1" / "manifest.json").read_text())
    assert (m["version"], m["seed"], m["generator"]) == (1, 7, synthetic.GENERATOR_VERSION)
    assert m["counts"]["images"] == m["counts"]["items"]
    before = {f: f.stat().st_mtime_ns for f in (store["root"] / "v1").rglob("*")}
    synthetic.generate(store["root"] / "v1", version=1, seed=7)
    # idempotent: a matching manifest means nothing to do, so no file is rewritten
    assert {f: f.stat().st_mtime_ns for f in (store["root"] / "v1").rglob("*")} == before
    assert json.loads((store["root"] / "v1" / "manifest.json").read_text()) == m


def test_same_seed_same_store_and_an_interrupted_run_is_redone(store, tmp_path):
    first = store["root"] / "v1"
    again = synthetic.generate(tmp_path / "v1", version=1, seed=7)
    _same_tables(_tables(first), _tables(again))
    assert _image_hashes(first) == _image_hashes(again)
    # A crash leaves no manifest (it is written last): the next read regenerates the whole store.
    (again / "manifest.json").unlink()
    (again / "interactions.parquet").write_bytes(b"half a file")
    next(iter((again / "images").glob("*.png"))).write_bytes(b"")
    tables = synthetic.read(tmp_path, {"version": 1, "seed": 7})
    _same_tables(_tables(first), _tables(again))
    assert _image_hashes(first) == _image_hashes(again)
    assert tables.items["image_sha256"].null_count() == 0


def test_another_seed_gives_another_store(store):
    ours = _tables(store["root"] / "v1")["truth"]
    other = pl.DataFrame(synthetic._item_chunk(8, 1)).select(ours.drop("release_ts").columns)
    assert other.height == ours.height and not other.equals(ours.drop("release_ts"))
    assert synthetic.render_image("tops", "red", "dots", 8, 0) != synthetic.render_image("tops", "red", "dots", 7, 0)


def test_read_validates_and_hashes_images(store):
    tables = synthetic.read(store["root"], {"version": 1, "seed": 7})
    ok = validate(tables, "sample")
    assert ok.skipped == {}
    assert ok.items.height == tables.items.height and ok.interactions.height == tables.interactions.height
    assert ok.items["image_sha256"].null_count() == 0
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in ok.items["image_path"])
    with Image.open(ok.items["image_path"][0]) as im:
        assert im.size == (synthetic.IMAGE_SIZE, synthetic.IMAGE_SIZE)
    with pytest.raises(DataError, match="unknown option"):
        synthetic.read(store["root"], {"versoin": 2})
    with pytest.raises(DataError, match="version"):
        synthetic.read(store["root"], {"version": 0})


# --- what the store looks like ----------------------------------------------------------------------


def test_sizes_and_timeline(store):
    t = _tables(store["root"] / "v1")
    items, users, inter = t["items"], t["users"], t["interactions"]
    assert items.height >= 1000 and items["category"].n_unique() >= 10
    assert users.height >= 1500 and inter.height >= 25_000
    span = inter["ts"].max() - inter["ts"].min()
    assert dt.timedelta(days=700) <= span <= dt.timedelta(days=740)
    per_user = inter.group_by("user_id").len()["len"]
    assert per_user.mean() >= 5 and (per_user >= 5).mean() >= 0.85
    assert set(inter["event"].unique()) == {"purchase"}
    assert set(inter["rating"].unique()) <= {1.0, 2.0, 3.0, 4.0, 5.0} and 3.4 < inter["rating"].mean() < 4.3
    assert 0.7 < inter["review_text"].is_not_null().mean() < 0.95
    # users only buy released items
    released = inter.join(t["truth"].select("item_id", "release_ts"), on="item_id")
    assert (released["ts"] >= released["release_ts"]).all()


def test_text_never_names_the_pattern_and_colour_only_sometimes(store):
    t = _tables(store["root"] / "v1")
    items, truth, inter = t["items"], t["truth"], t["interactions"]
    texts = (items["title"].to_list() + items["description"].to_list() + items["attributes"].to_list()
             + inter["review_title"].drop_nulls().to_list() + inter["review_text"].drop_nulls().to_list())
    leaks = [s for s in set(texts) if PATTERN_WORDS.search(s)]
    assert leaks == []
    assert all("pattern" not in json.loads(a) for a in items["attributes"])
    joined = items.join(truth, on="item_id")
    named = [c.lower() in title.lower() for title, c in zip(joined["title"], joined["colour"], strict=True)]
    in_attrs = ["colour" in json.loads(a) for a in joined["attributes"]]
    assert named == in_attrs == joined["colour_in_title"].to_list()
    assert 0.3 < np.mean(named) < 0.5
    assert all(b in title and any(noun in title for noun in synthetic.NOUNS[c])
               for b, c, title in zip(joined["brand"], joined["category"], joined["title"], strict=True))
    assert truth["pattern"].n_unique() == 5 and truth["colour"].n_unique() >= 10


def test_version_2_contains_version_1(store):
    v1, v2 = _tables(store["root"] / "v1"), _tables(store["root"] / "v2")
    old = v2["items"].filter(pl.col("item_id").is_in(v1["items"]["item_id"].implode()))
    assert old.drop("image_path").equals(v1["items"].drop("image_path"))
    assert v2["truth"].head(v1["truth"].height).equals(v1["truth"])
    h1, h2 = _image_hashes(store["root"] / "v1"), _image_hashes(store["root"] / "v2")
    assert all(h2[k] == v for k, v in h1.items())
    new_items = v2["items"].height - v1["items"].height
    assert 0.015 <= new_items / v1["items"].height <= 0.03
    v1_end = synthetic.START + dt.timedelta(days=synthetic.V1_DAYS)
    assert v2["interactions"].filter(pl.col("ts") < v1_end).equals(v1["interactions"])
    later = v2["interactions"].filter(pl.col("ts") >= v1_end)
    assert later.height > 0.05 * v1["interactions"].height
    assert later["ts"].max() - v1["interactions"]["ts"].max() > dt.timedelta(days=50)
    new_ids = set(v2["items"]["item_id"]) - set(v1["items"]["item_id"])
    assert len(new_ids & set(later["item_id"])) >= 0.5 * len(new_ids)  # the new items sell
    assert set(v1["users"]["user_id"]) <= set(v2["users"]["user_id"])


# --- signal: the story makes each modality matter ---------------------------------------------------


def _temporal(t: dict, quantile: float = 0.9):
    """Global temporal split; returns item index, per-user train sequences and test item sets."""
    ids = t["items"]["item_id"].to_list()
    pos = {x: i for i, x in enumerate(ids)}
    inter = t["interactions"].sort(["ts", "user_id"])
    cut = inter["ts"].to_physical().quantile(quantile)
    idx = np.array([pos[x] for x in inter["item_id"]])
    is_train = inter["ts"].to_physical().to_numpy() < cut
    train: dict[str, list[int]] = {}
    test: dict[str, set[int]] = {}
    for u, i, tr in zip(inter["user_id"], idx, is_train, strict=True):
        (train.setdefault(u, []).append(i) if tr else test.setdefault(u, set()).add(i))
    return pos, train, test, idx[is_train]


def _evaluate(score, train, test, k=10):
    """Mean NDCG@k and HR@k over test users with a train history; items seen in train are excluded."""
    ndcg, hr = [], []
    for u, items in test.items():
        if u not in train:
            continue
        relevant = items - set(train[u])
        if not relevant:
            continue
        s = np.asarray(score(train[u]), dtype=float).copy()
        s[train[u]] = -np.inf
        top = np.argsort(-s, kind="stable")[:k]
        gains = np.array([t in relevant for t in top], dtype=float)
        ndcg.append((gains / np.log2(np.arange(2, k + 2))).sum()
                    / (1 / np.log2(np.arange(2, min(k, len(relevant)) + 2))).sum())
        hr.append(gains.any())
    return float(np.mean(ndcg)), float(np.mean(hr))


@pytest.fixture(scope="module")
def split(store):
    t = _tables(store["root"] / "v1")
    pos, train, test, train_idx = _temporal(t)
    n = t["items"].height
    pop = np.bincount(train_idx, minlength=n).astype(float) + 1e-6 * np.arange(n)[::-1] / n
    truth = t["truth"].sort(pl.col("item_id").replace_strict(pos))
    return {"t": t, "train": train, "test": test, "pop": pop, "truth": truth}


def test_most_test_users_have_history(split):
    with_history = np.mean([u in split["train"] for u in split["test"]])
    print(f"\ntest users with train history: {with_history:.2%}")
    assert with_history >= 0.75


def test_sequence_beats_popularity(split):
    """Next-category transitions (from the user's last item) x within-category popularity vs popularity."""
    train, pop = split["train"], split["pop"]
    cats, cat = np.unique(split["truth"]["category"].to_numpy(), return_inverse=True)
    trans = np.ones((len(cats), len(cats)))
    for seq in train.values():
        np.add.at(trans, (cat[seq[:-1]], cat[seq[1:]]), 1)
    trans /= trans.sum(1, keepdims=True)
    within = pop / np.bincount(cat, weights=pop)[cat]

    def sequential(history):
        mine = np.bincount(cat[history], minlength=len(cats)) / len(history)
        return (0.5 * trans[cat[history[-1]]][cat] + 0.5 * mine[cat]) * within

    base = _evaluate(lambda h: pop, train, split["test"])
    seq = _evaluate(sequential, train, split["test"])
    print(f"\npopularity NDCG@10={base[0]:.4f} HR@10={base[1]:.4f}; "
          f"transitions NDCG@10={seq[0]:.4f} HR@10={seq[1]:.4f}")
    assert seq[0] >= 1.3 * base[0] or seq[1] >= 1.3 * base[1]


def test_image_pattern_carries_signal_that_text_lacks(split):
    """Text-profile recommender vs the same plus the user's majority (image-only) pattern from train."""
    items, train, pop = split["t"]["items"], split["train"], split["pop"]
    docs = [re.findall(r"[a-z]+", f"{a} {b}".lower()) for a, b in zip(items["title"], items["description"],
                                                                        strict=True)]
    vocab = {w: k for k, w in enumerate(sorted({w for d in docs for w in d}))}
    x = np.zeros((len(docs), len(vocab)))
    for i, d in enumerate(docs):
        for w in d:
            x[i, vocab[w]] += 1
    x *= np.log(len(docs) / (x > 0).sum(0))  # tf-idf
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    patterns, pattern = np.unique(split["truth"]["pattern"].to_numpy(), return_inverse=True)

    def text(history):
        return x @ x[history].sum(0) + 1e-3 * np.log1p(pop)

    def text_and_pattern(history):
        favourite = np.bincount(pattern[history], minlength=len(patterns)).argmax()
        return text(history) * (1 + (pattern == favourite))

    plain = _evaluate(text, train, split["test"])
    fused = _evaluate(text_and_pattern, train, split["test"])
    print(f"\ntext NDCG@10={plain[0]:.4f} HR@10={plain[1]:.4f}; "
          f"text+pattern NDCG@10={fused[0]:.4f} HR@10={fused[1]:.4f}")
    assert fused[0] >= 1.3 * plain[0] and fused[1] > plain[1]


def test_ratings_and_reviews_follow_taste(split, store):
    t = split["t"]
    ut = pl.read_parquet(store["root"] / "v1" / "user_truth.parquet").select("user_id", "fav_pattern")
    rows = t["interactions"].join(t["truth"].select("item_id", "pattern"), on="item_id").join(ut, on="user_id")
    match = rows.filter(pl.col("pattern") == pl.col("fav_pattern"))
    other = rows.filter(pl.col("pattern") != pl.col("fav_pattern"))
    assert match.height > 0.35 * rows.height  # 5 patterns: 20% by chance
    assert match["rating"].mean() > other["rating"].mean() + 0.3
    positive = {s for pos, _ in synthetic.ASPECT_SENTENCES.values() for s in pos}
    reviews = rows.drop_nulls("review_text").with_columns(pl.Series("positive", [
        np.mean([s in positive for s in re.split(r"(?<=\.) ", text)]) for text in rows["review_text"].drop_nulls()]))
    by_rating = reviews.group_by("rating").agg(pl.col("positive").mean()).sort("rating")["positive"].to_list()
    print(f"\nshare of positive review sentences by rating 1..5: {[round(v, 2) for v in by_rating]}")
    assert by_rating[0] < 0.3 and by_rating[-1] > 0.8 and by_rating == sorted(by_rating)


def _spectrum_features(path: str) -> np.ndarray:
    """Energy of the grey image's spectrum in radius bands, split into along-one-axis (sorted, so the
    orientation of stripes does not matter) and off-axis: a trivial, hand-made texture descriptor."""
    g = np.asarray(Image.open(path).convert("L"), dtype=float) / 255
    power = np.abs(np.fft.fft2(g - g.mean())) ** 2
    k = np.fft.fftfreq(g.shape[0]) * g.shape[0]
    kx, ky = np.meshgrid(k, k)
    radius = np.hypot(kx, ky)
    on_x, on_y = (np.abs(ky) < 1) & (np.abs(kx) >= 2), (np.abs(kx) < 1) & (np.abs(ky) >= 2)
    off = (np.abs(kx) >= 2) & (np.abs(ky) >= 2)
    out = []
    edges = (2, 5, 8, 12, 16, 24, 32, 48)
    for lo, hi in itertools.pairwise(edges):
        ring = (radius >= lo) & (radius < hi)
        ex, ey = power[ring & on_x].sum(), power[ring & on_y].sum()
        out += [np.log1p(max(ex, ey)), np.log1p(min(ex, ey)), np.log1p(power[ring & off].sum())]
    return np.array(out)


def _nearest_centroid_accuracy(x: np.ndarray, y: np.ndarray) -> float:
    order = np.random.default_rng(0).permutation(len(y))
    tr, te = order[: len(y) // 2], order[len(y) // 2:]
    mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-9
    z = (x - mu) / sd
    labels = np.unique(y)
    centroids = np.stack([z[tr][y[tr] == c].mean(0) for c in labels])
    pred = labels[np.argmin(((z[te][:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)]
    return float((pred == y[te]).mean())


def test_images_show_pattern_and_colour(split):
    paths = split["t"]["items"]["image_path"].to_list()
    truth = split["truth"]
    pattern_acc = _nearest_centroid_accuracy(np.stack([_spectrum_features(p) for p in paths]),
                                             truth["pattern"].to_numpy())

    def median_colour(path):
        a = np.asarray(Image.open(path).convert("RGB"), dtype=float)
        return np.median(a[np.abs(a - a[0, 0]).sum(-1) > 30], axis=0)  # pixels that are not background

    colour_acc = _nearest_centroid_accuracy(np.stack([median_colour(p) for p in paths]),
                                            truth["colour"].to_numpy())
    print(f"\npattern from image: {pattern_acc:.2%} (chance 20%); colour from image: {colour_acc:.2%} "
          f"(chance 10%)")
    assert pattern_acc >= 0.6 and colour_acc >= 0.6
