"""Where and how tensors run: the plain settings behind the Dagster `ComputeResource`.

Domain code takes a `Compute` so it stays testable without Dagster.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import resource
import time
from collections.abc import Callable
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX) and oneDNN may use it; elsewhere bf16 is
    emulated and slow. oneDNN's own check honours ONEDNN_MAX_CPU_ISA: capped below AVX512_CORE_BF16 (as when an
    older CPU is emulated), bf16 convolutions fall back to a reference path ten times slower than float32
    (docs/BENCHMARKS.md, Speed)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    if "avx512_bf16" not in flags and "amx_bf16" not in flags:
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch without this (private) check: trust the CPU flags
        return True


# the largest block glibc serves from (and keeps on) its heap: see keep_freed_memory
HEAP_BLOCK_LIMIT = 64 << 20


@functools.cache
def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for the next tensor instead of handing it back to the kernel.

    By default glibc maps every block over 32 MiB (a batch of images, a CNN activation) afresh and unmaps it
    when freed, and returns freed heap to the kernel: each batch then faults all its pages in again,
    zero-filled by the kernel; EfficientNet-Lite0 spent about two thirds of its time there
    (`benchmarks/malloc.py`; docs/BENCHMARKS.md, Speed). Blocks up to `HEAP_BLOCK_LIMIT` now come from the heap
    and stay there; the image CNNs take batches small enough for their activations to fit under it
    (`image.CPU_CNN_BATCH`). Larger blocks are still mapped per use: a full-catalog score batch (256 users x
    105k items, ~108 MB) kept on the heap left holes that the next, differently interleaved batch could not
    reuse, so evaluating a sequential model at H&M size grew to ~20 GB resident instead of ~4.5 GB.
    The cost: a process's resident memory stays at its heap's peak instead of shrinking, and the many small
    per-user arrays of an evaluation leave a heap that never shrinks either (docs/BENCHMARKS.md, "The asset path's
    memory at full size"). So only the image CNNs call it (`image.for_inference`), the
    one place it was measured to pay; it is process-wide and once. Returns False where the C library is not
    glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, HEAP_BLOCK_LIMIT) and mallopt(m_trim_threshold, 2**31 - 1))


@dataclasses.dataclass(frozen=True)
class Compute:
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16 (autocast / model load dtype)
    batch_size: int = 64
    num_workers: int = 0  # DataLoader workers for image decoding
    quantization: str = "none"  # none | 8bit | 4bit (bitsandbytes; CUDA only)
    seed: int = 0

    def __post_init__(self):
        if self.quantization not in ("none", "8bit", "4bit"):
            raise ValueError(f"quantization must be none, 8bit or 4bit, got '{self.quantization}'")
        if self.dtype not in ("auto", *DTYPES):
            raise ValueError(f"dtype must be auto or one of {list(DTYPES)}, got '{self.dtype}'")

    @property
    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"compute device '{self.device}' requested but CUDA is not available on this machine")
        return torch.device(self.device)

    @property
    def torch_dtype(self) -> torch.dtype:
        """bf16 on a GPU that supports it when 'auto'; float32 on CPU."""
        if self.dtype != "auto":
            return DTYPES[self.dtype]
        if self.torch_device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32

    @property
    def inference_dtype(self) -> torch.dtype:
        """The dtype of feature extraction (no training): as `torch_dtype`, except that 'auto' on a CPU with native
        bf16 picks bfloat16, faster than float32 there with pooled features within cosine 0.995 of float32's
        (docs/BENCHMARKS.md, Speed: "Features")."""
        if self.dtype == "auto" and self.torch_device.type == "cpu" and cpu_has_native_bf16():
            return torch.bfloat16
        return self.torch_dtype

    def autocast(self):
        """Mixed precision context for training/inference: enabled only for a reduced dtype on CUDA."""
        dev = self.torch_device
        enabled = dev.type == "cuda" and self.torch_dtype != torch.float32
        return torch.autocast(device_type=dev.type, dtype=self.torch_dtype, enabled=enabled)


def pin_feature_dtype(compute: Compute, pin: Path, log=None) -> Compute:
    """`compute` with the dtype pinned for a dataset's features in the file `pin` (`Lake.feature_dtype`).

    The feature dtype is part of every feature's cache key, and 'auto' resolves per machine (bf16 on a CPU with
    native bf16, float32 elsewhere): unpinned, the same lake run on two machines, or by two workers on different
    CPUs, would recompute every feature and train on different ones. So 'auto' takes the dtype recorded at the
    dataset's first feature run (recording this machine's choice when there is none); an explicit `dtype` in the
    compute settings is the way to change it, and re-pins it (logged: features are then computed again).
    """
    from mmrec_pipeline.storage import exclusive

    # Two first runs side by side (two workers, two machines on one lake) would each pin their own 'auto'.
    with exclusive(pin):
        return _pin_feature_dtype(compute, pin, logger(log))


def _pin_feature_dtype(compute: Compute, pin: Path, log) -> Compute:
    from mmrec_pipeline.storage import read_json_file, write_json

    pinned = read_json_file(pin).get("dtype") if pin.exists() else None
    if compute.dtype != "auto":
        if pinned not in (None, compute.dtype):
            log.warning(f"feature dtype: re-pinned from {pinned} to {compute.dtype} (the compute settings' dtype) in "
                        f"{pin}; every feature of the dataset is computed again in {compute.dtype}")
        if pinned != compute.dtype:
            write_json({"dtype": compute.dtype}, pin)
        return compute
    if pinned is None:
        pinned = str(compute.inference_dtype).removeprefix("torch.")
        write_json({"dtype": pinned}, pin)
        log.info(f"feature dtype: pinned {pinned} (this machine's 'auto') in {pin}; every later run uses it")
    elif pinned not in DTYPES:
        raise ValueError(f"{pin}: dtype {pinned!r} is not one of {list(DTYPES)}; set the compute dtype to re-pin it")
    pinned_compute = dataclasses.replace(compute, dtype=pinned)
    if pinned == "bfloat16" and pinned_compute.torch_device.type == "cpu" and not cpu_has_native_bf16():
        log.warning(f"feature dtype: {pin} pins bfloat16, which this CPU only emulates: features not yet cached are "
                    "computed several times slower; set the compute dtype to float32 to re-pin it (every feature "
                    "is then computed again)")
    return pinned_compute


def peak_rss_gb() -> float:
    """This process's peak resident memory (GB). Under the local executor each step runs in a process of its own,
    so in an asset it is the step's peak; run in-process (tests) it is the whole process's."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


def logger(log=None):
    """The logger progress goes to: the given one (a `logging.Logger` or Dagster's `context.log`, both with
    `info`/`warning`), else the package's."""
    return log if log is not None else logging.getLogger("mmrec_pipeline")


class Progress:
    """Logs `done/total`, items/s and ETA at most every `every_s` seconds (to the Dagster log when given its logger)."""

    def __init__(self, what: str, total: int, log=None, every_s: float = 10.0):
        self.what, self.total, self.every_s = what, total, every_s
        self.log = logger(log)
        self.start = self.last = time.perf_counter()
        self.done = 0

    def update(self, n: int = 1, extra: str | Callable[[], str] = "") -> None:
        """`extra`: text after the rate, or a function making it (called only when a line is logged)."""
        self.done += n
        now = time.perf_counter()
        if now - self.last >= self.every_s or self.done >= self.total:
            self.last = now
            extra = extra() if callable(extra) else extra
            rate = self.done / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            msg = f"{self.what}: {self.done}/{self.total} ({rate:.1f}/s, ETA {eta:.0f}s){' ' + extra if extra else ''}"
            self.log.info(msg)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start

    @property
    def rate(self) -> float:
        return self.done / max(self.seconds, 1e-9)
