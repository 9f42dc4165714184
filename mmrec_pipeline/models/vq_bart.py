"""VQ-BART ("Multimodal Product Recommendations via LLMs", Columbia): a BART encoder-decoder reads a user's last
N items (each as its attribute text and, in the `image` variant, its VQ image codes as extra tokens `<img_k>`)
and generates the next item's attribute text; the generated text is embedded with the sentence encoder of
`text_embeddings` (all-MiniLM-L6-v2) and the nearest catalog items come from a FAISS index. The paper reports
only BERTScore of the generated text; here the ranked list goes through the shared evaluator (full catalog), and
the report puts BERTScore beside NDCG (`generation_section`).

Variants (the paper's three): `small_history` (last 5 items, text), `large_history` (last 20, text), `image`
(last 5, text + VQ codes). The paper notes that 256 codes per item exhaust the input, so the 16x16 grid is
reduced to `image_grid` x `image_grid` codes per item (the most frequent code of each block; 4 -> 16 tokens).

Item text: "title. category. attribute values" (from `items`), cut to `max_item_tokens` BPE tokens in the input
and `max_target_tokens` in the target. Catalog vectors = the sentence encoder over the same text, read through
the shared feature cache.

Profiles (`profile`) fill every field left at None:
- `demo`: a small BART (`BartConfig`, 1+1 layers, d_model 64; image codes pooled to 2x2 = 4 tokens per item)
  trained from scratch with GPT-2's byte-level BPE (the packaged `gpt2.tiktoken`), its vocabulary remapped to the
  tokens the catalog uses (small embedding table). Training batches group transitions of similar input length.
- `paper`: `facebook/bart-base` (Hugging Face id or a local save_pretrained folder, see `backbone`) with its own
  tokenizer plus added `<img_k>` tokens, lr 5e-5, AdamW, batch 16 x 4 accumulation = 64; for a GPU.
Every fit early-stops on validation NDCG@10 through the shared `Validator` (generation + retrieval, the same
path as the test ranking).

Ranking (`scorer`): `retrieval` = cosine similarity of the generated text's vector to each catalog item through a
FAISS index (exact `IndexFlatIP` up to `hnsw_above` items, else HNSW over the top `ann_k`, the rest scored -inf);
`likelihood` re-ranks retrieval's top `rerank_k` by the log-likelihood of each candidate's text under the
decoder (the "constrained" scorer), items below keep their retrieval order underneath. Decoding: greedy, or beam
search with `num_beams` > 1. Each distinct generated text is embedded once (the sentence encoder is fixed, so
identical generations across users and epochs share one vector). Not built: the "BART pooled decoder state" query
(the issue's alternative to the sentence encoder).

Checkpoint: BART weights, item token/code tables, the vocabulary map and the catalog vectors (safetensors); the
FAISS index is rebuilt on load (no pickled index).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import polars as pl
import torch

from mmrec_pipeline import backbones
from mmrec_pipeline.compute import Compute, logger
from mmrec_pipeline.data.text import item_texts
from mmrec_pipeline.evaluation.sections import vq_bart as vq_bart_section
from mmrec_pipeline.models.base import ItemFeatures, MissingFeature, Recommender
from mmrec_pipeline.models.training import (
    IGNORE,
    Trainer,
    TrainSettings,
    Validator,
    length_batches,
    pad_histories,
    seed_everything,
)
from mmrec_pipeline.storage import FeatureCacheFolder
from mmrec_pipeline.weights import ModelSources

SCRATCH = "bart-scratch"
HUB_IDS = {"bart-base": "facebook/bart-base"}
VQ_GRID = 16  # vq_codes: 16 x 16 codes per image, row-major (features/vq.py)
PAD, BOS, EOS, SEP, UNK = 0, 1, 2, 3, 4  # special ids of the scratch vocabulary
N_SPECIAL = 5
SBERT_BATCH = 128

_SHARED = {"history": 5, "use_image": False, "image_grid": 4, "decode": "greedy", "num_beams": 1,
           "scorer": "retrieval", "rerank_k": 50, "weight_decay": 0.01, "max_grad_norm": 1.0}
PROFILES: dict[str, dict] = {
    # Sized for `make demo` on CPU: 1+1 layers and 2x2 pooled image codes cost much less than 2+2 layers and
    # 4x4 codes and did as well on validation NDCG@10, within the run-to-run spread; 6 epochs of 4,096
    # examples because validation still rose at epochs 5-6; patience 3 because the curves dip for an epoch or
    # two. The runs behind this: docs/BENCHMARKS.md, "vq_bart" and "Figures behind settings in the code".
    "demo": {**_SHARED, "image_grid": 2, "backbone": SCRATCH, "d_model": 64, "layers": 1, "heads": 4, "ffn": 128,
             "dropout": 0.1, "max_item_tokens": 12, "max_target_tokens": 12, "batch_size": 64, "grad_accum": 1,
             "lr": 3e-3, "warmup_steps": 30, "epochs": 6, "patience": 3, "examples_per_epoch": 4096,
             "valid_users": 300},
    # The paper: pre-trained BART base, lr 5e-5, AdamW, effective batch 64 (4 x 4 x 4 GPUs; 16 x 4 here), 2 epochs
    # (an upper bound here: early stopping on validation).
    "paper": {**_SHARED, "backbone": "bart-base", "d_model": 0, "layers": 0, "heads": 0, "ffn": 0, "dropout": 0.1,
              "max_item_tokens": 32, "max_target_tokens": 32, "batch_size": 16, "grad_accum": 4, "lr": 5e-5,
              "warmup_steps": 100, "epochs": 3, "patience": 1, "examples_per_epoch": 0, "valid_users": 3000},
}
VARIANTS = {"small_history": {"history": 5}, "large_history": {"history": 20},
            "image": {"history": 5, "use_image": True}}


@dataclasses.dataclass
class VQBartConfig:
    """Fields left at None come from `PROFILES[profile]` (resolved once, so a checkpoint stores real values)."""

    profile: str = "demo"  # demo | paper
    backbone: str | None = None  # bart-scratch | bart-base | HF id | local save_pretrained folder
    history: int | None = None  # last N items read
    use_image: bool | None = None  # add each item's VQ codes as <img_k> tokens
    image_grid: int | None = None  # codes per side after pooling the 16x16 grid (16 = all 256)
    d_model: int | None = None  # scratch BART shape
    layers: int | None = None  # encoder layers = decoder layers
    heads: int | None = None
    ffn: int | None = None
    dropout: float | None = None
    max_item_tokens: int | None = None  # BPE tokens of one history item's text
    max_target_tokens: int | None = None  # BPE tokens of the generated next-item text
    batch_size: int | None = None
    grad_accum: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    warmup_steps: int | None = None
    max_grad_norm: float | None = None
    epochs: int | None = None  # upper bound; early stopping on valid NDCG@10
    patience: int | None = None
    examples_per_epoch: int | None = None  # 0 = every training transition each epoch; else a fresh random subset
    valid_users: int | None = None  # validation users decoded per epoch
    decode: str | None = None  # greedy | beam
    num_beams: int | None = None
    scorer: str | None = None  # retrieval | likelihood
    rerank_k: int | None = None  # candidates the likelihood scorer re-ranks
    index: str = "auto"  # auto | flat | hnsw
    hnsw_above: int = 50_000  # catalog size above which `auto` builds an HNSW index
    ann_k: int = 1000  # neighbours an HNSW search returns (others score -inf)
    seed: int = 0

    def resolved(self) -> VQBartConfig:
        if self.profile not in PROFILES:
            raise ValueError(f"vq_bart: unknown profile '{self.profile}'; known: {', '.join(PROFILES)}")
        defaults = PROFILES[self.profile]
        fill = {f.name: defaults[f.name] for f in dataclasses.fields(self)
                if getattr(self, f.name) is None and f.name in defaults}
        cfg = dataclasses.replace(self, **fill)
        if VQ_GRID % cfg.image_grid:
            raise ValueError(f"vq_bart: image_grid {cfg.image_grid} must divide {VQ_GRID}")
        if cfg.decode not in ("greedy", "beam") or cfg.scorer not in ("retrieval", "likelihood"):
            raise ValueError(f"vq_bart: decode must be greedy|beam and scorer retrieval|likelihood, got "
                             f"'{cfg.decode}', '{cfg.scorer}'")
        return cfg


# ------------------------------------------------------------------------------------------------------
# Item text and image codes


def pool_codes(codes: np.ndarray, grid: int) -> np.ndarray:
    """[n, 256] codes of a 16x16 grid -> [n, grid*grid]: the most frequent code of each block (ties: lowest)."""
    if grid == VQ_GRID:
        return codes
    b = VQ_GRID // grid
    blocks = codes.reshape(-1, grid, b, grid, b).transpose(0, 1, 3, 2, 4).reshape(len(codes), grid * grid, b * b)
    out = np.empty(blocks.shape[:2], dtype=codes.dtype)
    for i in range(blocks.shape[0]):
        for j in range(blocks.shape[1]):
            out[i, j] = np.bincount(blocks[i, j]).argmax()
    return out


class Vocabulary:
    """Text <-> model token ids. Scratch: GPT-2 BPE (tiktoken, packaged ranks) remapped to the ids the catalog
    uses; pretrained: the backbone's own tokenizer. Image code k is token `image_offset + k` in both."""

    def __init__(self, bpe_ids: np.ndarray | None = None, hf_tokenizer=None, n_codes: int = 0):
        self.hf = hf_tokenizer
        self.n_codes = n_codes
        if self.hf is None:
            from mmrec_pipeline.features.text import gpt2_encoding

            self.enc = gpt2_encoding()
            self.bpe_ids = np.asarray(bpe_ids, dtype=np.int64)  # model id N_SPECIAL + i <-> BPE id bpe_ids[i]
            self.to_model = {int(b): N_SPECIAL + i for i, b in enumerate(self.bpe_ids)}
            self.pad, self.bos, self.eos, self.sep, self.unk = PAD, BOS, EOS, SEP, UNK
            self.image_offset = N_SPECIAL + len(self.bpe_ids)
        else:
            t = self.hf
            self.pad, self.bos, self.eos, self.unk = t.pad_token_id, t.bos_token_id, t.eos_token_id, t.unk_token_id
            self.sep = t.sep_token_id if t.sep_token_id is not None else t.eos_token_id
            self.image_offset = len(t)  # <img_k> tokens are appended to the backbone's vocabulary

    @classmethod
    def scratch(cls, texts: list[str], n_codes: int) -> Vocabulary:
        from mmrec_pipeline.features.text import gpt2_encoding

        enc = gpt2_encoding()
        used = sorted({i for t in texts for i in enc.encode_ordinary(" " + t)})
        return cls(np.asarray(used, dtype=np.int64), n_codes=n_codes)

    @property
    def size(self) -> int:
        return self.image_offset + self.n_codes

    def encode(self, text: str, max_tokens: int) -> list[int]:
        if self.hf is not None:
            return self.hf(" " + text, add_special_tokens=False)["input_ids"][:max_tokens]
        return [self.to_model.get(i, UNK) for i in self.enc.encode_ordinary(" " + text)][:max_tokens]

    def decode(self, ids: list[int]) -> str:
        ids = [i for i in ids if i not in (self.pad, self.bos, self.eos, self.sep) and i < self.image_offset]
        if self.hf is not None:
            return self.hf.decode(ids, skip_special_tokens=True).strip()
        return self.enc.decode([int(self.bpe_ids[i - N_SPECIAL]) for i in ids if i >= N_SPECIAL]).strip()


