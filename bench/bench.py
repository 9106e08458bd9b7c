#!/usr/bin/env python
"""Speed and memory of ddpm_ms on CPU against the same model in PyTorch eager, one table.

    python bench/bench.py --torch          # the table (about 6 minutes on 2 cores); needs torch:
                                           #   pip install torch==2.13.0   (never a dependency of ddpm_ms)
    python bench/bench.py --torch --quick  # fewer timed steps, sampling extrapolated from 20 steps
    python bench/bench.py                  # the ddpm_ms rows only
    (samplers on a trained checkpoint, with their quality: scripts/compare_samplers.py --ckpt PATH)

Every measurement runs in its own subprocess, so that its peak RSS and its oneDNN ISA are its own. Variants:
  MindSpore ops   ddpm_ms with DDPM_MS_KERNELS=off: MindSpore's own Conv2D/GroupNorm (oneDNN capped at AVX2)
  oneDNN kernels  ddpm_ms as it runs by default on CPU: the kernel library (ddpm_ms.kernels), AVX-512 allowed
  PyTorch eager   bench/torch_reference.py: the same U-Net, parameter for parameter, in PyTorch eager
Models: the tutorial U-Net (dim 28, mults 1,2,4; 2,992,180 parameters) and the fashion_cpu recipe's ResNet U-Net.
"""
import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

BASE_ENV = {"MS_DEV_HOST_BLOCKING_RUN": "1"}
VARIANTS = {   # name -> (implementation, environment)
    "MindSpore ops": ("ddpm_ms", {"DDPM_MS_KERNELS": "off"}),
    "oneDNN kernels": ("ddpm_ms", {"DDPM_MS_KERNELS": "onednn"}),
    "PyTorch eager": ("torch", {}),
}


def model_kwargs(name):
    """Constructor arguments of a benchmarked U-Net: 'tutorial' or a bundled config's model."""
    if name == "tutorial":
        return dict(dim=28, channels=1, dim_mults=(1, 2, 4))
    from ddpm_ms.config import load_config  # pylint: disable=import-outside-toplevel
    m = load_config(os.path.join(ROOT, "configs", f"{name}.yaml")).model
    return dict(dim=m.dim, dim_mults=tuple(m.dim_mults), channels=m.channels, block_type=m.block_type,
                convnext_mult=m.convnext_mult, resnet_groups=m.resnet_groups, attn_heads=m.attn_heads,
                attn_dim_head=m.attn_dim_head, init_dim=m.init_dim)


