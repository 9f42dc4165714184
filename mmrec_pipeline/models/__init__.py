"""The model registry: asset name -> (Recommender class, {variant: config overrides}).

Each entry becomes one Dagster asset per dataset that trains and evaluates all its variants.
"""

from mmrec_pipeline.models.bpr_mf import BPRMF
from mmrec_pipeline.models.content import ContentBased
from mmrec_pipeline.models.ease import EASE
from mmrec_pipeline.models.hybrid import Hybrid
from mmrec_pipeline.models.item_knn import ItemKNN
from mmrec_pipeline.models.popularity import Popularity

CLASSIC = {
    "popularity": (Popularity, {"global": {}, "recent": {"window_days": 30}}),
    "item_knn": (ItemKNN, {"default": {}}),
    "bpr_mf": (BPRMF, {"default": {}}),
    "ease": (EASE, {"default": {}}),
    "content": (ContentBased, {"default": {}}),
    "hybrid": (Hybrid, {"default": {}}),
}
