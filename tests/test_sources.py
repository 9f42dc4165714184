"""The four file-format readers: tiny fixtures written here, every bad-input case, and the real sample data."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import time
from pathlib import Path

import polars as pl
import pytest
from PIL import Image

from mmrec_pipeline.data.schema import DataError, validate
from mmrec_pipeline.data.sources import READERS, amazon, hm, reader, recbole, sequence

UTC = "UTC"


def ts(text: str) -> pl.Series:
    return pl.Series([text]).str.to_datetime(time_zone=UTC, time_unit="us")


def write_image(path: Path, fmt: str, colour: str = "red") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path, format=fmt)
    return path


def write_corrupt(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(64))
    return path


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def write_gz(path: Path, lines: list[str]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))
    return path


# ---------------------------------------------------------------- H&M

ARTICLE_HEADER = ("article_id,prod_name,product_type_name,product_group_name,colour_group_name,"
                  "department_name,detail_desc")
ARTICLES = [
    ARTICLE_HEADER,
    '0108775015,Strap top,Vest top,Garment Upper body,Black,Jersey Basic,"Jersey top, narrow straps."',
    "0108775044,Strap top,Vest top,Garment Upper body,White,Jersey Basic,Jersey top.",
    "0110065001,OP T-shirt,Bra,Underwear,Black,Clean Lingerie,",
]
CUSTOMERS = ["customer_id,FN,Active,club_member_status,fashion_news_frequency,age,postal_code",
             "c1,1.0,1.0,ACTIVE,Regularly,24.0,p1", "c2,,,ACTIVE,NONE,,p2"]
TRANSACTIONS = [
    "t_dat,customer_id,article_id,price,sales_channel_id",
    "2018-09-20,c1,0108775015,0.02,2",
    "2018-09-20,c1,0108775015,0.02,2",  # the same row twice: a real repeat purchase, kept
    "2018-09-21,c2,0108775044,0.04,1",
    "2018-09-22,c3,0108775015,0.05,1",  # c3 is not in customers.csv: validate adds it
]


def hm_folder(tmp_path: Path, transactions: list[str] = TRANSACTIONS, articles: list[str] = ARTICLES) -> Path:
    folder = tmp_path / "hm"
    folder.mkdir()
    write_lines(folder / "articles.csv", articles)
    write_lines(folder / "customers.csv", CUSTOMERS)
    write_lines(folder / "transactions_train.csv", transactions)
    write_image(folder / "images/010/0108775015.jpg", "JPEG")
    write_corrupt(folder / "images/010/0108775044.jpg")  # 0110065001 has no image at all
    return folder


def test_hm_reads_canonical_tables(tmp_path):
    folder = hm_folder(tmp_path)
    t = validate(hm.read(folder, {}), "hm")
    items = {r["item_id"]: r for r in t.items.to_dicts()}
    assert list(items) == ["0108775015", "0108775044", "0110065001"]  # leading zeros kept
    top = items["0108775015"]
    assert (top["title"], top["category"], top["description"]) == ("Strap top", "Vest top",
                                                                    "Jersey top, narrow straps.")
    assert json.loads(top["attributes"]) == {"product_group_name": "Garment Upper body",
                                             "colour_group_name": "Black", "department_name": "Jersey Basic"}
    assert top["price"] == pytest.approx(0.03)  # mean of 0.02, 0.02, 0.05
    assert top["image_path"].endswith("images/010/0108775015.jpg") and len(top["image_sha256"]) == 64
    assert items["0110065001"]["price"] is None  # never bought
    assert items["0108775044"]["image_sha256"] is None and items["0108775044"]["image_path"] is None
    assert t.skipped == {}  # items without a usable image are kept, and said to be
    assert t.kept == {"items whose image file is corrupt": 1, "items whose image file is missing": 1}

    inter = t.interactions
    assert inter.height == 4 and set(inter["event"]) == {"purchase"} and inter["rating"].null_count() == 4
    assert inter.filter(pl.col("user_id") == "c1")["ts"].to_list() == ts("2018-09-20").to_list() * 2
    assert sorted(t.users["user_id"]) == ["c1", "c2", "c3"]
    c1 = json.loads(t.users.filter(pl.col("user_id") == "c1")["attributes"][0])
    assert c1["age"] == 24 and c1["club_member_status"] == "ACTIVE"


def test_hm_without_customers_file(tmp_path):
    folder = hm_folder(tmp_path)
    (folder / "customers.csv").unlink()
    t = validate(hm.read(folder, {}), "hm")
    assert sorted(t.users["user_id"]) == ["c1", "c2", "c3"]


def test_hm_missing_folder_and_files(tmp_path):
    with pytest.raises(DataError, match="nowhere not found"):
        hm.read(tmp_path / "nowhere", {})
    folder = hm_folder(tmp_path)
    (folder / "transactions_train.csv").unlink()
    with pytest.raises(DataError, match="transactions_train.csv not found"):
        hm.read(folder, {})


def test_hm_missing_columns(tmp_path):
    articles = [ARTICLES[0].replace("prod_name", "name"), *ARTICLES[1:]]
    with pytest.raises(DataError, match=r"articles.csv: missing column\(s\) \['prod_name'\]; found columns"):
        hm.read(hm_folder(tmp_path, articles=articles), {})


def test_hm_malformed_row(tmp_path):
    rows = [*TRANSACTIONS[:3], "2018-09-21,c2,0108775044,0.04,1,extra", *TRANSACTIONS[3:]]
    with pytest.raises(DataError, match="transactions_train.csv: malformed row at line 4: expected 5 fields"):
        hm.read(hm_folder(tmp_path, transactions=rows), {})


def test_hm_short_row_is_named(tmp_path):
    rows = [*TRANSACTIONS, "2018-09-23,c2"]
    with pytest.raises(DataError, match="transactions_train.csv: column 'article_id' is empty .* data row 5"):
        hm.read(hm_folder(tmp_path, transactions=rows), {})


@pytest.mark.parametrize("bad", ["2018-13-45", "yesterday"])
def test_hm_bad_dates(tmp_path, bad):
    rows = [TRANSACTIONS[0], TRANSACTIONS[1], f"{bad},c1,0108775044,0.02,2"]
    with pytest.raises(DataError, match=f"transactions_train.csv: column 't_dat', data row 2: '{bad}'.*YYYY-MM-DD"):
        hm.read(hm_folder(tmp_path, transactions=rows), {})


def test_hm_empty_date(tmp_path):
    rows = [*TRANSACTIONS, ",c1,0108775044,0.02,2"]
    with pytest.raises(DataError, match="transactions_train.csv: column 't_dat' is empty .* data row 5"):
        hm.read(hm_folder(tmp_path, transactions=rows), {})


def test_hm_csv_files_with_a_byte_order_mark_are_read(tmp_path):
    """What spreadsheet programs write when saving "CSV UTF-8": every file starts with the UTF-8 BOM."""
    folder = hm_folder(tmp_path)
    for name in ("articles.csv", "customers.csv", "transactions_train.csv"):
        (folder / name).write_bytes(b"\xef\xbb\xbf" + (folder / name).read_bytes())
    t = validate(hm.read(folder, {}), "hm")
    assert t.items.height == 3 and t.interactions.height == 4 and sorted(t.users["user_id"]) == ["c1", "c2", "c3"]
    assert t.users.filter(pl.col("user_id") == "c1")["attributes"].item()  # customers.csv's columns found


def test_hm_customer_ids_with_spaces_are_trimmed_and_counted(tmp_path):
    transactions = [*TRANSACTIONS[:3], "2018-09-21, c2 ,0108775044,0.04,1", TRANSACTIONS[4]]
    t = validate(hm.read(hm_folder(tmp_path, transactions=transactions), {}), "hm")
    assert sorted(t.interactions["user_id"].unique()) == ["c1", "c2", "c3"]  # " c2 " is customer c2
    assert t.kept["rows of transactions_train.csv whose customer_id had spaces around it (trimmed)"] == 1
    assert not any("customers.csv" in reason for reason in t.kept)


def test_hm_duplicate_items_left_to_validate(tmp_path):
    tables = hm.read(hm_folder(tmp_path, articles=[*ARTICLES, ARTICLES[2]]), {})
    with pytest.raises(DataError, match=r"duplicate item_id\(s\).*0108775044"):
        validate(tables, "hm")


# ---------------------------------------------------------------- Amazon Reviews 2023

META = [
    {"main_category": "Tools", "title": "Drill", "average_rating": 4.5, "rating_number": 10,
     "features": ["18V", "cordless"], "description": ["A drill."], "price": 59.99,
     "images": [{"thumb": "t", "large": "https://l/1.jpg", "variant": "MAIN", "hi_res": None}],
     "store": "Acme", "categories": ["Tools", "Power Tools", "Drills"], "details": {"Weight": "1 kg"},
     "parent_asin": "P1", "bought_together": None},
    {"main_category": "Tools", "title": "Saw", "features": [], "description": [], "price": "—",
     "images": [], "categories": [], "parent_asin": "P2"},
    {"main_category": "Tools", "title": "Hammer", "price": "from 3.99", "parent_asin": "P3"},
    {"main_category": "Tools", "title": "Glue", "price": None, "parent_asin": "P4"},
]
REVIEWS = [
    {"rating": 5.0, "title": "Great", "text": "Drills well.", "images": [], "asin": "A1", "parent_asin": "P1",
     "user_id": "U1", "timestamp": 1588687728923, "helpful_vote": 2, "verified_purchase": True},
    {"rating": 2.0, "title": "Meh", "text": "Blunt.", "asin": "A2", "parent_asin": "P2", "user_id": "U1",
     "timestamp": 1588687800000},
    {"rating": 4.0, "title": "", "text": "ok", "parent_asin": "P1", "user_id": "U2", "timestamp": 1600000000000},
]


def amazon_folder(tmp_path: Path, reviews: list[str] | None = None, category: str = "Tools") -> Path:
    folder = tmp_path / "amazon"
    folder.mkdir(exist_ok=True)
    write_lines(folder / f"meta_{category}.jsonl", [json.dumps(m) for m in META])
    write_gz(folder / f"{category}.jsonl.gz", reviews if reviews is not None else [json.dumps(r) for r in REVIEWS])
    write_image(folder / "images/P1.png", "PNG")
    write_image(folder / "images/sub/P2.jpeg", "JPEG", "blue")
    write_corrupt(folder / "images/P3.jpg")
    return folder


def test_amazon_reads_canonical_tables(tmp_path):
    folder = amazon_folder(tmp_path)
    write_gz(folder / "Tools.jsonl.gz", [json.dumps(r) for r in REVIEWS]
             + ["{not json", json.dumps({"parent_asin": "P1", "timestamp": 1})])
    t = validate(amazon.read(folder, {"category": "Tools"}), "amazon")

    items = {r["item_id"]: r for r in t.items.to_dicts()}
    assert list(items) == ["P1", "P2", "P3", "P4"]
    p1 = items["P1"]
    assert (p1["title"], p1["category"], p1["price"]) == ("Drill", "Drills", 59.99)
    assert p1["description"] == "A drill.\n18V\ncordless"
    assert json.loads(p1["attributes"])["image_url"] == "https://l/1.jpg"
    assert p1["image_path"] == str((folder / "images/P1.png").resolve()) and p1["image_sha256"]
    assert items["P2"]["category"] == "Tools" and items["P2"]["description"] is None
    assert items["P2"]["image_sha256"]  # found in a sub-folder
    assert [items[k]["price"] for k in ("P2", "P3", "P4")] == [None, None, None]
    assert items["P3"]["image_path"] is None  # corrupt file
    assert t.skipped == {"malformed JSON lines in Tools.jsonl.gz": 1,
                         "review lines missing 'user_id' in Tools.jsonl.gz": 1}
    assert t.kept == {"items whose image file is corrupt": 1, "items without an image path": 1}

    inter = t.interactions
    assert inter.height == 3 and set(inter["event"]) == {"review"}
    first = inter.row(0, named=True)
    assert (first["user_id"], first["item_id"], first["rating"], first["review_title"]) == ("U1", "P1", 5.0,
                                                                                         "Great")
    assert first["ts"] == ts("2020-05-05 14:08:48.923").item()
    assert inter.filter(pl.col("user_id") == "U2")["review_title"].to_list() == [None]
    assert sorted(t.users["user_id"]) == ["U1", "U2"]


def test_amazon_drops_all_time_aggregates(tmp_path):
    """average_rating, rating_number and the details' ranks are snapshots over every review (test period
    included): none reaches a table a model reads, nor mmrec_dlrm's sparse attribute features."""
    from mmrec_pipeline.models.mmrec_dlrm import item_categoricals

    meta = [{**m, "average_rating": 4.0 + i % 2, "rating_number": 10 * (i + 1),
             "details": {"Weight": f"{i} kg", "Best Sellers Rank": {"Tools": 100 + i}, "Customer Reviews": "4.1"}}
            for i, m in enumerate(META)]
    folder = amazon_folder(tmp_path)
    write_lines(folder / "meta_Tools.jsonl", [json.dumps(m) for m in meta])
    t = validate(amazon.read(folder, {"category": "Tools"}), "amazon")
    for name, table in (("items", t.items), ("users", t.users), ("interactions", t.interactions)):
        text = " ".join(str(v) for row in table.iter_rows() for v in row) + " ".join(table.columns)
        for leak in ("average_rating", "rating_number", "Best Sellers Rank", "Customer Reviews"):
            assert leak not in text, (name, leak)
    assert json.loads(t.items["attributes"][0])["details"] == {"Weight": "0 kg"}  # the rest of details is kept
    names, _, _ = item_categoricals(t.items, 1000)
    assert not any("rating" in n for n in names)


