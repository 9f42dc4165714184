"""The machine a benchmark ran on, saved beside every result: CPUs differ between this project's machines
(an AMD EPYC without AVX-512 runs the suite 3x slower than an Intel with AVX512-BF16), so a figure without
its CPU, flags, emulation settings and load is not comparable."""

from __future__ import annotations

import datetime as dt
import os
import platform
from pathlib import Path

# torch/oneDNN settings that make an AVX-512 CPU behave like the slower target (DEVELOPERS.md on CPUs)
EMULATION_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "OMP_NUM_THREADS")


def cpuinfo_field(name: str) -> str:
    path = Path("/proc/cpuinfo")
    lines = path.read_text().splitlines() if path.exists() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith(name)), "")


def cpu_model() -> str:
    return cpuinfo_field("model name") or platform.processor()


def cpu_flags() -> list[str]:
    """The vector-unit flags that decide torch's speed here (AVX-512, bf16, AMX)."""
    return sorted(f for f in cpuinfo_field("flags").split() if f.startswith(("avx", "amx", "fma", "sse4")))


def machine_info() -> dict:
    import torch

    info = {
        "date_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_env": {k: os.environ[k] for k in EMULATION_ENV if k in os.environ},
        "cores_visible": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "load_average_1m_5m_15m_at_start": [round(x, 2) for x in os.getloadavg()],
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info
