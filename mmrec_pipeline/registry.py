"""The dataset registry (`datasets.yaml`): one entry per dataset partition.

Paths: raw data lives under `$MMREC_DATA` (default `./data`); everything the pipeline writes lives under the
lake root `$MMREC_HOME` (default `./.mmrec`). The generated `sample` store is written inside the lake.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Hashable
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import pydantic
import yaml

from mmrec_pipeline.features.families import FEATURES
from mmrec_pipeline.storage import Lake

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SOURCE_KINDS = ("sample", "hm", "hm-synthetic", "amazon", "recbole", "sequence")
GENERATED_SOURCES = ("sample", "hm-synthetic")  # written into the lake by the pipeline itself
SPLIT_KINDS = ("temporal", "loo", "recbole")
# Names become folders in the lake, DuckDB schemas and Dagster partition keys: keep them plain.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
NAME_RULE = "letters, digits, '-' and '_', starting with a letter or digit, at most 64 characters"
RESERVED_NAMES = {"dagster", "main"}  # the instance folder in the lake; DuckDB's schema for root tables
# What `features:` may configure: each feature table, and the VQ tokenizer's VQ-VAE (`vq_vae: {profile: ...}`).
FEATURE_SETTINGS = (*FEATURES, "vq_vae")


class RegistryError(ValueError):
    """The registry file or a lookup in it is invalid."""


def registry_path() -> Path:
    return Path(os.environ.get("MMREC_DATASETS", PROJECT_ROOT / "datasets.yaml"))


def registry_name() -> str:
    """How messages name the registry: the file MMREC_DATASETS points at, else `datasets.yaml`."""
    return str(registry_path()) if os.environ.get("MMREC_DATASETS") else "datasets.yaml"


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key repeated in one mapping (plain YAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        first: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if not isinstance(key, Hashable) or key == "<<":  # left to the loader: an error, or a merge
                continue
            if key in first:
                raise RegistryError(f"duplicate key {key!r} at lines {first[key]} and {line}; each dataset (and "
                                    "each field of an entry) must appear once")
            first.setdefault(key, line)
        return super().construct_mapping(node, deep)


def data_root() -> Path:
    return Path(os.environ.get("MMREC_DATA", "./data")).expanduser().resolve()


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    name: str
    source: str
    path: str | None = None  # relative to $MMREC_DATA (or absolute); None for a generated source
    split: str = "temporal"
    min_user_interactions: int = 5
    repeats_relevant: bool = False
    description: str = ""
    obtain: str = ""  # how a user gets the files, shown when they are missing
    options: dict[str, Any] = dataclasses.field(default_factory=dict)  # reader options
    models: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # per-model config overrides
    features: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # per-feature settings
    serving: dict[str, Any] = dataclasses.field(default_factory=dict)  # ServingConfig overrides

    def data_dir(self, lake: Lake) -> Path:
        """Where its raw files are: under `MMREC_DATA`, or for a generated source its store in `lake`."""
        if self.path is None:
            return lake.sample_raw(self.name)
        return data_root() / self.path


class _Entry(pydantic.BaseModel):
    """The types a registry entry must have; mirrors DatasetSpec (which the rest of the code uses)."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    source: Literal[SOURCE_KINDS]
    path: str | None = None
    split: Literal[SPLIT_KINDS] = "temporal"
    min_user_interactions: pydantic.PositiveInt = 5
    repeats_relevant: bool = False
    description: str = ""
    obtain: str = ""
    options: dict[str, Any] = {}
    models: dict[str, dict[str, Any]] = {}
    features: dict[str, dict[str, Any]] = {}
    serving: dict[str, Any] = {}


def _moved_settings(name: str, entry: dict) -> list[str]:
    """Feature and serving settings once lived under `models:` (a registry written before they had keys of
    their own): one line each naming the key they belong under now."""
    models, errors = entry.get("models"), []
    for key in models if isinstance(models, dict) else ():
        if key == "serving":
            errors.append(f"dataset '{name}': 'models.serving' is now the entry's own key 'serving:' "
                          "(serving: {k: 20, ...})")
        elif key in FEATURE_SETTINGS:
            errors.append(f"dataset '{name}': 'models.{key}' is a feature setting, now under 'features:' "
                          f"(features: {{{key}: {{...}}}})")
    features = entry.get("features")
    unknown = sorted(set(features) - set(FEATURE_SETTINGS)) if isinstance(features, dict) else []
    if unknown:
        errors.append(f"dataset '{name}': features {unknown} are not features; known: {list(FEATURE_SETTINGS)}")
    return errors