def test_amazon_finds_the_single_meta_file(tmp_path):
    folder = amazon_folder(tmp_path)
    (folder / "meta_Tools.jsonl").unlink()
    write_gz(folder / "meta_Tools.jsonl.gz", [json.dumps(m) for m in META])
    t = validate(amazon.read(folder, {}), "amazon")
    assert t.items.height == 4 and t.interactions.height == 3


def test_amazon_truncated_gzip(tmp_path):
    folder = amazon_folder(tmp_path)
    data = (folder / "Tools.jsonl.gz").read_bytes()
    (folder / "Tools.jsonl.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="Tools.jsonl.gz: cannot read after line"):
        amazon.read(folder, {"category": "Tools"})


def test_amazon_missing_files(tmp_path):
    with pytest.raises(DataError, match="nowhere not found"):
        amazon.read(tmp_path / "nowhere", {})
    folder = amazon_folder(tmp_path)
    with pytest.raises(DataError, match="meta_Garden.jsonl not found"):
        amazon.read(folder, {"category": "Garden"})
    (folder / "Tools.jsonl.gz").unlink()
    with pytest.raises(DataError, match="Tools.jsonl not found"):
        amazon.read(folder, {"category": "Tools"})
    amazon_folder(tmp_path, category="Garden")
    with pytest.raises(DataError, match="several files match meta_"):
        amazon.read(folder, {})


def test_amazon_meta_line_with_latin1_bytes_keeps_the_product(tmp_path):
    folder = amazon_folder(tmp_path)
    lines = [json.dumps(m, ensure_ascii=False).encode() for m in META]
    lines[1] = lines[1].replace(b'"Saw"', '"Säge"'.encode("latin-1"))  # ä as one byte, not UTF-8
    (folder / "meta_Tools.jsonl").write_bytes(b"\n".join([*lines, b"{not json"]) + b"\n")
    t = validate(amazon.read(folder, {"category": "Tools"}), "amazon")
    assert t.items["item_id"].to_list() == ["P1", "P2", "P3", "P4"]  # P2 kept: its review too
    assert t.items.filter(pl.col("item_id") == "P2")["title"].item() == "S\ufffdge"
    assert t.interactions.filter(pl.col("item_id") == "P2").height == 1
    reason = "lines of meta_Tools.jsonl with invalid UTF-8, decoded with replacement characters"
    assert t.kept[reason] == 1 and t.lines[reason] == [2]
    assert t.skipped["malformed JSON lines in meta_Tools.jsonl"] == 1  # a line that is not JSON is still skipped


def test_amazon_too_many_malformed_lines(tmp_path):
    good = [json.dumps(r) for r in REVIEWS]
    folder = amazon_folder(tmp_path, reviews=[good[0], *["{oops"] * 11, *good[1:]])
    with pytest.raises(DataError, match=r"Tools.jsonl.gz: 11 of 14 lines .*first at line 2"):
        amazon.read(folder, {"category": "Tools"})


def test_amazon_bad_timestamp(tmp_path):
    bad = dict(REVIEWS[1], timestamp="yesterday")
    folder = amazon_folder(tmp_path, reviews=[json.dumps(REVIEWS[0]), json.dumps(bad)])
    with pytest.raises(DataError, match="Tools.jsonl.gz: line 2: field 'timestamp' = 'yesterday'"):
        amazon.read(folder, {"category": "Tools"})


def test_amazon_duplicate_items_left_to_validate(tmp_path):
    folder = amazon_folder(tmp_path)
    write_lines(folder / "meta_Tools.jsonl", [json.dumps(m) for m in [*META, META[0]]])
    with pytest.raises(DataError, match=r"duplicate item_id\(s\).*P1"):
        validate(amazon.read(folder, {"category": "Tools"}), "amazon")


def test_amazon_price_parsing():
    assert [amazon.parse_price(v) for v in (12, "12.5", "$1,299.00", "—", "from 3.99", None, True, "nan")] == \
        [12.0, 12.5, 1299.0, None, None, None, None, None]


# ---------------------------------------------------------------- RecBole atomic files

INTER = ["user_id:token\titem_id:token\trating:float\ttimestamp:float",
         "1\t10\t4\t881250949", "1\t20\t5\t881250950", "2\t10\t3\t891717742"]
ITEM = ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq",
        "10\tToy Story\t1995\tAnimation Comedy", "20\tHeat\t1995\tAction Crime Thriller"]
