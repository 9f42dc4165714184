"""Models declare what they need: adding one takes its class and one registry entry. A toy model registered in a
fresh process (the registry is read when the Definitions are built) becomes an asset that trains its declared
variants, writes its metrics rows, feeds `metrics` and the report, and gets a tuning check and a code version.
The same holds for a model outside the package, named in `MMREC_MODELS` (`name=module:Class`)."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from mmrec_pipeline import models
from mmrec_pipeline.evaluation.protocols import METRICS_SCHEMA
from mmrec_pipeline.models import MODEL_GROUPS, MODELS
from mmrec_pipeline.models.base import Recommender
from mmrec_pipeline.storage import Lake, write_parquet

REPO = Path(__file__).resolve().parents[1]
TOY_SECTION = "toy: how many items it knows"
TOY_VARIANTS = {"plain": {}, "decayed": {"half_life_days": 30.0}}


@dataclasses.dataclass
class ToyConfig:
    half_life_days: float | None = None  # None = plain training counts


class Toy(Recommender):
    """Toy popularity: training interactions counted with an optional exponential decay by age."""

    name = "toy"
    Config = ToyConfig
    variants = TOY_VARIANTS
    feature_assets = ()

    @classmethod
    def report_section(cls, inputs):
        from mmrec_pipeline.evaluation.report import Section

        return Section(TOY_SECTION, "The toy ranks by (decayed) training counts.")

    def fit(self, data, features, compute, log=None) -> dict:
        t = data.train["t"].to_numpy().astype(np.float64)
        weights = np.ones_like(t)
        if self.config.half_life_days is not None:
            weights = 0.5 ** ((t.max() - t) / (self.config.half_life_days * 86400))
        self.n_items = data.n_items
        self.counts = torch.from_numpy(np.bincount(data.train["item_idx"].to_numpy(), weights=weights,
                                                   minlength=data.n_items).astype(np.float32))
        return {"seconds": 0.0}

    def score(self, users, history) -> torch.Tensor:
        return self.counts.expand(len(users), -1).clone()

    def state_dict(self):
        return {"counts": self.counts}

    def load_state_dict(self, state):
        self.counts = state["counts"]


# Runs in a fresh process: one registry entry, then the code location is built and the toy materialized.
REGISTRY_LINE = """
from test_model_registry import Toy
from mmrec_pipeline import models
models.CLASSIC["toy"] = Toy  # the one registry entry
"""
SCRIPT = """
import json, sys
sys.path.insert(0, {tests!r})
{register}
import dagster as dg
from assets.automation import CODE_VERSIONS
from assets.definitions import defs
from resources.runner import materialize_dataset
graph = defs.resolve_asset_graph()
toy = graph.get(dg.AssetKey("toy"))
checks = [k.name for k in defs.resolve_asset_graph().asset_check_keys if k.asset_key == dg.AssetKey("toy")]
outcome = materialize_dataset("sample", select="toy,metrics,report")
ok, failures = outcome.ok, outcome.failures
print("RESULT " + json.dumps({{
    "group": toy.group_name, "parents": sorted(k.to_user_string() for k in toy.parent_keys),
    "metrics_reads_toy": dg.AssetKey("toy") in graph.get(dg.AssetKey("metrics")).parent_keys,
    "checks": checks, "code_version": CODE_VERSIONS.get("toy"), "ok": ok, "failures": failures}}))