def _entry_errors(name: str, entry: object) -> list[str]:
    """One readable line per problem of one entry (empty if it is valid)."""
    errors = []
    if not NAME_PATTERN.fullmatch(name) or name in RESERVED_NAMES:
        reserved = f" (and not {sorted(RESERVED_NAMES)})"
        errors.append(f"dataset name {name!r} is not allowed: use {NAME_RULE}{reserved}")
    if not isinstance(entry, dict):
        got = "nothing" if entry is None else f"a {type(entry).__name__} ({entry!r:.60})"
        return [*errors, f"dataset '{name}': expected a mapping of fields (source: ..., path: ...), got {got}"]
    errors += _moved_settings(name, entry)
    try:
        _Entry.model_validate(entry)
    except pydantic.ValidationError as e:
        allowed = sorted(_Entry.model_fields)
        for err in e.errors():
            field = ".".join(str(part) for part in err["loc"])
            if err["type"] == "extra_forbidden":
                errors.append(f"dataset '{name}' has unknown field(s) ['{field}']; allowed: {allowed}")
            elif err["type"] == "literal_error":
                errors.append(f"dataset '{name}': {field} {err['input']!r} is not one of "
                              f"{err['ctx']['expected']}")
            else:
                errors.append(f"dataset '{name}', field '{field}': {err['msg']} (got {err['input']!r:.60})")
    path = entry.get("path")
    if isinstance(path, str) and not PurePosixPath(path).is_absolute() and \
            os.path.normpath(path).split(os.sep)[0] == "..":
        errors.append(f"dataset '{name}', field 'path': {path!r} leaves $MMREC_DATA; write a path inside it, "
                      "or an absolute path for data kept elsewhere")
    return errors


class _Profile(pydantic.BaseModel):
    """What a split's profile may set (`profiles: {<split>: {models: {...}}}`): model settings that every entry
    with that split gets unless its own `models:` sets the same field."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    models: dict[str, dict[str, Any]] = {}


def _profiles(raw: dict) -> tuple[dict[str, _Profile], list[str]]:
    """The `profiles:` mapping (split -> profile) and one line per problem in it."""
    given = raw.get("profiles") or {}
    if not isinstance(given, dict):
        return {}, [f"'profiles' must map a split ({', '.join(SPLIT_KINDS)}) to {{models: ...}}, got {given!r:.60}"]
    profiles, errors = {}, []
    for split, profile in given.items():
        if split not in SPLIT_KINDS:
            errors.append(f"profile {split!r} is not a split; profiles are named by split: {list(SPLIT_KINDS)}")
            continue
        try:
            profiles[split] = _Profile.model_validate(profile or {})
        except pydantic.ValidationError as e:
            errors += [f"profile '{split}', field '{'.'.join(map(str, err['loc']))}': {err['msg']}" for err in e.errors()]
    return profiles, errors


def _with_profile(entry: _Entry, profiles: dict[str, _Profile]) -> dict:
    """The entry's fields with its split's profile under its own `models:` (the entry's fields win)."""
    fields = entry.model_dump()
    profile = profiles.get(entry.split)
    if profile is not None:
        own = fields["models"]
        fields["models"] = {m: {**profile.models.get(m, {}), **own.get(m, {})} for m in {**profile.models, **own}}
    return fields


def load_registry(path: Path | None = None) -> dict[str, DatasetSpec]:
    """Every entry, validated, with its split's profile applied: all problems are reported at once, one line
    each naming dataset (or profile) and field."""
    path = path or registry_path()
    try:
        raw = yaml.load(Path(path).read_text(), Loader=_UniqueKeyLoader)  # a SafeLoader: plain data only
    except FileNotFoundError as e:
        raise RegistryError(f"dataset registry not found at {path}") from e
    except RegistryError as e:
        raise RegistryError(f"{path}: {e}") from e
    except yaml.YAMLError as e:
        raise RegistryError(f"{path}: not valid YAML: {e}") from e
    entries = raw.get("datasets") if isinstance(raw, dict) else None
    if not isinstance(entries, dict) or not entries:
        raise RegistryError(f"{path}: expected a top-level 'datasets:' mapping of name -> entry")
    profiles, errors = _profiles(raw)
    errors += [line for name, entry in entries.items() for line in _entry_errors(str(name), entry)]
    if errors:
        raise RegistryError("\n".join(f"{path}: {line}" for line in errors))
    return {str(name): DatasetSpec(name=str(name), **_with_profile(_Entry.model_validate(entry), profiles))
            for name, entry in entries.items()}


def get_dataset(name: str) -> DatasetSpec:
    specs = load_registry()
    if name not in specs:
        raise RegistryError(f"unknown dataset '{name}'; the registry ({registry_path()}) has: {', '.join(specs)}")
    return specs[name]


def available_datasets(lake: Lake) -> list[str]:
    """Registry entries whose raw files are present (the generated sample always is)."""
    return [s.name for s in load_registry().values() if s.source in GENERATED_SOURCES or s.data_dir(lake).exists()]
