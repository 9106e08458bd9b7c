#!/usr/bin/env python
"""Speed and memory of ddpm_ms on CPU against the same model in PyTorch eager, one table.

    python bench/bench.py --torch          # the table (about 15 minutes on 2 cores, torch.compile's compiles
                                           # included); needs torch: pip install torch==2.13.0
                                           # (never a dependency of ddpm_ms)
    python bench/bench.py --torch --quick  # fewer timed steps, sampling extrapolated from 20 steps
    python bench/bench.py                  # the ddpm_ms rows only
    (samplers on a trained checkpoint, with their quality: scripts/compare_samplers.py --ckpt PATH)

Every measurement runs in its own subprocess, so that its peak RSS and its oneDNN ISA are its own. Variants:
  MindSpore ops   ddpm_ms with DDPM_MS_KERNELS=off: MindSpore's own Conv2D/GroupNorm (oneDNN capped at AVX2)
  kernels, MindSpore Adam  the kernel library's layers, but the optimizer step in MindSpore's ops (nn.Adam,
                  the loss scaler's unscale and finiteness check): what the fused optimizer step gains
  oneDNN kernels  ddpm_ms as it runs by default on CPU: the kernel library (ddpm_ms.kernels), AVX-512 allowed,
                  one fused optimizer step, NHWC activations between the layers
  oneDNN kernels, NCHW  the same with MindSpore's NCHW activations (DDPM_MS_LAYOUT=NCHW): what channels-last gains
  oneDNN kernels, plain script  the same with nothing setting MS_DEV_HOST_BLOCKING_RUN before the TrainStep
                  (as a notebook that never calls use_device): it should match the row above
  oneDNN kernels, settings too late  the same after one MindSpore op ran first (the one-line warning's case)
  PyTorch eager   bench/torch_reference.py: the same U-Net, parameter for parameter, in PyTorch eager
  torch.compile   the same, its model and optimizer step under torch.compile (inductor), timed after compiling
The "recipe loop" row times the fashion_cpu recipe's Trainer (data, noise, EMA, logging; no evaluations or
previews) against its own compiled step on one fixed batch, in one process.
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
GENERATE_NUM = 1000   # images of the generate rows (an evaluation's count)
VARIANTS = {   # name -> (implementation, environment; None: the variable unset)
    "MindSpore ops": ("ddpm_ms", {"DDPM_MS_KERNELS": "off"}),
    "oneDNN kernels": ("ddpm_ms", {"DDPM_MS_KERNELS": "onednn"}),
    # the kernels with MindSpore's NCHW activations between them (each convolution reorders in and out)
    "oneDNN kernels, NCHW": ("ddpm_ms", {"DDPM_MS_KERNELS": "onednn", "DDPM_MS_LAYOUT": "NCHW"}),
    "PyTorch eager": ("torch", {}),
    "torch.compile": ("torch-compile", {}),
    "kernels, MindSpore Adam": ("ddpm_ms-plain-adam", {"DDPM_MS_KERNELS": "onednn"}),
    # a plain script: nothing sets MS_DEV_HOST_BLOCKING_RUN before the TrainStep is built (it sets it itself)
    "oneDNN kernels, plain script": ("ddpm_ms", {"DDPM_MS_KERNELS": "onednn", "MS_DEV_HOST_BLOCKING_RUN": None}),
    # the same after one MindSpore op ran first: the variable comes too late (ddpm_ms warns)
    "oneDNN kernels, settings too late": ("ddpm_ms-late", {"DDPM_MS_KERNELS": "onednn",
                                                           "MS_DEV_HOST_BLOCKING_RUN": None}),
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


def measure_train(model_kw, batch, steps, fused_adam=True, op_first=False):
    """Images per second of the compiled train step, after one warm-up (compile) step; ``fused_adam`` False: the
    optimizer step in MindSpore's ops, the layers on the kernels; ``op_first``: one MindSpore op runs before the
    TrainStep is built."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    import mindspore as ms  # pylint: disable=import-outside-toplevel
    from mindspore import amp, nn  # pylint: disable=import-outside-toplevel
    import ddpm_ms  # pylint: disable=import-outside-toplevel
    from ddpm_ms.batches import step_noise  # pylint: disable=import-outside-toplevel
    if op_first:
        (ms.Tensor(np.ones(3, np.float32)) + 1).asnumpy()
    ms.set_seed(0)
    model = ddpm_ms.Unet(**model_kw)
    sched = ddpm_ms.NoiseSchedule.from_name("linear", 200)
    opt = nn.Adam(model.trainable_params(), learning_rate=1e-4)
    with ddpm_ms.kernels.using(None if fused_adam else "off"):
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
    return {"img_per_s": batch / dt, "s_per_step": dt, "first_step_s": warm, "params": ddpm_ms.count_params(model),
            "fused_adam": step.fused}


