"""Declarative refresh: what runs when, and the new-items sensor.

- `raw_files` is observed every hour; a new data version (files or registry entry changed) makes `ingest` and
  everything downstream of it refresh (`REFRESH`: eager, plus a changed code version).
- Feature and model assets carry a code version (a hash of their domain code): editing a model retrains it.
- `recommendations` also refreshes every night (`NIGHTLY`), so a night in which nothing changed materializes
  only that. `on_cron` is not used for it: it waits for every dependency to update after the tick, which on
  such a night never happens.
- The automation-condition sensor evaluates all this (running by default); `items_missing_features` resumes
  budget-limited caption/feature backfills.
"""

import sys

import dagster as dg

from assets import DATASETS
from mmrec_pipeline.evaluation import metrics, protocols
from mmrec_pipeline.features import vq
from mmrec_pipeline.features.families import FEATURES
from mmrec_pipeline.lake import feature_gaps
from mmrec_pipeline.models import MODELS, ranker
from mmrec_pipeline.registry import available_datasets
from mmrec_pipeline.versions import code_version
from resources.storage import LakeResource

NIGHTLY = "0 2 * * *"
OBSERVE = "0 * * * *"
AC = dg.AutomationCondition

GUARDS = ~AC.any_deps_in_progress() & ~AC.in_progress()
# eager(), plus a code version change; static partitions, so no time-window clause.
REFRESH = ((AC.newly_missing() | AC.any_deps_updated() | AC.code_version_changed()).since_last_handled()
           & ~AC.any_deps_missing() & GUARDS).with_label("eager or code changed")
NIGHTLY_REFRESH = (REFRESH | (AC.cron_tick_passed(NIGHTLY).since_last_handled() & ~AC.any_deps_missing()
                              & GUARDS).with_label(f"nightly ({NIGHTLY} UTC)")).with_label("eager, code changed or nightly")
# The cross-dataset leaderboard reads whichever partitions exist: absent datasets must not block it.
ACROSS_DATASETS = (AC.any_deps_updated().since_last_handled() & GUARDS).with_label("any dataset updated")
OBSERVE_RAW = AC.cron_tick_passed(OBSERVE).since_last_handled().with_label(f"observe ({OBSERVE})")

FEATURE_CODE = {**{name: feature.code() for name, feature in FEATURES.items()}, "vq_tokenizer": (vq,)}


def model_code_version(cls) -> str:
    """The model's module, its bases' and the model modules it uses (e.g. hybrid: BPR-MF and content), plus the
    training/evaluation code that produces its metrics."""
    module = sys.modules[cls.__module__]
    used = {c for c in cls.__mro__ if c.__module__.startswith("mmrec_pipeline.")}
    used |= {v for v in vars(module).values()
             if isinstance(v, type) and v.__module__.startswith("mmrec_pipeline.models.")}
    from mmrec_pipeline.models import runner, training
    return code_version(module, *used, runner, training, protocols, metrics)


CODE_VERSIONS = {**{name: code_version(*mods) for name, mods in FEATURE_CODE.items()},
                 **{name: model_code_version(cls) for name, cls in MODELS.items()},
                 ranker.NAME: code_version(ranker, protocols, metrics)}


def condition_for(key: dg.AssetKey) -> dg.AutomationCondition:
    name = key.to_user_string()
    return {"recommendations": NIGHTLY_REFRESH, "leaderboard": ACROSS_DATASETS}.get(name, REFRESH)


def with_refresh_policy(assets_defs: list) -> list:
    """Each asset with its automation condition, and feature/model assets with their code version."""
    def spec(s: dg.AssetSpec) -> dg.AssetSpec:
        version = CODE_VERSIONS.get(s.key.to_user_string(), s.code_version)
        return s.replace_attributes(automation_condition=condition_for(s.key), code_version=version)

    out = []
    for a in assets_defs:
        if isinstance(a, dg.SourceAsset):  # raw_files: its observation cadence is set where it is defined
            out.append(a)
        else:
            out.append(a.map_asset_specs(spec))
    return out


automation_sensor = dg.AutomationConditionSensorDefinition(
    "refresh_on_change", target=dg.AssetSelection.all(include_sources=True),
    default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=60,
    description="Observes raw files hourly; refreshes what changed; refreshes recommendations nightly.")

everything_partitioned = dg.AssetSelection.all() - dg.AssetSelection.assets("leaderboard")

dataset_job = dg.define_asset_job(
    "dataset_job", selection=everything_partitioned, partitions_def=DATASETS,
    description="Materialize every asset of one dataset partition (by hand; automation refreshes only changes).")

features_job = dg.define_asset_job(
    "features_job", selection=dg.AssetSelection.groups("features"), partitions_def=DATASETS,
    description="Compute the missing item features of one dataset; cached rows are reused.")


@dg.sensor(job=features_job, minimum_interval_seconds=600, default_status=dg.DefaultSensorStatus.RUNNING)
def items_missing_features(context: dg.SensorEvaluationContext, lake_store: LakeResource):
    """Request a features run for every dataset whose catalog has items without features or captions.

    The run key is the set of gaps, so an unchanged gap (e.g. a caption backfill still in progress) is
    requested once, and a new catalog version or a finished budget-limited run makes a new request."""
    lake = lake_store.lake()
    for name in available_datasets():
        gaps = {t: n for t, n in feature_gaps(lake.dataset(name)).items() if n}
        if gaps:
            key = f"{name}:" + ",".join(f"{t}={n}" for t, n in sorted(gaps.items()))
            yield dg.RunRequest(run_key=key, partition_key=name, tags={"mmrec/feature_gaps": key})


jobs = [dataset_job, features_job]
schedules = []
sensors = [automation_sensor, items_missing_features]