# ------------------------------------------------------------------------------------------------------
# Backbone and vector index


def backbone_source(name: str) -> str:
    from mmrec_pipeline.weights import backbone_source as local_or_hub

    return local_or_hub(name, HUB_IDS, "vq_bart")


def build_bart(cfg: VQBartConfig, vocab: Vocabulary, source: str, load_weights: bool,
               sources: ModelSources | None = None):
    from transformers import BartConfig, BartForConditionalGeneration

    if cfg.backbone == SCRATCH:
        conf = BartConfig(vocab_size=vocab.size, d_model=cfg.d_model, encoder_layers=cfg.layers,
                          decoder_layers=cfg.layers, encoder_attention_heads=cfg.heads,
                          decoder_attention_heads=cfg.heads, encoder_ffn_dim=cfg.ffn, decoder_ffn_dim=cfg.ffn,
                          dropout=cfg.dropout, attention_dropout=0.0, activation_dropout=0.0,
                          max_position_embeddings=input_length(cfg) + 8, pad_token_id=PAD, bos_token_id=BOS,
                          eos_token_id=EOS, decoder_start_token_id=EOS, forced_bos_token_id=None,
                          forced_eos_token_id=None, scale_embedding=True)
        return BartForConditionalGeneration(conf)
    sources = sources or ModelSources()
    if load_weights:
        model = backbones.from_pretrained(BartForConditionalGeneration, source, sources, f"vq_bart ({cfg.backbone})")
    else:  # a checkpoint's weights follow: only the architecture is needed
        from transformers import AutoConfig

        model = BartForConditionalGeneration(AutoConfig.from_pretrained(
            source, **backbones.pretrained_kwargs(source, sources)))
    model.resize_token_embeddings(vocab.size)
    if model.config.max_position_embeddings < input_length(cfg):
        raise ValueError(f"vq_bart: an input of {input_length(cfg)} tokens exceeds the backbone's "
                         f"{model.config.max_position_embeddings} positions: lower history, image_grid or "
                         f"max_item_tokens")
    return model


