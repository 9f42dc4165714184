"""`make s3-demo`: the lake in S3. Runs `sample` ingest → split → features (budget-limited) → popularity → metrics
with `MMREC_HOME=s3://<bucket>/lake` through the project's Dagster assets, then reads the metrics back with DuckDB
over the lake's fsspec filesystem.

    python deploy/s3_demo.py                       # starts moto's S3 server on 127.0.0.1 (a free port)
    python deploy/s3_demo.py --endpoint URL        # an S3 endpoint already running (AWS_* variables set)

The Dagster instance is ephemeral (in memory); nothing of the lake is written to local disk, only the machine cache
in the temp folder (the generated sample's raw store, converted model weights).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project, when run as a script

# Small budgets: each feature is computed for real on this many keys; the rest is left for a later run.
BUDGETS = {"captions": 8, "review_summaries": 4, "text_embeddings": 64}
SELECTION = ["items", "users", "interactions", "split", "captions", "review_summaries", "text_embeddings",
             "popularity", "metrics"]


@contextlib.contextmanager
def moto_s3():
    """moto's S3 server on a free 127.0.0.1 port; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def use_endpoint(endpoint: str) -> None:
    """The AWS variables boto3 and s3fs read; moto accepts any credentials."""
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        os.environ.setdefault(key, value)


def run(bucket: str, dataset: str = "sample") -> dict:
    """Create `bucket` if missing, materialize the selection into `s3://<bucket>/lake`; returns what was read back."""
    import boto3
    import dagster as dg
    import duckdb

    s3 = boto3.client("s3")
    if bucket not in [b["Name"] for b in s3.list_buckets().get("Buckets", [])]:
        s3.create_bucket(Bucket=bucket)
    os.environ["MMREC_HOME"] = f"s3://{bucket}/lake"
    from assets.definitions import defs
    from mmrec_pipeline.storage import Lake
    from resources import resources_for_env

    result = dg.materialize(
        defs.assets, selection=SELECTION, partition_key=dataset, instance=dg.DagsterInstance.ephemeral(),
        resources=resources_for_env(), raise_on_error=False,
        run_config={"ops": {op: {"config": {"max_items_per_run": n}} for op, n in BUDGETS.items()}})
    failures = [e.step_failure_data.error.to_string() for e in result.all_events if e.is_step_failure]
    if not result.success:
        raise RuntimeError("the S3 run failed:\n" + "\n".join(failures))
    lake = Lake()
    con = duckdb.connect()
    con.register_filesystem(lake.root.fs)  # DuckDB reads s3:// through fsspec (its httpfs is not needed)
    table = lake.table(dataset, "metrics")
    metrics = con.sql(f"select model, variant, value as ndcg_at_10 from read_parquet('{table}') where protocol = "
                      "'temporal' and metric = 'ndcg' and k = 10 order by value desc").pl()
    keys = sorted(k for k in lake.root.fs.find(lake.root.path))
    return {"lake": str(lake.root), "metrics": metrics, "objects": keys}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--endpoint", help="an S3 endpoint to use instead of starting moto")
    parser.add_argument("--bucket", default="mmrec-lake")
    args = parser.parse_args(argv)
    with contextlib.nullcontext(args.endpoint) if args.endpoint else moto_s3() as endpoint:
        use_endpoint(endpoint)
        out = run(args.bucket)
    print(f"lake: {out['lake']} ({len(out['objects'])} objects, e.g.)")
    for key in [k for k in out["objects"] if not k.split("/")[-1].startswith("part-")][:25]:
        print(f"  {key}")
    print(f"popularity on sample (temporal split, full catalog, test users), read back with DuckDB:\n{out['metrics']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
