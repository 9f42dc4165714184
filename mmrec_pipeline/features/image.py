"""Image embeddings: pooled CNN features per item image (EfficientNet-Lite0, ResNet18).

- `efficientnet_lite0`: the packaged ImageNet weights (offline default), 1280-d global-average-pooled features
  of the last conv block; inputs normalised with mean = std = 0.5 as the weights were trained.
- `resnet18`: torchvision's ImageNet weights, 512-d pooled features, computed only when the checkpoint is
  available (a local file via MMREC_MODEL_RESNET18 or the torch hub cache). The MM-GPT2Rec paper's 256-d image
  vector is a learned projection of these inside the recommender, not a feature here.

Also home of the shared image plumbing (decoding, letterboxing, batched DataLoader) the caption and VQ
families use.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import polars as pl
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from mmrec_pipeline.compute import Compute, keep_freed_memory
from mmrec_pipeline.features.cache import VECTOR, FeatureCache, compute_incremental, per_model
from mmrec_pipeline.storage import FeatureCacheFolder
from mmrec_pipeline.weights import ModelSources

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PREPROCESS_VERSION = "letterbox-v1"  # bump when decoding/resizing changes, so embeddings are recomputed

# name -> (dim, input size, mean, std)
EMBEDDERS: dict[str, tuple[int, int, tuple, tuple]] = {
    "efficientnet_lite0": (1280, 224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "resnet18": (512, 224, IMAGENET_MEAN, IMAGENET_STD),
}


# ------------------------------------------------------------------------------------------------------
# Decoding and batching


def load_rgb(path: str | Path) -> Image.Image:
    """Decode to RGB; transparent pixels become white (product cut-outs are shown on white)."""
    with Image.open(path) as im:
        im.load()
        if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(bg, rgba).convert("RGB")
        return im.convert("RGB")


def letterbox(img: Image.Image, size: int) -> Image.Image:
    """Pad to a square with the corner colour, then resize: keeps the whole product in view (a centre crop
    would cut the top and bottom of tall items such as dresses)."""
    w, h = img.size
    if w != h:
        side = max(w, h)
        canvas = Image.new("RGB", (side, side), img.getpixel((0, 0)))
        canvas.paste(img, ((side - w) // 2, (side - h) // 2))
        img = canvas
    return img.resize((size, size), Image.Resampling.BICUBIC)


def to_tensor(img: Image.Image, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)) -> torch.Tensor:
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


class ImageFiles(Dataset):
    """Decodes image files in DataLoader workers. A file that fails to decode yields `ok = False`, so one
    bad image costs one null instead of the whole run."""

    def __init__(self, paths: Sequence[str], transform: Callable[[Image.Image], object]):
        self.paths, self.transform = list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return self.transform(load_rgb(self.paths[i])), True
        except Exception:  # noqa: BLE001 - decoding errors of any kind become a null feature
            return None, False


def _collate(batch):
    """(stacked tensors, or the list of PIL images, of the items that decoded | None if none did; ok flags)."""
    ok = [b[1] for b in batch]
    good = [b[0] for b in batch if b[1]]
    if not good:
        return None, ok
    return (torch.stack(good) if isinstance(good[0], torch.Tensor) else good), ok


def image_batches(paths: Sequence[str], transform: Callable, compute: Compute,
                  batch_size: int | None = None) -> Iterator[tuple[object, list[bool]]]:
    """(batch of the transformed images that decoded or None, ok flag per path), in path order."""
    # Workers fork explicitly: in a step process of the local executor (itself forked by a forkserver) the default
    # start method is forkserver, which would have to pickle the per-model transform closures.
    loader = DataLoader(ImageFiles(paths, transform), batch_size=batch_size or compute.batch_size,
                        num_workers=compute.num_workers, collate_fn=_collate,
                        multiprocessing_context="fork" if compute.num_workers else None,
                        persistent_workers=False, pin_memory=compute.torch_device.type == "cuda")
    yield from loader


def image_key(row: dict) -> str | None:
    """An image feature depends on the image bytes only: their sha256, or None without a usable image."""
    return row["image_sha256"] if row.get("image_path") and row.get("image_sha256") else None


# ------------------------------------------------------------------------------------------------------
# Models


def _state_dict(path: str) -> dict[str, torch.Tensor]:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    # Plain state dicts saved with torch.save; weights_only refuses anything but tensors (no code runs).
    return torch.load(path, map_location="cpu", weights_only=True)


def load_efficientnet_lite0(sources: ModelSources) -> torch.nn.Module:
    """The EfficientNet-Lite0 ImageNet classifier (eval mode, on CPU)."""
    from efficientnet_lite_pytorch import EfficientNet

    path = sources.resolve("efficientnet_lite0")
    model = EfficientNet.from_name("efficientnet-lite0")
    model.load_state_dict(_state_dict(path), strict=True)
    return simplify_for_inference(model.eval())


def simplify_for_inference(model: torch.nn.Module) -> torch.nn.Module:
    """EfficientNet-Lite0 (eval), the same function with less memory traffic, so less CPU per image (pooled
    features identical, or within 3e-5 for the folds; docs/BENCHMARKS.md, Speed):
    - each BatchNorm folded into the convolution before it;
    - a symmetric 'same' padding done by the convolution itself instead of a padded copy of its input (the
      asymmetric ones of the stride-2 convolutions stay);
    - ReLU6 in place (out-of-place clamps and pads copy every activation)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    def fold(parent: torch.nn.Module, conv: str, bn: str) -> None:
        setattr(parent, conv, fuse_conv_bn_eval(getattr(parent, conv), getattr(parent, bn)))
        setattr(parent, bn, torch.nn.Identity())

    fold(model, "_conv_stem", "_bn0")
    fold(model, "_conv_head", "_bn1")
    for block in model._blocks:
        if hasattr(block, "_expand_conv"):  # blocks with expand ratio 1 have no expansion
            fold(block, "_expand_conv", "_bn0")
        fold(block, "_depthwise_conv", "_bn1")
        fold(block, "_project_conv", "_bn2")
    for module in model.modules():
        pad = getattr(module, "static_padding", None)
        if isinstance(pad, torch.nn.ZeroPad2d):
            left, right, top, bottom = pad.padding
            if left == right and top == bottom:
                module.static_padding, module.padding = torch.nn.Identity(), (top, left)
        elif isinstance(module, torch.nn.ReLU6):  # every ReLU6 follows a convolution: its input is not read again
            module.inplace = True
    return model


