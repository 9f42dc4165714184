"""The built-in `sample` store: a deterministic, generated multimodal shop in which every modality matters.

The generative story
--------------------
*The catalog.* A shop sells ~1,200 products in 14 categories, from clothes (tops, dresses, trousers, skirts,
shoes, bags, hats, scarves) to homeware (mugs, plates, lamps, cushions) and two consumables (candles, coffee).
Every item has latent attributes: a brand (with a small quality offset), one of 10 colours, one of 5 patterns
(solid, stripes, dots, checks, floral), a material, a price band (budget … luxury) and a price, an intrinsic
quality, and a popularity drawn from a heavy-tailed (Pareto, i.e. Zipf-like) law. About a third of the catalog
is there at launch; the rest is released at random days over the two years, and a user can only buy an item
that has been released.

*What each modality shows.* The title names the brand and the category and only for ~40% of the items the
colour; the description names the material, the fit and the price; the `attributes` JSON holds brand,
material and price band (and the colour only when the title names it). The pattern, and the colour of the
other 60%, are visible ONLY in the product image: the category's silhouette filled with the colour and the
pattern, on a light background, with a little jitter. The true latent attributes are written apart, to
`truth.parquet` (items) and `user_truth.parquet` (users), for tests and diagnostics only.

*The customers.* A base of existing customers is active from the start, and new customers keep arriving.
Each user has 2-3 favourite categories, 1-2 favourite colours, ONE favourite pattern (a strong effect, and the
signal that only the images carry), a price sensitivity and an activity rate, and is active over a window of
several months to two years, so a global temporal split leaves most test users with a training history.

*The purchases.* At each purchase time the user picks a category: with probability 0.5 a complement of the
previous purchase (dress -> shoes -> bag, tops -> trousers, mug -> plate, lamp -> cushion, coffee -> coffee),
otherwise mostly a favourite category, sometimes (15%) anything at all. A consumable bought before is often
bought again (same item). Otherwise the user picks among the released, not yet owned items of that category
with a multinomial logit: popularity + brand quality + favourite colour + favourite pattern - price
sensitivity x log relative price + a bump for new arrivals + Gumbel noise. Taste is strong but not
absolute: exploratory purchases ignore it. The rating (1-5) follows the same affinity plus item quality and
noise; ~85% of purchases come with a short review whose aspects (colour, pattern, fit/material, scent/taste,
price, quality) and their sentiment follow what drove the rating. Reviews never name the pattern.

*Growth.* Version 1 covers two years. Version k adds ~2% new items per step, released after the end of
version k-1, and two more months of purchases (by existing and newly arrived users, who also buy the new
items). Everything is drawn from independent seeded streams per item chunk, per item image and per user, and
each user's timeline is simulated in time order, so version k+1 contains version k exactly: same items,
byte-identical images, same users and the same interactions up to the end of version k.

Layout of a generated version (`generate(out_dir, version, seed)`): `items.parquet`, `users.parquet`,
`interactions.parquet` (canonical columns, see schema.py), `truth.parquet`, `user_truth.parquet`,
`images/<item_id>.png`, and `manifest.json`, written LAST: a folder without a manifest is incomplete and is
regenerated.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import math
import time
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image, ImageDraw, ImageFilter

from mmrec_pipeline.data.images import attach_images
from mmrec_pipeline.data.schema import DataError, SourceTables, to_json
from mmrec_pipeline.locks import file_lock
from mmrec_pipeline.storage import atomic_write, write_json, write_parquet

# Bump when the output of the generator changes, so stored samples are regenerated.
GENERATOR_VERSION = "1"
DEFAULT_SEED = 7
MAX_VERSION = 12

# --- timeline -----------------------------------------------------------------------------------------
START = dt.datetime(2023, 1, 1, tzinfo=dt.UTC)
V1_DAYS = 730  # version 1 spans two years
EXTENSION_DAYS = 61  # each later version adds about two months
NEW_ITEM_RELEASE_DAYS = 45  # new items of a version are released during its first weeks

# --- catalog ------------------------------------------------------------------------------------------
N_ITEMS_V1 = 1200
NEW_ITEMS_PER_VERSION = 24  # 2% of version 1
LAUNCH_SHARE = 0.35  # share of the v1 catalog available on day 0
P_COLOUR_IN_TITLE = 0.4
IMAGE_SIZE = 128
BACKGROUND = (232, 230, 225)
OUTLINE = (95, 95, 100)

COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (35, 35, 38), "white": (247, 247, 243), "grey": (140, 140, 146), "navy": (32, 46, 104),
    "blue": (70, 140, 222), "red": (202, 36, 42), "pink": (242, 150, 182), "yellow": (246, 204, 48),
    "green": (44, 140, 70), "brown": (122, 76, 40),
}
PATTERNS = ("solid", "stripes", "dots", "checks", "floral")
PRICE_BANDS = {"budget": 0.6, "mid": 1.0, "premium": 1.7, "luxury": 2.8}
PRICE_BAND_P = (0.3, 0.4, 0.2, 0.1)

FASHION_BRANDS = ("Nordvik", "Calloway", "Maison Ardent", "Urbano", "Kestrel", "Odessa", "Sable")
HOME_BRANDS = ("Lumen & Co", "Bramble", "Tidewell", "Fjordhus", "Juniper Lane", "Hearth")
MODEL_NAMES = ("Aria", "Lumo", "Vera", "Nova", "Sol", "Iris", "Milo", "Tove", "Oslo", "Rhea", "Juno", "Kai",
               "Lina", "Pax", "Remy", "Saga", "Theo", "Uma", "Wren", "Ziggy", "Alba", "Bo", "Cleo", "Dune")

# Silhouettes in unit coordinates (x right, y down): ("poly", points) | ("ellipse", box) | ("rect", box) |
# ("arc", box, width) | ("line", points, width). Each category has its own outline.
SHAPES: dict[str, list[tuple]] = {
    "tops": [("poly", [(.30, .14), (.42, .11), (.50, .18), (.58, .11), (.70, .14), (.93, .32), (.82, .45),
                       (.74, .39), (.74, .89), (.26, .89), (.26, .39), (.18, .45), (.07, .32)])],
    "dresses": [("poly", [(.37, .07), (.44, .07), (.47, .19), (.53, .19), (.56, .07), (.63, .07), (.65, .30),
                          (.60, .42), (.87, .93), (.13, .93), (.40, .42), (.35, .30)])],
    "trousers": [("poly", [(.27, .07), (.73, .07), (.81, .93), (.58, .93), (.50, .38), (.42, .93), (.19, .93)])],
    "skirts": [("poly", [(.31, .16), (.69, .16), (.69, .26), (.89, .84), (.11, .84), (.31, .26)])],
    "shoes": [("poly", [(.07, .50), (.14, .33), (.30, .36), (.46, .54), (.80, .58), (.93, .68), (.93, .82),
                        (.07, .82)])],
    "bags": [("poly", [(.16, .40), (.84, .40), (.90, .90), (.10, .90)]), ("arc", (.30, .14, .70, .66), .07)],
    "hats": [("poly", [(.29, .62), (.33, .26), (.50, .19), (.67, .26), (.71, .62)]),
             ("ellipse", (.05, .54, .95, .78))],
    # a long band lying diagonally, with fringes at both ends
    "scarves": [("poly", [(.08, .40), (.40, .08), (.92, .60), (.60, .92)])]
    + [("line", [(.08 + f * .32, .40 - f * .32), (.03 + f * .32, .35 - f * .32)], .02) for f in (.1, .3, .5, .7, .9)]
    + [("line", [(.60 + f * .32, .92 - f * .32), (.65 + f * .32, .97 - f * .32)], .02) for f in (.1, .3, .5, .7, .9)],
    "mugs": [("rect", (.16, .22, .70, .86)), ("arc", (.56, .36, .90, .72), .08)],
    "plates": [("ellipse", (.06, .06, .94, .94))],
    "lamps": [("poly", [(.28, .08), (.72, .08), (.87, .50), (.13, .50)]), ("rect", (.46, .50, .54, .80)),
              ("ellipse", (.28, .77, .72, .92))],
    "cushions": [("poly", [(.09, .09), (.50, .17), (.91, .09), (.83, .50), (.91, .91), (.50, .83), (.09, .91),
                           (.17, .50)])],
    "candles": [("rect", (.24, .30, .76, .90)), ("ellipse", (.45, .08, .55, .27))],
    "coffee": [("poly", [(.24, .22), (.33, .08), (.67, .08), (.76, .22), (.78, .92), (.22, .92)])],
}
CATEGORIES = tuple(SHAPES)
FASHION = {"tops", "dresses", "trousers", "skirts", "shoes", "bags", "hats", "scarves"}
CONSUMABLES = {"candles", "coffee"}
# Share of the catalog and of users' favourites (clothes sell more than plates).
CATEGORY_WEIGHT = {"tops": 1.6, "dresses": 1.3, "trousers": 1.2, "skirts": 0.9, "shoes": 1.2, "bags": 0.9,
                   "hats": 0.6, "scarves": 0.6, "mugs": 0.8, "plates": 0.6, "lamps": 0.6, "cushions": 0.7,
                   "candles": 0.6, "coffee": 0.6}
NOUNS = {"tops": ("T-Shirt", "Blouse", "Top", "Sweater"), "dresses": ("Dress", "Midi Dress", "Maxi Dress"),
         "trousers": ("Trousers", "Chinos", "Wide-Leg Trousers"), "skirts": ("Skirt", "Midi Skirt"),
         "shoes": ("Sneakers", "Loafers", "Trainers"), "bags": ("Tote Bag", "Shopper Bag", "Handbag"),
         "hats": ("Sun Hat", "Fedora", "Bucket Hat"), "scarves": ("Scarf", "Wrap Scarf"),
         "mugs": ("Mug", "Tall Mug"), "plates": ("Dinner Plate", "Side Plate"),
         "lamps": ("Table Lamp", "Bedside Lamp"), "cushions": ("Cushion", "Throw Pillow"),
         "candles": ("Scented Candle", "Jar Candle"), "coffee": ("Coffee Beans", "Ground Coffee")}
MATERIALS = {"tops": ("cotton", "linen", "merino wool", "viscose"), "dresses": ("cotton", "linen", "silk", "viscose"),
             "trousers": ("cotton twill", "linen", "wool blend"), "skirts": ("cotton", "linen", "satin"),
             "shoes": ("leather", "canvas", "suede"), "bags": ("leather", "canvas", "recycled nylon"),
             "hats": ("straw", "wool felt", "cotton"), "scarves": ("wool", "cashmere", "silk", "cotton"),
             "mugs": ("stoneware", "porcelain", "enamel"), "plates": ("stoneware", "porcelain", "melamine"),
             "lamps": ("ceramic", "brass", "rattan"), "cushions": ("cotton", "velvet", "linen"),
             "candles": ("soy wax", "beeswax"), "coffee": ("arabica", "arabica-robusta blend")}
BASE_PRICE = {"tops": 25, "dresses": 55, "trousers": 45, "skirts": 35, "shoes": 70, "bags": 60, "hats": 25,
              "scarves": 25, "mugs": 12, "plates": 14, "lamps": 50, "cushions": 22, "candles": 14, "coffee": 11}
CATEGORY_BLURB = {"tops": "An easy everyday top", "dresses": "A dress for days out and evenings",
                  "trousers": "Trousers with a clean line", "skirts": "A skirt that moves well",
                  "shoes": "Comfortable shoes for all day", "bags": "A roomy bag for daily essentials",
                  "hats": "A hat to finish the outfit", "scarves": "A soft scarf for cooler days",
                  "mugs": "A generous mug for hot drinks", "plates": "A plate for everyday dining",
                  "lamps": "A lamp that gives a warm light", "cushions": "A cushion to brighten a sofa",
                  "candles": "A candle with a long, even burn", "coffee": "Freshly roasted coffee"}
FITS = {"tops": ("Regular fit.", "Relaxed fit.", "Slim fit."), "dresses": ("Regular fit.", "Relaxed fit."),
        "trousers": ("Regular fit.", "Slim fit.", "Relaxed fit."), "skirts": ("Regular fit.", "High waist."),
        "shoes": ("True to size.", "Wide fit.", "Runs narrow."), "hats": ("One size.", "Adjustable band.")}
APPAREL = set(FITS)  # things that have a fit

# Sequential structure: what tends to be bought next (coffee and candles are bought again).
COMPLEMENTS = {"dresses": ("shoes", "bags"), "shoes": ("bags",), "bags": ("scarves", "hats"),
               "tops": ("trousers", "skirts"), "trousers": ("tops", "shoes"), "skirts": ("tops",),
               "hats": ("scarves",), "scarves": ("hats",), "mugs": ("plates", "coffee"), "plates": ("mugs",),
               "lamps": ("cushions",), "cushions": ("lamps", "candles"), "candles": ("candles",),
               "coffee": ("coffee", "mugs")}

# --- users and behaviour ------------------------------------------------------------------------------
N_BASE_USERS = 530  # customers already there at launch
ARRIVALS_PER_DAY = 1.5  # new customers per day afterwards
BASE_WINDOW_DAYS = (300, 900)  # activity windows (days) of base and of new customers
NEW_WINDOW_DAYS = (150, 700)
EVENTS_PER_DAY = (0.02, 0.08)  # range of users' purchase rates (log-uniform)
MIN_EVENTS = 4
P_COMPLEMENT = 0.5
P_EXPLORE = 0.15
P_REBUY = 0.6
FAVOURITE_CATEGORY_MASS = 0.8
BETA_COLOUR = 1.1
BETA_PATTERN = 1.7
BETA_QUALITY = 0.3  # good items sell a little better (quality mostly shows in ratings)
BETA_NEW = 0.8  # "new arrivals" bump during an item's first weeks
NEW_DAYS = 30
POPULARITY_ALPHA = 2.0  # Pareto tail of item popularity weights
P_REVIEW = 0.85
RATING_OFFSET = 0.6  # shifts ratings up: shoppers mostly like what they chose (mean ~3.8)
RATING_CUTS = (-1.3, -0.6, 0.3, 1.2)  # affinity thresholds between ratings 1|2|3|4|5

# Seed streams, so that each part draws from its own generator and adding data never shifts another part.
_STREAM_ITEMS, _STREAM_IMAGES, _STREAM_USERS, _STREAM_EVENTS = 1, 2, 3, 4

REVIEW_TITLES = {1: ("Disappointed", "Would not buy again", "Not as expected"),
                 2: ("Not great", "Meh", "Could be better"),
                 3: ("It's okay", "Decent", "Mixed feelings"),
                 4: ("Really nice", "Happy with it", "Good buy"),
                 5: ("Love it!", "Perfect", "Absolutely great")}
ASPECT_SENTENCES = {
    "colour": (("The colour is gorgeous.", "Love the colour.", "Colour is exactly as in the photo."),
               ("The colour looks dull in person.", "Not a fan of the colour.", "The colour is off.")),
    "pattern": (("The design is lovely.", "Really like the look of the fabric design.", "Great design."),
                ("The design is not for me.", "Did not like the design once it arrived.", "Design looks cheap.")),
    "fit": (("Fits perfectly.", "Good fit and comfortable.", "The fit is spot on."),
            ("The fit is awkward.", "Runs small.", "Uncomfortable to wear.")),
    "material": (("Feels sturdy and well made.", "Feels substantial.", "Good materials."),
                 ("Feels flimsy.", "The material feels thin.", "Not very sturdy.")),
    "scent": (("Smells wonderful.", "Lovely and rich.", "Tastes and smells great."),
              ("Barely any aroma.", "Flavour is flat.", "The scent fades quickly.")),
    "price": (("Great value for the price.", "Worth every penny.", "Good price."),
              ("Overpriced for what it is.", "Too expensive.", "Not worth the price.")),
    "quality": (("Excellent quality.", "Quality is superb.", "Very well made."),
                ("Poor quality.", "Started falling apart quickly.", "Quality is disappointing.")),
}


# ------------------------------------------------------------------------------------------------------
# Items


def _version_end_day(version: int) -> float:
    return V1_DAYS + (version - 1) * EXTENSION_DAYS


def _item_chunk(seed: int, chunk: int) -> list[dict]:
    """Latent attributes of the items added in version `chunk` (1 = the original catalog)."""
    rng = np.random.default_rng([seed, _STREAM_ITEMS, chunk])
    n = N_ITEMS_V1 if chunk == 1 else NEW_ITEMS_PER_VERSION
    first = 0 if chunk == 1 else N_ITEMS_V1 + (chunk - 2) * NEW_ITEMS_PER_VERSION
    w = np.array([CATEGORY_WEIGHT[c] for c in CATEGORIES])
    cats = rng.choice(len(CATEGORIES), size=n, p=w / w.sum())
    colours = rng.integers(len(COLOURS), size=n)
    patterns = rng.choice(len(PATTERNS), size=n, p=(0.28, 0.18, 0.18, 0.18, 0.18))
    bands = rng.choice(len(PRICE_BANDS), size=n, p=PRICE_BAND_P)
    price_noise = rng.normal(0.0, 0.12, size=n)
    quality = rng.normal(0.0, 0.6, size=n)
    pop_u = rng.random(size=n)
    in_title = rng.random(size=n) < P_COLOUR_IN_TITLE
    if chunk == 1:
        launch = rng.random(size=n) < LAUNCH_SHARE
        release = np.where(launch, -rng.uniform(0, 60, size=n), rng.uniform(0, V1_DAYS - 20, size=n))
    else:
        start = _version_end_day(chunk - 1)
        release = start + rng.uniform(0, NEW_ITEM_RELEASE_DAYS, size=n)
    picks = rng.random(size=(n, 4))  # brand, noun, material, model name
    fit_pick = rng.random(size=n)
    items = []
    for k in range(n):
        cat = CATEGORIES[cats[k]]
        brands = FASHION_BRANDS if cat in FASHION else HOME_BRANDS
        band = list(PRICE_BANDS)[bands[k]]
        fits = FITS.get(cat, ("",))
        # Scalar math keeps every value bit-identical whatever the size of the catalog it is part of.
        rel_price = PRICE_BANDS[band] * math.exp(float(price_noise[k]))
        items.append({
            "index": first + k, "item_id": f"I{first + k:05d}", "version_added": chunk, "category": cat,
            "colour": list(COLOURS)[colours[k]], "pattern": PATTERNS[patterns[k]], "price_band": band,
            "price": round(max(round(BASE_PRICE[cat] * rel_price), 2) - 0.01, 2),  # shop prices: 24.99
            "log_rel_price": math.log(rel_price), "quality": float(quality[k]),
            # Pareto weights (Zipf-like): log w = -log(U) / alpha
            "popularity": -math.log(1.0 - float(pop_u[k])) / POPULARITY_ALPHA,
            "colour_in_title": bool(in_title[k]), "release_day": float(release[k]),
            "brand": brands[int(picks[k, 0] * len(brands))],
            "noun": NOUNS[cat][int(picks[k, 1] * len(NOUNS[cat]))],
            "material": MATERIALS[cat][int(picks[k, 2] * len(MATERIALS[cat]))],
            "model": MODEL_NAMES[int(picks[k, 3] * len(MODEL_NAMES))], "fit": fits[int(fit_pick[k] * len(fits))],
        })
    return items


def _brand_quality(seed: int) -> dict[str, float]:
    rng = np.random.default_rng([seed, _STREAM_ITEMS, 0])
    brands = FASHION_BRANDS + HOME_BRANDS
    return dict(zip(brands, (float(x) for x in rng.normal(0.0, 0.3, size=len(brands))), strict=True))


def _item_text(it: dict) -> tuple[str, str, str]:
    """Title, description and attributes JSON: what the text shows (never the pattern)."""
    colour = it["colour"].capitalize() + " " if it["colour_in_title"] else ""
    title = f"{it['brand']} {colour}{it['model']} {it['noun']}"
    fit = f" {it['fit']}" if it["category"] in APPAREL else ""
    desc = (f"{CATEGORY_BLURB[it['category']]}, made of {it['material']} by {it['brand']}.{fit} "
            f"Price: ${it['price']:.2f} ({it['price_band']}).")
    attrs = {"brand": it["brand"], "material": it["material"], "price_band": it["price_band"],
             "colour": it["colour"] if it["colour_in_title"] else None}
    return title, desc, to_json(attrs)


# ------------------------------------------------------------------------------------------------------
# Images


def _pattern_mask(pattern: str, rng: np.random.Generator, size: int) -> Image.Image:
    """Where the pattern's ink goes: 0 = base colour, 255 = ink, 128 = half (where check bands cross)."""
    if pattern == "solid":
        return Image.new("L", (size, size), 0)
    yy, xx = np.ogrid[0:size, 0:size]
    if pattern == "stripes":
        period = rng.uniform(11, 17)
        coord = yy if rng.random() < 0.5 else xx
        band = ((coord + rng.uniform(0, period)) % period) < period * 0.45
        return Image.fromarray(np.broadcast_to(band * 255, (size, size)).astype(np.uint8))
    if pattern == "checks":
        period = rng.uniform(14, 22)
        off = rng.uniform(0, period, size=2)
        h = ((yy + off[0]) % period) < period / 2
        v = ((xx + off[1]) % period) < period / 2
        return Image.fromarray((h * 128 + v * 127).astype(np.uint8))
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    if pattern == "dots":
        period = rng.uniform(12, 17)
        r = period * rng.uniform(0.2, 0.28)
        ox, oy = rng.uniform(0, period, size=2)
        for row, y in enumerate(np.arange(-period + oy, size + period, period)):
            shift = period / 2 * (row % 2)  # staggered rows
            for x in np.arange(-period + ox + shift, size + period, period):
                draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
        return mask
    # floral: a grid of five-petal flowers with a hollow centre, each a little displaced
    period = rng.uniform(22, 28)
    pr = period * 0.14
    ox, oy = rng.uniform(0, period, size=2)
    for y in np.arange(-period + oy, size + period, period):
        for x in np.arange(-period + ox, size + period, period):
            cx, cy = x + rng.uniform(-2, 2), y + rng.uniform(-2, 2)
            turn = rng.uniform(0, 2 * math.pi / 5)
            for p in range(5):
                a = turn + p * 2 * math.pi / 5
                px, py = cx + math.cos(a) * pr * 1.3, cy + math.sin(a) * pr * 1.3
                draw.ellipse((px - pr, py - pr, px + pr, py + pr), fill=255)
            draw.ellipse((cx - pr * 0.6, cy - pr * 0.6, cx + pr * 0.6, cy + pr * 0.6), fill=0)
    return mask


