"""Benchmark `compute.keep_freed_memory` and `image.CPU_CNN_BATCH`: EfficientNet-Lite0 (packaged weights) on 192
images, one torch thread, each setting in a fresh process: glibc's default malloc with batches of 64 images, then
freed memory kept with batches of 64, 32, 16 and 8.

    python benchmarks/malloc.py [--images 192]

Prints and saves, per setting, wall, user and system CPU seconds and minor page faults of the batches (a first,
warm-up batch not counted) to `benchmarks/results/malloc.json`, with the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import machine_info

RESULTS = ROOT / "benchmarks" / "results" / "malloc.json"

CHILD = """
import json, resource, sys, time
import torch
from mmrec_pipeline.compute import keep_freed_memory
from mmrec_pipeline.features.image import load_efficientnet_lite0, pooled_features
from mmrec_pipeline.weights import ModelSources

kept = keep_freed_memory() if sys.argv[1] == "kept" else False
torch.set_num_threads(1)
model = load_efficientnet_lite0(ModelSources())
n_images, batch = int(sys.argv[2]), int(sys.argv[3])
images = torch.rand(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
with torch.inference_mode():
    pooled_features("efficientnet_lite0", model, images.clone())  # warm-up
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(n_images // batch):
        pooled_features("efficientnet_lite0", model, images.clone())
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"keep_freed_memory": kept, "batch": batch, "wall_s": round(wall, 2),
                  "user_s": round(after.ru_utime - before.ru_utime, 2),
                  "system_s": round(after.ru_stime - before.ru_stime, 2),
                  "minor_page_faults": after.ru_minflt - before.ru_minflt,
                  "max_rss_mb": round(after.ru_maxrss / 1024)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=192)
    args = parser.parse_args()
    report = {"machine": machine_info(), "what": f"EfficientNet-Lite0 pooled features of {args.images} images "
              "(224x224), one torch thread, after one warm-up batch", "runs": []}
    for setting, batch in (("default", 64), ("kept", 64), ("kept", 32), ("kept", 16), ("kept", 8)):
        proc = subprocess.run([sys.executable, "-c", CHILD, setting, str(args.images), str(batch)], cwd=ROOT,
                              check=True, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        row = {"malloc": setting, **json.loads(proc.stdout.strip().splitlines()[-1])}
        report["runs"].append(row)
        print(f"{setting:8} batch {batch:2}  wall {row['wall_s']:6.2f} s  user {row['user_s']:6.2f} s  system "
              f"{row['system_s']:6.2f} s  minor faults {row['minor_page_faults']:>9}  max RSS {row['max_rss_mb']} MB")
    RESULTS.write_text(json.dumps(report, indent=2))
    print(f"saved {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
