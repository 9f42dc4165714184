"""Feature families on CPU, offline: packaged weights for smoke tests, tiny random configurations of the real
transformers classes (BLIP-2, LLaVA-NeXT, Chameleon VQ-VAE, GPT-2) for the code paths of the big models, and the
incremental cache's guarantees (reuse, recompute on change, resume after a crash, per-run budgets)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image, ImageDraw

from mmrec_pipeline.compute import Compute
from mmrec_pipeline.features import captions as cap
from mmrec_pipeline.features.cache import (
    VECTOR,
    FeatureCache,
    compute_incremental,
    content_key,
)
from mmrec_pipeline.features.image import image_embeddings
from mmrec_pipeline.features.summaries import SummaryConfig, review_summaries
from mmrec_pipeline.features.text import text_embeddings
from mmrec_pipeline.features.vq import VQVAE, VQConfig, psnr, ssim, train_vq_vae, vq_codes
from mmrec_pipeline.storage import Lake, write_parquet
from mmrec_pipeline.weights import ModelNotAvailable, ModelSources

CPU = Compute(device="cpu", batch_size=8)
BG = (233, 231, 226)
RGB = {"red": (200, 35, 40), "blue": (60, 125, 215), "green": (40, 140, 65), "yellow": (245, 205, 45)}


# ------------------------------------------------------------------------------------------------------
# Helpers: tiny catalogs with drawn product images


def draw_item(colour: str, pattern: str = "solid", size: int = 96, seed: int = 0) -> Image.Image:
    """A shirt silhouette in `colour` (optionally striped) on a light backdrop, with a dark outline."""
    img = Image.new("RGB", (size, size), BG)
    fill = Image.new("RGB", (size, size), RGB[colour])
    if pattern == "stripes":
        d = ImageDraw.Draw(fill)
        ink = tuple(int(v * 0.45) for v in RGB[colour])
        for y in range(seed % 5, size, 12):
            d.rectangle((0, y, size, y + 5), fill=ink)
    s = size / 100
    poly = [(30, 14), (42, 11), (50, 18), (58, 11), (70, 14), (93, 32), (82, 45), (74, 39), (74, 89), (26, 89),
            (26, 39), (18, 45), (7, 32)]
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).polygon([(x * s, y * s) for x, y in poly], fill=255)
    img.paste(fill, mask=mask)
    ImageDraw.Draw(img).polygon([(x * s, y * s) for x, y in poly], outline=(95, 95, 100))
    return img


def make_items(folder: Path, specs: list[tuple[str, str | None, str]]) -> pl.DataFrame:
    """items table from (item_id, colour or None for no image, pattern)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (item_id, colour, pattern) in enumerate(specs):
        path = sha = None
        if colour is not None:
            path = folder / f"{item_id}.png"
            draw_item(colour, pattern, seed=i).save(path)
            sha = hashlib.sha256(path.read_bytes()).hexdigest()
        rows.append({"item_id": item_id, "title": f"Item {item_id} shirt", "description": f"A {pattern} cotton shirt.",
                     "category": "tops", "attributes": "{}", "price": 10.0,
                     "image_path": str(path) if path else None, "image_sha256": sha})
    return pl.DataFrame(rows)


@pytest.fixture()
def items(tmp_path) -> pl.DataFrame:
    return make_items(tmp_path / "img", [("A", "red", "solid"), ("B", "blue", "stripes"), ("C", "green", "solid"),
                                         ("D", None, "solid")])


