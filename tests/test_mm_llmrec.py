"""mm_llmrec (MM-GPT2Rec): forward/backward and LoRA wiring on tiny random configs of the real Hugging Face
classes, checkpoints that only hold what was trained, clear errors for missing features, and on `sample` the
fused variant beating `text` and popularity under full-catalog ranking."""

import dataclasses
import json
import logging

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mmrec_pipeline.compute import Compute
from mmrec_pipeline.evaluation.protocols import evaluate_model, headline
from mmrec_pipeline.models import MM_LLMREC
from mmrec_pipeline.models.base import ItemFeatures
from mmrec_pipeline.models.mm_llmrec import (
    IGNORE,
    MissingFeature,
    MMLLMRec,
    MMLLMRecConfig,
    effective_quantization,
    runnable_variants,
)
from mmrec_pipeline.models.popularity import Popularity

CPU = Compute(device="cpu")
TINY = {"n_layer": 2, "n_embd": 32, "n_head": 2, "max_len": 12, "batch_size": 256, "epochs": 1}


def random_features(n_items: int, image: bool = True) -> ItemFeatures:
    rng = np.random.default_rng(0)
    vectors = {"sbert_text": rng.normal(size=(n_items, 16)).astype(np.float32)}
    if image:
        vectors["efficientnet_lite0"] = rng.normal(size=(n_items, 24)).astype(np.float32)
    present = {k: np.ones(n_items, dtype=bool) for k in vectors}
    present["sbert_text"][:3] = False  # a few items without text: they get the learned stand-in
    return ItemFeatures(vectors, present)


@pytest.fixture(scope="module")
def tiny_lm_folders(tmp_path_factory):
    """save_pretrained folders (safetensors) of tiny random GPT-2 and Llama causal LMs: 'pretrained' backbones."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("tiny_lms")
    GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_layer=2, n_embd=32, n_head=2)).save_pretrained(
        root / "gpt2")
    LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
                     ).save_pretrained(root / "llama")
    assert list((root / "llama").glob("*.safetensors"))
    return {"gpt2": root / "gpt2", "llama": root / "llama"}


def a_batch(n_items: int, b: int = 4, n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded inputs and next-item targets, as `fit` makes them."""
    x = torch.randint(0, n_items, (b, n))
    x[1, 4:] = n_items  # a shorter row, padded with the pad id (= n_items)
    y = torch.cat([x[:, 1:], torch.full((b, 1), n_items)], dim=1)
    y[y == n_items] = IGNORE
    return x, y