"""


def test_registry_names_are_the_class_names_and_declarations_are_well_formed():
    assets = {"text_embeddings", "image_embeddings", "captions", "review_summaries", "vq_codes"}
    for group in MODEL_GROUPS.values():
        for name, cls in group.items():
            assert MODELS[name] is cls and cls.name == name  # the asset name is the checkpoint's model name
            assert cls.variants and all(isinstance(o, dict) for o in cls.variants.values()), name
            assert set(cls.feature_assets) <= assets and cls.pool in (None, "gpu"), name
    assert list(MODELS) == [n for g in MODEL_GROUPS.values() for n in g] and "toy" not in MODELS


@pytest.mark.parametrize("how", ["registry line", "MMREC_MODELS"])
def test_a_toy_model_with_one_registry_entry_is_an_asset_with_metrics_and_a_report_section(
        how, sample_tables, sample_features, tmp_path):
    """`registry line`: the class added to a group in models/__init__.py; `MMREC_MODELS`: the package untouched,
    the class (defined here, in tests/) named in the environment, as a team that installs the package does."""
    tables, split = sample_tables
    lake = tmp_path / "lake"
    folder = lake / "sample"
    for name, table in {"items": tables.items, "split": split, "interactions": tables.interactions,
                        "text_embeddings": sample_features["text"]}.items():
        write_parquet(table, folder / f"{name}.parquet")
    for other in MODELS:  # the other models' tables, empty: only the toy trains here
        write_parquet(pl.DataFrame(schema=METRICS_SCHEMA), folder / f"{other}.parquet")
    env = {**os.environ, "MMREC_HOME": str(lake), "DAGSTER_HOME": str(lake / "dagster"), "MMREC_ENV": "test",
           "PYTHONPATH": str(REPO)}
    if how == "MMREC_MODELS":  # the step processes import the model too: its folder is on their path
        env |= {"MMREC_MODELS": "toy=test_model_registry:Toy", "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"}
    register = REGISTRY_LINE if how == "registry line" else ""
    (lake / "dagster").mkdir()
    proc = subprocess.run([sys.executable, "-c", SCRIPT.format(tests=str(REPO / "tests"), register=register)],
                          cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["ok"] and not out["failures"], out
    assert out["group"] == "models" and out["parents"] == ["items", "split", "text_embeddings"]
    assert out["metrics_reads_toy"] and "tuned_on_validation" in out["checks"] and out["code_version"]

    rows = pl.read_parquet(folder / "toy.parquet")
    assert set(rows["model"]) == {"toy"} and set(rows["variant"]) == set(Toy.variants)
    ndcg = rows.filter((pl.col("metric") == "ndcg") & (pl.col("k") == 10) & (pl.col("protocol") == "temporal"))
    assert ndcg.height == 2 and ndcg["value"].is_finite().all() and (ndcg["value"] > 0).all()
    assert {"temporal", "temporal@valid"} <= set(rows["protocol"])
    for variant in Toy.variants:  # checkpoints round-trip through the base class
        assert Toy.load(folder / "models" / "toy" / variant).counts.shape == (tables.items.height,)
    assert set(pl.read_parquet(folder / "metrics.parquet")["model"]) == {"toy"}
    report = (folder / "report.html").read_text()
    assert "toy/plain" in report and "toy/decayed" in report  # on the leaderboard
    assert TOY_SECTION in report  # the model's own section, asked of it by assets/evaluation.py


def test_the_model_sources_reach_the_model_through_the_runner_and_load(tmp_path, monkeypatch):
    """The ModelSourcesResource's settings hold in the models too: the runner and `load` hand them over, and
    mm_llmrec resolves its `smollm2` backbone and vq_bart its hub backbones through them (backbones.py)."""
    from mmrec_pipeline import backbones
    from mmrec_pipeline.models.mm_llmrec import MMLLMRec, backbone_source
    from mmrec_pipeline.models.runner import build
    from mmrec_pipeline.weights import ModelSources

    folder = tmp_path / "my-smollm2"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # (the test session's offline guard would veto any download flag)
    sources = ModelSources(summarizer=str(folder), allow_download=True)
    cache = Lake(tmp_path / "lake").feature_cache()
    model = build(MMLLMRec, MMLLMRec.variants["text"], {"epochs": 1}, sources, cache)
    assert model.sources is sources and model.feature_cache is cache and model.config.epochs == 1
    assert backbone_source("smollm2", model.sources) == str(folder.resolve())
    assert backbones.pretrained_kwargs("org/some-model", sources) == {"trust_remote_code": False,
                                                                       "local_files_only": False}
    assert backbones.pretrained_kwargs("org/some-model", ModelSources(allow_download=False))["local_files_only"]
    assert backbones.pretrained_kwargs(str(folder), sources) == {"trust_remote_code": False}

    toy = Toy()
    toy.n_items, toy.counts = 3, torch.ones(3)
    toy.save(tmp_path / "toy")
    loaded = Toy.load(tmp_path / "toy", sources=sources, feature_cache=cache)
    assert loaded.sources is sources and loaded.feature_cache is cache
    with pytest.raises(ValueError, match="feature cache"):  # never found from the environment
        Toy().required_feature_cache()


def test_a_model_outside_the_package_is_registered_by_name_and_bad_entries_are_named(monkeypatch):
    monkeypatch.setattr(models, "CUSTOM", {})
    monkeypatch.setitem(models.MODEL_GROUPS, "custom", models.CUSTOM)
    models.register_from("toy=test_model_registry:Toy")
    assert MODELS["toy"] is models.load_class("test_model_registry:Toy") and "toy" in models.CUSTOM
    for entry, says in [("toy", "name=module:Class"), ("toy=test_model_registry", "module:Class"),
                        ("toy=no_such_module:Toy", "cannot load"), ("toy=test_model_registry:Nope", "cannot load"),
                        ("other=test_model_registry:Toy", "names itself 'toy'"),
                        ("popularity=mmrec_pipeline.models.ease:EASE", "names itself 'ease'"),
                        ("toy=test_model_registry:ToyConfig", "not a Recommender subclass")]:
        with pytest.raises(ValueError, match=says) as e:
            models.register_from(entry)
        assert "MMREC_MODELS" in str(e.value) and entry in str(e.value)
    with pytest.raises(ValueError, match="already registered"):
        models.register("ease", type("EASE2", (Toy,), {"name": "ease"}))