USER = ["user_id:token\tage:token\tgender:token", "1\t24\tM", "2\t53\tF"]


def recbole_folder(tmp_path: Path, inter: list[str] = INTER, item: list[str] | None = ITEM,
                   user: list[str] | None = USER) -> Path:
    folder = tmp_path / "rb"
    folder.mkdir()
    write_lines(folder / "rb.inter", inter)
    if item:
        write_lines(folder / "rb.item", item)
    if user:
        write_lines(folder / "rb.user", user)
    return folder


def test_recbole_reads_canonical_tables(tmp_path):
    t = validate(recbole.read(recbole_folder(tmp_path), {}), "rb")
    item = t.items.row(0, named=True)
    assert (item["item_id"], item["title"], item["category"]) == ("10", "Toy Story", "Animation")
    assert json.loads(item["attributes"]) == {"class": "Animation Comedy", "release_year": "1995"}
    assert json.loads(t.users.row(0, named=True)["attributes"]) == {"age": "24", "gender": "M"}
    inter = t.interactions
    assert inter["rating"].to_list() == [4.0, 5.0, 3.0] and set(inter["event"]) == {"rating"}
    assert inter["ts"][0] == ts("1997-12-04 15:55:49").item()


def test_recbole_without_item_user_or_time(tmp_path):
    inter = ["user_id:token\titem_id:token", "u1\tb", "u2\ta", "u1\ta"]
    t = validate(recbole.read(recbole_folder(tmp_path, inter=inter, item=None, user=None), {}), "rb")
    assert sorted(t.items["item_id"]) == ["a", "b"] and sorted(t.users["user_id"]) == ["u1", "u2"]
    u1 = t.interactions.filter(pl.col("user_id") == "u1")
    assert u1["item_id"].to_list() == ["b", "a"]  # file order
    assert u1["ts"].to_list() == [ts("2020-01-01").item(), ts("2020-01-02").item()]
    assert set(t.interactions["event"]) == {"interaction"} and t.interactions["rating"].null_count() == 3