def measure_loop(config, steps, warmup=20):
    """The recipe ``config``'s Trainer (its data, noise, EMA and logging; evaluations, previews and checkpoints off)
    against its own compiled step called on one fixed batch: train img/s of each, after ``warmup`` steps."""
    import tempfile  # pylint: disable=import-outside-toplevel
    import ddpm_ms  # pylint: disable=import-outside-toplevel
    from ddpm_ms.callbacks import Callback  # pylint: disable=import-outside-toplevel

    class StepTimes(Callback):
        def __init__(self):
            self.times = []

        def on_step(self, trainer, loss, finite):
            self.times.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out:
        cfg = ddpm_ms.load_config(os.path.join(ROOT, "configs", f"{config}.yaml"), [
            f"train.out_dir={out}", f"train.max_steps={warmup + steps}", "train.warmup_steps=10", "train.eval_every=0",
            f"train.preview_every={10 ** 6}", f"train.ckpt_every={10 ** 6}", "train.gif=false", "train.sample_num=1"])
        trainer = ddpm_ms.Trainer.from_config(cfg)
        x0, t, noise, y = next(iter(trainer.batches.epoch(0, 0)))
        bare = []
        for _ in range(warmup + steps):
            trainer.run.train_step(x0, t, noise, y)[1].asnumpy()
            bare.append(time.perf_counter())
        timer = StepTimes()
        trainer.callbacks.insert(0, timer)
        trainer.fit(progress=False)
    batch = cfg.train.batch_size
    loop_s = (timer.times[-1] - timer.times[warmup - 1]) / steps
    bare_s = (bare[-1] - bare[warmup - 1]) / steps
    return {"img_per_s": batch / loop_s, "s_per_step": loop_s, "bare_img_per_s": batch / bare_s,
            "bare_s_per_step": bare_s}


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


def measure_generate(model_kw, num, batch, steps=20, sampler="dpm++2m-sde"):
    """Seconds for ``num`` images with ``steps`` calls of ``sampler`` in batches of ``batch`` (ddpm_ms.generate, the
    path of sample, evaluate and the in-training evaluations), after one batch that compiles the graph."""
    import mindspore as ms  # pylint: disable=import-outside-toplevel
    import ddpm_ms  # pylint: disable=import-outside-toplevel
    ms.set_seed(0)
    model = ddpm_ms.Unet(**model_kw)
    model.set_train(False)
    denoiser = ddpm_ms.Denoiser(model, ddpm_ms.NoiseSchedule.from_name("linear", 200))

    def run(n):
        t0 = time.perf_counter()
        ddpm_ms.generate(denoiser, (model.channels, 28, 28), n, batch_size=batch, sampler=sampler, steps=steps,
                         progress=False)
        return time.perf_counter() - t0

    first = run(batch)
    return {"seconds": run(num), "num": num, "batch": batch, "of_steps": steps, "measured_steps": steps,
            "first_batch_s": first}


def _child(args):
    if args.impl.startswith("torch"):
        import torch_reference as ref  # pylint: disable=import-outside-toplevel
        kw = model_kwargs(args.model)
        compiled = args.impl == "torch-compile"
        result = (ref.measure_train(kw, args.batch, args.steps, compiled=compiled) if args.kind == "train" else
                  ref.measure_generate(kw, GENERATE_NUM, args.batch, args.steps, compiled=compiled)
                  if args.kind == "dpm++2m-sde" else ref.measure_sample(kw, args.batch, args.steps))
    elif args.kind == "loop":
        result = measure_loop(args.model, args.steps)
    elif args.kind == "dpm++2m-sde":
        result = measure_generate(model_kwargs(args.model), GENERATE_NUM, args.batch, args.steps)
    elif args.kind == "train":
        result = measure_train(model_kwargs(args.model), args.batch, args.steps,
                               fused_adam=args.impl != "ddpm_ms-plain-adam", op_first=args.impl == "ddpm_ms-late")
    else:
        result = measure_sample(model_kwargs(args.model), args.batch, args.steps, sampler=args.kind)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def _spawn(kind, variant, model, batch, steps):
    impl, env = VARIANTS[variant]
    cmd = [sys.executable, __file__, "--child", "--kind", kind, "--impl", impl, "--model", model,
           "--batch", str(batch), "--steps", str(steps)]
    env = {k: v for k, v in {**os.environ, **BASE_ENV, **env}.items() if v is not None}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{kind}/{variant} failed:\n{proc.stderr[-2000:]}")


