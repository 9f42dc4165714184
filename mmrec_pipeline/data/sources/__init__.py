"""The file-format readers: `kind -> read(path, options) -> SourceTables` (raw; callers run `schema.validate`).

`reader(kind)` is the lookup to use: it also knows the generated `sample` store and `hm-synthetic` files, whose
modules are imported only when asked for, so reading a real dataset never depends on them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from mmrec_pipeline.data.schema import SourceTables
from mmrec_pipeline.data.sources import amazon, hm, recbole, sequence

Reader = Callable[[Path, dict], SourceTables]

READERS: dict[str, Reader] = {
    "hm": hm.read,
    "amazon": amazon.read,
    "recbole": recbole.read,
    "sequence": sequence.read,
    # "sample", "hm-synthetic": the generators in LAZY_READERS (imported on demand by `reader`)
}
LAZY_READERS = {"sample": "mmrec_pipeline.data.synthetic", "hm-synthetic": "mmrec_pipeline.data.hm_synthetic"}


def reader(kind: str) -> Reader:
    """The read function for a source kind (registry.SOURCE_KINDS)."""
    if kind in READERS:
        return READERS[kind]
    if kind in LAZY_READERS:
        return importlib.import_module(LAZY_READERS[kind]).read
    raise ValueError(f"unknown source kind '{kind}'; known: {sorted([*READERS, *LAZY_READERS])}")
