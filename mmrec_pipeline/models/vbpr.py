"""VBPR (He & McAuley 2016, as in Cornac): BPR-MF whose items also carry a learned linear projection of their
image vectors, x_ui = b_i + <p_u, q_i> + <θ_u, E f_i> + β'·f_i, trained with the BPR loss on (user, bought item,
sampled other item) triples and early-stopped on validation NDCG@10 (the same loop as `bpr_mf.py`).

Image vectors `f_i` are the dataset's `image_embeddings` (first present of `image_feature`), centred on the catalog
mean and L2-normalised so the projection starts at the factors' scale; items without an image get f_i = 0. Items
never bought in training are still scored through E f_i, so VBPR can rank cold items, unlike BPR-MF. Users are
folded in from their history as in `bpr_mf.py` ([p_u; θ_u] = mean of [q_i; E f_i]), the user vector being chosen
on validation. One of the MM-GPT2Rec paper's baselines, whose table filled them with random tensors.

Checkpoint: the factors, E and β', and the projected item table E f_i and β'·f_i (not the raw image vectors)."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from mmrec_pipeline.models.base import MissingFeature
from mmrec_pipeline.models.bpr_mf import BPRMF, BPRConfig


@dataclasses.dataclass
class VBPRConfig(BPRConfig):
    visual_dim: int = 32  # θ_u and E's output size (Cornac's k2)
    image_feature: str = "resnet18|efficientnet_lite0"  # first present image_embeddings column
    visual_decay: float = 1e-4  # L2 on E and β' per step (Cornac's lambda_e)


# The grid the runner tunes on validation (models/runner.py); two points, as each is a full training run.
SEARCH_SPACE = {"user_vector": ("history", "factor")}


class VBPR(BPRMF):
    name = "vbpr"
    Config = VBPRConfig
    feature_assets = ("image_embeddings",)
    search_space = SEARCH_SPACE

    def __init__(self, config=None, **overrides):
        super().__init__(config, **overrides)
        self.features: torch.Tensor | None = None  # only while fitting
        self.column = ""

    def user_dim(self) -> int:
        return self.config.dim + self.config.visual_dim

    def init_side(self, data, features) -> list[torch.Tensor]:
        choices = self.config.image_feature.split("|")
        images = features.image if features is not None else {}  # the image modality's vectors by column
        column = next((c for c in choices if c in images), None)
        if column is None:
            raise MissingFeature(f"vbpr needs an image vector (one of {', '.join(choices)}) and this dataset has "
                                 "none: materialize the `image_embeddings` asset for it.")
        vectors = torch.from_numpy(images[column]).float()
        present = torch.from_numpy(features.present[column]).bool()
        centred = vectors - vectors[present].mean(0) if present.any() else vectors
        self.features = torch.where(present[:, None], F.normalize(centred, dim=1), torch.zeros_like(vectors))
        self.column = column
        gen = torch.Generator().manual_seed(self.config.seed)
        self.E = (torch.randn(vectors.shape[1], self.config.visual_dim, generator=gen) * 0.1).requires_grad_(True)
        self.beta = torch.zeros(vectors.shape[1], requires_grad=True)
        return [self.E, self.beta]

    def side_penalty(self):
        return self.config.visual_decay * (self.E.pow(2).sum() + self.beta.pow(2).sum())

    def _visual(self, idx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.features is None:  # after fitting or loading: the frozen projected table
            return (self.visual_item, self.visual_bias) if idx is None else (self.visual_item[idx],
                                                                            self.visual_bias[idx])
        f = self.features if idx is None else self.features[idx]
        return f @ self.E, f @ self.beta

    def finish_side(self) -> None:
        with torch.no_grad():
            self.visual_item, self.visual_bias = (t.detach().clone() for t in self._visual())
        self.features = None

    def item_rows(self, idx):
        v, vb = self._visual(idx)
        return torch.cat([self.item_emb(idx), v], 1), self.item_bias[idx] + vb

    def item_table(self):
        v, vb = self._visual()
        return torch.cat([self.item_emb.weight, v], 1), self.item_bias + vb

    def state_dict(self):
        with torch.no_grad():
            v, vb = self._visual()
        return {**super().state_dict(), "E": self.E.data, "beta": self.beta.data, "visual_item": v.detach(),
                "visual_bias": vb.detach()}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.E, self.beta = state["E"].clone(), state["beta"].clone()
        self.visual_item, self.visual_bias = state["visual_item"].clone(), state["visual_bias"].clone()
        self.features = None

    def extra_config(self):
        return {**super().extra_config(), "image_column": self.column}

    def apply_extra_config(self, extra):
        super().apply_extra_config(extra)
        self.column = extra.get("image_column", "")