def _silhouette(category: str, rng: np.random.Generator, size: int) -> Image.Image:
    scale = rng.uniform(0.9, 1.02)
    dx, dy = rng.uniform(-0.04, 0.04, size=2)

    def px(x: float, y: float) -> tuple[float, float]:
        return ((0.5 + scale * (x - 0.5) + dx) * size, (0.5 + scale * (y - 0.5) + dy) * size)

    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    for part in SHAPES[category]:
        kind = part[0]
        if kind == "poly":
            draw.polygon([px(x, y) for x, y in part[1]], fill=255)
            continue
        if kind == "line":
            draw.line([px(x, y) for x, y in part[1]], fill=255, width=max(1, round(part[2] * scale * size)))
            continue
        x0, y0, x1, y1 = part[1]
        box = (*px(x0, y0), *px(x1, y1))
        if kind == "ellipse":
            draw.ellipse(box, fill=255)
        elif kind == "rect":
            draw.rounded_rectangle(box, radius=size * 0.05, fill=255)
        else:  # handle: a thick ring
            draw.ellipse(box, outline=255, width=max(2, round(part[2] * scale * size)))
    return mask


def render_image(category: str, colour: str, pattern: str, seed: int, index: int,
                 size: int = IMAGE_SIZE) -> bytes:
    """PNG bytes of one product picture; depends only on (seed, index) and the item's latents."""
    rng = np.random.default_rng([seed, _STREAM_IMAGES, index])
    base = np.clip(np.array(COLOURS[colour]) + rng.integers(-6, 7, size=3), 0, 255)
    lum = 0.299 * base[0] + 0.587 * base[1] + 0.114 * base[2]
    # The ink contrasts with the base: darker on light colours, lighter on dark ones.
    ink = base * 0.45 if lum > 150 else base + 0.6 * (255 - base)
    sil = _silhouette(category, rng, size)
    pat = _pattern_mask(pattern, rng, size)
    fill = Image.composite(Image.new("RGB", (size, size), tuple(int(v) for v in ink)),
                           Image.new("RGB", (size, size), tuple(int(v) for v in base)), pat)
    bg = tuple(int(v) for v in np.array(BACKGROUND) + rng.integers(-4, 5))
    img = Image.new("RGB", (size, size), bg)
    img.paste(fill, mask=sil)
    img.paste(OUTLINE, mask=sil.filter(ImageFilter.FIND_EDGES))  # keeps white items visible
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)  # fast; ~2 KB a picture anyway
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------------
# Users and their purchases