def test_recbole_missing_files_and_columns(tmp_path):
    with pytest.raises(DataError, match="nowhere not found"):
        recbole.read(tmp_path / "nowhere", {})
    folder = recbole_folder(tmp_path, inter=["user:token\titem_id:token", "1\t10"])
    with pytest.raises(DataError, match="missing"):
        recbole.read(folder, {"name": "other"})
    with pytest.raises(DataError, match=r"rb.inter: missing column\(s\) \['user_id'\]; found columns"):
        recbole.read(folder, {})


def test_recbole_bad_header_and_rows(tmp_path):
    folder = recbole_folder(tmp_path, inter=["user_id\titem_id:token", "1\t10"])
    with pytest.raises(DataError, match="rb.inter: header field 'user_id' is not 'name:type'"):
        recbole.read(folder, {})
    for f in folder.iterdir():
        f.unlink()
    write_lines(folder / "rb.inter", [*INTER[:2], "1\t20\t5\t881250950\textra"])
    with pytest.raises(DataError, match="rb.inter: malformed row at line 3: expected 4 fields, found 5"):
        recbole.read(folder, {})
    write_lines(folder / "rb.inter", [*INTER, "2\t20\t3\tyesterday"])
    with pytest.raises(DataError, match="rb.inter: column 'timestamp', data row 4: 'yesterday'"):
        recbole.read(folder, {})
    write_lines(folder / "rb.inter", [*INTER, "2\t20\tfive\t881250950"])
    with pytest.raises(DataError, match="rb.inter: column 'rating', data row 4: 'five'"):
        recbole.read(folder, {})


