"""Image captions: BLIP-2 and LLaVA-NeXT through transformers, and an offline captioner that runs anywhere.

- `blip2` (`Blip2ForConditionalGeneration`, default `Salesforce/blip2-opt-2.7b`) and `llava`
  (`LlavaNextForConditionalGeneration`, default `llava-hf/llava-v1.6-mistral-7b-hf`): batched greedy generation
  with the LVLM paper's prompt; optional 4-bit/8-bit bitsandbytes quantization (`compute.quantization`) on CUDA.
- `offline`: the packaged EfficientNet-Lite0 ImageNet classifier's top-3 labels + dominant colours (k-means on
  the foreground, named in CIELAB) + a pattern detector (solid / stripes / checks / dots / floral from edge
  orientation and blob shape statistics), written as one sentence. It knows nothing a VLM knows about
  materials or occasions, but it sees colour and pattern, which is what titles often lack.

The cache key of a caption is the image bytes; the model key includes the weights, the prompt text and
`PROMPT_VERSION`, so a changed prompt recomputes every caption. Long runs take `max_items_per_run` and resume.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Sequence

import numpy as np
import polars as pl
import torch
from PIL import Image

from mmrec_pipeline import backbones
from mmrec_pipeline.compute import Compute, logger
from mmrec_pipeline.features.cache import FeatureCache, compute_incremental, per_model
from mmrec_pipeline.features.image import (
    embed_incremental,
    image_batches,
    image_key,
    letterbox,
    load_efficientnet_lite0,
)
from mmrec_pipeline.storage import FeatureCacheFolder
from mmrec_pipeline.weights import ModelSources

LVLM_PROMPT = ("Describe this product image in detail, focusing on visual attributes like color, style, material, "
               "and what occasion it might be suitable for.")
PROMPT_VERSION = "1"  # bump with any change to how prompts are built, so captions are recomputed
OFFLINE_VERSION = "2"  # bump when the offline captioner's analysis or wording changes (2: labels from the stored
# pooled features, head in float32)
CAPTION_MODELS = ("offline", "blip2", "llava")


@dataclasses.dataclass(frozen=True)
class CaptionConfig:
    prompt: str = LVLM_PROMPT
    max_new_tokens: int = 80  # the LVLM paper's descriptions are a few sentences
    max_batch: int = 8  # VLM batch size cap (compute.batch_size is sized for CNNs)


# ------------------------------------------------------------------------------------------------------
# Offline captioner: colours


# Named colours (sRGB). Nearest in CIELAB decides the name, which matches perceived differences far better
# than RGB distance does.
PALETTE: dict[str, tuple[int, int, int]] = {
    "black": (25, 25, 25), "white": (248, 248, 245), "grey": (135, 135, 140), "light grey": (195, 195, 198),
    "navy": (28, 40, 100), "blue": (60, 125, 215), "light blue": (150, 195, 235), "teal": (20, 128, 128),
    "green": (40, 140, 65), "olive": (120, 120, 35), "yellow": (245, 205, 45), "orange": (240, 135, 30),
    "red": (200, 35, 40), "burgundy": (120, 20, 40), "pink": (240, 150, 180), "purple": (115, 60, 160),
    "brown": (120, 75, 40), "beige": (215, 195, 160),
}


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB in [0, 255], shape [..., 3] -> CIELAB (D65)."""
    c = rgb.astype(np.float64) / 255.0
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = c @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


_PALETTE_NAMES = list(PALETTE)
_PALETTE_LAB = rgb_to_lab(np.array(list(PALETTE.values())))


def colour_name(rgb) -> str:
    d = ((_PALETTE_LAB - rgb_to_lab(np.asarray(rgb, dtype=np.float64))) ** 2).sum(1)
    return _PALETTE_NAMES[int(d.argmin())]