def plan(quick, torch):
    """(label, kind, variant, model, batch, timed steps) of every row."""
    variants = ["MindSpore ops", "kernels, MindSpore Adam", "oneDNN kernels, NCHW", "oneDNN kernels"] + (
        ["PyTorch eager", "torch.compile"] if torch else [])
    rows = []
    for label, model, batch, steps in (("train tutorial U-Net B=16", "tutorial", 16, 4 if quick else 10),
                                       ("train tutorial U-Net B=64", "tutorial", 64, 3 if quick else 6),
                                       ("train fashion_cpu U-Net B=16", "fashion_cpu", 16, 10 if quick else 30)):
        plain = (["oneDNN kernels, plain script", "oneDNN kernels, settings too late"] if model == "fashion_cpu"
                 else [])   # the recipe's model
        rows += [(label, "train", v, model, batch, steps) for v in variants + plain]
    rows += [("fashion_cpu recipe loop B=16", "loop", "oneDNN kernels", "fashion_cpu", 16, 40 if quick else 150)]
    rows += [("sample 64 images DDPM-200", "ddpm", v, "tutorial", 64, 20 if quick else 200)
             for v in variants if v not in ("torch.compile", "kernels, MindSpore Adam")]
    rows += [("sample 64 images DDIM-50", "ddim", "oneDNN kernels", "tutorial", 64, 50)]
    sampling = ["oneDNN kernels, NCHW", "oneDNN kernels"] + (["PyTorch eager", "torch.compile"] if torch else [])
    rows += [(f"sample {GENERATE_NUM} fashion_cpu images DPM-Solver++(2M) SDE-20, B={b}", "dpm++2m-sde", v,
              "fashion_cpu", b, 20) for b in ((250, 1000) if quick else (125, 250, 500, 1000)) for v in sampling]
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer timed steps")
    p.add_argument("--torch", action="store_true", help="add the PyTorch eager rows and the ratio column")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--kind", choices=("train", "loop", "ddpm", "ddim", "dpm++2m-sde"), help=argparse.SUPPRESS)
    p.add_argument("--impl", choices=sorted({impl for impl, _ in VARIANTS.values()}), help=argparse.SUPPRESS)
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


def _speed(kind, r):
    """Higher is faster: img/s of a train row, 1/seconds of a sampling row."""
    return r["img_per_s"] if kind in ("train", "loop") else 1.0 / r["seconds"]


def _print_table(results):
    refs = {(label, variant): r for label, _, variant, r in results if variant in ("PyTorch eager", "torch.compile")}
    print("| workload | variant | result | vs PyTorch eager | vs torch.compile | peak RSS MiB | timed |")
    print("|---|---|---|---|---|---|---|")
    for label, kind, variant, r in results:
        if kind in ("train", "loop"):
            text, timed = f"{r['img_per_s']:.1f} img/s", f"{r['s_per_step'] * 1e3:.1f} ms/step"
            if kind == "loop":
                timed += (f"; its bare step {r['bare_img_per_s']:.1f} img/s, loop/step "
                          f"{r['img_per_s'] / r['bare_img_per_s']:.2f}x")
        elif kind == "dpm++2m-sde":
            text, timed = f"{r['seconds']:.1f} s", f"first batch (compiles) {r['first_batch_s']:.1f} s"
        else:
            text = f"{r['seconds']:.0f} s"
            timed = f"{kind.upper()}-{r['of_steps']}" + (
                f" ({r['measured_steps']} steps timed, extrapolated)" if r["measured_steps"] < r["of_steps"] else "")
        ratios = []
        for ref_variant in ("PyTorch eager", "torch.compile"):
            ref = refs.get((label.replace("DDIM-50", "DDPM-200"), ref_variant))
            ratios.append(f"{_speed(kind, r) / _speed(kind, ref):.2f}x" if ref else "-")
        rss = f"{r['peak_rss_mib']:.0f}"
        print(f"| {label} | {variant} | {text} | {ratios[0]} | {ratios[1]} | {rss} | {timed} |")


if __name__ == "__main__":
    main()
