"""Issue 36, gBCE on Amazon Toys: train a row's SASRec for a short budget, then report the mean positive and
negative logits of the training targets (256 uniform per-target negatives) and how much the encoder's outputs
differ between positions (a collapse to one vector shows as a mean cosine near 1). Diagnostic only.

    python benchmarks/gbce_logits.py --rows sasrec_gbce256_per_target,sasrec_gbce1_per_target --seconds 40
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from amazon_toys import load_toys, rows

from mmrec_pipeline.compute import Compute
from mmrec_pipeline.models.runner import build
from mmrec_pipeline.models.sasrec import SASRec
from mmrec_pipeline.models.sequential import target_and_negative_logits
from mmrec_pipeline.models.training import IGNORE, trim


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", required=True)
    ap.add_argument("--seconds", type=float, default=40.0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = load_toys()
    for row in args.rows.split(","):
        overrides = {k: v for k, v in rows()[row][1].items() if k not in ("search_space", "refit")}
        overrides |= {"max_train_seconds": args.seconds, "patience": 1000}
        model = build(SASRec, {}, overrides)
        report = model.fit(data, None, Compute(device="cpu"))
        model.net.eval()
        gen = torch.Generator().manual_seed(1)
        model._set_windows([s for s in data.sequences("train") if len(s) >= 2])  # fit drops its windows
        model._gen = gen
        pos_all, neg_all, hs = [], [], []
        with torch.no_grad():
            for b in model.train_batches(gen)[:20]:
                model.net.eval()  # train_batches sets train mode
                x, y = trim(*model.training_batch(model._windows[b], model._skip[b], gen), pad=model.pad)
                h = model.net(x)
                keep = y != IGNORE
                h, t = h[keep], y[keep]
                neg = torch.randint(0, model.n_items, (len(t), 256), generator=gen)
                pos, negs = target_and_negative_logits(h, t, model.item_weights(), neg, model.output_bias())
                pos_all.append(pos), neg_all.append(negs.flatten()), hs.append(h)
        pos, negs, h = torch.cat(pos_all), torch.cat(neg_all), torch.cat(hs)
        hn = F.normalize(h[:2000], dim=1)
        cos = (hn @ hn.T).fill_diagonal_(float("nan"))
        w = model.item_weights()
        print(f"{row}: epochs {report['epochs']}, last loss {report['curve'][-1]['loss']:.4f}, "
              f"best valid {max(r.get('valid_ndcg@10', 0) for r in report['curve']):.4f}; "
              f"positive logit mean {pos.mean():.2f} (std {pos.std():.2f}), negative logit mean {negs.mean():.2f} "
              f"(std {negs.std():.2f}); P(pos > neg) {float((pos[:, None] > negs.view(len(pos), -1)[:, :1]).float().mean()):.3f}; "
              f"hidden norm {h.norm(dim=1).mean():.2f}, mean cosine between outputs {cos.nanmean():.3f}; "
              f"item table norm mean {w.norm(dim=1).mean():.3f}", flush=True)


if __name__ == "__main__":
    main()
