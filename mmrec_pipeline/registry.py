"""The dataset registry (`datasets.yaml`): one entry per dataset partition.

Paths: raw data lives under `$MMREC_DATA` (default `./data`); everything the pipeline writes lives under the
lake root `$MMREC_HOME` (default `./.mmrec`). The generated `sample` store is written inside the lake.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SOURCE_KINDS = ("sample", "hm", "amazon", "recbole", "sequence")
SPLIT_KINDS = ("temporal", "loo", "recbole")


class RegistryError(ValueError):
    """The registry file or a lookup in it is invalid."""


def registry_path() -> Path:
    return Path(os.environ.get("MMREC_DATASETS", PROJECT_ROOT / "datasets.yaml"))


def data_root() -> Path:
    return Path(os.environ.get("MMREC_DATA", "./data")).expanduser().resolve()


def lake_root() -> Path:
    return Path(os.environ.get("MMREC_HOME", "./.mmrec")).expanduser().resolve()


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    name: str
    source: str
    path: str | None = None  # relative to $MMREC_DATA; None for the generated sample
    split: str = "temporal"
    min_user_interactions: int = 5
    repeats_relevant: bool = False
    description: str = ""
    obtain: str = ""  # how a user gets the files, shown when they are missing
    options: dict[str, Any] = dataclasses.field(default_factory=dict)  # reader options
    models: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # per-model config overrides

    def data_dir(self) -> Path:
        if self.path is None:
            return lake_root() / self.name / "raw"
        return data_root() / self.path


def load_registry(path: Path | None = None) -> dict[str, DatasetSpec]:
    path = path or registry_path()
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError as e:
        raise RegistryError(f"dataset registry not found at {path}") from e
    except yaml.YAMLError as e:
        raise RegistryError(f"{path}: not valid YAML: {e}") from e
    entries = (raw or {}).get("datasets")
    if not isinstance(entries, dict) or not entries:
        raise RegistryError(f"{path}: expected a top-level 'datasets:' mapping of name -> entry")
    fields = {f.name for f in dataclasses.fields(DatasetSpec)} - {"name"}
    specs = {}
    for name, entry in entries.items():
        unknown = set(entry or {}) - fields
        if unknown:
            raise RegistryError(f"{path}: dataset '{name}' has unknown field(s) {sorted(unknown)}; "
                                f"allowed: {sorted(fields)}")
        spec = DatasetSpec(name=str(name), **(entry or {}))
        if spec.source not in SOURCE_KINDS:
            raise RegistryError(f"{path}: dataset '{name}': source '{spec.source}' is not one of {SOURCE_KINDS}")
        if spec.split not in SPLIT_KINDS:
            raise RegistryError(f"{path}: dataset '{name}': split '{spec.split}' is not one of {SPLIT_KINDS}")
        specs[spec.name] = spec
    return specs


def get_dataset(name: str) -> DatasetSpec:
    specs = load_registry()
    if name not in specs:
        raise RegistryError(f"unknown dataset '{name}'; the registry ({registry_path()}) has: {', '.join(specs)}")
    return specs[name]


def available_datasets() -> list[str]:
    """Registry entries whose raw files are present (the generated sample always is)."""
    return [s.name for s in load_registry().values() if s.source == "sample" or s.data_dir().exists()]
