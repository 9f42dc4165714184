"""The Dagster code location: every asset, check, resource, job, schedule and sensor."""

import warnings

import dagster as dg

# Partitioned asset checks are a Dagster preview feature; the split checks rely on them deliberately.
warnings.filterwarnings("ignore", category=dg.PreviewWarning)

from assets import checks, evaluation, features, ingest, models, splits  # noqa: E402
from mmrec_pipeline.automation import jobs, schedules, sensors  # noqa: E402
from resources import resources_for_env  # noqa: E402

all_assets = dg.load_assets_from_modules([ingest, splits, features, models, evaluation])
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
