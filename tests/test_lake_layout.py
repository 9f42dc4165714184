"""One lake, reached only through `storage.Lake` and its per-dataset view: the layout is spelled in storage.py
alone, and it is the layout existing lakes already have."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from mmrec_pipeline.storage import Checkpoint, CorruptFileError, DatasetView, Lake, ModelFolder

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("mmrec_pipeline", "assets", "resources")
# Names of artifacts under the lake root (and the lake's own folders), the files of a checkpoint included
# (`storage.Checkpoint`): spelled only in storage.py. Not covered: the inside of a feature-cache store
# (features/cache.py) and of the generated sample's raw store (data/synthetic.py, the stand-in for an upstream
# system that `Lake.sample_raw` places), which use their own names.
ARTIFACTS = ("per_user", "serving", "drift", "report.html", "recommendations.previous", "vq_vae", "report_facts",
             "summary.json", "feature_dtype", "lake.duckdb", "_cache", "models", "recommendations.parquet",
             "config.json", "model.safetensors", "fit_report", "report.json")


def _strings(node: ast.AST) -> list[str]:
    """The literal text of a str constant or an f-string's literal parts."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        return [v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str)]
    return []


def path_joins(source: str) -> list[tuple[int, str]]:
    """(line, literal) of every path join onto an artifact name: `x / "name"`, `x.joinpath(…"name"…)`,
    `os.path.join(…)` / `inside(…)` with such a literal. What it cannot see: a name built in a variable first."""
    hits = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            operands = [node.right]
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            operands = node.args if name in ("joinpath", "join", "inside") else []
        else:
            continue
        for operand in operands:
            for text in _strings(operand):
                hits += [(node.lineno, text) for artifact in ARTIFACTS if artifact in text]
    return hits


def test_no_module_outside_storage_joins_an_artifact_path():
    offenders = []
    for package in PACKAGES:
        for file in sorted((REPO / package).rglob("*.py")):
            if file == REPO / "mmrec_pipeline" / "storage.py":
                continue
            offenders += [f"{file.relative_to(REPO)}:{line}: {text!r}"
                          for line, text in path_joins(file.read_text())]
    assert offenders == []


