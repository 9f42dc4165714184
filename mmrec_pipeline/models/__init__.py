"""The model registry: asset name -> Recommender class, in groups (`MODEL_GROUPS`; the report's leaderboard groups
its rows by them).

Each entry becomes one Dagster asset per dataset that trains and evaluates all its variants; the class declares
everything the asset needs (`variants`, `feature_assets`, `pool`, `kind`, `report_section`: models/base.py). Adding
a model is its module plus one line here.

A model outside the package gets the same asset, tuning, checks, metrics rows and report section: name it in the
environment variable `MMREC_MODELS` (`name=module:Class`, comma-separated; read when this module is imported, so
the code location, `mmrec` and workers must all see it), or call `register(name, cls)` before the Definitions are
built. Either lands in the `custom` group.
"""

import importlib
import os
from collections.abc import Iterator, Mapping

from mmrec_pipeline.models.base import Recommender
from mmrec_pipeline.models.bert4rec import BERT4Rec
from mmrec_pipeline.models.bpr_mf import BPRMF
from mmrec_pipeline.models.content import ContentBased
from mmrec_pipeline.models.deepconn import DeepCoNN
from mmrec_pipeline.models.ease import EASE
from mmrec_pipeline.models.gru4rec import GRU4Rec
from mmrec_pipeline.models.hybrid import Hybrid
from mmrec_pipeline.models.item_knn import ItemKNN
from mmrec_pipeline.models.lvlm_retrieval import LVLMRetrieval
from mmrec_pipeline.models.mm_llmrec import MMLLMRec
from mmrec_pipeline.models.mmrec_dlrm import MMRecDLRM
from mmrec_pipeline.models.popularity import Popularity
from mmrec_pipeline.models.sasrec import SASRec
from mmrec_pipeline.models.vbpr import VBPR
from mmrec_pipeline.models.vq_bart import VQBart

CLASSIC = {"popularity": Popularity, "item_knn": ItemKNN, "bpr_mf": BPRMF, "ease": EASE, "content": ContentBased,
           "hybrid": Hybrid}

# Sequence models read each user's history in time order (sequential.py). Variants stay few: `make demo`
# trains all of them on `sample` within its time budget.
SEQUENTIAL = {"gru4rec": GRU4Rec, "sasrec": SASRec, "bert4rec": BERT4Rec}

# MM-GPT2Rec (mm_llmrec.py): the paper's ablation, extended. The profile (demo | pretrained | paper) comes
# from the dataset's `models: {mm_llmrec: {profile: ...}}` overrides; demo by default.
MM_LLMREC = {"mm_llmrec": MMLLMRec}

# The LVLM paper's retrieval system (lvlm_retrieval.py): twelve item-representation strategies, one variant each,
# all ranked on the same users and full-catalog pool. A variant whose feature is missing (no images, no captions)
# cannot fit: `lvlm_retrieval.check_features` names the feature asset and column.
LVLM = {"lvlm_retrieval": LVLMRetrieval}

# The Columbia paper's VQGAN + BART system (vq_bart.py): BART generates the next item's text from the history (text,
# plus VQ image codes in `image`), FAISS retrieves the nearest catalog items; BERTScore is reported beside ranking.
VQ_BART = {"vq_bart": VQBart}

# MMREC (mmrec_dlrm.py): TorchRec DLRM over review summaries, captions and title/description vectors. The class
# holds the demo grid (six variants); the paper's full 12 (modalities x losses) run in benchmarks/mmrec_dlrm.py.
MMREC_DLRM = {"mmrec_dlrm": MMRecDLRM}

# The MM-GPT2Rec paper's multimodal baselines, trained here for real (its table filled them with random tensors):
# VBPR reads the image vectors, DeepCoNN the training rows' review text.
BASELINES = {"vbpr": VBPR, "deepconn": DeepCoNN}

# Models defined outside the package (`MMREC_MODELS`, `register`).
CUSTOM: dict[str, type[Recommender]] = {}

# Every model asset, in groups: the report groups its leaderboard by these.
MODEL_GROUPS = {"classic": CLASSIC, "sequential": SEQUENTIAL, "mm_llmrec (MM-GPT2Rec)": MM_LLMREC,
                "lvlm_retrieval": LVLM, "vq_bart (VQGAN + BART)": VQ_BART, "mmrec_dlrm (MMREC)": MMREC_DLRM,
                "paper baselines": BASELINES, "custom": CUSTOM}


class _AllModels(Mapping):
    """Every registered model by asset name, read from `MODEL_GROUPS` on each access, so an entry added to a group
    (or a group added) is seen everywhere, as assets, serving and automation look models up here."""

    def __getitem__(self, name: str) -> type[Recommender]:
        for group in MODEL_GROUPS.values():
            if name in group:
                return group[name]
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter({name: None for group in MODEL_GROUPS.values() for name in group})

    def __len__(self) -> int:
        return sum(1 for _ in self)


MODELS: Mapping[str, type[Recommender]] = _AllModels()


MODELS_ENV = "MMREC_MODELS"


def register(name: str, cls: type[Recommender]) -> None:
    """Add a model defined anywhere as the asset `name` (its class's `name`: the checkpoint's model name)."""
    if not (isinstance(cls, type) and issubclass(cls, Recommender)):
        raise TypeError(f"model '{name}': {cls!r} is not a Recommender subclass (mmrec_pipeline.models.base)")
    if getattr(cls, "name", None) != name:
        raise ValueError(f"model '{name}': the class {cls.__qualname__} names itself "
                         f"'{getattr(cls, 'name', None)}'; the registry name and `name` must be the same")
    if name in MODELS and MODELS[name] is not cls:
        raise ValueError(f"model '{name}' is already registered ({MODELS[name].__module__}); pick another name")
    CUSTOM[name] = cls


def load_class(reference: str) -> type:
    """The class `module:Class` names (the module importable from sys.path)."""
    module, sep, attr = reference.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"'{reference}' is not of the form module:Class")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot load '{reference}': {e}") from e


def register_from(value: str, source: str = MODELS_ENV) -> None:
    """Register every `name=module:Class` of a comma-separated list (the `MMREC_MODELS` syntax)."""
    for entry in filter(None, (e.strip() for e in value.split(","))):
        name, sep, reference = entry.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"{source}: entry '{entry}' is not of the form name=module:Class")
        try:
            register(name.strip(), load_class(reference.strip()))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source}: entry '{entry}': {e}") from e


register_from(os.environ.get(MODELS_ENV, ""))
