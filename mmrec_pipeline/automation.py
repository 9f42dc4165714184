"""Declarative refresh: what runs when, and the new-items sensor.

- `raw_files` is observed every hour; a new data version (files or registry entry changed) makes `ingest` and
  everything downstream of it refresh (`REFRESH`: eager, plus a changed code version).
- Feature and model assets carry a code version (a hash of their domain code): editing a model retrains it.
- `recommendations` also refreshes every night (`NIGHTLY`), so a night in which nothing changed materializes
  only that. `on_cron` is not used for it: it waits for every dependency to update after the tick, which on
  such a night never happens.
- The automation-condition sensor evaluates all this (running by default); `items_missing_features` resumes
  budget-limited caption/feature backfills. A backfill run that leaves items for the next one is tagged
  `mmrec/backfill: partial`, and its updates do not refresh what depends on the features: the models retrain
  once the backfill has caught up (its last run), not after every budget-limited run.
- `recommendations` carries a freshness policy (`NIGHTLY_FRESHNESS`): a night whose refresh failed or never ran
  shows it overdue in the UI (Dagster's freshness daemon evaluates it). `metrics` has none: it refreshes only when
  data or code change, so its age says nothing about a failed night.
"""

import datetime as dt
import json
import math
import sys

import dagster as dg

from assets import DATASETS
from mmrec_pipeline.evaluation import metrics, protocols
from mmrec_pipeline.features import vq
from mmrec_pipeline.features.families import FEATURES
from mmrec_pipeline.lake import feature_gaps
from mmrec_pipeline.models import MODELS, ranker
from mmrec_pipeline.registry import available_datasets, get_dataset
from mmrec_pipeline.versions import code_version
from resources.storage import LakeResource

NIGHTLY = "0 2 * * *"
# The nightly refresh starts at 02:00 and must have materialized `recommendations` by 06:00: a materialization in
# the four hours before the last 06:00 deadline (or any later one) is fresh; none since is overdue.
NIGHTLY_FRESHNESS = dg.FreshnessPolicy.cron(deadline_cron="0 6 * * *", lower_bound_delta=dt.timedelta(hours=4))
OBSERVE = "0 * * * *"
AC = dg.AutomationCondition

BACKFILL_TAG = "mmrec/backfill"  # "partial": a budget-limited features run that leaves items for the next one
GUARDS = ~AC.any_deps_in_progress() & ~AC.in_progress()
# Dagster's any_deps_updated(), except updates that all came from partial backfill runs.
DEPS_UPDATED = AC.any_deps_match(
    (AC.newly_updated() & ~AC.all_new_updates_have_run_tags(tag_values={BACKFILL_TAG: "partial"})
     & ~AC.executed_with_root_target()).with_label("newly updated, not by a partial backfill")
    | AC.will_be_requested()).with_label("any deps updated (partial backfill runs aside)")
# eager(), plus a code version change; static partitions, so no time-window clause.
REFRESH = ((AC.newly_missing() | DEPS_UPDATED | AC.code_version_changed()).since_last_handled()
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
    """Each asset with its automation condition, feature/model assets with their code version, and
    `recommendations` with its freshness policy."""
    def spec(s: dg.AssetSpec) -> dg.AssetSpec:
        version = CODE_VERSIONS.get(s.key.to_user_string(), s.code_version)
        freshness = NIGHTLY_FRESHNESS if s.key.to_user_string() == "recommendations" else s.freshness_policy
        return s.replace_attributes(automation_condition=condition_for(s.key), code_version=version,
                                    freshness_policy=freshness)

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


SENSOR_INTERVAL_S = 600


@dg.sensor(job=features_job, minimum_interval_seconds=SENSOR_INTERVAL_S, default_status=dg.DefaultSensorStatus.RUNNING)
def items_missing_features(context: dg.SensorEvaluationContext, lake_store: LakeResource):
    """Request a features run for every dataset whose catalog has items without features or captions.

    The run key is the set of gaps, so an unchanged gap (e.g. a caption backfill still in progress) is
    requested once, and a new catalog version or a finished budget-limited run makes a new request. Each run's
    tags (and the sensor's cursor) say what remains and when the backfill should catch up."""
    lake, progress = lake_store.lake(), {}
    for name in available_datasets():
        gaps = {t: n for t, n in feature_gaps(lake.dataset(name)).items() if n}
        if gaps:
            key = f"{name}:" + ",".join(f"{t}={n}" for t, n in sorted(gaps.items()))
            tags = backfill_tags(gaps, get_dataset(name).models, _run_cadence(context.instance, name))
            progress[name] = {k.removeprefix("mmrec/"): v for k, v in tags.items()}
            context.log.info(f"{name}: {tags}")
            yield dg.RunRequest(run_key=key, partition_key=name, tags={"mmrec/feature_gaps": key, **tags})
    context.update_cursor(json.dumps(progress, sort_keys=True))


def backfill_tags(gaps: dict[str, int], models: dict, cadence_s: float) -> dict[str, str]:
    """Tags of the features run that fills `gaps` ({feature table: items without a value}) under the dataset's
    per-run budgets (`models: {<feature>: {max_items_per_run: N}}`): `partial` when it leaves items for later
    runs, `final` when it catches up; the items remaining and, for a partial run, an ETA at one run per
    `cadence_s`."""
    runs = {t: math.ceil(n / budget) for t, n in gaps.items()
            if (budget := (models.get(t) or {}).get("max_items_per_run"))}
    left = max(runs.values(), default=1)
    tags = {BACKFILL_TAG: "partial" if left > 1 else "final",
            "mmrec/backfill_remaining": ", ".join(f"{t}={n}" for t, n in sorted(gaps.items()))}
    if left > 1:
        tags["mmrec/backfill_eta"] = f"~{_duration(left * cadence_s)} ({left} runs, one per ~{_duration(cadence_s)})"
    return tags


def _run_cadence(instance: dg.DagsterInstance, dataset: str) -> float:
    """Seconds between two backfill runs: the sensor's interval, or the last features run's wall time if longer."""
    records = instance.get_run_records(filters=dg.RunsFilter(
        job_name=features_job.name, tags={"dagster/partition": dataset}, statuses=[dg.DagsterRunStatus.SUCCESS]),
        limit=1)
    last = records[0] if records else None
    took = last.end_time - last.start_time if last and last.start_time and last.end_time else 0.0
    return max(float(SENSOR_INTERVAL_S), took)


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


jobs = [dataset_job, features_job]
schedules = []
sensors = [automation_sensor, items_missing_features]