def _user_arrival(j: int, rng: np.random.Generator) -> float:
    if j < N_BASE_USERS:
        return -rng.uniform(0, 200)
    return (j - N_BASE_USERS + rng.random()) / ARRIVALS_PER_DAY


def _users_until(day: float) -> int:
    """How many user streams can have arrived before `day` (arrivals are increasing in the index)."""
    return N_BASE_USERS + math.ceil(day * ARRIVALS_PER_DAY) + 1


def _simulate_user(j: int, seed: int, items: dict, end_day: float, brand_q: dict) -> tuple[dict, list[dict]]:
    """Latent tastes of user j and their purchases before `end_day`, simulated in time order."""
    rng = np.random.default_rng([seed, _STREAM_USERS, j])
    arrival = _user_arrival(j, rng)
    lo, hi = BASE_WINDOW_DAYS if j < N_BASE_USERS else NEW_WINDOW_DAYS
    window = rng.uniform(lo, hi)
    rate = math.exp(rng.uniform(math.log(EVENTS_PER_DAY[0]), math.log(EVENTS_PER_DAY[1])))
    n_cat = len(CATEGORIES)
    w = np.array([CATEGORY_WEIGHT[c] for c in CATEGORIES])
    fav_cats = rng.choice(n_cat, size=int(rng.integers(2, 4)), replace=False, p=w / w.sum())
    fav_colours = rng.choice(len(COLOURS), size=int(rng.integers(1, 3)), replace=False)
    fav_pattern = int(rng.integers(len(PATTERNS)))
    price_sens = float(rng.uniform(0.0, 1.5))
    first = max(arrival, 0.0)
    last = arrival + window
    n_events = MIN_EVENTS + int(rng.poisson(rate * (last - first)))
    times = np.sort(rng.uniform(first, max(last, first + 30), size=n_events))

    cat_p = w * (1 - FAVOURITE_CATEGORY_MASS) / w.sum()
    cat_p[fav_cats] += FAVOURITE_CATEGORY_MASS / len(fav_cats)
    # Categorical draws by inverse CDF: much faster than Generator.choice with p, and as exact.
    cat_cdf = np.cumsum(cat_p / cat_p.sum())
    any_cdf = np.cumsum(w / w.sum())
    col_match = np.isin(items["colour_idx"], fav_colours)
    pat_match = items["pattern_idx"] == fav_pattern
    # Static part of the utility: arithmetic only, so each item's value is the same in every version.
    taste = BETA_COLOUR * col_match + BETA_PATTERN * pat_match - price_sens * items["log_rel_price"]
    base = items["popularity"] + items["brand_q"] + BETA_QUALITY * items["quality"]
    fav_cat_mask = np.zeros(n_cat, bool)
    fav_cat_mask[fav_cats] = True

    ev = np.random.default_rng([seed, _STREAM_EVENTS, j])
    owned = np.zeros(len(items["category_idx"]), bool)
    last_in_cat: dict[int, int] = {}
    prev_cat = None
    events = []
    for t in times:
        if t >= end_day:
            break
        explore = False
        if prev_cat is not None and ev.random() < P_COMPLEMENT:
            options = COMPLEMENTS[CATEGORIES[prev_cat]]
            cat = CATEGORIES.index(options[int(ev.integers(len(options)))])
        elif ev.random() < P_EXPLORE:
            cat, explore = min(int(np.searchsorted(any_cdf, ev.random(), side="right")), n_cat - 1), True
        else:
            cat = min(int(np.searchsorted(cat_cdf, ev.random(), side="right")), n_cat - 1)
        rel = items["release_by_cat"][cat]
        cands = items["idx_by_cat"][cat][: int(np.searchsorted(rel, t, side="right"))]
        if CATEGORIES[cat] in CONSUMABLES and cat in last_in_cat and ev.random() < P_REBUY:
            item = last_in_cat[cat]
        else:
            cands = cands[~owned[cands]]
            if len(cands) == 0:  # nothing new in that category yet: anything released and not owned
                cands = np.flatnonzero((items["release_day"] <= t) & ~owned)
            if len(cands) == 0:
                continue
            util = base[cands] + BETA_NEW * ((t - items["release_day"][cands]) < NEW_DAYS)
            if not explore:
                util = util + taste[cands]
            item = int(cands[np.argmax(util + ev.gumbel(size=len(cands)))])
        prev_cat = int(items["category_idx"][item])
        owned[item] = CATEGORIES[prev_cat] not in CONSUMABLES
        last_in_cat[prev_cat] = item

        # Rating: the same tastes, plus quality, price and noise.
        aspects = {"colour": BETA_COLOUR * (float(col_match[item]) - 0.3),
                   "pattern": BETA_PATTERN * (float(pat_match[item]) - 0.3),
                   "quality": float(items["quality"][item] + items["brand_q"][item]),
                   "price": -price_sens * float(items["log_rel_price"][item]) * 0.6,
                   "category": 0.4 * (float(fav_cat_mask[prev_cat]) - 0.5)}
        affinity = sum(aspects.values()) + RATING_OFFSET + float(ev.normal(0.0, 0.7))
        rating = 1 + int(np.searchsorted(RATING_CUTS, affinity))
        review_title = review_text = None
        if ev.random() < P_REVIEW:
            review_title, review_text = _review(rating, aspects, CATEGORIES[prev_cat], ev)
        events.append({"day": float(t), "item": item, "rating": float(rating), "review_title": review_title,
                       "review_text": review_text})
    truth = {"user_id": f"U{j:05d}", "arrival_day": arrival, "window_days": window, "rate": rate,
             "fav_categories": [CATEGORIES[c] for c in fav_cats],
             "fav_colours": [list(COLOURS)[c] for c in fav_colours], "fav_pattern": PATTERNS[fav_pattern],
             "price_sensitivity": price_sens}
    return truth, events


