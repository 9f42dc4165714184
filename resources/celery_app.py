"""The Celery app of the `deploy` workers: `celery -A resources.celery_app worker` (see `make workers`).

Built from the same settings as the executor (resources/executors.py) and the same defaults as dagster-celery's
executor, so launcher and workers agree on the broker, the backend, the queue and the key prefix.
"""

from dagster_celery.config import DEFAULT_CONFIG, dict_wrapper
from dagster_celery.make_app import make_app
from dagster_celery.tasks import create_task

from mmrec_pipeline.instance import postgres_url
from resources.executors import celery_app_args

postgres_url()  # the instance's URL for the steps' instance (env MMREC_POSTGRES_URL, default 127.0.0.1)
_args = celery_app_args()
app = make_app({**_args, "config_source": dict_wrapper({**DEFAULT_CONFIG, **_args["config_source"]})})
execute_plan = create_task(app)