def foreground_mask(arr: np.ndarray, tol: float = 18.0, enclosed_tol: float = 3.0) -> np.ndarray:
    """The product's pixels: everything but the backdrop, whose colour is the median of the image border.

    The backdrop is what is connected to the border and close to its colour (so pale parts inside the product,
    e.g. light stripes or a white body inside its outline, stay product), plus enclosed regions of almost
    exactly the backdrop colour (the backdrop seen through a handle or a strap).
    """
    # imported here, not at the top: every process importing the code location would pay for it
    from scipy import ndimage

    border = np.concatenate([arr[:2].reshape(-1, 3), arr[-2:].reshape(-1, 3),
                             arr[:, :2].reshape(-1, 3), arr[:, -2:].reshape(-1, 3)])
    dist = np.sqrt(((rgb_to_lab(arr) - rgb_to_lab(np.median(border, axis=0))) ** 2).sum(-1))
    near, _ = ndimage.label(dist < tol)
    edge = np.unique(np.concatenate([near[0], near[-1], near[:, 0], near[:, -1]]))
    backdrop = np.isin(near, edge[edge > 0])
    seen_through, n = ndimage.label((dist < enclosed_tol) & ~backdrop)
    if n:
        width = ndimage.maximum(ndimage.distance_transform_edt(seen_through > 0), seen_through,
                                index=np.arange(1, n + 1))
        backdrop |= np.isin(seen_through, np.flatnonzero(np.asarray(width) >= 3) + 1)
    mask = ndimage.binary_opening(~backdrop, iterations=1)
    if mask.mean() < 0.02:  # no clear backdrop (e.g. a full-bleed photo): the whole image is the product
        mask[:] = True
    return mask