def _review(rating: int, aspects: dict, category: str, rng: np.random.Generator) -> tuple[str, str]:
    """A short review: 1-3 aspects, those that weighed most on the rating being the likeliest to be named."""
    aspects = dict(aspects)
    aspects.pop("category")
    if category in APPAREL:
        aspects["fit"] = aspects["quality"] * 0.5
    elif category in CONSUMABLES:
        aspects["scent"] = aspects["quality"] * 0.8
    else:
        aspects["material"] = aspects["quality"] * 0.5
    names = list(aspects)
    weight = np.array([abs(aspects[a]) + 0.3 for a in names])
    k = int(rng.integers(1, 4))
    # k aspects without replacement, weighted (Efraimidis-Spirakis keys u^(1/w)), in a fixed order
    chosen = sorted(np.argsort(-(rng.random(len(names)) ** (1.0 / weight)))[:k])
    overall = (rating - 3) / 2  # -1 .. 1
    noise = rng.normal(0.0, 0.5, size=k)
    sentences = []
    for c, e in zip(chosen, noise, strict=True):
        name = names[c]
        positive = aspects[name] + 1.2 * overall + e > 0  # mostly the rating's mood, sometimes mixed
        pool = ASPECT_SENTENCES[name][0 if positive else 1]
        sentences.append(pool[int(rng.integers(len(pool)))])
    titles = REVIEW_TITLES[rating]
    return titles[int(rng.integers(len(titles)))], " ".join(sentences)


