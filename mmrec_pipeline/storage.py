"""Atomic file writes and lake paths. Every table and artifact is written to a temporary file in the same
folder and renamed into place, so a crash never leaves a half-written file behind. A temp file left by a
killed process (`.<name>.<pid>.<random>.tmp`) is removed at the next write of the same file."""

from __future__ import annotations

import glob
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import polars as pl

from mmrec_pipeline.registry import lake_root


def inside(root: Path, *parts: str) -> Path:
    """`root/parts…`, refusing any path that escapes `root` (e.g. a dataset named '../x')."""
    root = Path(root).resolve()
    path = root.joinpath(*parts).resolve()
    if path != root and root not in path.parents:
        raise ValueError(f"path {path} would leave the lake root {root}")
    return path


def dataset_dir(dataset: str, root: Path | None = None) -> Path:
    return inside(root or lake_root(), dataset)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (a process of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_temps(path: Path) -> list[Path]:
    """Remove the temp files of `path` whose writer process is gone; a live writer's temp is left alone.

    Ours are `.<name>.<pid>.<random>.tmp` (mkstemp's random part has no dot); `.<name>.<random>.tmp` predates
    the pid and is always stale. Anything else (the temp of `<name>.index.json`) belongs to another file.
    """
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        parts = tmp.name[len(path.name) + 2:-len(".tmp")].split(".")
        if len(parts) > 2 or (len(parts) == 2 and not parts[0].isdigit()):
            continue
        if len(parts) == 2 and pid_alive(int(parts[0])):
            continue
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` on a temp file beside `path`, then rename it onto `path`.

    The file gets the permissions of any new file (0666 minus the umask), not mkstemp's private 0600, so a
    shared lake stays readable to the group the umask allows.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_parquet(df: pl.DataFrame, path: Path) -> Path:
    return atomic_write(path, lambda tmp: df.write_parquet(tmp, compression="zstd"))


def write_json(obj, path: Path) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str)))


def write_text(text: str, path: Path) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))
