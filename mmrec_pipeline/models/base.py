"""The `Recommender` interface every model implements (RecBole/Cornac style: one file per model).

A model is built from a config dataclass, `fit` on a `RecDataset` (train rows, with `valid` for early
stopping), and `score`s users against the whole catalog. Checkpoints are `storage.Checkpoint`s (`config.json` +
`model.safetensors`, its sha256 in the config, checked on load); nothing is ever pickled.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import polars as pl
import scipy.sparse as sp
import torch

from mmrec_pipeline.compute import Compute
from mmrec_pipeline.data.dataset import SPLIT_COLUMNS, RecDataset

# The report's types and the paper claim belong to evaluation/: models import them, evaluation imports no model.
from mmrec_pipeline.evaluation.audit import PaperClaim
from mmrec_pipeline.evaluation.report import ReportInputs, Section
from mmrec_pipeline.storage import Checkpoint, CorruptFileError, FeatureCacheFolder
from mmrec_pipeline.weights import ModelSources


class MissingFeature(ValueError):
    """A model variant needs an item feature the dataset does not have; the message names the feature asset."""


MODALITIES = ("image", "text", "caption", "summary", "vq_codes")


def modality_of(source: str, column: str) -> str | None:
    """The modality a feature table's vector column carries: by the asset it came from, and within
    `text_embeddings` (sentence vectors of every text field) by the field. None: an unknown source."""
    if source in ("image_embeddings", "vq_codes"):
        return {"image_embeddings": "image", "vq_codes": "vq_codes"}[source]
    if source not in ("text_embeddings", "review_summaries", "captions"):
        return None
    if "caption" in column:  # sbert_caption_<model>, sbert_title_caption_<model>
        return "caption"
    if source == "review_summaries" or column in ("sbert_summary", "sbert_reviews"):
        return "summary"
    return "text"


@dataclasses.dataclass
class ItemFeatures:
    """Per-item vectors aligned with the catalog order of a `RecDataset` (row i = item index i), by column name,
    and typed by modality (as Cornac's `train_set.item_image`): `features.image` is {column: vectors} of every
    image vector, likewise `text`, `caption`, `summary`, `vq_codes` (`modality` records each column's).

    `present[name]` marks items that have the feature; missing rows are zeros. Built by `item_features` from the
    feature tables a model declares, the same way for training (assets/models.py) and serving (serving.py).
    """

    vectors: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    present: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    modality: dict[str, str] = dataclasses.field(default_factory=dict)  # column -> one of MODALITIES

    @classmethod
    def from_table(cls, data: RecDataset, table: pl.DataFrame | None, prefix: str = "",
                   source: str = "") -> ItemFeatures:
        """Take every list-of-float column of a feature table (one row per item_id) as a feature; `source`: the
        feature asset the table is (its columns' modality, `modality_of`)."""
        feats = cls()
        if table is None or table.height == 0:
            return feats
        aligned = data.items.select("item_id").join(table, on="item_id", how="left", maintain_order="left")
        for col, dtype in aligned.schema.items():
            # numbers only: a feature table may also carry lists of ids (review_summaries' `review_ids`)
            if col == "item_id" or not isinstance(dtype, (pl.List, pl.Array)) or not dtype.inner.is_numeric():
                continue
            present = aligned[col].is_not_null().to_numpy()
            if not present.any():
                continue
            values = aligned[col].drop_nulls()
            dim = len(values[0])
            if isinstance(dtype, pl.List):  # one 2-D array, not a Python float per element
                values = values.list.to_array(dim)
            mat = np.zeros((data.n_items, dim), dtype=np.float32)
            mat[present] = values.cast(pl.Array(pl.Float32, dim)).to_numpy()
            feats.vectors[prefix + col] = mat
            feats.present[prefix + col] = present
            if (kind := modality_of(source, col)) is not None:
                feats.modality[prefix + col] = kind
        return feats

    def merge(self, other: ItemFeatures) -> ItemFeatures:
        return ItemFeatures({**self.vectors, **other.vectors}, {**self.present, **other.present},
                            {**self.modality, **other.modality})

    def of(self, modality: str) -> dict[str, np.ndarray]:
        """{column: vectors} of one modality (one of MODALITIES), in the order the columns were added."""
        if modality not in MODALITIES:
            raise ValueError(f"unknown modality '{modality}'; one of {MODALITIES}")
        return {c: v for c, v in self.vectors.items() if self.modality.get(c) == modality}

    @property
    def image(self) -> dict[str, np.ndarray]:
        return self.of("image")

    @property
    def text(self) -> dict[str, np.ndarray]:
        return self.of("text")

    @property
    def caption(self) -> dict[str, np.ndarray]:
        return self.of("caption")

    @property
    def summary(self) -> dict[str, np.ndarray]:
        return self.of("summary")

    @property
    def vq_codes(self) -> dict[str, np.ndarray]:
        return self.of("vq_codes")

    def get(self, name: str) -> np.ndarray | None:
        return self.vectors.get(name)


def item_features(data: RecDataset, tables: Mapping[str, pl.DataFrame | None]) -> ItemFeatures:
    """The `ItemFeatures` of feature tables by asset name ({"image_embeddings": table, ...}), each column typed
    by the asset it came from. The one assembly for training and serving."""
    feats = ItemFeatures()
    for source, table in tables.items():
        feats = feats.merge(ItemFeatures.from_table(data, table, source=source))
    return feats


class Recommender(abc.ABC):
    """Subclasses set `name` and `Config` (a dataclass), and implement fit/score/state."""

    name: ClassVar[str]
    Config: ClassVar[type]
    # How the protocol treats it (RecBole's `ModelType`): "general" or "sequential". Under `recbole` a general
    # model's history is masked at ranking time, a sequential one's is not (evaluation/protocols.py).
    kind: ClassVar[str] = "general"
    # The grid the runner tunes on validation: {config field: (a few values)}. Empty = nothing to tune.
    search_space: ClassVar[dict[str, tuple]] = {}
    # Published systems only: what their paper claims and under which protocol (the report's seed audit).
    paper: ClassVar[PaperClaim | None] = None
    # What the model's asset is built from (assets/models.py reads these; the registry entry is all else it needs).
    # The variants it trains: {variant: config overrides}.
    variants: ClassVar[dict[str, dict]] = {"default": {}}
    # The feature assets (tables) `fit` reads. `text_embeddings` is read for every model anyway: its sentence
    # vectors define intra-list diversity for every row of the leaderboard.
    feature_assets: ClassVar[tuple[str, ...]] = ()
    # The columns of the split table `fit` reads (its asset and serving load only these).
    split_columns: ClassVar[tuple[str, ...]] = SPLIT_COLUMNS
    # The Dagster pool of its asset: "gpu" (one step at a time per instance; a GPU per pod on Kubernetes) or None.
    pool: ClassVar[str | None] = None
    # Minutes where other models take seconds: its step starts before shorter ones when steps run side by side.
    long_running: ClassVar[bool] = False
    # The model's own block in the dataset's report (tables, examples), when the leaderboard rows are not enough:
    # `(ReportInputs) -> Section | None`, kept in evaluation/sections/<model>.py (`staticmethod(section)`); it reads
    # what `report_facts` saved, never a checkpoint. None = the model adds no section.
    report_section: ClassVar[Callable[[ReportInputs], Section | None] | None] = None

    @classmethod
    def search_space_for(cls, config) -> dict[str, tuple]:
        """The grid for one variant's config; models whose grid depends on the variant override this."""
        return dict(cls.search_space)

    def __init__(self, config: Any = None, **overrides):
        config = config or self.Config()
        self.config = dataclasses.replace(config, **overrides) if overrides else config
        self.n_items = 0
        # Where pretrained weights come from: the environment's defaults, unless the runner or `load` passes the
        # ModelSourcesResource's (backbones.py loads through them).
        self.sources = ModelSources()
        # The lake's shared feature cache, for a model that reads it (vq_bart's catalog sentence vectors,
        # mm_llmrec's converted SmolLM2): the runner, serving and `load` pass the lake's; never found from the
        # environment here (`required_feature_cache`).
        self.feature_cache: FeatureCacheFolder | None = None

    @abc.abstractmethod
    def fit(self, data: RecDataset, features: ItemFeatures, compute: Compute, log=None) -> dict:
        """Train on `data`'s train rows; return a report (seconds, epochs, learning curve, …)."""

    @abc.abstractmethod
    def score(self, users: np.ndarray, history: list[np.ndarray]) -> torch.Tensor:
        """Scores [len(users), n_items] over the whole catalog; `history` is each user's input sequence."""

    @abc.abstractmethod
    def state_dict(self) -> dict[str, torch.Tensor]:
        """All learned state as tensors."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...

    def at_stage(self, data: RecDataset, stage: str) -> None:
        """Called before a stage is ranked; a model whose scores depend on where that stage's histories end
        (recent popularity) adapts here. Default: nothing."""

    def extra_metrics(self, data: RecDataset, model_name: str, variant: str) -> pl.DataFrame | None:
        """Rows of protocols beside ranking (METRICS_SCHEMA), e.g. mmrec_dlrm's pointwise one. Default: none."""
        return None

    def report_facts(self, histories: dict[str, np.ndarray]) -> dict:
        """Facts its report section needs that only the trained model knows, for the report's test users
        ({user index: input history}); saved beside the checkpoint with its top items (evaluation/report.py
        `report_facts`), so the report never loads a checkpoint. Default: none."""
        return {}

    def required_feature_cache(self) -> FeatureCacheFolder:
        if self.feature_cache is None:
            raise ValueError(f"{self.name}: reads the lake's feature cache; build it with one "
                             "(`runner.build(..., feature_cache=lake.feature_cache())`, or set `model.feature_cache`)")
        return self.feature_cache

    def extra_config(self) -> dict:
        """Shapes and other plain facts `load` needs before `load_state_dict`."""
        return {"n_items": self.n_items}

    def apply_extra_config(self, extra: dict) -> None:
        self.n_items = extra["n_items"]

    def save(self, directory: Path, tuning: dict | None = None) -> Path:
        """The checkpoint (`storage.Checkpoint`) in `directory`, a local folder or a remote UPath. `tuning`: the
        runner's validation grid and choice, kept beside the config it produced."""
        meta = {"model": self.name, "config": dataclasses.asdict(self.config), "extra": self.extra_config()}
        if tuning is not None:
            meta["tuning"] = tuning
        return Checkpoint(directory).write(self.state_dict(), meta)

    @classmethod
    def load(cls, directory: Path, sources: ModelSources | None = None,
             feature_cache: FeatureCacheFolder | None = None) -> Recommender:
        checkpoint = Checkpoint(directory)
        try:  # a corrupt file cannot be remade here: it is moved aside and the error says how to retrain
            meta = checkpoint.read_config()
            if meta["model"] != cls.name:
                raise ValueError(f"{checkpoint.path} holds a '{meta['model']}' checkpoint, not '{cls.name}'")
            state = checkpoint.read_weights(meta)
        except CorruptFileError as e:
            raise e.moved_aside(f"re-materialize the '{cls.name}' asset to train it again") from e
        model = cls(cls.Config(**meta["config"]))
        model.sources, model.feature_cache = sources or model.sources, feature_cache
        model.apply_extra_config(meta["extra"])
        model.load_state_dict(state)
        return model


def history_csr(history: list[np.ndarray], n_items: int) -> sp.csr_matrix:
    """Binary sparse [len(history), n_items] float32 matrix of the items in each user's history (repeats count
    once), columns sorted within each row."""
    rows = np.repeat(np.arange(len(history)), [len(h) for h in history])
    cols = np.concatenate(history).astype(np.int64) if history else np.zeros(0, dtype=np.int64)
    m = sp.csr_matrix((np.ones(len(cols), dtype=np.float32), (rows, cols)), shape=(len(history), n_items))
    m.sum_duplicates()  # also sorts the column indices
    m.data[:] = 1.0
    return m


def history_matrix(history: list[np.ndarray], n_items: int) -> torch.Tensor:
    """Binary dense [len(history), n_items] matrix of the items in each user's history."""
    return torch.from_numpy(history_csr(history, n_items).toarray())
