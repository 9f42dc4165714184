"""VQ image codes: 256 discrete codes (a 16x16 grid) per item image, the image "words" of the VQ-BART recommender.

Two tokenizers, one output format (`vq_codes`: list[int32] of length 256, row-major over the 16x16 grid):

- a pretrained VQGAN when `ModelSources.vqgan` points at one: transformers' `ChameleonVQVAE` (a folder saved
  from that class, or a full Chameleon checkpoint, of which only the `vqmodel` tensors are read). Its
  downsampling factor decides the input size that yields 16x16 codes (256 px for Chameleon's f = 16);
- otherwise a small VQ-VAE the pipeline trains on the dataset's own images (`train_vq_vae`): conv encoder and
  decoder with residual blocks, an EMA codebook with dead-code restarts and a commitment loss; held-out PSNR
  and SSIM tell how faithful the codes are. Saved as safetensors + JSON (`save_pretrained`/`from_pretrained`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from torch import nn

from mmrec_pipeline.compute import Compute, Progress
from mmrec_pipeline.features.cache import FeatureCache, compute_incremental
from mmrec_pipeline.features.image import image_batches, image_key, letterbox, load_rgb, to_tensor
from mmrec_pipeline.storage import (
    Checkpoint,
    CorruptFileError,
    FeatureCacheFolder,
    quarantine,
    read_json_file,
    to_path,
    write_json,
)
from mmrec_pipeline.weights import ModelSources

GRID = 16  # codes per side: 16 x 16 = 256 codes per image
CODES = pl.List(pl.Int32)
FORMAT = "mmrec-vqvae-v1"
MIN_TRAIN_IMAGES = 32  # 16 held out for PSNR/SSIM, the rest to train on


@dataclasses.dataclass(frozen=True)
class VQConfig:
    image_size: int = 64  # input side; must be GRID * 2**len(channels)
    channels: tuple[int, ...] = (32, 64)  # width after each stride-2 level (the last is the 16x16 bottleneck)
    level_blocks: int = 0  # residual blocks after each level above the bottleneck (full-res convs are costly)
    res_blocks: int = 1  # residual blocks at the 16x16 bottleneck, in the encoder and in the decoder
    codebook_size: int = 512
    code_dim: int = 64
    beta: float = 0.25  # commitment weight
    ema_decay: float = 0.99
    steps: int = 1000
    batch_size: int = 16
    lr: float = 2e-3
    holdout: float = 0.05  # share of images held out for PSNR / SSIM (at least 16)
    max_train_images: int = 5000  # images decoded into memory for training (uint8)
    seed: int = 0

    def __post_init__(self):
        if any(c % 8 for c in self.channels):
            raise ValueError(f"VQConfig: channels {self.channels} must be multiples of 8 (GroupNorm of 8 groups)")
        if self.image_size != GRID * 2 ** len(self.channels):
            raise ValueError(f"VQConfig: image_size {self.image_size} must be {GRID} * 2**len(channels) = "
                             f"{GRID * 2 ** len(self.channels)} to give {GRID}x{GRID} codes")


PROFILES = {
    # a few minutes on 2 CPU cores for ~1,200 small images (~150 MFLOP per image forward)
    "demo": VQConfig(),
    # 32 px, 300 steps: what a shared 2-core CPU trains in minutes (held-out PSNR ~23 dB on `sample`)
    "small": VQConfig(image_size=32, channels=(32,), steps=300),
    # the Columbia paper's VQGAN geometry (256 px, f = 16); for a GPU
    "paper": VQConfig(image_size=256, channels=(64, 128, 128, 256), level_blocks=1, res_blocks=2,
                      codebook_size=1024, code_dim=128, steps=20000, batch_size=64, lr=4e-4, max_train_images=8000),
}


# ------------------------------------------------------------------------------------------------------
# The VQ-VAE


class ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(nn.GroupNorm(8, c), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1),
                                  nn.GroupNorm(8, c), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1))

    def forward(self, x):
        return x + self.body(x)


class EMAQuantizer(nn.Module):
    """Nearest-codeword quantizer whose codebook follows an exponential moving average of the encoder outputs
    assigned to each code (more stable than learning it by gradient); unused codes restart on random encoder
    outputs so the codebook stays in use."""

    def __init__(self, size: int, dim: int, decay: float):
        super().__init__()
        self.decay = decay
        self.register_buffer("embed", torch.randn(size, dim) * 0.1)
        self.register_buffer("cluster_size", torch.ones(size))
        self.register_buffer("embed_sum", self.embed.clone())

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, D, H, W] -> code indices [B, H, W]."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        d = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.embed.t() + self.embed.pow(2).sum(1)
        return d.argmin(1).view(z.shape[0], z.shape[2], z.shape[3])

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        return self.embed[codes].permute(0, 3, 1, 2)

    def forward(self, z: torch.Tensor):
        codes = self.codes(z)
        q = self.lookup(codes)
        if self.training:
            self._ema_update(z.detach(), codes)
        commit = F.mse_loss(z, q.detach())
        return z + (q - z).detach(), codes, commit  # straight-through gradient to the encoder

    @torch.no_grad()
    @torch.autocast("cuda", enabled=False)  # running averages in float32 even under mixed precision
    def _ema_update(self, z: torch.Tensor, codes: torch.Tensor) -> None:
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]).float()
        onehot = F.one_hot(codes.reshape(-1), self.embed.shape[0]).float()
        self.cluster_size.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(onehot.t() @ flat, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        size = (self.cluster_size + 1e-5) / (n + self.embed.shape[0] * 1e-5) * n  # Laplace smoothing
        self.embed.copy_(self.embed_sum / size.unsqueeze(1))
        dead = self.cluster_size < 1e-2
        if dead.any():
            pick = flat[torch.randint(0, flat.shape[0], (int(dead.sum()),), device=flat.device)]
            self.embed[dead] = pick
            self.embed_sum[dead] = pick
            self.cluster_size[dead] = 1.0


class VQVAE(nn.Module):
    def __init__(self, config: VQConfig):
        super().__init__()
        self.config = config
        c, last = config.channels, len(config.channels) - 1
        enc: list[nn.Module] = []
        for i, ch in enumerate(c):
            enc.append(nn.Conv2d(3 if i == 0 else c[i - 1], ch, 4, stride=2, padding=1))
            enc += [ResBlock(ch) for _ in range(config.res_blocks if i == last else config.level_blocks)]
        enc += [nn.GroupNorm(8, c[-1]), nn.SiLU(), nn.Conv2d(c[-1], config.code_dim, 1)]
        self.encoder = nn.Sequential(*enc)
        self.quantizer = EMAQuantizer(config.codebook_size, config.code_dim, config.ema_decay)
        dec: list[nn.Module] = [nn.Conv2d(config.code_dim, c[-1], 3, padding=1)]
        for i in reversed(range(len(c))):
            dec += [ResBlock(c[i]) for _ in range(config.res_blocks if i == last else config.level_blocks)]
            dec += [nn.GroupNorm(8, c[i]), nn.SiLU(),
                    nn.ConvTranspose2d(c[i], 3 if i == 0 else c[i - 1], 4, stride=2, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def forward(self, x: torch.Tensor):
        """x in [-1, 1] -> (reconstruction, codes [B, 16, 16], commitment loss)."""
        q, codes, commit = self.quantizer(self.encoder(x))
        return self.decoder(q), codes, commit

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantizer.codes(self.encoder(x))

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.quantizer.lookup(codes))

    def save_pretrained(self, folder: Path) -> Path:
        """A `storage.Checkpoint` in `folder` (a local folder or a remote UPath)."""
        return Checkpoint(folder).write(self.state_dict(), {"format": FORMAT, **dataclasses.asdict(self.config)})

    @classmethod
    def from_pretrained(cls, folder: Path) -> VQVAE:
        """Raises `CorruptFileError` naming the file when the config is not JSON or the weights are not those
        written (their sha256) or unreadable."""
        checkpoint = Checkpoint(folder)
        raw = checkpoint.read_config()
        if raw.pop("format", None) != FORMAT:
            raise ValueError(f"{checkpoint.path}: not a {FORMAT} folder")
        state = checkpoint.read_weights(raw)
        raw.pop("weights_sha256", None)
        raw["channels"] = tuple(raw["channels"])
        model = cls(VQConfig(**raw))
        model.load_state_dict(state, strict=True)
        return model.eval()


def fingerprint(model: nn.Module) -> str:
    """Hash of the weights (names and bytes): the same model gives the same code cache, loaded or in memory."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------------------------
