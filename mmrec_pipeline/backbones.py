"""Pretrained Hugging Face backbones, loaded one way: safetensors only, never remote code, offline unless the
`ModelSources` passed in allow downloads, bitsandbytes 4/8-bit on CUDA only, LoRA adapters through peft.

The recommenders (`mm_llmrec`, `vq_bart`) and the VLM captioner load through here; the `ModelSources` come from the
`ModelSourcesResource` (a model gets them from the runner as `model.sources`), so its settings hold everywhere.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from mmrec_pipeline.compute import Compute
from mmrec_pipeline.weights import ModelSources


def pretrained_kwargs(source: str, sources: ModelSources) -> dict:
    """`from_pretrained` arguments for a local folder or a hub id (read from the local cache unless downloads are
    allowed)."""
    kwargs: dict = {"trust_remote_code": False}
    if not Path(source).exists():
        kwargs["local_files_only"] = not sources.downloads
    return kwargs


def bitsandbytes_installed() -> bool:
    """Whether the `gpu` extra is installed (found without importing it: the import initialises CUDA)."""
    return importlib.util.find_spec("bitsandbytes") is not None


def quantization_kwargs(quantization: str, compute: Compute, double_quant: bool = False) -> dict:
    """bitsandbytes `quantization_config` + `device_map` for "4bit" (NF4) / "8bit"; nothing for "none"."""
    if quantization == "none":
        return {}
    if not bitsandbytes_installed():
        raise ModuleNotFoundError(f"{quantization} quantization needs bitsandbytes, which `make install` adds only "
                                  f"on a machine with a GPU: run `make install GPU=1` (or pip install -e '.[gpu]')")
    import transformers

    config = transformers.BitsAndBytesConfig(
        load_in_4bit=quantization == "4bit", load_in_8bit=quantization == "8bit", bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=double_quant, bnb_4bit_compute_dtype=compute.torch_dtype)
    return {"quantization_config": config, "device_map": {"": compute.torch_device.index or 0}}


def from_pretrained(cls, source: str, sources: ModelSources, what: str, **kwargs):
    """`cls.from_pretrained(source)` with safetensors weights only and no remote code; a backbone that is not on
    disk (and may not be downloaded) is a FileNotFoundError that says how to provide it."""
    try:
        return cls.from_pretrained(source, use_safetensors=True, **pretrained_kwargs(source, sources), **kwargs)
    except OSError as e:
        raise FileNotFoundError(
            f"{what}: backbone {source} is not available offline: {e}. Put a save_pretrained folder (config.json + "
            f"*.safetensors) on disk and point the model at its path, or allow downloads (MMREC_ALLOW_DOWNLOAD=1 or "
            f"ModelSourcesResource.allow_download) on a machine with internet access.") from e


def prepare_for_training(lm: torch.nn.Module, quantized: bool, gradient_checkpointing: bool) -> torch.nn.Module:
    """A pretrained model made ready for adapter training: a quantized base prepared for k-bit training (QLoRA),
    gradient checkpointing when asked."""
    if quantized:
        from peft import prepare_model_for_kbit_training

        return prepare_model_for_kbit_training(lm, use_gradient_checkpointing=gradient_checkpointing)
    if gradient_checkpointing:
        lm.gradient_checkpointing_enable()
    return lm


def with_lora(model: torch.nn.Module, r: int, alpha: float, dropout: float, targets: list[str],
              fan_in_fan_out: bool) -> torch.nn.Module:
    """`model` with LoRA adapters on the `targets` modules; everything else frozen."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                                            fan_in_fan_out=fan_in_fan_out, bias="none"))