def measure_train(model_kw, batch, steps):
    """Images per second of the compiled train step, after one warm-up (compile) step."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    import mindspore as ms  # pylint: disable=import-outside-toplevel
    from mindspore import amp, nn  # pylint: disable=import-outside-toplevel
    import ddpm_ms  # pylint: disable=import-outside-toplevel
    from ddpm_ms.batches import step_noise  # pylint: disable=import-outside-toplevel
    ms.set_seed(0)
    model = ddpm_ms.Unet(**model_kw)
    sched = ddpm_ms.NoiseSchedule.from_name("linear", 200)
    opt = nn.Adam(model.trainable_params(), learning_rate=1e-4)
    step = ddpm_ms.TrainStep(model, sched, opt, amp.DynamicLossScaler(65536, 2, 1000), "huber", jit=True)
    x0 = ms.Tensor(np.random.default_rng(0).uniform(-1, 1, (batch, 1, 28, 28)).astype(np.float32))
    t, noise = step_noise(0, 0, x0.shape, 200)
    t0 = time.perf_counter()
    step(x0, t, noise)[0].asnumpy()
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step(x0, t, noise)[0]
    loss.asnumpy()
    dt = (time.perf_counter() - t0) / steps
    return {"img_per_s": batch / dt, "s_per_step": dt, "first_step_s": warm, "params": ddpm_ms.count_params(model)}


def measure_sample(model_kw, batch, steps, sampler="ddpm"):
    """Seconds for 200 DDPM steps (or ``steps`` DDIM steps) of ``batch`` images through one compiled Denoiser.

    With fewer than 200 DDPM steps the time is extrapolated from a second, cached run of that many steps
    (DDPM respaced to ``steps``: the same work per step).
    """
    import mindspore as ms  # pylint: disable=import-outside-toplevel
    import ddpm_ms  # pylint: disable=import-outside-toplevel
    ms.set_seed(0)
    total = 200
    model = ddpm_ms.Unet(**model_kw)
    model.set_train(False)
    denoiser = ddpm_ms.Denoiser(model, ddpm_ms.NoiseSchedule.from_name("linear", total))

    def run(n):
        t0 = time.perf_counter()
        ddpm_ms.generate(denoiser, (model.channels, 28, 28), batch, batch_size=batch, sampler=sampler, steps=n,
                         progress=False)
        return time.perf_counter() - t0

    n = min(steps, total)
    if sampler == "ddpm" and n < total:   # extrapolate from a cached run of n steps
        run(n)
        return {"seconds": run(n) / n * total, "measured_steps": n, "of_steps": total}
    return {"seconds": run(n), "measured_steps": n, "of_steps": n}


def _child(args):
    if args.impl == "torch":
        import torch_reference as ref  # pylint: disable=import-outside-toplevel
        kw = model_kwargs(args.model)
        result = (ref.measure_train(kw, args.batch, args.steps) if args.kind == "train"
                  else ref.measure_sample(kw, args.batch, args.steps))
    elif args.kind == "train":
        result = measure_train(model_kwargs(args.model), args.batch, args.steps)
    else:
        result = measure_sample(model_kwargs(args.model), args.batch, args.steps, sampler=args.kind)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def _spawn(kind, variant, model, batch, steps):
    impl, env = VARIANTS[variant]
    cmd = [sys.executable, __file__, "--child", "--kind", kind, "--impl", impl, "--model", model,
           "--batch", str(batch), "--steps", str(steps)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, **BASE_ENV, **env), check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{kind}/{variant} failed:\n{proc.stderr[-2000:]}")


def plan(quick, torch):
    """(label, kind, variant, model, batch, timed steps) of every row."""
    variants = ["MindSpore ops", "oneDNN kernels"] + (["PyTorch eager"] if torch else [])
    rows = []
    for label, model, batch, steps in (("train tutorial U-Net B=16", "tutorial", 16, 4 if quick else 10),
                                       ("train tutorial U-Net B=64", "tutorial", 64, 3 if quick else 6),
                                       ("train fashion_cpu U-Net B=16", "fashion_cpu", 16, 10 if quick else 30)):
        rows += [(label, "train", v, model, batch, steps) for v in variants]
    rows += [("sample 64 images DDPM-200", "ddpm", v, "tutorial", 64, 20 if quick else 200) for v in variants]
    rows += [("sample 64 images DDIM-50", "ddim", "oneDNN kernels", "tutorial", 64, 50)]
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer timed steps")
    p.add_argument("--torch", action="store_true", help="add the PyTorch eager rows and the ratio column")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--kind", choices=("train", "ddpm", "ddim"), help=argparse.SUPPRESS)
    p.add_argument("--impl", choices=("ddpm_ms", "torch"), help=argparse.SUPPRESS)
    p.add_argument("--model", default="tutorial", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        _child(args)
        return
    if args.torch and importlib.util.find_spec("torch") is None:
        raise SystemExit("error: --torch needs PyTorch in this Python: pip install torch==2.13.0")
    results = []
    for label, kind, variant, model, batch, steps in plan(args.quick, args.torch):
        r = _spawn(kind, variant, model, batch, steps)
        results.append((label, kind, variant, r))
        print(f"  done: {label:30s} {variant:15s} {json.dumps(r)}", file=sys.stderr, flush=True)
    _print_table(results)


def _print_table(results):
    torch_rows = {label: r for label, _, variant, r in results if variant == "PyTorch eager"}
    print("| workload | variant | result | vs PyTorch eager | peak RSS MiB | timed |")
    print("|---|---|---|---|---|---|")
    for label, kind, variant, r in results:
        ref = torch_rows.get(label) or torch_rows.get(label.replace("DDIM-50", "DDPM-200"))
        if kind == "train":
            text, timed = f"{r['img_per_s']:.1f} img/s", f"{r['s_per_step']:.2f} s/step"
            ratio = r["img_per_s"] / ref["img_per_s"] if ref else None
        else:
            text = f"{r['seconds']:.0f} s"
            timed = f"{kind.upper()}-{r['of_steps']}" + (
                f" ({r['measured_steps']} steps timed, extrapolated)" if r["measured_steps"] < r["of_steps"] else "")
            ratio = ref["seconds"] / r["seconds"] if ref else None
        ratio_text = f"{ratio:.2f}x" if ratio else "-"
        print(f"| {label} | {variant} | {text} | {ratio_text} | {r['peak_rss_mib']:.0f} | {timed} |")


if __name__ == "__main__":
    main()
