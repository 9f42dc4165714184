"""Declarative refresh: the automation conditions and code versions each asset's decorator carries.

- `raw_files` is observed every hour (`OBSERVE_RAW`); a new data version (files or registry entry changed) makes
  `ingest` and everything downstream of it refresh (`REFRESH`: eager, plus a changed code version).
- Feature and model assets carry a code version (`CODE_VERSIONS`, a hash of their domain code): editing a model
  retrains it.
- `recommendations` also refreshes every night (`NIGHTLY_REFRESH`), so a night in which nothing changed
  materializes only that. `on_cron` is not used for it: it waits for every dependency to update after the tick,
  which on such a night never happens.
- A backfill run that leaves items for the next one is tagged `mmrec/backfill: partial` (`BACKFILL_TAG`, set by
  the `items_missing_features` sensor in definitions.py), and its updates do not refresh what depends on the
  features: the models retrain once the backfill has caught up (its last run), not after every budget-limited run.
- `recommendations` carries a freshness policy (`NIGHTLY_FRESHNESS`): a night whose refresh failed or never ran
  shows it overdue in the UI (Dagster's freshness daemon evaluates it). `metrics` has none: it refreshes only when
  data or code change, so its age says nothing about a failed night.
- The automation-condition sensor (definitions.py) evaluates all this, running by default.
"""

import datetime as dt
import sys

import dagster as dg

from mmrec_pipeline.evaluation import facts, metrics, protocols
from mmrec_pipeline.features import vq
from mmrec_pipeline.features.families import FEATURES
from mmrec_pipeline.models import MODELS, ranker
from mmrec_pipeline.versions import code_version

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
    training/evaluation code that produces its metrics and the report facts saved beside its checkpoint."""
    module = sys.modules[cls.__module__]
    used = {c for c in cls.__mro__ if c.__module__.startswith("mmrec_pipeline.")}
    used |= {v for v in vars(module).values()
             if isinstance(v, type) and v.__module__.startswith("mmrec_pipeline.models.")}
    from mmrec_pipeline.models import runner, training
    return code_version(module, *used, runner, training, protocols, metrics, facts)


CODE_VERSIONS = {**{name: code_version(*mods) for name, mods in FEATURE_CODE.items()},
                 **{name: model_code_version(cls) for name, cls in MODELS.items()},
                 ranker.NAME: code_version(ranker, protocols, metrics)}


