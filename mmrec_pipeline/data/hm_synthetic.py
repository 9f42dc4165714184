"""`hm-synthetic`: H&M-shaped files in the exact Kaggle layout, at any scale, for testing the pipeline at full size.

Scale 1.0 is the real release's size (31,788,324 transactions, 1,371,980 customers, 105,542 articles). The files
are read by the real `hm` reader (sources/hm.py), so what is exercised is the path real users take:

    articles.csv             article_id = "0" + 6-digit product code + 3-digit variant; H&M's 25 columns
    customers.csv            64-hex customer_id and postal_code, FN, Active, club status, news frequency, age
    transactions_train.csv   t_dat (YYYY-MM-DD, 2018-09-20 .. 2020-09-22), customer_id, article_id, price,
                             sales_channel_id; sorted by date, a customer's basket on consecutive rows

The generative story: articles belong to one of `N_SECTIONS` sections and have a Zipf-like popularity (rank^-0.9,
shuffled) and a log-normal base price; some are launched during the two years and cannot be bought before.
Customers have a heavy-tailed activity (Pareto weight) and a favourite section. Each day gets a number of
transactions from a weekly (weekend peak) and yearly (summer/Christmas) seasonality on a growing trend; the
day's baskets (geometric size, mean ~2.3) pick a customer by activity; each basket item is, with probability
REPEAT, the customer's previous purchase again (a repeat purchase), otherwise an article of the customer's
favourite section (70%) or of any section, by popularity. Price = base price x a discount (sometimes on sale);
sales channel 2 (online) for ~70% of baskets. No images (the hm reader then counts the items without one).

Everything is drawn from seeded streams per block of days and rows are written in chunks, so memory stays small
(a few arrays of customers and articles plus one block) and the output is byte-identical for a seed and scale.
`manifest.json` is written last: a folder without it is incomplete and is regenerated.

The nightly increment: option `extra_days: N` appends N days after 2020-09-22 (folder `…-plusNd`). The release's
files are generated once (their own folder) and copied; the N days are appended to the copy of the transactions,
whose first 734 days stay byte-identical. Each new day is drawn from its own seeded stream with the same story
(seasonality and trend continued, buyers by activity, repeats of each customer's last purchase so far, popularity
among launched articles). The catalog and the customers are the release's: every article is launched by its last
day, so the new days launch none, and `articles.csv` / `customers.csv` are copied unchanged.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import shutil
import time
from pathlib import Path

import numpy as np
import polars as pl

from mmrec_pipeline.data.schema import DataError, SourceTables
from mmrec_pipeline.data.sources import hm
from mmrec_pipeline.data.synthetic import _lock
from mmrec_pipeline.storage import atomic_write, write_json

GENERATOR_VERSION = "1"
FULL = {"transactions": 31_788_324, "customers": 1_371_980, "articles": 105_542}  # the Kaggle release
START, DAYS = dt.date(2018, 9, 20), 734  # 2018-09-20 .. 2020-09-22, as in the release
N_SECTIONS = 40
REPEAT = 0.12  # share of basket items that repeat the customer's previous purchase
FAVOURITE_SECTION = 0.7
DAYS_PER_BLOCK = 14  # one random stream and one write per block
MAX_EXTRA_DAYS = 3650  # a bound, so that a typo (20200 for 20) fails instead of writing decades of rows

PRODUCT_TYPES = ["Trousers", "Dress", "Sweater", "T-shirt", "Top", "Blouse", "Jacket", "Shorts", "Shirt",
                 "Vest top", "Underwear bottom", "Skirt", "Hoodie", "Bra", "Socks", "Leggings/Tights", "Sneakers",
                 "Cardigan", "Hat/beanie", "Bag", "Earring", "Swimwear bottom", "Scarf", "Coat", "Boots"]
PRODUCT_GROUPS = ["Garment Upper body", "Garment Lower body", "Garment Full body", "Accessories", "Underwear",
                  "Shoes", "Swimwear", "Socks & Tights", "Nightwear"]
APPEARANCES = ["Solid", "Stripe", "All over pattern", "Melange", "Denim", "Check", "Dot", "Lace", "Front print"]
COLOURS = ["Black", "White", "Off White", "Light Beige", "Beige", "Grey", "Dark Blue", "Blue", "Light Blue",
           "Pink", "Light Pink", "Red", "Dark Red", "Yellow", "Green", "Dark Green", "Khaki green", "Orange",
           "Brown", "Greyish Beige"]
COLOUR_VALUES = ["Dark", "Dusty Light", "Light", "Medium Dusty", "Bright", "Medium"]
INDEXES = [("A", "Ladieswear", 1, "Ladieswear"), ("B", "Lingeries/Tights", 1, "Ladieswear"),
           ("C", "Ladies Accessories", 1, "Ladieswear"), ("D", "Divided", 2, "Divided"),
           ("F", "Menswear", 3, "Menswear"), ("G", "Baby Sizes 50-98", 4, "Baby/Children"),
           ("H", "Children Sizes 92-140", 4, "Baby/Children"), ("S", "Sport", 26, "Sport")]
GARMENT_GROUPS = ["Jersey Basic", "Jersey Fancy", "Knitwear", "Trousers", "Dresses Ladies", "Blouses",
                  "Outdoor", "Shoes", "Accessories", "Under-, Nightwear", "Swimwear", "Socks and Tights"]
ADJECTIVES = ["Slim", "Relaxed", "Basic", "Oversized", "Cropped", "Soft", "Ribbed", "Wide", "Fancy", "Classic",
              "Linen", "Denim", "Cotton", "Wool-blend", "Jersey", "Padded", "Seamless", "High-waisted"]
NOUNS = ["Luna", "Tove", "Mia", "Jade", "Timmy", "Ellie", "Bobby", "Sara", "Nora", "Kim", "Max", "Ivy", "Leo"]
MATERIALS = ["cotton jersey", "soft fine-knit", "woven fabric", "stretch denim", "ribbed modal", "linen blend",
             "recycled polyester", "lyocell", "wool blend", "organic cotton"]
DETAILS = ["with a round neckline", "with long sleeves", "with an elasticated waist", "with side pockets",
           "with a V-neck", "with a concealed zip", "with buttons down the front", "with short sleeves",
           "with a high waist", "with a drawstring hood"]


def counts(scale: float) -> dict[str, int]:
    """Transactions, customers and articles at `scale` (1.0 = the Kaggle release); at least a few of each."""
    return {k: max(round(v * scale), {"transactions": 100, "customers": 20, "articles": 20}[k])
            for k, v in FULL.items()}


def _hex64(rng: np.random.Generator, n: int) -> np.ndarray:
    """n random 64-hex strings (as numpy bytes; unique with overwhelming probability)."""
    return np.frombuffer(rng.bytes(32 * n).hex().encode(), dtype="S64")


def _articles(rng: np.random.Generator, n: int) -> tuple[pl.DataFrame, dict[str, np.ndarray]]:
    """The catalog table in H&M's columns, plus the latent arrays the purchases need."""
    n_products = max(n * 2 // 5, 1)
    codes = np.sort(rng.choice(np.arange(108_775, 959_999), size=n_products, replace=False))
    product = np.sort(rng.integers(0, n_products, n))  # several colour variants per product
    variant = np.arange(n) - np.searchsorted(product, product) + 1
    product_code = codes[product]
    ptype = rng.integers(0, len(PRODUCT_TYPES), n_products)[product]
    colour = rng.integers(0, len(COLOURS), n)
    appearance = rng.integers(0, len(APPEARANCES), n_products)[product]
    index = rng.integers(0, len(INDEXES), n_products)[product]
    section = rng.integers(0, N_SECTIONS, n_products)[product]
    garment = rng.integers(0, len(GARMENT_GROUPS), n_products)[product]
    value = rng.integers(0, len(COLOUR_VALUES), n)
    adjective = rng.integers(0, len(ADJECTIVES), n_products)[product]
    noun = rng.integers(0, len(NOUNS), n_products)[product]
    material = rng.integers(0, len(MATERIALS), n_products)[product]
    detail = rng.integers(0, len(DETAILS), n_products)[product]
    no_desc = rng.random(n_products)[product] < 0.004  # ~0.4% of real articles have no detail_desc
    def pick(vocab: list[str], i: np.ndarray) -> np.ndarray:
        return np.asarray(vocab, dtype=object)[i]

    idx = [INDEXES[i] for i in index]
    type_name = pick(PRODUCT_TYPES, ptype)
    desc = [None if nd else f"{m.capitalize()} {t.lower()} {d}." for nd, m, t, d in
            zip(no_desc, pick(MATERIALS, material), type_name, pick(DETAILS, detail))]
    df = pl.DataFrame({
        "article_id": [f"{c:07d}{v:03d}" for c, v in zip(product_code, variant)],
        "product_code": product_code,
        "prod_name": [f"{a} {b}" for a, b in zip(pick(ADJECTIVES, adjective), pick(NOUNS, noun))],
        "product_type_no": 250 + ptype,
        "product_type_name": type_name,
        "product_group_name": pick(PRODUCT_GROUPS, ptype % len(PRODUCT_GROUPS)),
        "graphical_appearance_no": 1010001 + appearance,
        "graphical_appearance_name": pick(APPEARANCES, appearance),
        "colour_group_code": 1 + colour,
        "colour_group_name": pick(COLOURS, colour),
        "perceived_colour_value_id": 1 + value,
        "perceived_colour_value_name": pick(COLOUR_VALUES, value),
        "perceived_colour_master_id": 1 + colour % 12,
        "perceived_colour_master_name": pick(COLOURS, colour % 12),
        "department_no": 1000 + section * 37 + ptype,
        "department_name": [f"{t} {i[1]}" for t, i in zip(type_name, idx)],
        "index_code": [i[0] for i in idx],
        "index_name": [i[1] for i in idx],
        "index_group_no": [i[2] for i in idx],
        "index_group_name": [i[3] for i in idx],
        "section_no": 2 + section,
        "section_name": [f"Section {s + 1}" for s in section],
        "garment_group_no": 1001 + garment,
        "garment_group_name": pick(GARMENT_GROUPS, garment),
        "detail_desc": desc,
    })
    popularity = rng.permutation(np.arange(1, n + 1, dtype=np.float64) ** -0.9)  # Zipf-like, in random order
    launch = np.where(rng.random(n) < 0.3, rng.integers(0, DAYS, n), 0)  # 30% launched during the two years
    base_price = np.clip(rng.lognormal(np.log(0.025), 0.6, n), 0.0008, 0.5)
    return df, {"popularity": popularity, "section": section.astype(np.int64), "launch": launch,
                "base_price": base_price}


def _customers(rng: np.random.Generator, n: int) -> tuple[pl.DataFrame, np.ndarray, np.ndarray]:
    ids = _hex64(rng, n)
    n_postal = max(n // 4, 1)
    postal = _hex64(rng, n_postal)[rng.integers(0, n_postal, n)]
    fn = rng.random(n) < 0.35
    active = fn & (rng.random(n) < 0.97)
    age = np.clip(np.round(rng.gamma(4.0, 9.0, n) + 16), 16, 99)
    no_age = rng.random(n) < 0.012
    df = pl.DataFrame({
        "customer_id": pl.Series(ids).cast(pl.Utf8),
        "FN": pl.Series(np.where(fn, 1.0, np.nan)).fill_nan(None),
        "Active": pl.Series(np.where(active, 1.0, np.nan)).fill_nan(None),
        "club_member_status": np.asarray(["ACTIVE", "PRE-CREATE", "LEFT CLUB"], dtype=object)[
            rng.choice(3, n, p=[0.93, 0.068, 0.002])],
        "fashion_news_frequency": np.asarray(["NONE", "Regularly", "Monthly"], dtype=object)[
            rng.choice(3, n, p=[0.64, 0.355, 0.005])],
        "age": pl.Series(np.where(no_age, np.nan, age)).fill_nan(None),
        "postal_code": pl.Series(postal).cast(pl.Utf8),
    })
    activity = np.minimum(rng.lognormal(0.0, 1.2, n), 150.0)  # heavy-tailed: a few customers buy very often
    favourite = rng.integers(0, N_SECTIONS, n)
    return df, ids, np.column_stack([activity, favourite])


def _day_shape(day: np.ndarray) -> np.ndarray:
    """The expected volume of each day (0 = START): weekly and yearly seasonality on a growing trend, which goes on
    past the release's end for the appended days."""
    weekday = np.array([(START + dt.timedelta(days=int(d))).weekday() for d in day])
    weekly = np.array([0.9, 0.85, 0.9, 0.95, 1.1, 1.3, 1.15])[weekday]  # Friday/Saturday peak
    doy = (day + START.timetuple().tm_yday) % 365
    yearly = 1 + 0.25 * np.sin(2 * np.pi * (doy - 100) / 365) + 0.4 * np.exp(-((doy - 335) / 12.0) ** 2)
    trend = 1 + 0.3 * day / DAYS
    return weekly * yearly * trend


def _day_weights(rng: np.random.Generator) -> np.ndarray:
    return _day_shape(np.arange(DAYS)) * rng.lognormal(0, 0.1, DAYS)


class _Sampler:
    """Popularity-proportional draws among articles launched by a given day, overall or within a section."""

    def __init__(self, popularity: np.ndarray, section: np.ndarray, launch: np.ndarray, day: int):
        self.weight = np.where(launch <= day, popularity, 0.0)
        self.order = np.argsort(section, kind="stable")
        self.bounds = np.searchsorted(section[self.order], np.arange(N_SECTIONS + 1))
        self.cum_all = np.cumsum(self.weight)
        self.cum_section = np.cumsum(self.weight[self.order])

    def draw(self, rng: np.random.Generator, section: np.ndarray, in_section: np.ndarray) -> np.ndarray:
        out = np.searchsorted(self.cum_all, rng.random(len(section)) * self.cum_all[-1], side="right")
        lo, hi = self.bounds[section], self.bounds[section + 1]
        below = np.where(lo > 0, self.cum_section[lo - 1], 0.0)
        mass = self.cum_section[hi - 1] - below
        ok = in_section & (hi > lo) & (mass > 0)
        u = below + rng.random(len(section)) * mass
        pos = np.clip(np.searchsorted(self.cum_section, u, side="right"), lo, hi - 1)
        out[ok] = self.order[pos[ok]]
        return np.minimum(out, len(self.weight) - 1)


@dataclasses.dataclass
class _World:
    """What every day's purchases draw from: the catalog's and the customers' latent arrays, and each customer's
    last purchase so far (-1: none yet), which the days update as they are drawn."""

    article_ids: np.ndarray
    latent: dict
    customer_ids: np.ndarray
    cum_activity: np.ndarray
    favourite: np.ndarray
    last_bought: np.ndarray

    @classmethod
    def build(cls, article_ids: np.ndarray, latent: dict, customer_ids: np.ndarray, customer_latent: np.ndarray):
        return cls(article_ids, latent, customer_ids, np.cumsum(customer_latent[:, 0]),
                   customer_latent[:, 1].astype(np.int64), np.full(len(customer_ids), -1, dtype=np.int64))


def _block(brng: np.random.Generator, days: np.ndarray, per_day: dict[int, int], world: _World) -> pl.DataFrame | None:
    """The transactions of `days` (one block, one random stream), in file order; None when there are none."""
    sampler = _Sampler(world.latent["popularity"], world.latent["section"], world.latent["launch"], int(days[-1]))
    frames = []
    for d in days:
        n = int(per_day[int(d)])
        if n == 0:
            continue
        sizes = brng.geometric(1 / 2.3, n)  # basket sizes; trimmed to the day's total below
        n_baskets = int(np.searchsorted(np.cumsum(sizes), n)) + 1
        sizes = sizes[:n_baskets]
        sizes[-1] -= sizes.sum() - n
        buyer = np.searchsorted(world.cum_activity, brng.random(n_baskets) * world.cum_activity[-1], side="right")
        buyer = np.minimum(buyer, len(world.customer_ids) - 1)
        channel = np.where(brng.random(n_baskets) < 0.7, 2, 1)
        frames.append((d, np.repeat(buyer, sizes), np.repeat(channel, sizes)))
    if not frames:
        return None
    block_start = int(days[0])
    day = np.concatenate([np.full(len(b), d) for d, b, _ in frames])
    buyer = np.concatenate([b for _, b, _ in frames])
    channel = np.concatenate([c for _, _, c in frames])
    article = sampler.draw(brng, world.favourite[buyer], brng.random(len(buyer)) < FAVOURITE_SECTION)
    # Repeat purchases: the customer's previous purchase again (within this block, or before it).
    order = np.lexsort((np.arange(len(buyer)), buyer))
    repeat = brng.random(len(buyer)) < REPEAT
    b_sorted = buyer[order]
    first = np.r_[True, b_sorted[1:] != b_sorted[:-1]]
    a_sorted = article[order]
    prev = np.where(first, world.last_bought[b_sorted], np.r_[-1, a_sorted[:-1]])
    use = repeat[order] & (prev >= 0)
    a_sorted = np.where(use, prev, a_sorted)
    article[order] = a_sorted
    last = np.r_[first[1:], True]  # the last row of each buyer in the block
    world.last_bought[b_sorted[last]] = a_sorted[last]
    on_sale = brng.random(len(buyer)) < 0.2
    price = world.latent["base_price"][article] * np.where(on_sale, brng.uniform(0.5, 0.9, len(buyer)), 1.0)
    price = np.maximum(np.round(price * 59_000), 1) / 59_000  # the release's prices are multiples of 1/59,000
    order = np.lexsort((np.arange(len(buyer)), day))
    dates = np.array([(START + dt.timedelta(days=int(d))).isoformat() for d in days], dtype=object)
    return pl.DataFrame({
        "t_dat": pl.Series(dates[(day - block_start)[order]], dtype=pl.Utf8),
        "customer_id": pl.Series(world.customer_ids[buyer[order]]).cast(pl.Utf8),
        "article_id": pl.Series(world.article_ids[article[order]]).cast(pl.Utf8),
        "price": price[order],
        "sales_channel_id": channel[order],
    })


def _write_transactions(file: Path, seed: int, n_tx: int, world: _World) -> None:
    rng = np.random.default_rng([seed, 1])
    weights = _day_weights(rng)
    per_day = rng.multinomial(n_tx, weights / weights.sum())
    with open(file, "wb") as fh:
        fh.write(b"t_dat,customer_id,article_id,price,sales_channel_id\n")
        per_day = dict(enumerate(per_day))
        for block_start in range(0, DAYS, DAYS_PER_BLOCK):
            days = np.arange(block_start, min(block_start + DAYS_PER_BLOCK, DAYS))
            chunk = _block(np.random.default_rng([seed, 2, block_start]), days, per_day, world)
            if chunk is not None:
                chunk.write_csv(fh, include_header=False)


def _append_days(file: Path, base_file: Path, seed: int, n_tx: int, extra_days: int, world: _World) -> None:
    """`base_file` copied to `file`, then days DAYS .. DAYS + extra_days - 1 appended, each from its own stream
    ([seed, 3, day]), so a day's rows are the same whatever the number of days appended after it. A day's volume
    is Poisson around the release's daily share of `n_tx` times the day's seasonality and trend (and the same
    day-level noise as the release's days); buyers, repeats and prices follow the release's story. Each customer's
    last purchase (what a repeat buys again) is read back from the base file: its last row per customer is the
    last purchase the generator drew for them."""
    base_weights = _day_weights(np.random.default_rng([seed, 1]))
    last = (pl.scan_csv(base_file, schema_overrides={"customer_id": pl.Utf8, "article_id": pl.Utf8})
            .select("customer_id", "article_id").group_by("customer_id").last().collect())
    customer_index = {c: i for i, c in enumerate(world.customer_ids.astype(str))}
    article_index = {a: i for i, a in enumerate(world.article_ids.astype(str))}
    for customer, article in last.iter_rows():
        world.last_bought[customer_index[customer]] = article_index[article]
    shutil.copyfile(base_file, file)
    with open(file, "ab") as fh:
        for d in range(DAYS, DAYS + extra_days):
            drng = np.random.default_rng([seed, 3, d])
            expected = n_tx * _day_shape(np.array([d]))[0] * drng.lognormal(0, 0.1) / base_weights.sum()
            chunk = _block(drng, np.array([d]), {d: int(drng.poisson(expected))}, world)
            if chunk is not None:
                chunk.write_csv(fh, include_header=False)


def _manifest_ok(out_dir: Path, scale: float, seed: int, extra_days: int) -> bool:
    try:
        m = json.loads((out_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return (m.get("scale") == scale and m.get("seed") == seed and m.get("generator") == GENERATOR_VERSION
            and m.get("extra_days", 0) == extra_days
            and all((out_dir / f).is_file() for f in (hm.ARTICLES, hm.CUSTOMERS, hm.TRANSACTIONS)))


def generate(out_dir: Path, scale: float = 1.0, seed: int = 0, extra_days: int = 0) -> Path:
    """Write the three Kaggle files for `scale` and `seed` into `out_dir` (idempotent); returns `out_dir`.
    `extra_days` > 0: the release (generated beside `out_dir` first, in `folder(out_dir.parent, scale, seed)`, if
    missing) copied, with that many days appended after 2020-09-22; its other two files are copied unchanged."""
    out_dir = Path(out_dir).expanduser().resolve()
    if _manifest_ok(out_dir, scale, seed, extra_days):
        return out_dir
    base = generate(folder(out_dir.parent, scale, seed), scale, seed) if extra_days else None
    with _lock(out_dir):
        if _manifest_ok(out_dir, scale, seed, extra_days):
            return out_dir
        (out_dir / "manifest.json").unlink(missing_ok=True)
        t0 = time.perf_counter()
        n = counts(scale)
        articles, latent = _articles(np.random.default_rng([seed, 0, 0]), n["articles"])
        customers, customer_ids, customer_latent = _customers(np.random.default_rng([seed, 0, 1]), n["customers"])
        world = _World.build(articles["article_id"].to_numpy().astype("S10"), latent, customer_ids, customer_latent)
        if base is None:
            atomic_write(out_dir / hm.ARTICLES, articles.write_csv)
            atomic_write(out_dir / hm.CUSTOMERS, customers.write_csv)
            atomic_write(out_dir / hm.TRANSACTIONS,
                         lambda tmp: _write_transactions(tmp, seed, n["transactions"], world))
        else:
            for name in (hm.ARTICLES, hm.CUSTOMERS):
                atomic_write(out_dir / name, lambda tmp, name=name: shutil.copyfile(base / name, tmp))
            atomic_write(out_dir / hm.TRANSACTIONS, lambda tmp: _append_days(
                tmp, base / hm.TRANSACTIONS, seed, n["transactions"], extra_days, world))
        write_json({"generator": GENERATOR_VERSION, "scale": scale, "seed": seed, "extra_days": extra_days,
                    "last_day": (START + dt.timedelta(days=DAYS + extra_days - 1)).isoformat(), "counts": n,
                    "seconds": round(time.perf_counter() - t0, 1)}, out_dir / "manifest.json")
    return out_dir


def read(path: Path, options: dict | None = None) -> SourceTables:
    """The reader for source kind `hm-synthetic`: options `scale` (default 1.0), `seed` (default 0) and
    `extra_days` (default 0). The files are generated into `folder(path, scale, seed, extra_days)` on first use and
    read by the real H&M reader."""
    scale, seed, extra_days = parse_options(options)
    return hm.read(generate(folder(path, scale, seed, extra_days), scale, seed, extra_days), {})


def parse_options(options: dict | None) -> tuple[float, int, int]:
    """(scale, seed, extra_days) from a registry entry's options, each checked."""
    options = dict(options or {})
    unknown = set(options) - {"scale", "seed", "extra_days"}
    if unknown:
        raise DataError(f"hm-synthetic: unknown option(s) {sorted(unknown)}; it takes 'scale', 'seed' and "
                        "'extra_days'")
    try:
        scale, seed = float(options.get("scale", 1.0)), int(options.get("seed", 0))
    except (TypeError, ValueError) as e:
        raise DataError(f"hm-synthetic: 'scale' must be a number and 'seed' an integer, got {options}") from e
    if not 0 < scale <= 10:
        raise DataError(f"hm-synthetic: 'scale' must be in (0, 10], got {scale}")
    extra_days = options.get("extra_days", 0)
    if isinstance(extra_days, bool) or not isinstance(extra_days, int) or not 0 <= extra_days <= MAX_EXTRA_DAYS:
        raise DataError(f"hm-synthetic: 'extra_days' must be a whole number of days in [0, {MAX_EXTRA_DAYS}], "
                        f"got {extra_days!r}")
    return scale, seed, extra_days


def folder(path: Path, scale: float, seed: int, extra_days: int = 0) -> Path:
    """`scale<scale>-seed<seed>` for the release, `…-plus<N>d` with N days appended."""
    return Path(path) / (f"scale{scale:g}-seed{seed}" + (f"-plus{extra_days}d" if extra_days else ""))


if __name__ == "__main__":  # python -m mmrec_pipeline.data.hm_synthetic OUT_DIR [SCALE] [SEED] [EXTRA_DAYS]
    import sys

    target, s, sd, extra = Path(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 1.0, \
        int(sys.argv[3]) if len(sys.argv) > 3 else 0, int(sys.argv[4]) if len(sys.argv) > 4 else 0
    generate(target, s, sd, extra)
    print((target / "manifest.json").read_text())