def load_resnet18(sources: ModelSources) -> torch.nn.Module:
    """torchvision ResNet18 with ImageNet weights (eval mode, on CPU); `fc` is kept for classification."""
    import torchvision

    path = sources.resolve("resnet18")
    if path == "torchvision":  # downloads allowed and not cached yet: let torchvision fetch it
        return torchvision.models.resnet18(weights=torchvision.models.ResNet18_Weights.IMAGENET1K_V1).eval()
    model = torchvision.models.resnet18(weights=None)
    model.load_state_dict(_state_dict(path), strict=True)
    return model.eval()


def pooled_features(name: str, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Global-average-pooled features of the last conv block (before the classifier)."""
    if name == "efficientnet_lite0":
        return model.extract_features(x).mean(dim=(2, 3))
    if name == "resnet18":
        m = model
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        x = m.layer4(m.layer3(m.layer2(m.layer1(x))))
        return x.mean(dim=(2, 3))
    raise KeyError(name)


LOADERS = {"efficientnet_lite0": load_efficientnet_lite0, "resnet18": load_resnet18}


def for_inference(model: torch.nn.Module, compute: Compute) -> torch.nn.Module:
    """A CNN on the compute device in its inference dtype, channels-last (which CPU convolutions prefer). On CPU
    the process keeps freed memory from here on (`compute.keep_freed_memory`): batch after batch reuses it."""
    if compute.torch_device.type == "cpu":
        keep_freed_memory()
    return model.to(compute.torch_device, compute.inference_dtype, memory_format=torch.channels_last).eval()


def cnn_batch(x: torch.Tensor, compute: Compute) -> torch.Tensor:
    """A batch of images laid out to match `for_inference`."""
    return x.to(compute.torch_device, compute.inference_dtype).contiguous(memory_format=torch.channels_last)


# Images per forward of the image-embedding CNNs on CPU. At 64, EfficientNet-Lite0's widest activations (~300 MiB)
# exceed the heap threshold of `compute.keep_freed_memory`, so the kernel maps and zero-fills them afresh every
# batch; at 8 every activation stays on the heap and in cache, the fastest of the batch sizes that
# `benchmarks/malloc.py` compares (docs/BENCHMARKS.md, Speed). A GPU, and the small VQ encoder (64-pixel
# inputs), take `compute.batch_size`.
CPU_CNN_BATCH = 8


def cnn_batch_size(compute: Compute) -> int:
    return min(compute.batch_size, CPU_CNN_BATCH) if compute.torch_device.type == "cpu" else compute.batch_size


def _embed_fn(name: str, sources: ModelSources, compute: Compute) -> Callable[[pl.DataFrame], pl.DataFrame]:
    _, size, mean, std = EMBEDDERS[name]

    @functools.cache  # load only when something must be computed: a fully cached re-run never pays for it
    def model():
        return for_inference(LOADERS[name](sources), compute)

    def transform(img):
        return to_tensor(letterbox(img, size), mean, std)

    def compute_fn(chunk: pl.DataFrame) -> pl.DataFrame:
        out: list[list[float] | None] = []
        for x, ok in image_batches(chunk["image_path"].to_list(), transform, compute, cnn_batch_size(compute)):
            vecs = iter([])
            if x is not None:
                with torch.inference_mode():
                    vecs = iter(pooled_features(name, model(), cnn_batch(x, compute)).float().cpu().numpy())
            out.extend(next(vecs).tolist() if good else None for good in ok)
        return pl.DataFrame({name: pl.Series(out, dtype=VECTOR)})

    return compute_fn


def embed_incremental(items: pl.DataFrame, name: str, sources: ModelSources, compute: Compute,
                      feature_cache: FeatureCacheFolder,
                      max_items_per_run: int | None = None, log=None) -> tuple[pl.Series, dict]:
    """Pooled `name` features of the items' images (aligned with `items`, null without an image), computing only
    those the cache lacks. The offline captioner reads EfficientNet-Lite0's from here too, so whichever of the two
    features runs first pays for the CNN and the other reuses its output."""
    identity = {"weights": sources.identity(name), "preprocess": PREPROCESS_VERSION, "dim": EMBEDDERS[name][0],
                "dtype": str(compute.inference_dtype)}
    cache = FeatureCache(feature_cache, "image", name, identity, {name: VECTOR})
    rows, stats = compute_incremental(
        items.select("item_id", "image_path", "image_sha256"), image_key, _embed_fn(name, sources, compute), cache,
        chunk_size=max(256, compute.batch_size * 4), max_items_per_run=max_items_per_run, log=log,
        what=f"image embeddings ({name})")
    return rows[name], stats


def image_embeddings(
    items: pl.DataFrame,
    sources: ModelSources,
    compute: Compute,
    feature_cache: FeatureCacheFolder,
    models: Sequence[str] = ("efficientnet_lite0", "resnet18"),
    max_items_per_run: int | None = None,
    log: logging.Logger | None = None,
) -> tuple[pl.DataFrame, dict]:
    """One row per item: `item_id` + one list[float32] column per model (null: no image, model unavailable,
    or left for the next run by `max_items_per_run`). Stats per model plus `items` and `without_image`."""
    def embed(name: str) -> tuple[pl.Series, dict]:
        return embed_incremental(items, name, sources, compute, feature_cache, max_items_per_run, log)

    out, stats = per_model(items, models, embed, column=lambda name: name, dtype=VECTOR, what="image_embeddings",
                           log=log)
    return out, {"items": items.height,
                 "without_image": int(sum(image_key(r) is None for r in items.iter_rows(named=True))), **stats}