def input_length(cfg: VQBartConfig) -> int:
    per_item = cfg.max_item_tokens + (cfg.image_grid ** 2 if cfg.use_image else 0) + 1
    return cfg.history * per_item + 2


class VectorIndex:
    """Inner-product search over L2-normalised catalog vectors with FAISS: exact (`IndexFlatIP`) for small
    catalogs, HNSW above `hnsw_above` items."""

    def __init__(self, vectors: np.ndarray, kind: str = "auto", hnsw_above: int = 50_000):
        import faiss

        faiss.omp_set_num_threads(torch.get_num_threads())  # one CPU-thread setting (the Compute resource's)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.n, dim = vectors.shape
        self.kind = ("hnsw" if self.n > hnsw_above else "flat") if kind == "auto" else kind
        if self.kind == "flat":
            self.index = faiss.IndexFlatIP(dim)
        elif self.kind == "hnsw":
            self.index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
            self.index.hnsw.efConstruction = 80
            self.index.hnsw.efSearch = 128
        else:
            raise ValueError(f"vq_bart: unknown index '{kind}'; use auto, flat or hnsw")
        self.index.add(vectors)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, item indices) [len(queries), k], best first; index -1 where fewer were found."""
        k = min(k, self.n)
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = max(128, k)
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)

    def scores(self, queries: np.ndarray, k: int) -> torch.Tensor:
        """Full-catalog scores: the similarity of the items the index returns (all of them for an exact index),
        -inf for the rest."""
        sims, idx = self.search(queries, self.n if self.kind == "flat" else k)
        out = torch.full((len(queries), self.n), -torch.inf)
        found = idx >= 0
        rows = np.nonzero(found)[0]
        out[torch.as_tensor(rows), torch.as_tensor(idx[found])] = torch.as_tensor(sims[found])
        return out


@functools.cache
def sentence_encoder():
    """all-MiniLM-L6-v2 as `text_embeddings` loads it (packaged weights by default)."""
    from mmrec_pipeline.features.text import load_sbert

    return load_sbert(ModelSources(), torch.device("cpu"))


def embed_texts(texts: list[str]) -> np.ndarray:
    return sentence_encoder().encode(texts, batch_size=SBERT_BATCH, normalize_embeddings=True,
                                     convert_to_numpy=True, show_progress_bar=False).astype(np.float32)


def catalog_vectors(items: pl.DataFrame, texts: list[str], sources: ModelSources, feature_cache: FeatureCacheFolder,
                    log=None) -> np.ndarray:
    """Sentence vectors of the item texts through the lake's shared feature cache (computed once per text)."""
    from mmrec_pipeline.features.text import sbert_vectors

    long = pl.DataFrame({"item_id": items["item_id"], "text": pl.Series(texts, dtype=pl.Utf8)})
    rows, _ = sbert_vectors(long, sources, Compute(device="cpu"), feature_cache, None, log)
    return np.asarray(rows["vector"].to_list(), dtype=np.float32)