# Quality metrics


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [0, 1]."""
    mse = (a - b).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(1.0 / mse)


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004) of images in [0, 1], gaussian window, averaged over channels."""
    coords = torch.arange(window, dtype=a.dtype, device=a.device) - window // 2
    g = torch.exp(-coords.pow(2) / (2 * sigma**2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).expand(a.shape[1], 1, window, window).contiguous()

    def blur(x):
        return F.conv2d(x, kernel, groups=a.shape[1])

    c1, c2 = 0.01**2, 0.03**2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a.pow(2)
    var_b = blur(b * b) - mu_b.pow(2)
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a.pow(2) + mu_b.pow(2) + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1)


# ------------------------------------------------------------------------------------------------------
# Training


def _load_images(paths: Sequence[str], size: int) -> torch.Tensor:
    """uint8 [N, 3, size, size]: a quarter of float32's memory, converted per batch."""
    arrays = [np.asarray(letterbox(load_rgb(p), size), dtype=np.uint8) for p in paths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _to_input(batch: torch.Tensor, device) -> torch.Tensor:
    return batch.to(device).float().div(127.5).sub(1.0)


def train_vq_vae(images: Sequence[str], config: VQConfig, compute: Compute,
                 log: logging.Logger | None = None) -> tuple[VQVAE, dict]:
    """Train a VQ-VAE on image files; returns (model in eval mode on CPU, report).

    The report holds held-out `psnr` and `ssim` (means over the held-out images), `codebook_usage` (share of
    codes used on held-out images), `perplexity`, a `loss_curve` of (step, reconstruction loss) points, sizes
    and `seconds`.
    """
    paths = sorted(set(images))
    if len(paths) < MIN_TRAIN_IMAGES:
        raise ValueError(f"train_vq_vae needs at least {MIN_TRAIN_IMAGES} images, got {len(paths)}")
    gen = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(len(paths), generator=gen).tolist()
    n_hold = max(16, int(len(paths) * config.holdout))
    hold = [paths[i] for i in order[:n_hold]]
    train = [paths[i] for i in order[n_hold:n_hold + config.max_train_images]]

    t0 = time.perf_counter()
    device = compute.torch_device
    torch.manual_seed(config.seed)
    data = _load_images(train, config.image_size)
    model = VQVAE(config).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=config.steps, pct_start=0.05)
    progress = Progress("VQ-VAE training (steps)", config.steps, log)
    curve, window = [], []
    every = max(1, config.steps // 50)
    for step in range(config.steps):
        idx = torch.randint(0, data.shape[0], (config.batch_size,), generator=gen)
        x = _to_input(data[idx], device)
        if step % 2:  # random horizontal flips: products look the same mirrored
            x = x.flip(3)
        with compute.autocast():
            recon, _, commit = model(x)
            rec = F.mse_loss(recon.float(), x)
            loss = rec + config.beta * commit
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        window.append(rec.item())
        if (step + 1) % every == 0 or step + 1 == config.steps:
            curve.append([step + 1, round(float(np.mean(window)), 5)])
            window = []
        progress.update(1, extra=f"loss {rec.item():.4f}")

    model.eval().cpu()
    report = evaluate_vq_vae(model, hold, compute)
    report.update({"loss_curve": curve, "train_images": len(train), "holdout_images": len(hold),
                   "steps": config.steps, "seconds": round(time.perf_counter() - t0, 1),
                   "config": dataclasses.asdict(config)})
    return model, report


@torch.no_grad()
def evaluate_vq_vae(model: VQVAE, paths: Sequence[str], compute: Compute) -> dict:
    device = compute.torch_device
    model = model.to(device).eval()
    data = _load_images(paths, model.config.image_size)
    ps, ss, codes = [], [], []
    for batch in data.split(64):
        x = _to_input(batch, device)
        recon, c, _ = model(x)
        a, b = (x + 1) / 2, ((recon.float() + 1) / 2).clamp(0, 1)
        ps.append(psnr(a, b))
        ss.append(ssim(a, b))
        codes.append(c.flatten())
    model.cpu()
    counts = torch.bincount(torch.cat(codes).cpu(), minlength=model.config.codebook_size).float()
    p = counts / counts.sum()
    return {"psnr": round(torch.cat(ps).mean().item(), 3), "ssim": round(torch.cat(ss).mean().item(), 4),
            "codebook_usage": round((counts > 0).float().mean().item(), 4),
            "perplexity": round(math.exp(-(p[p > 0] * p[p > 0].log()).sum().item()), 1)}


def train_or_load_vq_vae(images: Sequence[str], folder: Path, config: VQConfig, compute: Compute,
                         log: logging.Logger | None = None) -> tuple[VQVAE, dict, bool]:
    """The VQ-VAE saved in `folder` if it was trained with `config`, else train and save one.

    A growing catalog keeps its tokenizer (so the codes of existing items stay valid and only new items are
    encoded); change the config, or delete the folder, to retrain. Returns (model, report, trained_now).
    """
    checkpoint = Checkpoint(folder)
    if checkpoint.exists() and checkpoint.training_report.exists():
        try:
            model = VQVAE.from_pretrained(folder)
            if model.config == config:
                return model, read_json_file(checkpoint.training_report), False
        except CorruptFileError as e:
            quarantine(e.path, str(e), "training the VQ-VAE again", log)
    model, report = train_vq_vae(images, config, compute, log)
    model.save_pretrained(folder)
    report["weights"] = fingerprint(model)
    write_json(report, checkpoint.training_report)
    return model, report, True


# ------------------------------------------------------------------------------------------------------
# Pretrained VQGAN (transformers' Chameleon VQ-VAE)


def load_vqgan(sources: ModelSources) -> nn.Module:
    """`ChameleonVQVAE` from a folder of that class, or the `vqmodel` part of a full Chameleon checkpoint."""
    from transformers import AutoConfig, ChameleonVQVAE

    folder = sources.resolve("vqgan")
    if not Path(folder).exists():  # hub id with downloads allowed
        from huggingface_hub import snapshot_download

        folder = snapshot_download(folder, allow_patterns=["*.json", "*.safetensors"])
    config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    if config.model_type == "chameleon_vqgan":
        return ChameleonVQVAE.from_pretrained(folder, use_safetensors=True, trust_remote_code=False).eval()
    if config.model_type != "chameleon":
        raise ValueError(f"vqgan source {folder}: model_type '{config.model_type}' is not a Chameleon VQ-VAE")
    from safetensors import safe_open

    model = ChameleonVQVAE._from_config(config.vq_config)
    state = {}
    for f in sorted(Path(folder).glob("*.safetensors")):  # read only the VQ tensors of a 7B checkpoint
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():  # noqa: SIM118
                if "vqmodel." in name:
                    state[name.split("vqmodel.", 1)[1]] = st.get_tensor(name)
    model.load_state_dict(state, strict=True)
    return model.eval()


def vqgan_input_size(model: nn.Module) -> int:
    """Input side that gives 16x16 codes: the encoder downsamples by 2 per level but the last."""
    return GRID * 2 ** (len(model.config.channel_multiplier) - 1)


# ------------------------------------------------------------------------------------------------------


def vq_codes(
    items: pl.DataFrame,
    sources: ModelSources,
    compute: Compute,
    feature_cache: FeatureCacheFolder,
    vqvae: VQVAE | Path | None = None,
    max_items_per_run: int | None = None,
    log: logging.Logger | None = None,
) -> tuple[pl.DataFrame, dict]:
    """One row per item: `item_id`, `vq_codes` (256 codes, null without an image).

    Uses the pretrained VQGAN when `sources` has one, else `vqvae` (a trained `VQVAE` or its folder). Items with
    too few images to train a VQ-VAE (and no model in the folder) get null codes and a `skipped` reason.
    """
    folder = None if vqvae is None or isinstance(vqvae, VQVAE) else to_path(vqvae)
    if not sources.available("vqgan") and folder is not None and not Checkpoint(folder).config.exists():
        images = items["image_path"].drop_nulls().n_unique()
        if images >= MIN_TRAIN_IMAGES:
            raise ValueError(f"vq_codes: no VQ-VAE in {vqvae} yet: materialize vq_tokenizer first")
        empty = items.select("item_id", pl.lit(None, dtype=CODES).alias("vq_codes"))
        return empty, {"skipped": f"{images} item images, too few to train a VQ-VAE (at least {MIN_TRAIN_IMAGES}),"
                                  " and no pretrained VQGAN configured", "computed": 0, "reused": 0, "remaining": 0}
    if sources.available("vqgan"):
        tokenizer = f"vqgan:{sources.identity('vqgan')}"

        @functools.cache
        def model():
            return load_vqgan(sources).to(compute.torch_device)

        def encode(x):
            return model().encode(x).image_tokens

        def input_size():
            return vqgan_input_size(model())
    elif vqvae is not None:
        if folder is not None:
            try:
                vqvae = VQVAE.from_pretrained(folder)
            except CorruptFileError as e:
                raise e.moved_aside("re-materialize vq_tokenizer to train the VQ-VAE again", log) from e
        tokenizer = f"vqvae:{fingerprint(vqvae)}"
        net = vqvae.to(compute.torch_device).eval()
        size = net.config.image_size

        def encode(x):
            return net.encode(x)

        def input_size():
            return size
    else:
        raise ValueError("vq_codes: no pretrained VQGAN is configured (MMREC_MODEL_VQGAN) and no trained VQ-VAE "
                         "was given: train one with train_or_load_vq_vae first")

    cache = FeatureCache(feature_cache, "vq", tokenizer.split(":")[0], {"tokenizer": tokenizer, "grid": GRID},
                         {"vq_codes": CODES})

    def compute_fn(chunk: pl.DataFrame) -> pl.DataFrame:
        side = input_size()
        out: list[list[int] | None] = []

        def transform(img):  # both tokenizers take [-1, 1] inputs
            return to_tensor(letterbox(img, side), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

        for x, ok in image_batches(chunk["image_path"].to_list(), transform, compute):
            codes = iter([])
            if x is not None:
                with torch.inference_mode():
                    codes = iter(encode(x.to(compute.torch_device)).reshape(x.shape[0], -1).cpu().numpy())
            for good in ok:
                c = next(codes) if good else None
                if c is not None and c.shape[0] != GRID * GRID:
                    raise RuntimeError(f"{tokenizer}: got {c.shape[0]} codes per image, expected {GRID * GRID}")
                out.append(c.astype(np.int32).tolist() if c is not None else None)
        return pl.DataFrame({"vq_codes": pl.Series(out, dtype=CODES)})

    rows, stats = compute_incremental(items.select("item_id", "image_path", "image_sha256"), image_key, compute_fn,
                                      cache, chunk_size=max(256, compute.batch_size * 4),
                                      max_items_per_run=max_items_per_run, log=log, what="VQ codes")
    stats["tokenizer"] = tokenizer
    return rows, stats
