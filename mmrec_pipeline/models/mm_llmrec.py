"""MM-GPT2Rec ("Enhancing Product Recommendations with Multi-Modal LLMs", Olaniyi 2025): a causal language
model whose input tokens are items. Each item's embedding is a learned projection of its cached text and image
vectors (optionally plus a learned id embedding); a user's history enters the backbone as `inputs_embeds`, and
the hidden state at every position is scored against the same projected item table (tied output), trained with
next-item cross-entropy over the whole catalog. The paper's code generated text and counted end-of-sequence
tokens as hits; this implementation ranks the catalog and is measured by the shared evaluator.

Backbones (`backbone`):
- `gpt2-small-scratch`: a small GPT-2 configuration (n_layer/n_embd/n_head) trained from scratch, fully (no
  LoRA: there are no pretrained weights to keep). The fast CPU choice and the `demo` profile.
- `smollm2`: the packaged SmolLM2-135M-Instruct (offline pretrained default), loaded through the features'
  `summarizer` loader, fine-tuned with LoRA.
- `gpt2-medium` (the paper's, hub id `openai-community/gpt2-medium`) or any Hugging Face causal LM id or local
  `save_pretrained` folder: LoRA through peft; `quantization="4bit"` = QLoRA (bitsandbytes NF4 base, CUDA only;
  on CPU it falls back to full precision and logs why). Always `trust_remote_code=False` and safetensors only.
The backbone's own token embeddings and LM head are never used.

Variants (`variant`, the paper's ablation extended): `id` (id embedding only), `text`, `image`, `concat` (the
paper: [text; image] -> linear -> hidden), `weighted` (learned softmax mix of projected text and image),
`attention` (one self-attention layer across the modality tokens of an item, mean-pooled).

Profiles (`profile`) fill every field left at None: `demo` (scratch GPT-2; all six variants take ~150 CPU
seconds on `sample`), `pretrained` (SmolLM2 + LoRA; ~80 tokens/s on 2 CPU cores, so a GPU), `paper` (gpt2-medium
+ LoRA r16, sequence length 12, batch 16 x 2 accumulation, 20 epochs, patience 5, as in the authors' config; for
a GPU). Every fit early-stops on validation NDCG@10 (the shared `Validator`).

Choices beyond the paper, and why:
- Feature vectors are standardised per dimension, then projected; the item embedding ends in a LayerNorm (inputs
  at the scale a pretrained backbone expects), and logits are divided by sqrt(hidden): with both sides
  layer-normed the raw dot products start at +-hidden, and the first epochs went into shrinking them.
- The paper reduces ResNet18's 512-d image vector to 256 before concatenating; a linear map followed by the
  linear projection is still one linear map, so image vectors go straight into the concatenation.
- Histories are right-padded: every row starts at position 0, so causal attention needs no padding mask and
  no position ids, for GPT-2's learned and Llama's rotary positions alike.

A variant whose feature is missing (e.g. no image embeddings) raises `MissingFeature` naming the feature asset to
materialize; `runnable_variants` lets a caller skip such variants with a logged reason instead.

Checkpoint: the projected item table, the item encoder, and for a scratch backbone all of its weights, for a
pretrained one only the LoRA weights plus the backbone's source and fingerprint (the base is re-read on load).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmrec_pipeline import backbones
from mmrec_pipeline.compute import Compute, logger
from mmrec_pipeline.evaluation.sections import mm_llmrec as mm_llmrec_section
from mmrec_pipeline.models.base import ItemFeatures, MissingFeature, PaperClaim, Recommender
from mmrec_pipeline.models.training import (
    IGNORE,
    Trainer,
    TrainSettings,
    length_batches,
    pad_histories,
    seed_everything,
    windows,
)
from mmrec_pipeline.storage import FeatureCacheFolder
from mmrec_pipeline.weights import ModelSources

# The ablation, one variant per representation of the items: {variant: config overrides}.
VARIANTS = {v: {"variant": v} for v in ("id", "text", "image", "concat", "weighted", "attention")}
MODALITIES = {"id": (), "text": ("text",), "image": ("image",), "concat": ("text", "image"),
              "weighted": ("text", "image"), "attention": ("text", "image")}
FEATURE_ASSET = {"text": "text_embeddings", "image": "image_embeddings"}
SCRATCH = "gpt2-small-scratch"
HUB_IDS = {"gpt2-medium": "openai-community/gpt2-medium", "gpt2": "openai-community/gpt2"}
# LoRA targets when `lora_targets="auto"`: attention and MLP projections, GPT-2's Conv1D names or the
# Llama-style names most causal LMs use (SmolLM2, Qwen, Mistral; OPT's out_proj/fc1/fc2); those present are used.
LORA_TARGETS = {"gpt2": ["c_attn", "c_proj", "c_fc"],
                "default": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                            "out_proj", "fc1", "fc2"]}

# What the three profiles share: features with their fallbacks, AdamW and the early-stopping loop.
_SHARED = {"text_feature": "sbert_text|gpt2_bpe", "image_feature": "resnet18|efficientnet_lite0",
           "weight_decay": 0.01, "max_grad_norm": 1.0, "epochs": 20, "eval_every": 1}
_LORA = {"lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "lora_targets": "auto"}

PROFILES: dict[str, dict] = {
    # Scratch GPT-2 (2 layers x 64), small enough to train every variant on a CPU within `make demo`
    # (benchmarks/results/mm_llmrec.json). Small batches (more steps per epoch) and strong dropout suited the
    # ~22k training interactions best.
    "demo": {
        **_SHARED, "backbone": SCRATCH, "n_layer": 2, "n_embd": 64, "n_head": 2, "dropout": 0.4, "use_id": True,
        "max_len": 50, "batch_size": 32, "grad_accum": 1, "lr": 2e-3, "warmup_steps": 20, "patience": 3,
        "quantization": "none"},
    # SmolLM2-135M-Instruct (packaged, the offline pretrained default), LoRA on attention + MLP; meant for a GPU.
    "pretrained": {
        **_SHARED, **_LORA, "backbone": "smollm2", "dropout": 0.1, "use_id": True,
        "max_len": 50, "batch_size": 64, "grad_accum": 1, "lr": 5e-4, "warmup_steps": 100, "patience": 3},
    # The authors' configs/train_config.json: gpt2-medium, LoRA rank 16, sequence length 12, batch 16 with 2-step
    # gradient accumulation, weight decay 0.01, grad-norm 1.0, 200 warm-up steps, 20 epochs, patience 5; text =
    # GPT-2 BPE vectors, image = ResNet18. Their lr (1e-5) and lora_alpha (1.0, a 1/16 scaling) barely move the
    # freshly initialised projections, so alpha = 2r and lr 1e-4 here. For a GPU.
    "paper": {
        **_SHARED, **_LORA, "backbone": "gpt2-medium", "dropout": 0.1, "use_id": False,
        "text_feature": "gpt2_bpe|sbert_text",
        "max_len": 12, "batch_size": 16, "grad_accum": 2, "lr": 1e-4, "warmup_steps": 200, "patience": 5},
}



@dataclasses.dataclass
class MMLLMRecConfig:
    """Fields left at None come from `PROFILES[profile]` (resolved once, so a checkpoint stores real values)."""

    variant: str = "concat"  # id | text | image | concat | weighted | attention
    profile: str = "demo"  # demo | pretrained | paper
    backbone: str | None = None  # gpt2-small-scratch | smollm2 | gpt2-medium | HF causal LM id | local folder
    n_layer: int | None = None  # scratch GPT-2 shape
    n_embd: int | None = None
    n_head: int | None = None
    dropout: float | None = None  # scratch GPT-2 dropouts and item-embedding dropout
    use_id: bool | None = None  # add a learned id embedding (zero-initialised) to the modality variants
    text_feature: str | None = None  # first present of "a|b" in the text_embeddings columns
    image_feature: str | None = None  # first present of "a|b" in the image_embeddings columns
    lora_r: int | None = None  # pretrained backbones only
    lora_alpha: int | None = None
    lora_dropout: float | None = None
    lora_targets: str | None = None  # "auto" (by model family) or comma-separated module names
    quantization: str | None = None  # none | 8bit | 4bit (QLoRA); None = the Compute's setting
    gradient_checkpointing: bool = False  # trades compute for memory on large backbones
    max_len: int | None = None  # most recent items read
    batch_size: int | None = None  # windows per step
    grad_accum: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    warmup_steps: int | None = None  # linear warm-up, then constant
    max_grad_norm: float | None = None
    epochs: int | None = None  # upper bound; early stopping on valid NDCG@10 usually ends sooner
    patience: int | None = None
    eval_every: int | None = None
    seed: int = 0

    def resolved(self) -> MMLLMRecConfig:
        if self.profile not in PROFILES:
            raise ValueError(f"mm_llmrec: unknown profile '{self.profile}'; known: {', '.join(PROFILES)}")
        if self.variant not in VARIANTS:
            raise ValueError(f"mm_llmrec: unknown variant '{self.variant}'; known: {', '.join(VARIANTS)}")
        defaults = PROFILES[self.profile]
        fill = {f.name: defaults[f.name] for f in dataclasses.fields(self)
                if getattr(self, f.name) is None and f.name in defaults}
        return dataclasses.replace(self, **fill)


# ------------------------------------------------------------------------------------------------------
# Item features -> item embedding table


def pick_feature(features: ItemFeatures, choices: str) -> str | None:
    """The first of "a|b|c" that `features` holds."""
    return next((c for c in choices.split("|") if c and features.get(c) is not None), None)


def feature_names(config: MMLLMRecConfig, features: ItemFeatures) -> dict[str, str]:
    """{modality: feature column} for the variant, or `MissingFeature` naming the asset to materialize."""
    out = {}
    for m in MODALITIES[config.variant]:
        choices = config.text_feature if m == "text" else config.image_feature
        name = pick_feature(features, choices)
        if name is None:
            raise MissingFeature(
                f"mm_llmrec/{config.variant} needs a {m} feature (one of {choices.replace('|', ', ')}) and this "
                f"dataset has none: materialize the `{FEATURE_ASSET[m]}` asset for it (a dataset without {m}s "
                f"cannot run this variant; skip it).")
        out[m] = name
    return out


def runnable_variants(variants: dict[str, dict], features: ItemFeatures, dataset_overrides: dict | None = None,
                      log=None) -> dict[str, dict]:
    """The registry variants whose features are present; the others are logged with the reason and left out."""
    keep = {}
    for name, overrides in variants.items():
        cfg = MMLLMRecConfig(**{**overrides, **(dataset_overrides or {})}).resolved()
        try:
            feature_names(cfg, features)
            keep[name] = overrides
        except MissingFeature as e:
            logger(log).warning(f"skipping {e}")
    return keep


class ItemEncoder(nn.Module):
    """Projects each item's (standardised) modality vectors to the backbone's hidden size and fuses them."""

    def __init__(self, variant: str, n_items: int, hidden: int, dims: dict[str, int], use_id: bool,
                 dropout: float):
        super().__init__()
        self.variant, self.mods = variant, MODALITIES[variant]
        # A learned stand-in (in feature space) for items that lack a modality's vector.
        self.missing = nn.ParameterDict({m: nn.Parameter(torch.zeros(dims[m])) for m in self.mods})
        if variant == "concat":  # the paper: [text; image] -> one linear map to the hidden size
            self.proj = nn.ModuleDict({"concat": nn.Linear(sum(dims[m] for m in self.mods), hidden)})
        else:
            self.proj = nn.ModuleDict({m: nn.Linear(dims[m], hidden) for m in self.mods})
        if variant == "weighted":
            self.mix = nn.Parameter(torch.zeros(len(self.mods)))  # softmax weights, start at 50/50
        if variant == "attention":
            heads = 4 if hidden % 4 == 0 else 1
            self.type_emb = nn.Parameter(torch.randn(len(self.mods), hidden) * 0.02)
            self.attn = nn.MultiheadAttention(hidden, heads, batch_first=True)
            self.attn_norm = nn.LayerNorm(hidden)
        self.id_emb = None
        if variant == "id" or use_id:
            self.id_emb = nn.Parameter(torch.zeros(n_items, hidden))
            if variant == "id":  # the only signal: random init (zero would make all items identical)
                nn.init.normal_(self.id_emb, std=0.02)
            # otherwise zero: every item starts from its content embedding; the id part learns what content misses
        self.norm = nn.LayerNorm(hidden)  # keeps inputs at the scale a (pre-trained) backbone expects
        self.drop = nn.Dropout(dropout)

    def forward(self, feats: dict[str, torch.Tensor], present: dict[str, torch.Tensor]) -> torch.Tensor:
        x = {m: torch.where(present[m][:, None], feats[m], self.missing[m]) for m in self.mods}
        if self.variant == "id":
            e = self.id_emb
        elif self.variant == "concat":
            e = self.proj["concat"](torch.cat([x[m] for m in self.mods], dim=1))
        elif self.variant == "weighted":
            w = torch.softmax(self.mix, 0)
            e = sum(w[i] * self.proj[m](x[m]) for i, m in enumerate(self.mods))
        elif self.variant == "attention":  # each modality token attends to the others; mean-pool
            tokens = torch.stack([self.proj[m](x[m]) for m in self.mods], dim=1) + self.type_emb
            tokens = self.attn_norm(tokens + self.attn(tokens, tokens, tokens, need_weights=False)[0])
            e = tokens.mean(1)
        else:
            e = self.proj[self.mods[0]](x[self.mods[0]])
        if self.id_emb is not None and self.variant != "id":
            e = e + self.id_emb
        return self.norm(e)

    def mix_weights(self) -> dict[str, float] | None:
        if self.variant != "weighted":
            return None
        return dict(zip(self.mods, torch.softmax(self.mix.detach(), 0).tolist()))


# ------------------------------------------------------------------------------------------------------
# Backbones


def scratch_backbone(cfg: MMLLMRecConfig) -> nn.Module:
    from transformers import GPT2Config, GPT2Model

    # vocab_size=1: the token embedding exists in GPT2Model but is never read (inputs_embeds only).
    conf = GPT2Config(vocab_size=1, bos_token_id=0, eos_token_id=0, n_positions=cfg.max_len, n_embd=cfg.n_embd,
                      n_layer=cfg.n_layer, n_head=cfg.n_head, resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout,
                      attn_pdrop=0.0)  # attention-matrix dropout costs ~20% of a CPU step and did not help
    return GPT2Model(conf)


def backbone_source(name: str, sources: ModelSources) -> str:
    """A local folder/file, or a Hugging Face id (read from the local cache unless downloads are allowed)."""
    if name == "smollm2":
        return sources.resolve("summarizer")
    from mmrec_pipeline.weights import backbone_source as local_or_hub

    return local_or_hub(name, HUB_IDS, "mm_llmrec")


def fingerprint(source: str) -> str:
    """File names and sizes of a local backbone (so a checkpoint notices different base weights)."""
    path = Path(source)
    if not path.exists():
        return source
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    return ";".join(f"{f.name}:{f.stat().st_size}" for f in files if f.suffix in (".safetensors", ".gguf", ".json"))


def load_causal_lm(cfg: MMLLMRecConfig, source: str, sources: ModelSources, compute: Compute, quantization: str,
                   feature_cache: Callable[[], FeatureCacheFolder]):
    """The pretrained causal LM behind `source` (backbones.py: safetensors only, no remote code); SmolLM2 through
    the features' GGUF loader, which keeps its converted weights by `feature_cache()`."""
    import transformers

    if cfg.backbone == "smollm2":
        from mmrec_pipeline.features.summaries import load_summarizer_model  # the features' GGUF loader

        return load_summarizer_model(sources, compute, feature_cache())
    kwargs = backbones.quantization_kwargs(quantization, compute, double_quant=True)
    if quantization == "none" and compute.torch_device.type == "cuda":
        kwargs["dtype"] = compute.torch_dtype
    return backbones.from_pretrained(transformers.AutoModelForCausalLM, source, sources,
                                     f"mm_llmrec ({cfg.backbone})", **kwargs)