# ------------------------------------------------------------------------------------------------------
# The recommender


class VQBart(Recommender):
    name = "vq_bart"
    Config = VQBartConfig
    variants = VARIANTS
    feature_assets = ("vq_codes",)
    long_running = True
    pool = "gpu"

    report_section = staticmethod(vq_bart_section.section)

    def report_facts(self, histories: dict[str, np.ndarray]) -> dict:
        """The generated next-item text for the report's users, and the input shape (its section's columns)."""
        users = list(histories)
        generated = self.generate([histories[u] for u in users])
        cfg = self.config
        return {"generated": dict(zip(users, generated, strict=True)), "history": cfg.history,
                "image_tokens_per_item": cfg.image_grid ** 2 if cfg.use_image else 0}

    def __init__(self, config=None, **overrides):
        super().__init__(config, **overrides)
        self.config = self.config.resolved()
        self.device = torch.device("cpu")
        self.bart = None
        self.vocab: Vocabulary | None = None
        self.source = ""
        self.item_tokens = torch.zeros(0, 0, dtype=torch.long)  # [n_items + 1, L] input tokens per item (+ pad row)
        self.target_tokens = torch.zeros(0, 0, dtype=torch.long)  # [n_items, T] target tokens (+ eos), pad after
        self.catalog = np.zeros((0, 0), dtype=np.float32)  # [n_items, d] sentence vectors of the item texts
        self.index: VectorIndex | None = None
        self._generated: dict[tuple, str] = {}  # history key -> generated text (valid while weights are fixed)
        self._vectors: dict[str, np.ndarray] = {}  # generated text -> sentence vector (the encoder is fixed)

    # --- preparing the inputs ---------------------------------------------------------------------

    def prepare(self, data, features: ItemFeatures, compute: Compute, log=None) -> None:
        cfg = self.config
        self.n_items = data.n_items
        self.device = compute.torch_device
        texts = item_texts(data.items)
        codes = None
        if cfg.use_image:
            raw = features.get("vq_codes")
            if raw is None or not features.present["vq_codes"].any():
                raise MissingFeature("vq_bart/image needs VQ image codes and this dataset has none: materialize "
                                     "the `vq_codes` asset (a dataset without images cannot run this variant)")
            codes = pool_codes(raw.astype(np.int64), cfg.image_grid)
            codes[~features.present["vq_codes"]] = -1
        n_codes = int(codes.max()) + 1 if codes is not None else 0
        if cfg.backbone == SCRATCH:
            self.vocab = Vocabulary.scratch(texts, n_codes)
        else:
            from transformers import AutoTokenizer

            self.source = backbone_source(cfg.backbone)
            tok = AutoTokenizer.from_pretrained(self.source, **backbones.pretrained_kwargs(self.source, self.sources))
            self.vocab = Vocabulary(hf_tokenizer=tok, n_codes=n_codes)
        self.item_tokens, self.target_tokens = self.tokenize(texts, codes)
        self.catalog = catalog_vectors(data.items, texts, self.sources, self.required_feature_cache(), log)
        self.bart = build_bart(cfg, self.vocab, self.source, load_weights=True, sources=self.sources).to(self.device)

    def tokenize(self, texts: list[str], codes: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per item: input tokens (text, image codes, separator) and target tokens (text, eos); pad-filled."""
        cfg, v = self.config, self.vocab
        inputs, targets = [], []
        for i, t in enumerate(texts):
            ids = v.encode(t, cfg.max_item_tokens)
            img = [] if codes is None or codes[i, 0] < 0 else (v.image_offset + codes[i]).tolist()
            inputs.append(ids + img + [v.sep])
            targets.append(v.encode(t, cfg.max_target_tokens) + [v.eos])
        inputs.append([])  # row n_items: padding of short histories, no tokens
        item_tok = torch.full((len(inputs), max(map(len, inputs))), v.pad, dtype=torch.long)
        for i, ids in enumerate(inputs):
            item_tok[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        target_tok = torch.full((len(targets), max(map(len, targets))), v.pad, dtype=torch.long)
        for i, ids in enumerate(targets):
            target_tok[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        return item_tok, target_tok

    def encoder_inputs(self, histories: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, L] input ids and attention mask: bos, the last N items' tokens oldest first, eos; padded right."""
        v = self.vocab
        slots = pad_histories(histories, self.config.history, self.n_items)  # item n_items: no tokens
        tok = self.item_tokens[slots].flatten(1)  # [B, N * L_item]
        tok = torch.cat([torch.full((len(tok), 1), v.bos), tok, torch.full((len(tok), 1), v.pad)], dim=1)
        valid = tok != v.pad
        order = (~valid).to(torch.int8).argsort(dim=1, stable=True)  # real tokens first, in order
        tok, valid = tok.gather(1, order), valid.gather(1, order)
        lengths = valid.sum(1)
        tok[torch.arange(len(tok)), lengths] = v.eos
        valid[torch.arange(len(tok)), lengths] = True
        width = int(lengths.max()) + 1
        return tok[:, :width], valid[:, :width].long()

    # --- training -----------------------------------------------------------------------------------

    def fit(self, data, features, compute, log=None) -> dict:
        cfg = self.config
        seed_everything(cfg.seed)
        self.prepare(data, features, compute, log)
        self.build_index()
        self._seqs = data.sequences("train")
        # every transition of the training sequences: predict item t of user u from the items before it
        self._pairs = [(u, t) for u, s in enumerate(self._seqs) for t in range(1, len(s))]
        if not self._pairs:
            raise ValueError("vq_bart: no user has two or more training interactions to learn from")
        self._rng = np.random.default_rng(cfg.seed)
        item_len = (self.item_tokens != self.vocab.pad).sum(1).numpy()
        self._lengths = torch.from_numpy(np.array(  # input tokens per transition, for length-grouped batches
            [item_len[self._seqs[u][max(0, t - cfg.history):t]].sum() for u, t in self._pairs], dtype=np.int64))
        per_epoch = min(len(self._pairs), cfg.examples_per_epoch or len(self._pairs))
        self._per_epoch = per_epoch
        params = [p for p in self.bart.parameters() if p.requires_grad]
        logger(log).info(
            f"vq_bart: backbone {cfg.backbone}, history {cfg.history}, image tokens/item "
            f"{cfg.image_grid ** 2 if cfg.use_image else 0}, vocabulary {self.vocab.size}, "
            f"{sum(p.numel() for p in params):,} parameters, {len(self._pairs)} transitions ({per_epoch}/epoch), "
            f"device {self.device}")
        validator = Validator(data, max_users=cfg.valid_users, seed=cfg.seed)
        trainer = Trainer(TrainSettings.of(cfg), compute, log, "vq_bart", unit="target_tokens")
        report = trainer.fit(self, params, validate=lambda: validator(self.score))
        self.bart.eval()
        self._generated.clear()
        report.update({"transitions": len(self._pairs), "examples_per_epoch": per_epoch, "vocabulary": self.vocab.size,
                       "image_tokens_per_item": cfg.image_grid ** 2 if cfg.use_image else 0, "backbone": cfg.backbone,
                       "index": self.index.kind})
        del self._seqs, self._pairs, self._rng, self._lengths
        return report

    def train_batches(self, gen: torch.Generator) -> list[np.ndarray]:
        """A fresh random subset of `examples_per_epoch` transitions (all of them when 0), in batches of similar
        input length (`length_batches`: short histories are not padded to the longest)."""
        self.bart.train()
        self._generated.clear()  # generations are valid only while the weights are fixed
        pick = torch.from_numpy(self._rng.permutation(len(self._pairs))[:self._per_epoch])
        return [pick[b].numpy() for b in length_batches(self._lengths[pick], self.config.batch_size, gen)]

    def batch_loss(self, b: np.ndarray) -> tuple[torch.Tensor, int]:
        """BART's cross-entropy of the next item's text tokens given the history's."""
        hist = [self._seqs[self._pairs[j][0]][:self._pairs[j][1]] for j in b]
        target = np.array([self._seqs[self._pairs[j][0]][self._pairs[j][1]] for j in b])
        x, mask = self.encoder_inputs(hist)
        labels = self.target_tokens[torch.from_numpy(target)]
        labels = labels[:, : int((labels != self.vocab.pad).sum(1).max())].clone()
        labels[labels == self.vocab.pad] = IGNORE
        out = self.bart(input_ids=x.to(self.device), attention_mask=mask.to(self.device),
                        labels=labels.to(self.device))
        return out.loss, int((labels != IGNORE).sum())

    def train_state(self) -> dict[str, torch.Tensor]:
        return self.bart.state_dict()

    def load_train_state(self, state: dict[str, torch.Tensor]) -> None:
        self.bart.load_state_dict(state)

    # --- generation and scoring -----------------------------------------------------------------------

    def build_index(self) -> None:
        self.index = VectorIndex(self.catalog, self.config.index, self.config.hnsw_above)

    def key(self, history: np.ndarray) -> tuple:
        return tuple(int(i) for i in history[-self.config.history:])

    @torch.no_grad()
    def generate(self, histories: list[np.ndarray], batch_size: int = 256) -> list[str]:
        """The decoded next-item text per history (cached per last-N items while the weights are fixed)."""
        keys = [self.key(h) for h in histories]
        todo = list(dict.fromkeys(k for k in keys if k not in self._generated))
        cfg, v = self.config, self.vocab
        training = self.bart.training
        self.bart.eval()
        for i in range(0, len(todo), batch_size):
            chunk = todo[i:i + batch_size]
            x, mask = self.encoder_inputs([np.asarray(k, dtype=np.int64) for k in chunk])
            out = self.bart.generate(input_ids=x.to(self.device), attention_mask=mask.to(self.device),
                                     max_new_tokens=cfg.max_target_tokens + 1, do_sample=False,
                                     num_beams=cfg.num_beams if cfg.decode == "beam" else 1,
                                     decoder_start_token_id=self.bart.config.decoder_start_token_id,
                                     bos_token_id=v.bos, eos_token_id=v.eos, pad_token_id=v.pad,
                                     forced_bos_token_id=None, forced_eos_token_id=None, no_repeat_ngram_size=0,
                                     length_penalty=1.0, min_length=0)
            out = out.cpu()
            # `decode` drops any image token the decoder emits: the query is text only.
            for k, ids in zip(chunk, out.tolist(), strict=True):
                self._generated[k] = v.decode(ids)
        if training:
            self.bart.train()
        return [self._generated[k] for k in keys]

    def queries(self, histories: list[np.ndarray]) -> np.ndarray:
        """Sentence vectors of the generated texts; each distinct text is embedded once (identical generations,
        across users and epochs, share one vector)."""
        texts = self.generate(histories)
        todo = list(dict.fromkeys(t for t in texts if t not in self._vectors))
        if todo:
            self._vectors.update(zip(todo, embed_texts(todo), strict=True))
        return np.stack([self._vectors[t] for t in texts])

    def score(self, users, history) -> torch.Tensor:
        scores = self.index.scores(self.queries(list(history)), self.config.ann_k)
        if self.config.scorer == "likelihood":
            scores = self.rerank(list(history), scores)
        return scores

    @torch.no_grad()
    def rerank(self, histories: list[np.ndarray], scores: torch.Tensor) -> torch.Tensor:
        """Re-rank each row's top `rerank_k` by the candidates' text log-likelihood under the decoder; they
        stay above every other item (offset past the retrieval range), whose retrieval scores are kept."""
        k = min(self.config.rerank_k, scores.shape[1])
        top = torch.topk(scores, k, dim=1).indices
        out = scores.clone()
        x, mask = self.encoder_inputs(histories)
        for r in range(len(histories)):
            labels = self.target_tokens[top[r]].clone()
            labels = labels[:, : int((labels != self.vocab.pad).sum(1).max())]
            keep = labels != self.vocab.pad
            labels[~keep] = IGNORE
            logits = self.bart(input_ids=x[r:r + 1].expand(k, -1).to(self.device),
                               attention_mask=mask[r:r + 1].expand(k, -1).to(self.device),
                               labels=labels.to(self.device)).logits.float()
            logp = torch.log_softmax(logits, -1).gather(2, labels.clamp_min(0).to(self.device)[..., None])[..., 0]
            ll = (logp * keep.to(self.device)).sum(1).cpu()
            out[r, top[r]] = 1e6 + ll  # above any cosine similarity
        return out

    # --- checkpoint -----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {f"bart.{k}": v for k, v in self.bart.state_dict().items()}
        state.update({"item_tokens": self.item_tokens, "target_tokens": self.target_tokens,
                      "catalog": torch.from_numpy(self.catalog)})
        if self.vocab.hf is None:
            state["bpe_ids"] = torch.from_numpy(self.vocab.bpe_ids)
        # shared embedding/LM-head tensors are saved once each (safetensors refuses shared storage)
        return {k: v.detach().clone().contiguous() for k, v in state.items()}

    def extra_config(self) -> dict:
        return {"n_items": self.n_items, "n_codes": self.vocab.n_codes, "backbone_source": self.source}

    def apply_extra_config(self, extra: dict) -> None:
        self.n_items, self._n_codes, self.source = extra["n_items"], extra["n_codes"], extra["backbone_source"]

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if self.config.backbone == SCRATCH:
            self.vocab = Vocabulary(state["bpe_ids"].numpy(), n_codes=self._n_codes)
        else:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(self.source, **backbones.pretrained_kwargs(self.source, self.sources))
            self.vocab = Vocabulary(hf_tokenizer=tok, n_codes=self._n_codes)
        self.device = torch.device("cpu")
        self.bart = build_bart(self.config, self.vocab, self.source, load_weights=False, sources=self.sources)
        self.bart.load_state_dict({k[len("bart."):]: v for k, v in state.items() if k.startswith("bart.")},
                                  strict=True)
        self.bart.eval()
        self.item_tokens, self.target_tokens = state["item_tokens"], state["target_tokens"]
        self.catalog = state["catalog"].numpy()
        self.build_index()


