"""The lake: one Parquet IO manager for every table, and the DuckDB catalog over them.

Tables land at `<root>/<dataset>/<asset>.parquet` (non-partitioned assets at `<root>/<asset>.parquet`).
`root` may be a local folder or an object-store URL (anything universal-pathlib understands).
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import polars as pl
from upath import UPath

from mmrec_pipeline.lake import refresh_catalog
from mmrec_pipeline.registry import lake_root
from mmrec_pipeline.storage import inside, write_parquet


class LakeParquetIOManager(dg.UPathIOManager):
    extension = ".parquet"

    def get_path_for_partition(self, context, path: UPath, partition: str) -> UPath:
        # <root>/<asset>/<dataset> by default; the lake keeps one folder per dataset instead.
        return self._inside_root(self.make_safe_partition_path(path.parent, partition) / path.name)

    def make_directory(self, path: UPath) -> None:
        super().make_directory(self._inside_root(path))

    def _inside_root(self, path: UPath) -> UPath:
        """Refuse a table path outside the lake root (a partition key like '../x', an asset key with '..')."""
        base = self._base_path
        if base.protocol in ("", "file", "local"):
            inside(Path(base.path), str(Path(path.path).resolve()))  # absolute, so joined as is
        elif ".." in path.path.split("/"):
            raise ValueError(f"path {path} would leave the lake root {base}")
        return path

    def dump_to_path(self, context: dg.OutputContext, obj: pl.DataFrame, path: UPath) -> None:
        if not isinstance(obj, pl.DataFrame):
            raise TypeError(f"asset {context.asset_key.to_user_string()} must return a polars DataFrame, "
                            f"got {type(obj).__name__}")
        self._inside_root(path)
        if path.protocol in ("", "file", "local"):
            write_parquet(obj, Path(path.path))
            try:
                refresh_catalog(Path(self._base_path.path))
            except Exception as e:  # noqa: BLE001 - the catalog is a convenience; never fail a table for it
                context.log.warning(f"DuckDB catalog not refreshed: {e}")
        else:  # object stores replace an object in one PUT, which is atomic already
            with path.open("wb") as f:
                obj.write_parquet(f, compression="zstd")

    def load_from_path(self, context: dg.InputContext, path: UPath) -> pl.DataFrame:
        self._inside_root(path)
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: materialize {context.upstream_output.asset_key.to_user_string()}"
                                    f" for this dataset first")
        with path.open("rb") as f:
            return pl.read_parquet(f)

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
    """Parquet under `root` (default `$MMREC_HOME`, else ./.mmrec)."""

    root: str = ""

    def create_io_manager(self, context) -> LakeParquetIOManager:
        root = self.root or os.environ.get("MMREC_HOME") or str(lake_root())
        return LakeParquetIOManager(base_path=UPath(root))