def effective_quantization(cfg: MMLLMRecConfig, compute: Compute, log=None) -> str:
    wanted = cfg.quantization if cfg.quantization is not None else compute.quantization
    if wanted == "none":
        return "none"
    if cfg.backbone == SCRATCH:
        logger(log).info(f"mm_llmrec: {wanted} quantization ignored: the scratch backbone is trained fully")
        return "none"
    if cfg.backbone == "smollm2":
        logger(log).info(f"mm_llmrec: {wanted} quantization ignored for smollm2: 135M parameters fit any GPU, and "
                         f"the packaged-weights loader (features.summaries) loads it unquantized")
        return "none"
    if compute.torch_device.type != "cuda":
        logger(log).info(f"mm_llmrec: {wanted} quantization (QLoRA) needs a CUDA device (bitsandbytes); "
                   f"training the LoRA adapters on a full-precision base on {compute.torch_device} instead")
        return "none"
    return wanted


def lora_backbone(cfg: MMLLMRecConfig, lm, quantization: str, log=None) -> nn.Module:
    """The base model of `lm` (no LM head) with LoRA adapters; everything else frozen."""
    lm = backbones.prepare_for_training(lm, quantization != "none", cfg.gradient_checkpointing)
    base = lm.base_model  # e.g. GPT2Model / LlamaModel: final hidden states, no LM head
    architecture = "gpt2" if base.config.model_type == "gpt2" else "default"
    targets = LORA_TARGETS[architecture] if cfg.lora_targets == "auto" else \
        [t.strip() for t in cfg.lora_targets.split(",") if t.strip()]
    present = {n.rsplit(".", 1)[-1] for n, _ in base.named_modules()}
    if not set(targets) & present:
        raise ValueError(f"mm_llmrec: none of the LoRA targets {targets} is a module of {type(base).__name__}; "
                         f"set lora_targets (e.g. 'q_proj,v_proj')")
    targets = [t for t in targets if t in present]
    model = backbones.with_lora(base, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, targets,
                                fan_in_fan_out=architecture == "gpt2")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger(log).info(f"mm_llmrec: LoRA r={cfg.lora_r} alpha={cfg.lora_alpha} on {targets}: "
               f"{trainable:,} of {total:,} backbone parameters trainable")
    return model


