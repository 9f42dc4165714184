"""`raw_files` (observed: a fingerprint of each dataset's raw files) and `items`, `users`, `interactions`: one
read of a dataset's source into the canonical tables."""

import dagster as dg
import polars as pl

from assets import DATASETS
from assets.automation import OBSERVE_RAW, REFRESH
from assets.metadata import plain, table_preview
from mmrec_pipeline.data.ingest import generate_source, load_dataset
from mmrec_pipeline.registry import get_dataset, load_registry
from mmrec_pipeline.versions import dataset_version
from resources.storage import LakeResource


@dg.observable_source_asset(partitions_def=DATASETS, group_name="ingest", automation_condition=OBSERVE_RAW,
                            required_resource_keys={"lake_store"})
def raw_files(context: dg.AssetExecutionContext) -> dg.DataVersionsByPartition:
    """The raw files of each dataset, versioned by a fingerprint of their paths, sizes and mtimes plus the dataset's
    registry entry. A new version makes `ingest` and everything downstream refresh. Datasets whose files are absent
    get no version (and so are never ingested automatically). Generated sources (`sample`, `hm-synthetic`) are
    written here if missing: they stand in for an upstream system."""
    specs, lake = load_registry(), context.resources.lake_store.lake()
    names = [context.partition_key] if context.has_partition_key else list(specs)
    versions = {}
    for name in names:
        spec = specs[name]
        generate_source(spec, lake)
        version = dataset_version(spec, lake)
        if version is None:
            context.log.info(f"{name}: raw files absent at {spec.data_dir(lake)}")
        else:
            versions[name] = version
    return dg.DataVersionsByPartition(versions)


@dg.multi_asset(
    outs={name: dg.AssetOut(group_name="ingest", io_manager_key="lake", description=desc,
                             automation_condition=REFRESH) for name, desc in {
        "items": "The item catalog: text, price, attributes, image path and hash.",
        "users": "Users and their optional attributes.",
        "interactions": "Every interaction (canonical, unfiltered), sorted by user and time.",
    }.items()},
    partitions_def=DATASETS, deps=[raw_files],
)
def ingest(context: dg.AssetExecutionContext, lake_store: LakeResource):
    spec = get_dataset(context.partition_key)
    tables = load_dataset(spec, lake_store.lake())
    counts = plain({f"skipped: {k}": v for k, v in tables.skipped.items()}
                   | {f"kept: {k}": v for k, v in tables.kept.items()}
                   | {f"kept: {k} (lines)": ", ".join(map(str, v)) for k, v in tables.lines.items()})
    for reason, n in tables.skipped.items():
        context.log.warning(f"{spec.name}: skipped {n} {reason}")
    for reason, n in tables.kept.items():
        lines = f" (lines {', '.join(map(str, tables.lines[reason]))})" if reason in tables.lines else ""
        context.log.warning(f"{spec.name}: kept {n} {reason}{lines}")
    items, inter = tables.items, tables.interactions
    yield dg.Output(items, "items", metadata={
        "items": items.height, "categories": items["category"].n_unique(),
        "with_image": items["image_sha256"].is_not_null().sum(), "preview": table_preview(items), **counts})
    yield dg.Output(tables.users, "users", metadata={"users": tables.users.height})
    yield dg.Output(inter, "interactions", metadata={
        "interactions": inter.height, "users": inter["user_id"].n_unique(), "items": inter["item_id"].n_unique(),
        "first": str(inter["ts"].min()), "last": str(inter["ts"].max()),
        "with_review_text": inter.filter(pl.col("review_text").is_not_null()).height, **counts})
