#!/usr/bin/env python
"""Where a train step's (or a sampling call's) time goes: the kernel library's own seconds per entry point against
the whole step.

    python bench/kernel_profile.py                          # the fashion_cpu U-Net, B=16, both layouts
    python bench/kernel_profile.py --model tutorial --batch 64 --layouts NHWC
    python bench/kernel_profile.py --work sample --batch 250 --steps 10   # one Denoiser call (a sampler step)

Each layout runs in its own process with DDPM_MS_KERNEL_PROFILE=1: warm-up steps (compile, oneDNN primitive
creation), the profile reset, then the timed steps. "outside the kernels" is the step's wall time minus the
kernels' time: MindSpore's own ops (Dense, adds, transposes, the loss), its per-op dispatch and the host.
"""
import argparse
import collections
import ctypes
import json
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

GROUPS = (("conv forward", r"^Conv(Bias)?Fwd"), ("conv backward", r"^Conv(Bias)?Bwd"), ("GroupNorm + SiLU", r"^GroupNorm(Mod)?Silu"),
          ("GroupNorm", r"^GroupNorm(Fwd|Bwd)"), ("channel LayerNorm", r"^ChannelNorm"), ("attention", r"^(Linear|Softmax)Attention"),
          ("softmax", r"^Softmax(Fwd|Bwd)"),
          ("GELU / SiLU", r"^Eltwise"), ("optimizer step", r"^AdamStep"), ("EMA", r"^EmaUpdate"))


def child(args):
    import numpy as np  # pylint: disable=import-outside-toplevel
    import mindspore as ms  # pylint: disable=import-outside-toplevel
    from mindspore import amp, nn  # pylint: disable=import-outside-toplevel
    import ddpm_ms  # pylint: disable=import-outside-toplevel
    import bench  # pylint: disable=import-outside-toplevel
    from ddpm_ms.batches import step_noise  # pylint: disable=import-outside-toplevel
    ms.set_seed(0)
    model = ddpm_ms.Unet(**bench.model_kwargs(args.model))
    sched = ddpm_ms.NoiseSchedule.from_name("linear", 200)
    x0 = np.random.default_rng(0).uniform(-1, 1, (args.batch, 1, 28, 28)).astype(np.float32)
    if args.work == "sample":           # one Denoiser call, numpy in and out, as a sampler's step makes it
        model.set_train(False)
        denoise = ddpm_ms.Denoiser(model, sched)
        t = np.full(args.batch, 100, np.int32)
        work = lambda: denoise(x0, t)[0]                                            # noqa: E731
    else:
        opt = nn.Adam(model.trainable_params(), learning_rate=1e-4)
        step = ddpm_ms.TrainStep(model, sched, opt, amp.DynamicLossScaler(65536, 2, 1000), "huber", jit=True)
        t, noise = step_noise(0, 0, x0.shape, 200)
        x0 = ms.Tensor(x0)
        work = lambda: step(x0, t, noise)[0]                                        # noqa: E731
    for _ in range(3):
        np.asarray(work())
    ctypes.CDLL(ddpm_ms.kernels.library()).DdpmMsKernelProfileReset()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        out = work()
    np.asarray(out)
    print("RESULT " + json.dumps({"s_per_step": (time.perf_counter() - t0) / args.steps, "layout": model.layout}))


def run(layout, args):
    env = {**os.environ, "DDPM_MS_KERNEL_PROFILE": "1", "DDPM_MS_LAYOUT": layout, "DDPM_MS_KERNELS": "onednn",
           "MS_DEV_HOST_BLOCKING_RUN": "1"}
    cmd = [sys.executable, __file__, "--child", "--model", args.model, "--batch", str(args.batch),
           "--steps", str(args.steps), "--work", args.work]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    result = next((json.loads(l[7:]) for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
    if result is None:
        raise SystemExit(f"the {layout} run failed:\n{proc.stderr[-2000:]}")
    kernels = collections.defaultdict(lambda: [0, 0.0])
    for line in proc.stderr.splitlines():
        m = re.match(r"ddpm_ms kernel profile (\S+) (\d+) ([\d.]+)", line)
        if m:
            group = m.group(1) if args.detail else next((g for g, pattern in GROUPS if re.match(pattern, m.group(1))),
                                                        m.group(1))
            kernels[group][0] += int(m.group(2))
            kernels[group][1] += float(m.group(3))
    return result, kernels


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="fashion_cpu")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--layouts", nargs="+", default=["NCHW", "NHWC"], choices=["NCHW", "NHWC"])
    p.add_argument("--work", default="train", choices=["train", "sample"],
                   help="a train step, or one Denoiser call (model, objective, clip) as a sampler's step")
    p.add_argument("--detail", action="store_true", help="one row per kernel entry point, not per group")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    runs = {layout: run(layout, args) for layout in args.layouts}
    what = "train step" if args.work == "train" else "Denoiser call"
    print(f"{args.model} U-Net, {what}, B={args.batch}, {args.steps} timed calls (ms per call)")
    print("| part | " + " | ".join(f"{l}: ms (calls)" for l in args.layouts) + " |")
    print("|---|" + "---|" * len(args.layouts))
    names = ([] if args.detail else [g for g, _ in GROUPS]) + sorted({k for _, ks in runs.values() for k in ks} - {g for g, _ in GROUPS})
    for name in names:
        cells = []
        for layout in args.layouts:
            calls, seconds = runs[layout][1].get(name, (0, 0.0))
            cells.append(f"{seconds / args.steps * 1e3:.2f} ({calls // args.steps})" if calls else "-")
        if any(c != "-" for c in cells):
            print(f"| {name} | " + " | ".join(cells) + " |")
    totals, outside, steps = [], [], []
    for layout in args.layouts:
        result, kernels = runs[layout]
        k = sum(s for _, s in kernels.values()) / args.steps * 1e3
        totals.append(f"{k:.2f}")
        steps.append(f"{result['s_per_step'] * 1e3:.2f}")
        outside.append(f"{result['s_per_step'] * 1e3 - k:.2f}")
    print("| **the kernels** | " + " | ".join(totals) + " |")
    print("| outside the kernels (MindSpore's ops, dispatch) | " + " | ".join(outside) + " |")
    print("| **the whole step** | " + " | ".join(steps) + " |")


if __name__ == "__main__":
    main()