@pytest.mark.parametrize("variant", ["id", "text", "image", "concat", "weighted", "attention"])
def test_forward_backward_every_variant_scratch_gpt2(variant):
    model = MMLLMRec(MMLLMRecConfig(variant=variant, **TINY))
    model.prepare(50, random_features(50), CPU)
    x, y = a_batch(50)
    loss = model.loss(x, y)
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    # trained fully: the whole scratch backbone and the item encoder get gradients
    assert all(p.requires_grad for p in model.backbone.parameters())
    assert model.backbone.h[0].attn.c_attn.weight.grad.abs().sum() > 0
    grads = [p.grad for n, p in model.encoder.named_parameters() if n.startswith(("proj", "id_emb"))]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    scores = model.score(np.arange(3), [np.array([1, 2, 3]), np.array([4]), np.array([5, 6, 7, 8, 9])])
    assert scores.shape == (3, 50) and torch.isfinite(scores).all()


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_lora_wiring_trains_adapters_and_freezes_the_base(architecture, tiny_lm_folders):
    cfg = MMLLMRecConfig(variant="concat", profile="pretrained", backbone=str(tiny_lm_folders[architecture]),
                         lora_r=4, lora_alpha=8, max_len=12)
    model = MMLLMRec(cfg)
    model.prepare(40, random_features(40), CPU)
    named = dict(model.backbone.named_parameters())
    trainable = [n for n, p in named.items() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any("lora_" in n for n in trainable if ("c_attn" in n or "q_proj" in n))
    frozen_before = {n: p.detach().clone() for n, p in named.items() if not p.requires_grad}
    assert frozen_before
    opt = torch.optim.AdamW([p for p in [*model.backbone.parameters(), *model.encoder.parameters()]
                             if p.requires_grad], lr=1e-2)
    lora_before = {n: named[n].detach().clone() for n in trainable}
    for _ in range(2):  # lora_B starts at zero, so lora_A moves from the second step on
        x, y = a_batch(40)
        model.loss(x, y).backward()
        opt.step()
        opt.zero_grad()
    assert all(named[n].grad is None for n in frozen_before)
    assert all(torch.equal(named[n], v) for n, v in frozen_before.items())
    assert all(not torch.equal(named[n], v) for n, v in lora_before.items())


def _fit_and_roundtrip(model, data, features, tmp_path):
    model.fit(data, features, CPU)
    inputs = data.eval_inputs("test")
    users, history = inputs.users[:32], inputs.history[:32]
    path = model.save(tmp_path / "ckpt")
    again = MMLLMRec.load(path)
    assert torch.equal(model.score(users, history), again.score(users, history))
    assert not list(path.glob("*.pkl")) and not list(path.glob("*.bin"))
    return path, load_file(str(path / "model.safetensors")), json.loads((path / "config.json").read_text())


def test_scratch_checkpoint_holds_the_full_backbone_and_reloads_identically(sample_dataset, tmp_path):
    model = MMLLMRec(MMLLMRecConfig(variant="attention", **TINY))
    _, state, meta = _fit_and_roundtrip(model, sample_dataset, random_features(sample_dataset.n_items), tmp_path)
    assert state["item_table"].shape == (sample_dataset.n_items, 32)
    assert any(k.startswith("backbone.h.1.") for k in state)
    assert meta["config"]["backbone"] == "gpt2-small-scratch" and meta["extra"]["backbone_source"] == ""


def test_lora_checkpoint_holds_only_adapters_and_reloads_identically(sample_dataset, tiny_lm_folders, tmp_path):
    cfg = MMLLMRecConfig(variant="weighted", profile="pretrained", backbone=str(tiny_lm_folders["llama"]),
                         lora_r=4, lora_alpha=8, max_len=12, batch_size=256, epochs=1)
    _, state, meta = _fit_and_roundtrip(MMLLMRec(cfg), sample_dataset, random_features(sample_dataset.n_items),
                                        tmp_path)
    backbone_keys = [k for k in state if k.startswith(("lora.", "backbone."))]
    assert backbone_keys and all(k.startswith("lora.") and "lora_" in k for k in backbone_keys)
    assert meta["extra"]["backbone_source"] == str(tiny_lm_folders["llama"].resolve())


def test_profiles_fill_unset_fields_and_explicit_values_win():
    paper = MMLLMRecConfig(profile="paper").resolved()
    assert (paper.backbone, paper.max_len, paper.batch_size, paper.grad_accum, paper.lora_r) == \
        ("gpt2-medium", 12, 16, 2, 16)
    assert MMLLMRecConfig(profile="paper", max_len=20).resolved().max_len == 20
    demo = MMLLMRec(MMLLMRecConfig()).config
    assert demo.backbone == "gpt2-small-scratch" and all(v is not None for k, v in dataclasses.asdict(demo).items()
                                                          if k not in ("lora_r", "lora_alpha", "lora_dropout",
                                                                       "lora_targets"))
    with pytest.raises(ValueError, match="unknown variant"):
        MMLLMRecConfig(variant="fancy").resolved()


def test_missing_image_feature_names_the_asset_and_can_be_skipped(sample_dataset, caplog):
    features = random_features(sample_dataset.n_items, image=False)
    with pytest.raises(MissingFeature, match="image_embeddings"):
        MMLLMRec(MMLLMRecConfig(variant="concat", **TINY)).fit(sample_dataset, features, CPU)
    with caplog.at_level(logging.WARNING, logger="mmrec_pipeline"):
        keep = runnable_variants(MM_LLMREC["mm_llmrec"].variants, features)
    assert set(keep) == {"id", "text"}
    assert "image_embeddings" in caplog.text


def test_qlora_on_cpu_falls_back_with_a_logged_reason(tiny_lm_folders, caplog):
    log = logging.getLogger("qlora-test")
    cfg = MMLLMRecConfig(profile="pretrained", backbone=str(tiny_lm_folders["gpt2"]), quantization="4bit")
    with caplog.at_level(logging.INFO, logger="qlora-test"):
        assert effective_quantization(cfg.resolved(), CPU, log) == "none"
        assert "CUDA" in caplog.records[0].getMessage()
        scratch = MMLLMRecConfig(quantization="4bit").resolved()
        assert effective_quantization(scratch, Compute(device="cpu", quantization="4bit"), log) == "none"


def test_quantization_without_bitsandbytes_says_how_to_install_it():
    """bitsandbytes is the `gpu` extra: a machine without it that asks for 4-bit gets the install command."""
    from mmrec_pipeline import backbones

    if backbones.bitsandbytes_installed():
        pytest.skip("bitsandbytes is installed here (a GPU machine)")
    with pytest.raises(ModuleNotFoundError, match=r"4bit quantization needs bitsandbytes.*make install GPU=1"):
        backbones.quantization_kwargs("4bit", CPU)


def test_fused_variant_beats_text_and_popularity_on_sample(sample_dataset, sample_features):
    """The demo profile on real cached features: images carry the pattern that titles never name. `concat`, the
    cheapest fusion, stands for the fused variants (weighted and attention fit on `sample` in the checkpoint
    tests above; all three beat `text` in benchmarks/results/mm_llmrec.json)."""
    features = sample_features["features"]
    ndcg = {}
    for variant in ("text", "concat"):
        model = MMLLMRec(MMLLMRecConfig(variant=variant, profile="demo"))
        model.fit(sample_dataset, features, CPU)
        ndcg[variant] = headline(evaluate_model(model, sample_dataset, "mm_llmrec", variant, sampled=None)[0])[variant]
    popularity = Popularity()
    popularity.fit(sample_dataset, features, CPU)
    ndcg["popularity"] = headline(evaluate_model(popularity, sample_dataset, "popularity", "global",
                                                 sampled=None)[0])["global"]
    assert ndcg["concat"] > ndcg["text"] and ndcg["concat"] > ndcg["popularity"], ndcg


def test_example_variant_is_chosen_on_validation_not_test(monkeypatch, tmp_path):
    """The report's example recommendations come from the variant best on validation, not the one best on test."""
    import types

    import polars as pl

    from mmrec_pipeline.evaluation import facts, report
    from mmrec_pipeline.evaluation.report import ReportInputs, Section
    from mmrec_pipeline.models.mm_llmrec import MMLLMRec

    rows = [("mm_llmrec", "a", "temporal", "ndcg", 10, 0.9), ("mm_llmrec", "b", "temporal", "ndcg", 10, 0.1),
            ("mm_llmrec", "a", "temporal@valid", "ndcg", 10, 0.1), ("mm_llmrec", "b", "temporal@valid", "ndcg", 10, 0.5)]
    metrics = pl.DataFrame(rows, schema=["model", "variant", "protocol", "metric", "k", "value"], orient="row")
    read = []
    monkeypatch.setattr(facts, "read_report_facts", lambda models_dir, model, variant: read.append(variant))
    monkeypatch.setattr(report, "qualitative_examples", lambda facts, data, title: Section(title))
    section = MMLLMRec.report_section(ReportInputs(metrics, types.SimpleNamespace(protocol="temporal"), tmp_path))
    assert read == ["b"] and section.title.startswith("mm_llmrec/b")