def word_tokenizer(words: list[str], image_token_attr: bool = True):
    """A tiny word-level fast tokenizer (no hub access needed) with `<image>` in its vocabulary. LLaVA's processor
    reads `tokenizer.image_token`; BLIP-2's adds the token itself and expects the attribute to be absent."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "<s>", "</s>", "<image>", *words])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    extra = {"extra_special_tokens": {"image_token": "<image>"}} if image_token_attr else {}
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", **extra)


WORDS = ["a", "the", "red", "blue", "shirt", "dress", "photo", "of", "describe", "this", "product", "image", "in", "detail", ",", ".", ":", "?", "question", "answer", "focusing", "on", "visual", "attributes", "like", "color", "style", "material", "and", "what", "occasion", "it", "might", "be", "suitable", "for", "[INST]", "[/INST]"]


# ------------------------------------------------------------------------------------------------------
# Model sources


def test_missing_model_gives_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv("MMREC_ALLOW_DOWNLOAD", raising=False)
    with pytest.raises(ModelNotAvailable) as e:
        ModelSources().resolve("blip2")
    msg = str(e.value)
    assert "blip2" in msg and "Salesforce/blip2-opt-2.7b" in msg and "MMREC_MODEL_BLIP2=" in msg
    with pytest.raises(ModelNotAvailable, match="does not exist"):
        ModelSources(llava=str(tmp_path / "nowhere")).resolve("llava")
    assert not ModelSources().available("vqgan")
    # env var override, and packaged defaults that ship with the environment
    monkeypatch.setenv("MMREC_MODEL_GPT2", str(tmp_path))
    assert ModelSources().resolve("gpt2") == str(tmp_path.resolve())
    for name in ("efficientnet_lite0", "sbert", "summarizer"):
        assert Path(ModelSources().resolve(name)).exists()
    assert ModelSources.gpt2_ranks().name == "gpt2.tiktoken"


def test_pickle_only_folders_are_refused(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelNotAvailable, match="safetensors"):
        ModelSources(blip2=str(tmp_path)).resolve("blip2")


def test_resources():
    from resources import resources_for_env
    from resources.models import ModelSourcesResource

    res = resources_for_env("test")
    assert res["compute"].settings().device == "cpu"
    assert ModelSourcesResource(blip2="/x/y").sources().value("blip2") == "/x/y"
    assert res["model_sources"].sources().value("sbert") == "packaged"


# ------------------------------------------------------------------------------------------------------
# The incremental cache


def _text_table(texts: dict[str, str]) -> pl.DataFrame:
    return pl.DataFrame({"item_id": list(texts), "text": list(texts.values())})


def _counting_fn(calls: list, fail_after: int | None = None):
    def compute_fn(chunk: pl.DataFrame) -> pl.DataFrame:
        if fail_after is not None and len(calls) >= fail_after:
            raise RuntimeError("simulated crash")
        calls.append(chunk["item_id"].to_list())
        return pl.DataFrame({"n": pl.Series([float(len(t)) for t in chunk["text"]], dtype=pl.Float32)})
    return compute_fn


def _key(row):
    return content_key(row["text"]) if row["text"] else None


def test_cache_reuses_same_content_and_recomputes_changes(tmp_path):
    cache = FeatureCache(Lake(tmp_path).feature_cache(), "test", "len", {"v": 1}, {"n": pl.Float32})
    table = _text_table({f"i{k}": "x" * k for k in range(10)})
    calls: list = []
    rows, s = compute_incremental(table, _key, _counting_fn(calls), cache, chunk_size=4)
    assert s["computed"] == 9 and s["reused"] == 0 and s["missing_input"] == 1  # i0 has empty text
    assert rows["n"].to_list() == [None, *[float(k) for k in range(1, 10)]]
    _, s = compute_incremental(table, _key, _counting_fn(calls), cache, chunk_size=4)
    assert s["computed"] == 0 and s["reused"] == 9
    changed = table.with_columns(pl.when(pl.col("item_id") == "i3").then(pl.lit("changed!")).otherwise("text")
                                 .alias("text"))
    rows, s = compute_incremental(changed, _key, _counting_fn(calls), cache, chunk_size=4)
    assert s["computed"] == 1 and s["reused"] == 8 and calls[-1] == ["i3"]
    assert rows.filter(pl.col("item_id") == "i3")["n"].item() == 8.0
    # another model identity is another store
    other = FeatureCache(Lake(tmp_path).feature_cache(), "test", "len", {"v": 2}, {"n": pl.Float32})
    _, s = compute_incremental(table, _key, _counting_fn([]), other)
    assert s["computed"] == 9


def test_cache_resumes_after_a_crash_without_duplicates(tmp_path):
    cache = FeatureCache(Lake(tmp_path).feature_cache(), "test", "len", {"v": 1}, {"n": pl.Float32})
    table = _text_table({f"i{k}": "y" * (k + 1) for k in range(10)})
    calls: list = []
    with pytest.raises(RuntimeError, match="simulated crash"):
        compute_incremental(table, _key, _counting_fn(calls, fail_after=2), cache, chunk_size=3)
    assert len(cache.parts()) == 2 and cache.read().height == 6  # the two finished chunks are durable
    (cache.dir / ".part-999.parquet.tmp").write_bytes(b"half a file")  # a write cut short is never read
    rows, s = compute_incremental(table, _key, _counting_fn(calls), cache, chunk_size=3)
    assert s["computed"] == 4 and s["reused"] == 6
    assert rows["n"].to_list() == [float(k + 1) for k in range(10)]
    # a concurrent run that computed the same keys again leaves duplicates on disk, never in reads
    cache.append(cache.read().head(3))
    assert cache.read().height == 10
    assert cache.compact() == 5 and len(cache.parts()) == 1  # 2 + 2 chunks + the duplicate part
    assert cache.read().height == 10


@pytest.mark.parametrize("damage", ["flip a bit", "truncate", "truncate an unhashed part"])
def test_a_corrupt_cache_part_is_named_moved_aside_and_recomputed(tmp_path, caplog, damage):
    cache = FeatureCache(Lake(tmp_path).feature_cache(), "test", "len", {"v": 1}, {"n": pl.Float32})
    table = _text_table({f"i{k}": "w" * (k + 1) for k in range(10)})
    compute_incremental(table, _key, _counting_fn([]), cache, chunk_size=4)  # parts of 4, 4 and 2 items
    part = cache.parts()[1]
    data = bytearray(part.read_bytes())
    if damage == "flip a bit":  # in the values (mid-file): Parquet itself would read most such flips silently
        data[len(data) // 2] ^= 0x10
    else:
        data = data[: len(data) * 2 // 3]
    if damage == "truncate an unhashed part":  # a part written before hashes were in the names
        part.unlink()
        part = part.with_name("-".join(part.name.split("-")[:3]) + ".parquet")
    part.write_bytes(bytes(data))
    calls: list = []
    with caplog.at_level(logging.WARNING, logger="mmrec_pipeline"):
        rows, s = compute_incremental(table, _key, _counting_fn(calls), cache, chunk_size=4)
    assert (s["computed"], s["reused"]) == (4, 6) and calls == [["i4", "i5", "i6", "i7"]]
    assert rows["n"].to_list() == [float(k + 1) for k in range(10)]
    assert str(part) in caplog.text and "computed again" in caplog.text
    assert not part.exists() and len(list(cache.dir.glob(part.name + ".corrupt-*"))) == 1
    _, s = compute_incremental(table, _key, _counting_fn([]), cache)
    assert (s["computed"], s["reused"]) == (0, 10)


def test_max_items_per_run_leaves_the_rest_for_later(tmp_path):
    cache = FeatureCache(Lake(tmp_path).feature_cache(), "test", "len", {"v": 1}, {"n": pl.Float32})
    table = _text_table({f"i{k}": "z" * (k + 1) for k in range(10)})
    rows, s = compute_incremental(table, _key, _counting_fn([]), cache, max_items_per_run=4)
    assert (s["computed"], s["remaining"]) == (4, 6) and rows["n"].null_count() == 6
    rows, s = compute_incremental(table, _key, _counting_fn([]), cache, max_items_per_run=4)
    assert (s["computed"], s["reused"], s["remaining"]) == (4, 4, 2)
    rows, s = compute_incremental(table, _key, _counting_fn([]), cache, max_items_per_run=4)
    assert (s["computed"], s["remaining"]) == (2, 0) and rows["n"].null_count() == 0


# ------------------------------------------------------------------------------------------------------
# Packaged models: EfficientNet-Lite0 (embeddings + offline captions), all-MiniLM-L6-v2, SmolLM2


def test_simplified_efficientnet_computes_the_same_features():
    """BatchNorms folded, symmetric pads moved into the convolutions, ReLU6 in place: the packaged classifier's
    pooled features (float32) unchanged."""
    from efficientnet_lite_pytorch import EfficientNet

    from mmrec_pipeline.features.image import _state_dict, load_efficientnet_lite0, pooled_features

    simplified = load_efficientnet_lite0(ModelSources())
    reference = EfficientNet.from_name("efficientnet-lite0")
    reference.load_state_dict(_state_dict(ModelSources().resolve("efficientnet_lite0")), strict=True)
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.inference_mode():
        got, want = (pooled_features("efficientnet_lite0", m.eval(), x) for m in (simplified, reference))
    assert not any(isinstance(m, torch.nn.ZeroPad2d) and m.padding[0] == m.padding[1] for m in simplified.modules())
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_a_lake_written_on_a_bf16_cpu_is_reused_on_a_cpu_without_bf16(items, tmp_path, monkeypatch, caplog):
    """The feature dtype is pinned per dataset at first use (issue 33, section 5)."""
    from mmrec_pipeline import compute as compute_module
    from mmrec_pipeline.compute import pin_feature_dtype

    lake, auto = Lake(tmp_path / "lake"), Compute(device="cpu", batch_size=8)
    pin, root = lake.feature_dtype("shop"), lake.feature_cache()
    monkeypatch.setattr(compute_module, "cpu_has_native_bf16", lambda: True)  # the first machine
    first = pin_feature_dtype(auto, pin)
    assert first.dtype == "bfloat16" and json.loads(pin.read_text()) == {"dtype": "bfloat16"}
    _, s = image_embeddings(items, ModelSources(), first, root, models=("efficientnet_lite0",))
    assert s["efficientnet_lite0"]["computed"] == 3

    monkeypatch.setattr(compute_module, "cpu_has_native_bf16", lambda: False)  # a worker on an older CPU
    assert auto.inference_dtype == torch.float32  # unpinned, it would compute (and key) float32 features
    with caplog.at_level(logging.WARNING, logger="mmrec_pipeline"):
        second = pin_feature_dtype(auto, pin)
    assert second.dtype == "bfloat16" and "only emulates" in caplog.text
    _, s = image_embeddings(items, ModelSources(), second, root, models=("efficientnet_lite0",))
    assert (s["efficientnet_lite0"]["computed"], s["efficientnet_lite0"]["reused"]) == (0, 3)

    explicit = pin_feature_dtype(Compute(device="cpu", dtype="float32"), pin)  # changing it is explicit
    assert explicit.dtype == "float32" and json.loads(pin.read_text()) == {"dtype": "float32"}
    assert "re-pinned from bfloat16 to float32" in caplog.text
    assert pin_feature_dtype(auto, pin).dtype == "float32"


def test_image_embeddings_and_offline_captions_share_one_cnn_pass(items, tmp_path, monkeypatch):
    """Offline captions (colour, pattern and the classifier's top-3 of a full forward pass) and image embeddings
    from one CNN pass per image, whichever runs first; a changed image is computed again, the others reused."""
    from mmrec_pipeline.features import image

    root = Lake(tmp_path).feature_cache()
    caps, s = cap.captions(items, ModelSources(), CPU, root, models=("offline",))  # captions first
    texts = caps["caption_offline"].to_list()
    assert "red" in texts[0] and "plain" in texts[0], texts[0]
    assert "blue" in texts[1] and "striped" in texts[1], texts[1]
    assert "green" in texts[2], texts[2]
    assert texts[3] is None and s["offline"]["missing_input"] == 1
    model = image.load_efficientnet_lite0(ModelSources()).eval()
    x = image.to_tensor(image.letterbox(image.load_rgb(items["image_path"][0]), 224), (0.5,) * 3, (0.5,) * 3)
    with torch.inference_mode():
        top = model(x[None]).topk(3).indices[0].tolist()
    labels = cap.imagenet_labels()
    assert texts[0].split(",")[0].endswith(labels[top[0]]), (texts[0], top)
    assert all(labels[i] in texts[0] for i in top[1:])

    emb, s = image_embeddings(items, ModelSources(), CPU, root)  # reuses the captions' CNN pass
    assert s["without_image"] == 1
    assert s["efficientnet_lite0"]["computed"] == 0 and s["efficientnet_lite0"]["reused"] == 3
    assert "skipped" in s["resnet18"] or s["resnet18"]["computed"] == 3  # only where its weights exist
    vecs = emb["efficientnet_lite0"].to_list()
    assert vecs[3] is None and all(len(v) == 1280 for v in vecs[:3]) and emb.schema["efficientnet_lite0"] == VECTOR
    assert not np.allclose(vecs[0], vecs[2])  # red and green shirts differ

    # A changed image, embeddings first: computed again, the others reused, and captions then run no CNN at all.
    draw_item("yellow").save(items["image_path"][0])
    changed = items.with_columns(pl.Series("image_sha256", [
        hashlib.sha256(Path(p).read_bytes()).hexdigest() if p else None for p in items["image_path"]]))
    _, s = image_embeddings(changed, ModelSources(), CPU, root, models=("efficientnet_lite0",))
    assert s["efficientnet_lite0"]["computed"] == 1 and s["efficientnet_lite0"]["reused"] == 2
    monkeypatch.setattr(image, "pooled_features", lambda *a: pytest.fail("the CNN ran twice for one image"))
    caps, s = cap.captions(changed, ModelSources(), CPU, root, models=("offline",))
    assert s["offline"]["computed"] == 1 and "yellow" in caps["caption_offline"][0]


def test_pattern_detector_on_drawn_patterns():
    for pattern, expected in (("solid", "solid"), ("stripes", "stripes")):
        arr = np.asarray(draw_item("blue", pattern, size=128), dtype=np.uint8)
        assert cap.detect_pattern(arr, cap.foreground_mask(arr)) == expected
    assert cap.colour_name((198, 40, 45)) == "red" and cap.colour_name((30, 42, 98)) == "navy"
    assert len(cap.imagenet_labels()) == 1000


def test_text_embeddings_sbert_fields_and_gpt2_bpe(items, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_embd=8, n_layer=1, n_head=2, n_positions=32)).save_pretrained(gpt2)
    sources = ModelSources(gpt2=str(gpt2))
    captions = pl.DataFrame({"item_id": ["A", "B"], "caption_offline": ["A red plain jersey.", "A blue striped jersey."]})
    summaries = pl.DataFrame({"item_id": ["A"], "summary": ["Customers love the colour."]})
    out, s = text_embeddings(items, sources, CPU, Lake(tmp_path).feature_cache(), captions=captions, summaries=summaries)
    for col in ("sbert_title", "sbert_description", "sbert_text", "sbert_caption_offline",
                "sbert_title_caption_offline", "sbert_summary", "gpt2_bpe"):
        assert col in out.columns
    v = np.array(out["sbert_text"][0])
    assert v.shape == (384,) and abs(np.linalg.norm(v) - 1) < 1e-4
    assert out["sbert_caption_offline"][2] is None and out["sbert_summary"][1] is None
    assert len(out["gpt2_bpe"][0]) == 8
    assert s["gpt2_bpe"]["computed"] == 4
    _, s = text_embeddings(items, sources, CPU, Lake(tmp_path).feature_cache(), captions=captions, summaries=summaries)
    assert s["sbert"]["computed"] == 0 and s["gpt2_bpe"]["computed"] == 0
    # without GPT-2 weights the column is null and the reason is reported
    out, s = text_embeddings(items, ModelSources(gpt2=str(tmp_path / "none")), CPU, Lake(tmp_path).feature_cache())
    assert out["gpt2_bpe"].null_count() == 4 and "MMREC_MODEL_GPT2" in s["gpt2_bpe"]["skipped"]


def test_review_summaries_with_packaged_smollm2(link_converted_summarizer, tmp_path):
    items = pl.DataFrame({"item_id": ["A", "B", "C"], "description": ["Red shirt.", "Blue mug.", "Plain lamp."]})
    ts = pl.datetime(2024, 1, 1, time_zone="UTC")
    inter = pl.DataFrame({
        "user_id": ["u1", "u2", "u3"], "item_id": ["A", "A", "B"],
        "review_title": ["Love it", "Too small", "Great mug"],
        "review_text": ["Lovely colour, soft cotton.", "Runs small, order a size up.", "Keeps coffee hot."],
    }).with_columns(ts.alias("ts"), pl.lit("train").alias("split"))
    cfg = SummaryConfig(max_new_tokens=12)
    root = Lake(tmp_path).feature_cache()  # with the session's converted SmolLM2 linked in: converting it runs once
    link_converted_summarizer(root)
    out, s = review_summaries(items, inter, ModelSources(), CPU, root, config=cfg)
    assert out["summary_source"].to_list() == ["reviews", "reviews", "description"]
    assert out["summary"][2] == "Plain lamp." and all(len(t) > 0 for t in out["summary"][:2])
    assert out["n_reviews"].to_list() == [2, 1, 0] and s["computed"] == 2
    _, s = review_summaries(items, inter, ModelSources(), CPU, root, config=cfg)
    assert s["computed"] == 0 and s["reused"] == 2
    # new reviews change the key of that item only
    more = pl.concat([inter, inter.head(1).with_columns(pl.lit("u9").alias("user_id"), pl.lit("B").alias("item_id"))])
    _, s = review_summaries(items, more, ModelSources(), CPU, root, config=cfg, max_items_per_run=0)
    assert (s["computed"], s["reused"], s["remaining"]) == (0, 1, 1)


def test_summaries_left_for_a_later_run_are_gaps_the_backfill_sensor_sees(tmp_path):
    """A budget-limited `review_summaries` run writes counts and raw-review vectors for every item but no summary
    for the items left for later: `feature_gaps` (the `items_missing_features` sensor) counts exactly those."""
    from mmrec_pipeline.catalog import feature_gaps

    items = pl.DataFrame({"item_id": ["A", "B", "C"], "image_sha256": [None, None, None]}, schema_overrides={
        "image_sha256": pl.Utf8})
    table = pl.DataFrame({"item_id": ["A", "B", "C"], "summary": ["Loved.", None, "Plain lamp."],
                          "summary_source": ["reviews", None, "description"], "n_reviews": [2, 1, 0],
                          "n_reviews_summarised": [2, 0, 0], "sbert_reviews": [[0.1], [0.2], None]})
    write_parquet(items, tmp_path / "items.parquet")
    write_parquet(table, tmp_path / "review_summaries.parquet")
    assert feature_gaps(tmp_path) == {"review_summaries": 1}
    write_parquet(table.with_columns(pl.col("summary").fill_null("Fine.")), tmp_path / "review_summaries.parquet")
    assert feature_gaps(tmp_path) == {"review_summaries": 0}


# ------------------------------------------------------------------------------------------------------
# Vision-language captioners: tiny random BLIP-2 and LLaVA-NeXT through the real loader


@pytest.fixture(scope="module")
def tiny_blip2(tmp_path_factory) -> Path:
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        BlipImageProcessor,
        OPTConfig,
    )

    folder = tmp_path_factory.mktemp("blip2")
    tok = word_tokenizer(WORDS, image_token_attr=False)
    v = len(tok)
    config = Blip2Config(
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        qformer_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                        "num_attention_heads": 2, "encoder_hidden_size": 16, "vocab_size": v},
        text_config=OPTConfig(vocab_size=v, hidden_size=16, ffn_dim=32, num_hidden_layers=1, num_attention_heads=2,
                              word_embed_proj_dim=16, max_position_embeddings=256, pad_token_id=0, bos_token_id=2,
                              eos_token_id=3).to_dict(),
        num_query_tokens=4, image_token_index=tok.convert_tokens_to_ids("<image>"))
    torch.manual_seed(0)
    Blip2ForConditionalGeneration(config).save_pretrained(folder)
    Blip2Processor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok,
                   num_query_tokens=4).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory) -> Path:
    from transformers import (
        CLIPVisionConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
        MistralConfig,
    )

    folder = tmp_path_factory.mktemp("llava")
    tok = word_tokenizer(WORDS)
    pinpoints = [[32, 32], [32, 64], [64, 32]]
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                       num_attention_heads=2, image_size=32, patch_size=8,
                                       projection_dim=16).to_dict(),
        text_config=MistralConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                  num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                                  max_position_embeddings=512, pad_token_id=0, bos_token_id=2,
                                  eos_token_id=3).to_dict(),
        image_token_index=tok.convert_tokens_to_ids("<image>"), image_grid_pinpoints=pinpoints,
        vision_feature_layer=-1, vision_feature_select_strategy="default")
    template = ("{% for m in messages %}[INST] {% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n"
                "{% else %}{{ c['text'] }}{% endif %}{% endfor %} [/INST]{% endfor %}")
    torch.manual_seed(0)
    LlavaNextForConditionalGeneration(config).save_pretrained(folder)
    LlavaNextProcessor(
        image_processor=LlavaNextImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                                image_grid_pinpoints=pinpoints),
        tokenizer=tok, patch_size=8, vision_feature_select_strategy="default", chat_template=template,
        num_additional_image_tokens=1).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("kind", ["blip2", "llava"])
def test_vlm_captions_with_tiny_random_models(kind, items, tmp_path, request, caplog):
    folder = request.getfixturevalue(f"tiny_{kind}")
    sources = ModelSources(**{kind: str(folder)})
    cfg = cap.CaptionConfig(max_new_tokens=4, max_batch=2)
    compute = Compute(device="cpu", batch_size=8, quantization="4bit")  # no CUDA: explained, then unquantized
    with caplog.at_level(logging.INFO, logger="captions-test"):
        out, s = cap.captions(items, sources, compute, Lake(tmp_path).feature_cache(), models=(kind,), config=cfg,
                              log=logging.getLogger("captions-test"))
    logs = [r.getMessage() for r in caplog.records]
    col = out[f"caption_{kind}"]
    assert col.null_count() == 1 and col[3] is None and all(isinstance(t, str) for t in col[:3])
    assert s[kind]["computed"] == 3
    assert any("needs a CUDA device" in m for m in logs)
    assert "blip2" in cap.available_caption_models(ModelSources(blip2=str(request.getfixturevalue("tiny_blip2"))))
    _, s = cap.captions(items, sources, compute, Lake(tmp_path).feature_cache(), models=(kind,), config=cfg)
    assert s[kind]["computed"] == 0
    # a changed prompt is a new model key: everything is captioned again, within the run's budget
    new = dataclasses.replace(cfg, prompt="describe this product image in detail .")
    _, s = cap.captions(items, sources, compute, Lake(tmp_path).feature_cache(), models=(kind,), config=new, max_items_per_run=2)
    assert (s[kind]["computed"], s[kind]["remaining"]) == (2, 1)


# ------------------------------------------------------------------------------------------------------
# VQ codes: the pipeline's own VQ-VAE and a tiny random Chameleon VQ-VAE


def test_ssim_and_psnr():
    ramp = torch.linspace(0.2, 0.8, 32)
    x = (ramp[None, :] * ramp[:, None]).expand(2, 3, 32, 32).contiguous()  # a smooth image
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-5)
    torch.manual_seed(0)
    mild, strong = ((x + s * torch.randn_like(x)).clamp(0, 1) for s in (0.02, 0.2))
    assert (ssim(x, strong) < ssim(x, mild)).all() and (ssim(x, strong) < 0.5).all()
    assert torch.allclose(psnr(x, x + 0.1), torch.full((2,), 20.0), atol=1e-3)  # MSE 0.01 -> 20 dB


def test_vq_vae_train_save_load_and_codes(tmp_path):
    colours = list(RGB)
    specs = [(f"V{i:02d}", colours[i % 4], ("solid", "stripes")[i % 2]) for i in range(36)] + [("NOIMG", None, "solid")]
    items = make_items(tmp_path / "img", specs)
    config = VQConfig(image_size=32, channels=(16,), res_blocks=1, codebook_size=32, code_dim=8, steps=30,
                      batch_size=8, lr=3e-3)
    model, report = train_vq_vae(items["image_path"].drop_nulls().to_list(), config, CPU)
    assert {"psnr", "ssim", "loss_curve", "codebook_usage"} <= set(report) and report["holdout_images"] == 16
    assert report["loss_curve"][-1][1] < report["loss_curve"][0][1]
    model.save_pretrained(tmp_path / "vq")
    assert sorted(p.name for p in (tmp_path / "vq").iterdir()) == ["config.json", "model.safetensors"]
    again = VQVAE.from_pretrained(tmp_path / "vq")
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.equal(model.encode(x), again.encode(x)) and model.encode(x).shape == (2, 16, 16)

    out, s = vq_codes(items, ModelSources(), CPU, Lake(tmp_path).feature_cache(), vqvae=tmp_path / "vq")
    codes = out["vq_codes"].to_list()
    assert codes[-1] is None and all(len(c) == 256 and max(c) < 32 for c in codes[:-1])
    assert s["computed"] == 36 and s["missing_input"] == 1 and s["tokenizer"].startswith("vqvae:")
    _, s = vq_codes(items, ModelSources(), CPU, Lake(tmp_path).feature_cache(), vqvae=again)
    assert s["computed"] == 0


def test_vq_codes_from_a_tiny_chameleon_vqgan(items, tmp_path):
    from transformers import ChameleonVQVAE, ChameleonVQVAEConfig

    config = ChameleonVQVAEConfig(resolution=32, base_channels=32, channel_multiplier=[1, 1], num_res_blocks=1,
                                  num_embeddings=64, embed_dim=8, latent_channels=8, attn_resolutions=None)
    torch.manual_seed(0)
    ChameleonVQVAE(config).save_pretrained(tmp_path / "vqgan")
    sources = ModelSources(vqgan=str(tmp_path / "vqgan"))
    assert sources.available("vqgan")
    out, s = vq_codes(items, sources, CPU, Lake(tmp_path).feature_cache())
    codes = out["vq_codes"].to_list()
    assert codes[3] is None and all(len(c) == 256 and 0 <= min(c) and max(c) < 64 for c in codes[:3])
    assert s["tokenizer"].startswith("vqgan:") and s["computed"] == 3


# ------------------------------------------------------------------------------------------------------
# A growing catalog: the sample's version 2 adds items; only those are computed


def test_growing_sample_catalog_computes_only_new_items(sample_raw, tmp_path):
    from mmrec_pipeline.data.synthetic import read

    v1_all = read(sample_raw(1), {"version": 1}).items
    v1 = v1_all.sort("item_id").head(6)
    v2_all = read(sample_raw(2), {"version": 2}).items
    new = v2_all.filter(~pl.col("item_id").is_in(v1_all["item_id"].implode()))
    assert new.height > 0
    new = new.head(6)  # a few of them: what is computed is what is new, whatever the count
    v2 = pl.concat([v2_all.filter(pl.col("item_id").is_in(v1["item_id"].implode())), new])
    root = Lake(tmp_path).feature_cache()
    compute = Compute(device="cpu", batch_size=16)
    for table, expect in ((v1, v1.height), (v2, new.height)):
        _, s = image_embeddings(table, ModelSources(), compute, root, models=("efficientnet_lite0",))
        assert s["efficientnet_lite0"]["computed"] == expect
        assert s["efficientnet_lite0"]["reused"] == table.height - expect
        _, s = cap.captions(table, ModelSources(), compute, root, models=("offline",))
        assert s["offline"]["computed"] == expect and s["offline"]["reused"] == table.height - expect