def test_recbole_duplicate_items_left_to_validate(tmp_path):
    folder = recbole_folder(tmp_path, item=[*ITEM, ITEM[1]])
    with pytest.raises(DataError, match=r"duplicate item_id\(s\).*10"):
        validate(recbole.read(folder, {}), "rb")


# ---------------------------------------------------------------- plain sequences


def test_sequence_reads_canonical_tables(tmp_path):
    folder = tmp_path / "seq"
    folder.mkdir()
    write_lines(folder / "data.txt", ["u1 i1 i2 i3", "", "u2\ti2", "u3"])
    t = validate(sequence.read(folder, {}), "seq")
    assert t.items["item_id"].to_list() == ["i1", "i2", "i3"] and t.items["title"].null_count() == 3
    u1 = t.interactions.filter(pl.col("user_id") == "u1")
    assert u1["item_id"].to_list() == ["i1", "i2", "i3"]
    assert u1["ts"].to_list() == [ts(d).item() for d in ("2020-01-01", "2020-01-02", "2020-01-03")]
    assert set(t.interactions["event"]) == {"interaction"} and t.interactions.height == 4
    assert t.skipped == {"lines with a user but no items in data.txt": 1}


def test_sequence_files(tmp_path):
    with pytest.raises(DataError, match="nowhere not found"):
        sequence.read(tmp_path / "nowhere", {})
    folder = tmp_path / "seq"
    folder.mkdir()
    with pytest.raises(DataError, match=r"\*.txt not found"):
        sequence.read(folder, {})
    write_lines(folder / "a.txt", ["u1 i1"])
    write_lines(folder / "b.seq", ["u1 i9 i8"])
    with pytest.raises(DataError, match="missing.seq not found"):
        sequence.read(folder, {"file": "missing.seq"})
    assert sequence.read(folder, {"file": "b.seq"}).interactions["item_id"].to_list() == ["i9", "i8"]
    write_lines(folder / "c.txt", ["u1 i1"])
    with pytest.raises(DataError, match="several files match"):
        sequence.read(folder, {})
    write_lines(folder / "empty.seq", ["u1", ""])
    with pytest.raises(DataError, match="empty.seq: no interactions"):
        sequence.read(folder, {"file": "empty.seq"})


