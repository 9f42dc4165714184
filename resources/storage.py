"""The lake in Dagster: `LakeResource` (the `Lake` every asset, the sensor and the CLI use) and the Parquet IO
manager for every table, which takes its root from it.

Tables land where `Lake.dataset_view(<dataset>).table(<asset>)` says, `<root>/<dataset>/<asset>.parquet`
(non-partitioned assets at `<root>/<asset>.parquet`).
The root may be a local folder or an object-store URL (anything universal-pathlib understands).
"""

from __future__ import annotations

import dagster as dg
import polars as pl
from upath import UPath

from mmrec_pipeline.catalog import refresh_catalog
from mmrec_pipeline.storage import Lake, ensure_inside, read_parquet, scan_parquet, to_path, write_parquet


class LakeResource(dg.ConfigurableResource):
    """The lake root: `root`, else `$MMREC_HOME`, else ./.mmrec (a folder or a URL such as s3://bucket/prefix)."""

    root: str = ""

    def lake(self) -> Lake:
        return Lake(self.root or None)


class LakeParquetIOManager(dg.UPathIOManager):
    extension = ".parquet"

    def get_path_for_partition(self, context, path: UPath, partition: str) -> UPath:
        # <root>/<asset>/<dataset> by default; the lake keeps one folder per dataset instead (without the
        # extension, which Dagster adds).
        table = UPath(Lake(self._base_path).dataset_view(partition).table(path.name))
        return table.with_name(path.name)

    def make_directory(self, path: UPath) -> None:
        super().make_directory(self._inside_root(path))

    def _inside_root(self, path: UPath) -> UPath:
        """Refuse a table path outside the lake root (a partition key like '../x', an asset key with '..')."""
        ensure_inside(self._base_path, path)
        return path

    def dump_to_path(self, context: dg.OutputContext, obj: pl.DataFrame, path: UPath) -> None:
        if not isinstance(obj, pl.DataFrame):
            raise TypeError(f"asset {context.asset_key.to_user_string()} must return a polars DataFrame, "
                            f"got {type(obj).__name__}")
        self._inside_root(path)
        write_parquet(obj, to_path(path))  # temp + rename locally, one upload on object storage
        if self._base_path.protocol in ("", "file", "local"):  # no DuckDB catalog on a remote lake (no httpfs)
            try:
                refresh_catalog(Lake(self._base_path.path))
            except Exception as e:  # noqa: BLE001 - the catalog is a convenience; never fail a table for it
                context.log.warning(f"DuckDB catalog not refreshed: {e}")

    def load_from_path(self, context: dg.InputContext, path: UPath) -> pl.DataFrame:
        self._inside_root(path)
        if not path.exists() and (context.definition_metadata or {}).get("allow_missing"):
            return None  # the input's AssetIn allows it (`metrics`: models never materialized for the dataset)
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: materialize {context.upstream_output.asset_key.to_user_string()}"
                                    f" for this dataset first")
        # An input may ask for some columns only (`AssetIn(metadata={"columns": [...]})`, as dagster-polars reads it),
        # and for a LazyFrame (`"lazy": True`): a model step need not hold columns it never reads, nor, once its
        # RecDataset is built, the split's text ids (Dagster keeps every input alive for the whole step).
        asked = context.definition_metadata or {}
        return (scan_parquet if asked.get("lazy") else read_parquet)(path, columns=asked.get("columns"))

    def load_partitions(self, context: dg.InputContext):
        # Dagster hands an unpartitioned consumer of *all* partitions a bare table, not {key: table}, when the
        # registry has a single dataset; the leaderboard expects the mapping either way.
        loaded = super().load_partitions(context)
        keys = context.asset_partition_keys
        if len(keys) == 1 and not context.has_partition_key and isinstance(loaded, pl.DataFrame):
            return {keys[0]: loaded}
        return loaded

    def get_metadata(self, context: dg.OutputContext, obj: pl.DataFrame) -> dict:
        return {"dagster/row_count": obj.height, "columns": ", ".join(obj.columns)}


class LakeIOManager(dg.ConfigurableIOManagerFactory):
    """Parquet under the lake's root."""

    lake: LakeResource

    def create_io_manager(self, context) -> LakeParquetIOManager:
        return LakeParquetIOManager(base_path=UPath(self.lake.lake().root))
