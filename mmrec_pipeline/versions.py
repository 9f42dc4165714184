"""Versions for declarative refresh: a fingerprint of a dataset's raw files (the observed data version) and of
the source code behind an asset (its code version). Either changing is what makes automation recompute."""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
from pathlib import Path

from mmrec_pipeline.registry import DatasetSpec
from mmrec_pipeline.storage import Lake


def files_fingerprint(folder: Path) -> str | None:
    """sha256 over (relative path, size, mtime) of every file under `folder` (dot-files skipped: locks, temps);
    None when the folder does not exist. Stat only: cheap on a large image folder."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue
        st = path.stat()
        h.update(f"{rel.as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def dataset_version(spec: DatasetSpec, lake: Lake) -> str | None:
    """The data version of a dataset partition: its raw files plus its registry entry (options, split, filters,
    model, feature and serving settings), so editing datasets.yaml recomputes that dataset only. None: the files
    are absent (`lake`: where a generated source's files are)."""
    files = files_fingerprint(spec.data_dir(lake))
    if files is None:
        return None
    # `features:` and `serving:` were split out of `models:`: left out while empty, an entry that had neither keeps
    # its data version, so the split alone refreshes nothing.
    fields = {k: v for k, v in dataclasses.asdict(spec).items() if v or k not in ("features", "serving")}
    entry = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(f"{files}\n{entry}".encode()).hexdigest()[:16]


def code_version(*objects) -> str:
    """A short hash of the source files that define `objects` (modules, classes or functions)."""
    h = hashlib.sha256()
    for path in sorted({inspect.getsourcefile(o) for o in objects}):
        h.update(Path(path).read_bytes())
    return h.hexdigest()[:12]
