"""Read one registry entry into validated canonical tables."""

from __future__ import annotations

from mmrec_pipeline.data.schema import DataError, SourceTables, validate
from mmrec_pipeline.data.sources import reader
from mmrec_pipeline.registry import GENERATED_SOURCES, DatasetSpec, registry_name
from mmrec_pipeline.storage import Lake


def load_dataset(spec: DatasetSpec, lake: Lake) -> SourceTables:
    """Canonical `items`, `users`, `interactions` for `spec` (a generated source read from its store in `lake`); a
    missing folder fails with how to get it."""
    path = spec.data_dir(lake)
    if spec.source not in GENERATED_SOURCES and not path.exists():
        raise DataError(f"dataset '{spec.name}': expected its {spec.source} files in {path}, which does not exist. "
                        f"{spec.obtain or f'Put the files there or change its path in {registry_name()}.'} "
                        "(Set MMREC_DATA to the folder that holds your datasets.)")
    try:
        tables = reader(spec.source)(path, dict(spec.options))
    except DataError as e:
        raise DataError(f"dataset '{spec.name}': {e}") from e
    return validate(tables, f"dataset '{spec.name}' ({path})")


def generate_source(spec: DatasetSpec, lake: Lake) -> None:
    """Write a generated dataset's raw files into `lake` if they are not there yet (no-op for real data)."""
    if spec.source == "sample":
        from mmrec_pipeline.data import synthetic

        version = int(spec.options.get("version", 1))
        synthetic.generate(spec.data_dir(lake) / f"v{version}", version, int(spec.options.get("seed",
                                                                                          synthetic.DEFAULT_SEED)))
    elif spec.source == "hm-synthetic":
        from mmrec_pipeline.data import hm_synthetic

        scale, seed, extra_days = hm_synthetic.parse_options(spec.options)
        hm_synthetic.generate(hm_synthetic.folder(spec.data_dir(lake), scale, seed, extra_days), scale, seed, extra_days)
