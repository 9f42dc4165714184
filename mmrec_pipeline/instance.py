"""The Dagster instance per environment: embedded SQLite by default, PostgreSQL for `deploy` and `k8s`.

The instance (runs, event logs, schedules, pool slots) is Dagster's `dagster.yaml` in `DAGSTER_HOME`. On a laptop
it is SQLite files and needs no server. A deployment stores it in PostgreSQL (`dagster-postgres`) so that the
launcher, every executor worker and the UI on any machine see the same runs and share the `gpu` pool's slots.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

# Trust auth on 127.0.0.1, as on this project's machines and CI; set MMREC_POSTGRES_URL elsewhere. The driver is
# named because SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, while dagster-postgres installs psycopg2.
DEFAULT_POSTGRES_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/mmrec_dagster"
POSTGRES_ENVS = ("deploy", "k8s")


class InstanceError(RuntimeError):
    """The Dagster instance cannot be set up (server unreachable, wrong kind of instance in DAGSTER_HOME)."""

# GPU-heavy assets run in pool `gpu`; only they use a pool, so the default limit is the GPU's: one step at a time.
# A local instance on a machine without CUDA has no GPU to share: its limit is the local executor's concurrency
# (resources.CONCURRENT_STEPS), so captions, summaries and the VQ tokenizer run side by side on the two cores.
# Run monitoring lets the daemon (`make ui`) mark runs whose worker died as failed and release the pool slots
# such a run still holds a minute after it ended; `mmrec run` does both for its own runs at start
# (fail_runs_of_dead_processes).
_COMMON = """telemetry:
  enabled: false
concurrency:
  pools:
    default_limit: {pool_limit}
run_monitoring:
  enabled: true
  free_slots_after_run_end_seconds: 60
"""
CPU_ONLY_POOL_LIMIT = 2

# The URL is read from the environment by every process that opens the instance (launcher, workers, UI), so the
# file holds no credentials.
_POSTGRES = """storage:
  postgres:
    postgres_url:
      env: MMREC_POSTGRES_URL
"""


def postgres_url() -> str:
    return os.environ.setdefault("MMREC_POSTGRES_URL", DEFAULT_POSTGRES_URL)


def instance_yaml(env: str, cuda: bool = True) -> str:
    """The `dagster.yaml` of an environment's instance (`cuda`: whether this machine has a GPU to share)."""
    pool_limit = 1 if cuda or env in POSTGRES_ENVS else CPU_ONLY_POOL_LIMIT
    return _COMMON.format(pool_limit=pool_limit) + (_POSTGRES if env in POSTGRES_ENVS else "")


def ensure_database(url: str) -> bool:
    """Create the database named in a PostgreSQL URL if it does not exist (Dagster creates only its tables).

    Returns whether it was created. Raises `InstanceError` with the URL (password hidden) and the server's reason when the server
    cannot be reached."""
    import psycopg2
    from psycopg2 import sql

    parts = urlsplit(url)._replace(scheme="postgresql")  # libpq's form of the SQLAlchemy URL
    name = parts.path.lstrip("/")
    if not name:
        raise ValueError(f"PostgreSQL URL {_redact(url)} names no database (expected postgresql://user@host:port/db)")
    admin = urlunsplit(parts._replace(path="/postgres"))
    try:
        conn = psycopg2.connect(admin, connect_timeout=5)
    except psycopg2.OperationalError as e:
        raise InstanceError(f"PostgreSQL at {_redact(admin)} is unreachable: {str(e).strip()}") from None
    try:
        conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
        with conn.cursor() as cur:
            cur.execute("select 1 from pg_database where datname = %s", (name,))
            if cur.fetchone():
                return False
            try:
                cur.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
            except psycopg2.errors.DuplicateDatabase:  # another process created it meanwhile
                return False
            return True
    finally:
        conn.close()


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@"))
    return urlunsplit(parts)