def lakes_built(source: str) -> list[int]:
    """Lines that build a `Lake(...)`, or step up from a path to find one (`….parent.parent`; not from
    `__file__`, the repository's own folders)."""
    hits = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            func = node.func
            if (func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")) == "Lake":
                hits.append(node.lineno)
        elif (isinstance(node, ast.Attribute) and node.attr == "parent" and isinstance(node.value, ast.Attribute)
              and node.value.attr == "parent" and "__file__" not in ast.unparse(node)):
            hits.append(node.lineno)
    return hits


def test_domain_code_is_handed_the_lake_and_never_builds_one():
    """The lake (or its feature cache, or a dataset's view) reaches domain code from the Dagster layer or the CLI:
    built from the environment or derived from a cache root there, two callers could disagree on the root."""
    offenders = []
    for file in sorted((REPO / "mmrec_pipeline").rglob("*.py")):
        if file != REPO / "mmrec_pipeline" / "storage.py":
            offenders += [f"{file.relative_to(REPO)}:{line}" for line in lakes_built(file.read_text())]
    assert offenders == []
    assert lakes_built("a = Lake()\nb = storage.Lake(root)\nc = cache_root.parent.parent\nd = x.parent\n"
                       "e = Path(__file__).parent.parent\n") == [1, 2, 3]


def test_the_check_sees_the_joins_it_claims_to():
    source = ('a = run.dataset_dir / "models" / "vq_vae"\n'
              'b = out / "serving" / "recommendations.previous.parquet"\n'
              'c = folder.joinpath("per_user", f"{name}.parquet")\n'
              'd = os.path.join(root, "report.html")\n'
              'e = root.parent / "models"\n'
              'f = directory / f"summary.json"\n')
    assert {line for line, _ in path_joins(source)} == {1, 2, 3, 4, 5, 6}
    assert path_joins('x = artifacts.per_user("ranker")\ny = checkpoint.config\n') == []
    assert path_joins('y = folder / "config.json"\nz = directory / "model.safetensors"\n') == [(1, "config.json"),
                                                                                             (2, "model.safetensors")]


def test_the_view_keeps_the_layout_existing_lakes_have(tmp_path):
    lake = Lake(tmp_path)
    view, root = lake.dataset_view("sample"), tmp_path.resolve()
    d = root / "sample"
    assert view.folder == lake.dataset("sample") == d
    assert view.table("items") == lake.table("sample", "items") == d / "items.parquet"
    assert view.models("bpr_mf", "default") == lake.models("sample", "bpr_mf", "default") == d / "models/bpr_mf/default"
    assert view.model("bpr_mf").variant("default") == d / "models/bpr_mf/default"
    assert view.report_facts("bpr_mf", "default") == d / "models/bpr_mf/default/report_facts.json"
    checkpoint = view.model("bpr_mf").checkpoint("default")
    assert (checkpoint.config, checkpoint.weights, checkpoint.fit_report) == (
        d / "models/bpr_mf/default/config.json", d / "models/bpr_mf/default/model.safetensors",
        d / "models/bpr_mf/default/fit_report.json")
    assert view.vq_vae == d / "models/vq_vae" and view.vq_vae_report == d / "models/vq_vae/report.json"
    assert view.ranker_summary == d / "models/ranker/summary.json"
    assert view.per_user_dir == lake.per_user("sample") == d / "per_user"
    assert view.per_user("ease") == d / "per_user/ease.parquet"
    assert view.previous_recommendations == d / "serving/recommendations.previous.parquet"
    assert view.drift_log == d / "serving/drift.json"
    assert view.report == lake.report("sample") == d / "report.html"
    assert view.feature_dtype == lake.feature_dtype("sample") == d / "feature_dtype.json"
    assert lake.catalog == root / "lake.duckdb" and lake.dagster_home("") == root / "dagster"
    assert lake.dagster_home("deploy") == root / "dagster-deploy"
    assert lake.model_cache("summarizer-x") == root / "_cache/models/summarizer-x"
    assert lake.feature_cache().path == root / "_cache/features"
    assert lake.feature_cache().store("image", "resnet18-ab") == root / "_cache/features/image/resnet18-ab"
    assert lake.feature_cache().converted_weights("summarizer-x") == lake.model_cache("summarizer-x")
    assert DatasetView.at(d) == view and DatasetView.at(view) is view


def test_the_view_refuses_a_name_that_leaves_the_root(tmp_path):
    with pytest.raises(ValueError, match="would leave the lake root"):
        Lake(tmp_path).dataset_view("../x")
    with pytest.raises(ValueError, match="would leave the lake root"):
        Lake(tmp_path).dataset_view("sample").per_user("../../../x")
    with pytest.raises(ValueError, match="would leave the lake root"):
        ModelFolder(tmp_path).variant("../../x")


def test_checkpoint_configs_by_variant(tmp_path):
    view = Lake(tmp_path).dataset_view("sample")
    assert view.checkpoint_configs("ease") == {}
    for variant in ("b", "a"):
        view.model("ease").variant(variant).mkdir(parents=True)
        view.model("ease").checkpoint(variant).config.write_text("{}")
    assert list(view.checkpoint_configs("ease")) == ["a", "b"]


def test_the_io_manager_puts_tables_where_the_view_says(tmp_path):
    from upath import UPath

    from resources.storage import LakeParquetIOManager

    manager = LakeParquetIOManager(base_path=UPath(Lake(tmp_path).root))
    path = manager.get_path_for_partition(None, UPath(Lake(tmp_path).root) / "items", "sample")
    assert Path(path.path).with_suffix(".parquet") == Lake(tmp_path).dataset_view("sample").table("items")
    with pytest.raises(ValueError, match="would leave the lake root"):
        manager.get_path_for_partition(None, UPath(Lake(tmp_path).root) / "items", "../x")
    with pytest.raises(ValueError, match="would leave the lake root"):
        manager._inside_root(UPath(tmp_path.parent / "elsewhere.parquet"))


def test_an_input_reads_only_the_columns_it_asks_for_and_lazily_when_asked(tmp_path):
    """`AssetIn(metadata={"columns": [...], "lazy": True})`: a model step loads the split's columns its fit reads,
    as a LazyFrame that `RecDataset.from_tables` collects."""
    import dagster as dg
    import polars as pl
    from upath import UPath

    from mmrec_pipeline.storage import write_parquet
    from resources.storage import LakeParquetIOManager

    path = tmp_path / "split.parquet"
    write_parquet(pl.DataFrame({"user_id": ["u"], "item_id": ["i"], "review_text": [None]}), path)
    manager = LakeParquetIOManager(base_path=UPath(tmp_path))
    every = manager.load_from_path(dg.build_input_context(), UPath(path))
    assert isinstance(every, pl.DataFrame) and every.columns == ["user_id", "item_id", "review_text"]
    asked = dg.build_input_context(definition_metadata={"columns": ["user_id", "item_id"], "lazy": True})
    lazy = manager.load_from_path(asked, UPath(path))
    assert isinstance(lazy, pl.LazyFrame) and lazy.collect().columns == ["user_id", "item_id"]


def test_a_checkpoint_is_safetensors_and_json_with_its_hash_checked(tmp_path):
    """`Checkpoint.write` / `read`, the one format `Recommender.save` / `load` and the VQ-VAE use (their round trips:
    tests/test_models.py, tests/test_features.py; their corrupt files: tests/test_integrity.py)."""
    import torch

    checkpoint = Checkpoint(tmp_path / "x")
    checkpoint.write({"w": torch.arange(4.0)}, {"model": "x"})
    assert checkpoint.exists() and sorted(p.name for p in checkpoint.path.iterdir()) == [Checkpoint.CONFIG,
                                                                                           Checkpoint.WEIGHTS]
    config, state = checkpoint.read()
    assert config["model"] == "x" and len(config["weights_sha256"]) == 64 and state["w"].tolist() == [0, 1, 2, 3]
    checkpoint.weights.write_bytes(checkpoint.weights.read_bytes()[:-1] + b"\x01")
    with pytest.raises(CorruptFileError, match="sha256"):
        checkpoint.read()
