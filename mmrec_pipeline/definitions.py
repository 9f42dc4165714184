"""The Dagster code location: every asset, check, resource, job, schedule and sensor."""

import dagster as dg

from assets import checks, ingest, splits
from mmrec_pipeline.automation import jobs, schedules, sensors
from resources import resources_for_env

all_assets = dg.load_assets_from_modules([ingest, splits])
all_checks = dg.load_asset_checks_from_modules([checks])

defs = dg.Definitions(
    assets=all_assets,
    asset_checks=all_checks,
    resources=resources_for_env(),
    jobs=jobs,
    schedules=schedules,
    sensors=sensors,
    executor=dg.multiprocess_executor.configured({"max_concurrent": 2}),
)