# ---------------------------------------------------------------- lookup and real data


def test_reader_lookup():
    assert READERS["hm"] is hm.read and reader("recbole") is recbole.read
    with pytest.raises(ValueError, match="unknown source kind 'nope'"):
        reader("nope")
    if importlib.util.find_spec("mmrec_pipeline.data.synthetic"):
        assert callable(reader("sample"))


def real(shared_data: Path, name: str) -> Path:
    if not (shared_data / name).is_dir():
        pytest.skip(f"real data {shared_data / name} not available")
    return shared_data / name


def test_real_hm(shared_data):
    start = time.perf_counter()
    t = validate(hm.read(real(shared_data, "hm"), {}), "hm")
    print(f"hm read + validate: {time.perf_counter() - start:.2f}s")
    assert (t.interactions.height, t.users.height, t.items.height) == (9925, 1037, 4116)
    assert t.items["image_sha256"].null_count() == 0  # every article of the sample has a decodable image
    assert t.items["price"].null_count() == 0 and t.items["item_id"].str.len_chars().min() == 10
    assert t.skipped == {}


def test_real_ml100k(shared_data):
    start = time.perf_counter()
    t = validate(recbole.read(real(shared_data, "ml-100k"), {}), "ml-100k")
    print(f"ml-100k read + validate: {time.perf_counter() - start:.2f}s")
    assert (t.interactions.height, t.users.height, t.items.height) == (100_000, 943, 1682)
    assert t.interactions["rating"].is_between(1, 5).all() and t.items["title"].null_count() == 0