# ------------------------------------------------------------------------------------------------------
# Putting it together


def build(version: int = 1, seed: int = DEFAULT_SEED) -> dict:
    """All tables of one version in memory (no images): items, users, interactions, truth, user_truth."""
    if not 1 <= version <= MAX_VERSION:
        raise DataError(f"sample: version must be between 1 and {MAX_VERSION}, got {version}")
    end_day = _version_end_day(version)
    brand_q = _brand_quality(seed)
    catalog = [it for chunk in range(1, version + 1) for it in _item_chunk(seed, chunk)]
    cat_idx = np.array([CATEGORIES.index(it["category"]) for it in catalog])
    release = np.array([it["release_day"] for it in catalog])
    arrays = {
        "category_idx": cat_idx, "release_day": release,
        "colour_idx": np.array([list(COLOURS).index(it["colour"]) for it in catalog]),
        "pattern_idx": np.array([PATTERNS.index(it["pattern"]) for it in catalog]),
        "log_rel_price": np.array([it["log_rel_price"] for it in catalog]),
        "popularity": np.array([it["popularity"] for it in catalog]),
        "quality": np.array([it["quality"] for it in catalog]),
        "brand_q": np.array([brand_q[it["brand"]] for it in catalog]),
    }
    # Items of each category in release order; later versions only append (they are released later).
    arrays["idx_by_cat"], arrays["release_by_cat"] = [], []
    for c in range(len(CATEGORIES)):
        idx = np.flatnonzero(cat_idx == c)
        idx = idx[np.argsort(release[idx], kind="stable")]
        arrays["idx_by_cat"].append(idx)
        arrays["release_by_cat"].append(release[idx])

    users, user_truth, rows = [], [], []
    for j in range(_users_until(end_day)):
        truth, events = _simulate_user(j, seed, arrays, end_day, brand_q)
        if not events:
            continue
        user_truth.append(truth)
        joined = START + dt.timedelta(days=math.floor(truth["arrival_day"]))
        users.append({"user_id": truth["user_id"], "attributes": to_json({"joined": joined.date().isoformat()})})
        for e in events:
            rows.append({"user_id": truth["user_id"], "item_id": catalog[e["item"]]["item_id"],
                         "ts_s": round(e["day"] * 86400), "rating": e["rating"],
                         "review_title": e["review_title"], "review_text": e["review_text"]})

    start_us = int(START.timestamp()) * 1_000_000
    inter = (pl.DataFrame(rows, schema={"user_id": pl.Utf8, "item_id": pl.Utf8, "ts_s": pl.Int64,
                                        "rating": pl.Float64, "review_title": pl.Utf8, "review_text": pl.Utf8})
             .with_columns((pl.col("ts_s") * 1_000_000 + start_us).cast(pl.Datetime("us", "UTC")).alias("ts"),
                           pl.lit("purchase").alias("event"))
             .select("user_id", "item_id", "ts", "rating", "review_title", "review_text", "event")
             .sort(["ts", "user_id", "item_id"]))
    texts = [_item_text(it) for it in catalog]
    items = pl.DataFrame({
        "item_id": [it["item_id"] for it in catalog], "title": [t[0] for t in texts],
        "description": [t[1] for t in texts], "category": [it["category"] for it in catalog],
        "attributes": [t[2] for t in texts], "price": [it["price"] for it in catalog],
    })
    truth_cols = ("item_id", "version_added", "category", "brand", "colour", "pattern", "material", "price_band",
                  "price", "quality", "popularity", "colour_in_title")
    truth = pl.DataFrame({c: [it[c] for it in catalog] for c in truth_cols}).with_columns(
        pl.Series("release_ts", [START + dt.timedelta(days=it["release_day"]) for it in catalog],
                  dtype=pl.Datetime("us", "UTC")))
    return {"items": items, "users": pl.DataFrame(users), "interactions": inter, "truth": truth,
            "user_truth": pl.DataFrame(user_truth), "catalog": catalog, "end_day": end_day}