# ------------------------------------------------------------------------------------------------------
# The recommender


class MMLLMRec(Recommender):
    name = "mm_llmrec"
    Config = MMLLMRecConfig
    variants = VARIANTS
    feature_assets = ("image_embeddings", "text_embeddings")
    long_running = True
    pool = "gpu"
    paper = PaperClaim(
        system="MM-GPT2Rec (Olaniyi, ISIR-eCom 2025)", source="000_52c1cc30431d2aa4.txt",
        claim="HR@5 = 0.833, 83% above the multimodal baselines (VBPR, DeepCoNN, SASRec: HR@5 ≈ 0.456)",
        protocol="Amazon (4 categories), users with ≥ 5 interactions, 75/15/10 temporal split; next items generated "
                 "as text by GPT-2, end-of-sequence tokens counted as hits; the baselines' rows were random tensors",
        metric="hr", k=5, value=0.833, variant="concat",
        reproduce={"100 sampled negatives per user (a candidate list, as generative scoring effectively uses)":
                   "{protocol}+sampled:100"},
        baselines=("vbpr", "deepconn", "sasrec"), protocol_name="temporal 75/15/10, generated text, EOS counted as hits",
        notes="End-of-sequence-as-hit is not reproduced: it is an artefact of the authors' generation code, not a "
              "ranking protocol; the sampled row shows how far a candidate protocol alone inflates HR@5.")

    report_section = staticmethod(mm_llmrec_section.section)

    @classmethod
    def search_space_for(cls, config) -> dict[str, tuple]:
        # demo: six variants already; a grid would double `make demo`'s longest model step. The GPU profiles
        # tune the learning rate around the profile's value.
        return {"demo": {}, "pretrained": {"lr": (2.5e-4, 5e-4)},
                "paper": {"lr": (5e-5, 1e-4)}}.get(config.resolved().profile, {})

    def __init__(self, config=None, **overrides):
        super().__init__(config, **overrides)
        self.config = self.config.resolved()
        self.compute = Compute(device="cpu")
        self.backbone: nn.Module | None = None
        self.encoder: ItemEncoder | None = None
        self.item_table: torch.Tensor | None = None  # [n_items, hidden], the fitted encoder's output
        self.hidden = 0
        self.dims: dict[str, int] = {}
        self.features_used: dict[str, str] = {}
        self.source, self.quant = "", "none"
        self.norm_stats: dict[str, torch.Tensor] = {}

    @property
    def pretrained(self) -> bool:
        return self.config.backbone != SCRATCH

    @property
    def pad(self) -> int:
        return self.n_items

    # --- building ---------------------------------------------------------------------------------

    def build(self, compute: Compute, log=None) -> None:
        cfg = self.config
        if self.pretrained:
            self.source = self.source or backbone_source(cfg.backbone, self.sources)
            lm = load_causal_lm(cfg, self.source, self.sources, compute, self.quant, self.required_feature_cache)
            self.backbone = lora_backbone(cfg, lm, self.quant, log)
        else:
            self.backbone = scratch_backbone(cfg)
        self.hidden = self.backbone.config.hidden_size
        self.encoder = ItemEncoder(cfg.variant, self.n_items, self.hidden, self.dims, cfg.use_id, cfg.dropout)
        device = compute.torch_device
        if self.quant == "none":
            self.backbone.to(device)
        self.encoder.to(device)

    def prepare_features(self, features: ItemFeatures) -> tuple[dict, dict]:
        """Standardised modality matrices (per dimension, over the items that have the feature) and masks."""
        feats, present = {}, {}
        for m, name in self.features_used.items():
            x = torch.as_tensor(features.vectors[name], dtype=torch.float32)
            p = torch.as_tensor(features.present.get(name, np.ones(len(x), dtype=bool)), dtype=torch.bool)
            mean, std = x[p].mean(0), x[p].std(0).clamp_min(1e-6)
            self.norm_stats[m] = torch.stack([mean, std])
            feats[m], present[m] = (x - mean) / std, p
        return feats, present

    # --- training -----------------------------------------------------------------------------------

    def prepare(self, n_items: int, features: ItemFeatures, compute: Compute, log=None) -> None:
        """Pick the features, build backbone and item encoder on the device, stage the standardised features."""
        self.n_items, self.compute = n_items, compute
        self.features_used = feature_names(self.config, features)
        self.dims = {m: features.vectors[n].shape[1] for m, n in self.features_used.items()}
        self.quant = effective_quantization(self.config, compute, log)
        self.build(compute, log)
        feats, present = self.prepare_features(features)
        self._feats = {m: v.to(compute.torch_device) for m, v in feats.items()}
        self._present = {m: v.to(compute.torch_device) for m, v in present.items()}
        self.item_table = None

    def fit(self, data, features, compute, log=None) -> dict:
        cfg = self.config
        seed_everything(cfg.seed)
        self.prepare(data.n_items, features, compute, log)
        # Right-padded windows of max_len + 1 items overlapping by one: every transition is a target once per epoch.
        w, _ = windows(data.sequences("train"), cfg.max_len + 1, cfg.max_len, self.pad, right=True)
        self._windows = torch.from_numpy(w)
        self._lengths = (self._windows != self.pad).sum(1)
        if len(w) == 0:
            raise ValueError("mm_llmrec: no user has two or more training interactions to learn from")
        logger(log).info(
            f"mm_llmrec/{cfg.variant}: backbone {cfg.backbone} ({'LoRA' if self.pretrained else 'trained fully'}, "
            f"hidden {self.hidden}), features {self.features_used or 'none (ids)'}, {len(w)} windows, "
            f"{int(self._lengths.sum())} tokens/epoch, device {compute.torch_device}, quantization {self.quant}")
        params = [p for p in [*self.backbone.parameters(), *self.encoder.parameters()] if p.requires_grad]
        trainer = Trainer(TrainSettings.of(cfg), compute, log, f"mm_llmrec/{cfg.variant}", unit="tokens")
        report = trainer.fit(self, params, data)
        self.finalize()
        del self._feats, self._present, self._windows, self._lengths
        report.update({"training_windows": len(w), "backbone": cfg.backbone, "backbone_source": self.source or SCRATCH,
                       "quantization": self.quant, "features": self.features_used})
        if self.encoder.mix_weights():
            report["mix_weights"] = self.encoder.mix_weights()
        if compute.torch_device.type == "cuda":
            report["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated(compute.torch_device) / 2**20
        return report

    def train_batches(self, gen: torch.Generator) -> list[torch.Tensor]:
        self.backbone.train()
        self.encoder.train()
        self.item_table = None  # the table follows the encoder while it trains
        return length_batches(self._lengths, self.config.batch_size, gen)

    def batch_loss(self, b: torch.Tensor) -> tuple[torch.Tensor, int]:
        n_max = int(self._lengths[b].max())
        x, y = self._windows[b, : n_max - 1], self._windows[b, 1:n_max].clone()
        y[y == self.pad] = IGNORE
        n = int((y != IGNORE).sum())
        device = self.compute.torch_device
        return self.loss(x.to(device, non_blocking=True), y.to(device, non_blocking=True)), n

    def table(self) -> torch.Tensor:
        """The item embedding table: from the encoder while training, the stored table afterwards."""
        if self.item_table is not None:
            return self.item_table
        return self.encoder(self._feats, self._present)

    def embed(self, x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """Item ids (pad = n_items) -> input embeddings; padding gets a zero vector."""
        padded = torch.cat([table, table.new_zeros(1, table.shape[1])])
        return self.encoder.drop(padded[x]) if self.encoder.training else padded[x]

    def hidden_states(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        # use_cache=False: no key/value cache is built (nothing is generated)
        return self.backbone(inputs_embeds=inputs_embeds.to(self.backbone_dtype()), use_cache=False).last_hidden_state

    def backbone_dtype(self) -> torch.dtype:
        # a bf16 base expects bf16 inputs; LoRA adapters and the item encoder stay float32
        dtypes = [p.dtype for p in self.backbone.parameters() if p.is_floating_point() and not p.requires_grad]
        return dtypes[0] if dtypes and self.compute.torch_device.type == "cuda" else torch.float32

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Next-item cross-entropy over the whole catalog at every position with a target; logits are made only
        at those positions (#targets x catalog, never batch x length x catalog)."""
        table = self.table()
        h = self.hidden_states(self.embed(x, table))
        keep = y != IGNORE
        return F.cross_entropy(self.logits(h[keep], table), y[keep])

    def logits(self, h: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        # Both sides are layer-normed (norm ~ sqrt(hidden)), so the raw dot product starts at +-hidden and the
        # first epochs are spent shrinking it; 1/sqrt(hidden) starts the softmax in a sane range.
        return (h.float() @ table.float().T) / self.hidden ** 0.5

    def train_state(self) -> dict[str, torch.Tensor]:
        """The trainable tensors only (LoRA adapters, not a frozen base): what early stopping keeps."""
        named = {f"backbone.{n}": p for n, p in self.backbone.named_parameters() if p.requires_grad}
        named.update({f"encoder.{n}": p for n, p in self.encoder.named_parameters()})
        return named

    def load_train_state(self, state: dict[str, torch.Tensor]) -> None:
        params = self.train_state()
        with torch.no_grad():
            for k, v in state.items():
                params[k].copy_(v)

    @torch.no_grad()
    def finalize(self) -> None:
        """Fix the item table (eval mode) so scoring needs no features."""
        self.backbone.eval()
        self.encoder.eval()
        self.item_table = self.encoder(self._feats, self._present).detach()

    # --- scoring ------------------------------------------------------------------------------------

    @torch.no_grad()
    def score(self, users, history) -> torch.Tensor:
        device = self.compute.torch_device
        training = self.encoder.training
        self.backbone.eval()
        self.encoder.eval()
        table = self.table().detach()
        x = pad_histories(history, self.config.max_len, self.pad, right=True)
        lengths = (x != self.pad).sum(1)
        x, lengths = x[:, : max(int(lengths.max()), 1)].to(device), lengths.to(device)
        with self.compute.autocast():
            h = self.hidden_states(self.embed(x, table))
        last = h[torch.arange(len(x), device=device), (lengths - 1).clamp_min(0)]
        scores = self.logits(last, table)
        if training:  # called by the validator mid-training: restore train mode
            self.backbone.train()
            self.encoder.train()
        return scores.cpu()

    # --- checkpoint -----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {"item_table": self.item_table}
        state.update({f"encoder.{k}": v for k, v in self.encoder.state_dict().items()})
        state.update({f"norm.{m}": v for m, v in self.norm_stats.items()})
        if self.pretrained:
            from peft import get_peft_model_state_dict

            state.update({f"lora.{k}": v for k, v in get_peft_model_state_dict(self.backbone).items()})
        else:
            state.update({f"backbone.{k}": v for k, v in self.backbone.state_dict().items()})
        return {k: v.detach().float() if v.is_floating_point() else v for k, v in state.items()}

    def extra_config(self) -> dict:
        return {"n_items": self.n_items, "dims": self.dims, "features": self.features_used,
                "backbone_source": self.source, "backbone_fingerprint": fingerprint(self.source) if self.source else "",
                "quantization": self.quant}

    def apply_extra_config(self, extra: dict) -> None:
        self.n_items, self.dims, self.features_used = extra["n_items"], extra["dims"], extra["features"]
        self.source, self.quant = extra["backbone_source"], extra["quantization"]
        if self.source and extra.get("backbone_fingerprint") not in ("", fingerprint(self.source)):
            logging.getLogger("mmrec_pipeline").warning(
                f"mm_llmrec: the backbone at {self.source} differs from the one this checkpoint was trained on")

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        compute = Compute(device="cuda" if self.quant != "none" else "auto")
        self.compute = compute
        self.build(compute)
        device = compute.torch_device
        self.encoder.load_state_dict({k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")})
        self.norm_stats = {k[len("norm."):]: v for k, v in state.items() if k.startswith("norm.")}
        if self.pretrained:
            from peft import set_peft_model_state_dict

            result = set_peft_model_state_dict(
                self.backbone, {k[len("lora."):]: v for k, v in state.items() if k.startswith("lora.")})
            if getattr(result, "unexpected_keys", None):
                raise ValueError(f"mm_llmrec: LoRA weights do not fit the backbone: {result.unexpected_keys[:5]}")
        else:
            self.backbone.load_state_dict({k[len("backbone."):]: v for k, v in state.items()
                                           if k.startswith("backbone.")})
        self.item_table = state["item_table"].to(device)
        self.backbone.eval()
        self.encoder.eval()

