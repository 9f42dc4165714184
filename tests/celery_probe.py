"""A job for tests/test_deploy.py: three `gpu`-pool ops and two CPU ops that only wait, run by the Celery workers.

Its steps are ready at once, so only the pool limit keeps the GPU steps apart while the CPU steps fill the other
worker. Not collected by pytest (no `test_` prefix); the workers import it by file path.
"""

import time

import dagster as dg

from resources.executors import executor_for_env

STEP_SECONDS = 1.0


def waiting_op(name: str, pool: str | None) -> dg.OpDefinition:
    @dg.op(name=name, pool=pool, out={})
    def _wait():  # no outputs (`out={}`): nothing is stored
        time.sleep(STEP_SECONDS)

    return _wait


@dg.job(executor_def=executor_for_env("deploy", concurrent_steps=1))  # the project's `deploy` executor
def pool_probe():
    for name in ("gpu_a", "gpu_b", "gpu_c"):
        waiting_op(name, "gpu")()
    for name in ("cpu_a", "cpu_b"):
        waiting_op(name, None)()