def kmeans(x: np.ndarray, k: int, iters: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic k-means (farthest-point init): (centres [k, d], labels [n])."""
    centres = [x[0]]
    for _ in range(1, k):
        d = np.min([((x - c) ** 2).sum(1) for c in centres], axis=0)
        centres.append(x[int(d.argmax())])
    centres = np.array(centres, dtype=np.float64)
    for _ in range(iters):
        labels = ((x[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)
        for j in range(k):
            if (labels == j).any():
                centres[j] = x[labels == j].mean(0)
    return centres, labels


def dominant_colours(arr: np.ndarray, mask: np.ndarray, k: int = 3, min_share: float = 0.2) -> list[str]:
    """Up to two colour names covering at least `min_share` of the product, most frequent first."""
    px = arr[mask].astype(np.float64)
    if px.shape[0] < 10:
        return []
    lab = rgb_to_lab(px)
    step = max(1, lab.shape[0] // 4000)  # k-means on a subsample: colours need no more
    centres, labels = kmeans(lab[::step], min(k, lab[::step].shape[0]))
    shares = np.bincount(labels, minlength=len(centres)) / labels.shape[0]
    names: dict[str, float] = {}
    for j in np.argsort(-shares):
        if shares[j] == 0:
            continue
        rgb_centre = px[::step][labels == j].mean(0)
        name = colour_name(rgb_centre)
        names[name] = names.get(name, 0.0) + float(shares[j])
    ranked = sorted(names.items(), key=lambda kv: -kv[1])
    return [n for n, s in ranked if s >= min_share][:2] or [ranked[0][0]]


# ------------------------------------------------------------------------------------------------------
# Offline captioner: pattern


PATTERN_WORDS = {"solid": "plain", "stripes": "striped", "checks": "checked", "dots": "polka-dot",
                 "floral": "floral"}


def detect_pattern(arr: np.ndarray, mask: np.ndarray) -> str:
    """solid / stripes / checks / dots / floral from the product's interior.

    - solid: little luminance variation;
    - stripes: edge orientations concentrated in one direction;
    - checks: edge orientations concentrated in two perpendicular directions;
    - dots vs floral: isotropic edges; dots are compact round blobs, flowers are lobed shapes with holes.
    """
    from scipy import ndimage  # (as in foreground_mask)

    inner = ndimage.binary_erosion(mask, iterations=3)  # drop the silhouette's own outline
    if inner.sum() < 150:
        return "solid"
    lum = arr.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    vals = lum[inner]
    if vals.std() < 9.0:
        return "solid"
    gx, gy = ndimage.sobel(lum, axis=1), ndimage.sobel(lum, axis=0)
    mag = np.hypot(gx, gy)[inner]
    theta = np.mod(np.arctan2(gy, gx)[inner], np.pi)
    hist = np.bincount((theta / np.pi * 12).astype(int) % 12, weights=mag, minlength=12)
    hist = hist / max(hist.sum(), 1e-9)
    smooth = hist + np.roll(hist, 1) + np.roll(hist, -1)  # a direction +-15 degrees
    top = int(smooth.argmax())
    main, perp = smooth[top], smooth[(top + 6) % 12]
    if main > 0.62 and perp < 0.2:
        return "stripes"
    if main + perp > 0.72 and perp > 0.2:
        return "checks"
    # Blob shapes of the minority tone (the "ink") inside the product.
    thresh = (vals.max() + vals.min()) / 2
    ink = inner & (lum > thresh)
    if ink.sum() > inner.sum() / 2:
        ink = inner & (lum <= thresh)
    labels, n = ndimage.label(ink)
    if n == 0:
        return "solid"
    areas = ndimage.sum(ink, labels, index=np.arange(1, n + 1))
    filled = ndimage.sum(ndimage.binary_fill_holes(ink), labels, index=np.arange(1, n + 1))
    perim = ndimage.sum(ink & ~ndimage.binary_erosion(ink), labels, index=np.arange(1, n + 1))
    keep = areas >= 8
    if not keep.any():
        return "dots"
    # Isoperimetric ratio from pixel counts: > 1 for small discs (boundary pixels undercount the perimeter),
    # about 0.5 for five-petal flowers, lower still for bands.
    compact = 4 * np.pi * areas[keep] / np.maximum(perim[keep] * 1.1, 1) ** 2
    holes = (filled[keep] - areas[keep]) / areas[keep]
    return "floral" if np.median(compact) < 0.8 or np.median(holes) > 0.05 else "dots"


# ------------------------------------------------------------------------------------------------------
# Offline captioner


@functools.cache
def imagenet_labels() -> list[str]:
    """The 1,000 ImageNet class names (shipped in torchvision's weight metadata; nothing is downloaded)."""
    import torchvision

    return list(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def describe(labels: Sequence[str], colours: Sequence[str], pattern: str) -> str:
    """One sentence, e.g. 'A red and white striped jersey, possibly a sweatshirt or a cardigan.'"""
    colour = " and ".join(colours)
    words = " ".join(w for w in (colour, PATTERN_WORDS[pattern]) if w)
    head = f"{_article(words or labels[0]).capitalize()} {words} {labels[0]}".replace("  ", " ")
    rest = [f"{_article(w)} {w}" for w in labels[1:]]
    return head + (f", possibly {' or '.join(rest)}." if rest else ".")


class OfflineCaptioner:
    """Labels from EfficientNet-Lite0's classifier head applied to the pooled features `image_embeddings` stores
    (the CNN runs once per image for both features), colours and pattern from the image itself."""

    def __init__(self, sources: ModelSources, compute: Compute, feature_cache: FeatureCacheFolder, log=None):
        self.sources, self.compute, self.feature_cache, self.log = sources, compute, feature_cache, log
        self.head = load_efficientnet_lite0(sources)._fc.float()  # the ImageNet classifier on pooled features
        self.labels = imagenet_labels()

    @torch.inference_mode()
    def __call__(self, chunk: pl.DataFrame) -> list[str | None]:
        pooled, _ = embed_incremental(chunk, "efficientnet_lite0", self.sources, self.compute, self.feature_cache,
                                      log=self.log)
        pooled = pooled.to_list()
        out: list[str | None] = []
        rows = iter(range(chunk.height))
        for images, ok in image_batches(chunk["image_path"].to_list(), lambda im: im, self.compute):
            decoded = iter(images or [])
            for good in ok:
                vector, image = pooled[next(rows)], next(decoded) if good else None
                out.append(self.caption(image, vector) if image is not None and vector is not None else None)
        return out

    def caption(self, image: Image.Image, pooled: list[float]) -> str:
        top = self.head(torch.tensor(pooled, dtype=torch.float32)).topk(3).indices.tolist()
        arr = np.asarray(letterbox(image, 128), dtype=np.uint8)
        mask = foreground_mask(arr)
        return describe([self.labels[i] for i in top], dominant_colours(arr, mask), detect_pattern(arr, mask))


# ------------------------------------------------------------------------------------------------------
# Vision-language models


VLM_CLASSES = {"blip2": "Blip2ForConditionalGeneration", "llava": "LlavaNextForConditionalGeneration"}


def effective_quantization(compute: Compute) -> str:
    """bitsandbytes 4/8-bit is a CUDA feature here; on CPU the full-precision model is used instead."""
    return compute.quantization if compute.torch_device.type == "cuda" else "none"


def load_vlm(kind: str, sources: ModelSources, compute: Compute, log=None):
    """(model, processor) for `blip2` or `llava`: safetensors only, no remote code, left padding."""
    import transformers

    info = logger(log).info
    path = sources.resolve(kind)
    device = compute.torch_device
    quant = effective_quantization(compute)
    if compute.quantization != quant:
        info(f"captions/{kind}: {compute.quantization} quantization needs a CUDA device (bitsandbytes); "
             f"running unquantized in {compute.torch_dtype} on {device}")
    model = backbones.from_pretrained(getattr(transformers, VLM_CLASSES[kind]), path, sources, f"captions/{kind}",
                                      dtype=compute.torch_dtype, **backbones.quantization_kwargs(quant, compute)).eval()
    if quant == "none":
        model = model.to(device)
    processor = transformers.AutoProcessor.from_pretrained(path, **backbones.pretrained_kwargs(path, sources))
    processor.tokenizer.padding_side = "left"  # batched generation continues every row from its last token
    return model, processor


def vlm_prompt(kind: str, processor, prompt: str) -> str:
    if kind == "blip2":  # BLIP-2's OPT was tuned on VQA in this form
        return f"Question: {prompt} Answer:"
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    return processor.apply_chat_template(conversation, add_generation_prompt=True)


@torch.inference_mode()
def vlm_generate(kind: str, model, processor, images: Sequence[Image.Image], config: CaptionConfig,
                 compute: Compute) -> list[str]:
    text = [vlm_prompt(kind, processor, config.prompt)] * len(images)
    inputs = processor(images=list(images), text=text, return_tensors="pt", padding=True).to(compute.torch_device)
    if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    out = model.generate(**inputs, max_new_tokens=config.max_new_tokens, do_sample=False)
    n = inputs["input_ids"].shape[1]
    if out.shape[1] >= n and torch.equal(out[:, :n], inputs["input_ids"]):
        out = out[:, n:]  # decoder-only LMs return the prompt too
    return [t.strip() for t in processor.batch_decode(out, skip_special_tokens=True)]


# ------------------------------------------------------------------------------------------------------


def _identity(kind: str, sources: ModelSources, compute: Compute, config: CaptionConfig) -> dict:
    if kind == "offline":
        return {"weights": sources.identity("efficientnet_lite0"), "captioner": OFFLINE_VERSION,
                "dtype": str(compute.inference_dtype)}
    return {"weights": sources.identity(kind), "prompt": config.prompt, "prompt_version": PROMPT_VERSION,
            "max_new_tokens": config.max_new_tokens, "quantization": effective_quantization(compute)}


def _caption_fn(kind: str, sources: ModelSources, compute: Compute, config: CaptionConfig,
                feature_cache: FeatureCacheFolder, log):
    @functools.cache  # loaded only if something must be computed
    def captioner() -> Callable[[list[Image.Image]], list[str]]:
        model, processor = load_vlm(kind, sources, compute, log)
        return lambda images: vlm_generate(kind, model, processor, images, config, compute)

    if kind == "offline":
        offline = functools.cache(lambda: OfflineCaptioner(sources, compute, feature_cache, log))
        return lambda chunk: pl.DataFrame({"caption": pl.Series(offline()(chunk), dtype=pl.Utf8)})

    def compute_fn(chunk: pl.DataFrame) -> pl.DataFrame:
        out: list[str | None] = []
        for images, ok in image_batches(chunk["image_path"].to_list(), lambda im: im, compute,
                                        min(compute.batch_size, config.max_batch)):
            texts = iter(captioner()(images) if images else [])
            out.extend(next(texts) if good else None for good in ok)
        return pl.DataFrame({"caption": pl.Series(out, dtype=pl.Utf8)})

    return compute_fn


def captions(
    items: pl.DataFrame,
    sources: ModelSources,
    compute: Compute,
    feature_cache: FeatureCacheFolder,
    models: Sequence[str] = ("offline",),
    config: CaptionConfig = CaptionConfig(),
    max_items_per_run: int | None = None,
    log: logging.Logger | None = None,
) -> tuple[pl.DataFrame, dict]:
    """One row per item: `item_id` + `caption_<model>` per model (null: no image, model unavailable, or left
    for a later run by `max_items_per_run`). A model whose weights are missing is skipped with the reason in
    its stats."""
    unknown = [kind for kind in models if kind not in CAPTION_MODELS]
    if unknown:
        raise ValueError(f"unknown caption model '{unknown[0]}'; known: {', '.join(CAPTION_MODELS)}")

    def caption(kind: str) -> tuple[pl.Series, dict]:
        cache = FeatureCache(feature_cache, "captions", kind, _identity(kind, sources, compute, config),
                             {"caption": pl.Utf8})
        chunk = max(64, compute.batch_size * 2) if kind == "offline" else max(16, config.max_batch * 4)
        rows, stats = compute_incremental(
            items.select("item_id", "image_path", "image_sha256"), image_key,
            _caption_fn(kind, sources, compute, config, feature_cache, log), cache, chunk_size=chunk,
            max_items_per_run=max_items_per_run, log=log, what=f"captions ({kind})")
        return rows["caption"], stats

    out, stats = per_model(items, models, caption, column=lambda kind: f"caption_{kind}", dtype=pl.Utf8,
                           what="captions", log=log)
    return out, {"items": items.height, **stats}


def available_caption_models(sources: ModelSources) -> tuple[str, ...]:
    """`offline` plus every VLM whose weights can be found."""
    return ("offline", *[k for k in ("blip2", "llava") if sources.available(k)])