def _manifest_ok(out_dir: Path, version: int, seed: int) -> bool:
    try:
        m = json.loads((out_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return (m.get("version") == version and m.get("seed") == seed and m.get("generator") == GENERATOR_VERSION
            and all((out_dir / f).is_file() for f in m.get("files", [])))


def _lock(out_dir: Path):
    """One generator per folder at a time (parallel ingest steps may all ask for the sample at once)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return file_lock(out_dir / ".lock")


def generate(out_dir: Path, version: int = 1, seed: int = DEFAULT_SEED) -> Path:
    """Write version `version` of the sample store into `out_dir` (idempotent); returns `out_dir`."""
    out_dir = Path(out_dir).expanduser().resolve()
    if _manifest_ok(out_dir, version, seed):
        return out_dir
    with _lock(out_dir):
        if _manifest_ok(out_dir, version, seed):  # another process finished it while we waited
            return out_dir
        (out_dir / "manifest.json").unlink(missing_ok=True)
        t0 = time.perf_counter()
        data = build(version, seed)
        t_tables = time.perf_counter() - t0
        img_dir = out_dir / "images"
        img_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for it in data["catalog"]:
            png = render_image(it["category"], it["colour"], it["pattern"], seed, it["index"])
            path = img_dir / f"{it['item_id']}.png"
            if not (path.is_file() and path.read_bytes() == png):
                atomic_write(path, lambda tmp, png=png: tmp.write_bytes(png))
            paths.append(str(path))
        items = data["items"].with_columns(pl.Series("image_path", paths, dtype=pl.Utf8),
                                           pl.lit(None, dtype=pl.Utf8).alias("image_sha256"))
        tables = {"items": items, "users": data["users"], "interactions": data["interactions"],
                  "truth": data["truth"], "user_truth": data["user_truth"]}
        for name, df in tables.items():
            write_parquet(df, out_dir / f"{name}.parquet")
        inter = data["interactions"]
        write_json({
            "generator": GENERATOR_VERSION, "version": version, "seed": seed,
            "files": [f"{n}.parquet" for n in tables],
            "counts": {"items": items.height, "users": data["users"].height, "interactions": inter.height,
                       "categories": items["category"].n_unique(), "images": len(paths)},
            "start": START.isoformat(), "end": (START + dt.timedelta(days=data["end_day"])).isoformat(),
            "first_ts": str(inter["ts"].min()), "last_ts": str(inter["ts"].max()),
            "seconds": {"tables": round(t_tables, 2), "total": round(time.perf_counter() - t0, 2)},
        }, out_dir / "manifest.json")
    return out_dir


def read(path: Path, options: dict | None = None) -> SourceTables:
    """The reader for source kind `sample`: options `version` (default 1) and `seed` (default 7).

    The store for a version lives in `path / f"v{version}"` and is generated there on first use.
    """
    options = dict(options or {})
    unknown = set(options) - {"version", "seed"}
    if unknown:
        raise DataError(f"sample: unknown option(s) {sorted(unknown)}; the sample takes 'version' and 'seed'")
    try:
        version, seed = int(options.get("version", 1)), int(options.get("seed", DEFAULT_SEED))
    except (TypeError, ValueError) as e:
        raise DataError(f"sample: 'version' and 'seed' must be integers, got {options}") from e
    out = generate(Path(path) / f"v{version}", version=version, seed=seed)
    items = pl.read_parquet(out / "items.parquet")
    # Point at the images where they are now, in case the folder was moved since it was generated.
    items = items.with_columns((pl.lit(str(out / "images") + "/") + pl.col("item_id") + pl.lit(".png"))
                               .alias("image_path"))
    items, counts = attach_images(items)
    tables = SourceTables(items, pl.read_parquet(out / "users.parquet"),
                          pl.read_parquet(out / "interactions.parquet"))
    for reason, n in counts.items():
        tables.keep(reason, n)
    return tables


if __name__ == "__main__":  # python -m mmrec_pipeline.data.synthetic OUT_DIR [VERSION] [SEED]: time it
    import sys

    target = Path(sys.argv[1] if len(sys.argv) > 1 else "./.mmrec/sample/raw")
    v = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    s = int(sys.argv[3]) if len(sys.argv) > 3 else DEFAULT_SEED
    t = time.perf_counter()
    generate(target / f"v{v}", v, s)
    print(json.dumps(json.loads((target / f"v{v}" / "manifest.json").read_text()), indent=2))
    print(f"generate(version={v}, seed={s}) took {time.perf_counter() - t:.2f} s")
