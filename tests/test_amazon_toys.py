"""The `amazon-toys` registry entry (the public S3-Rec/ICLRec split) loads, and a 200-line slice of its file
parses into canonical tables and a leave-one-out split."""

import shutil

from mmrec_pipeline.data import schema
from mmrec_pipeline.data.sources import reader
from mmrec_pipeline.data.splits import make_split
from mmrec_pipeline.registry import get_dataset


def test_registry_entry_loads():
    spec = get_dataset("amazon-toys")
    assert (spec.source, spec.split, spec.path) == ("sequence", "loo", "amazon-toys-seq")
    assert "ICLRec" in spec.obtain
    assert spec.models["sasrec"]["loss"] == "ce" and spec.models["sasrec"]["search_space"] == {}


def test_slice_of_the_toys_file_parses(shared_data, tmp_path):
    source = shared_data / "amazon-toys-seq" / "Toys_and_Games.txt"
    lines = source.read_text().splitlines()[:200]
    folder = tmp_path / "toys"
    folder.mkdir()
    (folder / "Toys_and_Games.txt").write_text("\n".join(lines) + "\n")
    spec = get_dataset("amazon-toys")
    tables = schema.validate(reader(spec.source)(folder, spec.options), spec.name)
    sequences = [line.split() for line in lines]
    assert tables.users.height == 200
    assert tables.interactions.height == sum(len(s) - 1 for s in sequences)
    assert tables.items.height == len({i for s in sequences for i in s[1:]})
    split = make_split(tables.interactions, spec.split)
    first = split.filter(split["user_id"] == sequences[0][0])
    assert first.filter(first["split"] == "test")["item_id"].to_list() == [sequences[0][-1]]
    assert first.filter(first["split"] == "valid")["item_id"].to_list() == [sequences[0][-2]]
    assert dict(split.group_by("split").len().iter_rows()) == {"train": split.height - 400, "valid": 200,
                                                               "test": 200}
    shutil.rmtree(folder)


def test_markdown_names_protocols_and_keeps_refit_rows_apart():
    """Every row of the Toys tables names its protocol; published rows (`loo`, from their code) share a table with
    the `loo` rows only, and a `loo+refit` row is never in that table."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from amazon_toys import PUBLISHED, markdown

    row = {"config": {"l2": 50.0}, "chosen": {}, "valid": {"ndcg": 0.05}, "test": {"recall": 0.07, "ndcg": 0.04},
           "test_ci95": {"recall": [0.06, 0.08], "ndcg": [0.03, 0.05]}, "epochs": None,
           "machine": {"cpu": "x", "load_average_1m_5m_15m_at_start": [1, 1, 1]}}
    doc = {"rows": {"ease": row, "ease_refit": {**row, "refit_of": "ease", "protocol": "loo+refit"}},
           "published": {k: {"recall@10": r, "ndcg@10": n} for k, (r, n) in PUBLISHED.items()}}
    first, second = markdown(doc).split("\n\n", 1)
    assert "| ease | loo |" in first and "published: eSASRec | loo |" in first and "refit" not in first
    assert "| ease_refit | loo+refit |" in second and "published" not in second.split("\n", 1)[1]
