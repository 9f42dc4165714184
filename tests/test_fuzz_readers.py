"""Fuzzing each reader with mutated versions of a small valid dataset (truncations, random bytes, swapped
columns, fields of the wrong type): the only outcomes allowed are validated tables (bad rows counted as
skips) or a `DataError` that names the file, never another exception, and the reader writes nothing."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmrec_pipeline.data.schema import DataError, validate
from mmrec_pipeline.data.sources import reader

FUZZ = settings(max_examples=25, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# (source kind, {file: valid text}, the file to mutate, its field separator or None for JSON Lines/free text)
DATASETS = {
    "hm": ({
        "articles.csv": "article_id,prod_name,product_type_name,detail_desc\n"
                        "0108775015,Strap top,Vest top,Jersey top\n0108775044,Tee,T-shirt,Cotton\n",
        "customers.csv": "customer_id,age,postal_code\nc1,24.0,p1\nc2,,p2\n",
        "transactions_train.csv": "t_dat,customer_id,article_id,price,sales_channel_id\n"
                                  "2018-09-20,c1,0108775015,0.02,2\n2018-09-21,c2,0108775044,0.04,1\n"
                                  "2018-09-22,c1,0108775044,0.05,1\n",
    }, ("transactions_train.csv", "articles.csv", "customers.csv"), ","),
    "recbole": ({
        "d.inter": "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                   "1\t10\t4\t881250949\n1\t11\t3\t881250950\n2\t10\t5\t881250951\n",
        "d.item": "item_id:token\tmovie_title:token_seq\tclass:token_seq\n10\tToy Story\tAnimation\n11\tHeat\tAction\n",
        "d.user": "user_id:token\tage:token\n1\t24\n2\t31\n",
    }, ("d.inter", "d.item", "d.user"), "\t"),
    "sequence": ({"seq.txt": "u1 i1 i2 i3\nu2 i2 i3\nu3 i1\n"}, ("seq.txt",), " "),
    "amazon": ({
        "meta_Tools.jsonl": "\n".join(json.dumps(m) for m in [
            {"parent_asin": "P1", "title": "Drill", "price": 59.99, "categories": ["Tools", "Drills"]},
            {"parent_asin": "P2", "title": "Saw", "price": "from 3.99", "description": ["Sharp."]}]) + "\n",
        "Tools.jsonl": "\n".join(json.dumps(r) for r in [
            {"rating": 5.0, "text": "great", "parent_asin": "P1", "user_id": "U1", "timestamp": 1588687728923},
            {"rating": 3.0, "text": "ok", "parent_asin": "P2", "user_id": "U1", "timestamp": 1588687800000},
            {"rating": 4.0, "text": "fine", "parent_asin": "P1", "user_id": "U2", "timestamp": 1600000000}]) + "\n",
    }, ("Tools.jsonl", "meta_Tools.jsonl"), None),
}
ODD_VALUES = ["", "nan", "-1", "1e400", "abc", "0", '"', "\t", ",", "2018-13-45", "null", "\x00", "é", " " * 3]
JSON_VALUES = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=8),
                        st.lists(st.integers(), max_size=3), st.sampled_from(ODD_VALUES))


@st.composite
def mutation(draw, text: str, sep: str | None) -> bytes:
    """One mutation of a file's text: cut, bytes inserted, two columns swapped, a field or JSON value replaced."""
    data = text.encode()
    kind = draw(st.sampled_from(["truncate", "insert", "swap", "field"]))
    if kind == "truncate":
        return data[:draw(st.integers(0, len(data)))]
    if kind == "insert":
        at = draw(st.integers(0, len(data)))
        return data[:at] + draw(st.binary(min_size=1, max_size=12)) + data[at:]
    lines = text.splitlines()
    row = draw(st.integers(0, len(lines) - 1))
    if sep is None:  # JSON Lines: give one key a value of another type
        obj = json.loads(lines[row])
        obj[draw(st.sampled_from(sorted(obj)))] = draw(JSON_VALUES)
        lines[row] = json.dumps(obj)
        return ("\n".join(lines) + "\n").encode()
    fields = lines[row].split(sep)
    if kind == "swap" and len(fields) > 1:
        i, j = draw(st.permutations(range(len(fields))))[:2]
        fields[i], fields[j] = fields[j], fields[i]
    else:
        fields[draw(st.integers(0, len(fields) - 1))] = draw(st.one_of(st.sampled_from(ODD_VALUES),
                                                                       st.text(max_size=6)))
    lines[row] = sep.join(fields)
    return ("\n".join(lines) + "\n").encode()


def read_mutated(kind: str, target: str, mutated: bytes) -> bool:
    """Whether the files parsed (False: a DataError naming the file)."""
    files, _, _ = DATASETS[kind]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "data"
        folder.mkdir()
        for name, text in files.items():
            (folder / name).write_text(text)
        (folder / target).write_bytes(mutated)
        before = sorted(Path(tmp).rglob("*"))
        try:
            validate(reader(kind)(folder, {}), str(folder))
            parsed = True
        except DataError as e:
            assert str(folder) in str(e), f"DataError without the file: {e}"
            parsed = False
        assert sorted(Path(tmp).rglob("*")) == before, "a reader wrote a file"
        return parsed


@pytest.mark.parametrize("kind", sorted(DATASETS))
def test_valid_fixture_reads(kind):
    files, targets, _ = DATASETS[kind]
    assert read_mutated(kind, targets[0], files[targets[0]].encode())


@pytest.mark.parametrize("kind", sorted(DATASETS))
@FUZZ
@given(data=st.data())
def test_reader_survives_mutated_files(kind, data):
    files, targets, sep = DATASETS[kind]
    target = data.draw(st.sampled_from(targets))
    read_mutated(kind, target, data.draw(mutation(files[target], sep)))
