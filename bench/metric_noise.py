"""The metric's own noise: one checkpoint scored with several seeds and several sample counts.

    python bench/metric_noise.py --ckpt runs/fashion_cpu/ckpt_step00009360.ckpt [--seeds 5] [--max-num 2000]
        [--runs dpm++2m-sde:20 unipc:10:spacing=logsnr]

For each sampler run and seed it draws --max-num images once, then scores the first n of them for every n in
--nums with ddpm_ms.metrics.Evaluator (FD, KID) against the fixed reference images [5000, 7000). It prints one
Markdown row per (run, n): mean, standard deviation, min and max of FD over the seeds, and the relative spread.
Two FDs of the same run and count that differ by less than about two standard deviations are the same result.
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from ddpm_ms.commands.compare_samplers import parse_run  # noqa: E402  pylint: disable=wrong-import-position
from ddpm_ms.data import resolve_fashion_dir  # noqa: E402  pylint: disable=wrong-import-position
from ddpm_ms.metrics import Evaluator  # noqa: E402  pylint: disable=wrong-import-position
from ddpm_ms.pipeline import Pipeline  # noqa: E402  pylint: disable=wrong-import-position


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--nums", type=int, nargs="+", default=[500, 1000, 2000])
    parser.add_argument("--runs", nargs="+", default=["dpm++2m-sde:20", "unipc:10:spacing=logsnr"])
    parser.add_argument("--batch-size", type=int, default=250)
    args = parser.parse_args()
    pipe = Pipeline.from_checkpoint(args.ckpt)
    evaluator = Evaluator(resolve_fashion_dir(None))
    max_num = max(args.nums)
    print(f"checkpoint: {args.ckpt}; seeds 0..{args.seeds - 1}; {max_num} images per seed\n")
    print("| run | n | FD mean | FD std | FD min | FD max | std / mean | KID mean | s per 1000 images |")
    print("|---|---|---|---|---|---|---|---|---|")
    for text in args.runs:
        run = parse_run(text, pipe.num_timesteps)
        fds, kids, seconds = {n: [] for n in args.nums}, {n: [] for n in args.nums}, []
        for seed in range(args.seeds):
            start = time.perf_counter()
            images = pipe.generate(max_num, seed=seed, batch_size=args.batch_size, progress=False, **run)
            seconds.append((time.perf_counter() - start) * 1000 / max_num)
            for n in args.nums:
                scores = evaluator.evaluate(images, num=n)
                fds[n].append(scores["fd"])
                kids[n].append(scores["kid"])
        for n in args.nums:
            fd = np.array(fds[n])
            print(f"| {text} | {n} | {fd.mean():.2f} | {fd.std(ddof=1):.2f} | {fd.min():.2f} | {fd.max():.2f} | "
                  f"{fd.std(ddof=1) / fd.mean():.1%} | {np.mean(kids[n]):.2f} | {np.median(seconds):.1f} |", flush=True)


if __name__ == "__main__":
    main()
