#!/usr/bin/env python
"""Speed and memory of the tutorial's U-Net (dim 28, mults 1,2,4): tutorial style vs ddpm_ms, one table.

    python bench/bench.py              # full table (about 10 minutes on 2 cores)
    python bench/bench.py --quick      # fewer steps, rougher numbers
    python bench/bench.py --ckpt PATH  # only DDPM-200 vs DDIM-50 sampling, with a trained checkpoint's model:
                                       # a first call (graph compile included) and a second call (cached step)

Every measurement runs in its own subprocess so that its peak RSS is its own.
Variants:
  tutorial        the tutorial's code in PyNative, uncompiled step, MindSpore's default environment
  tutorial+env    the same code with ddpm_ms's environment (oneDNN capped at AVX2, blocking host runs)
  ddpm_ms         ddpm_ms.Unet with its compiled train step / compiled sampling step
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

DEFAULT_ENV = {"ONEDNN_MAX_CPU_ISA": "ALL", "MS_DEV_HOST_BLOCKING_RUN": "0"}
FAST_ENV = {"ONEDNN_MAX_CPU_ISA": "AVX2", "MS_DEV_HOST_BLOCKING_RUN": "1"}


def _model(impl):
    import ddpm_ms  # pylint: disable=import-outside-toplevel
    import tutorial_reference as ref  # pylint: disable=import-outside-toplevel
    cls = ddpm_ms.Unet if impl == "ddpm_ms" else ref.Unet
    return cls(dim=28, channels=1, dim_mults=(1, 2, 4))


def measure_train(impl, batch, steps):
    """Images per second of the train step, after one warm-up (compile) step."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    import mindspore as ms  # pylint: disable=import-outside-toplevel
    from mindspore import amp, nn  # pylint: disable=import-outside-toplevel
    import ddpm_ms  # pylint: disable=import-outside-toplevel
    from ddpm_ms.trainer import step_noise  # pylint: disable=import-outside-toplevel
    import tutorial_reference as ref  # pylint: disable=import-outside-toplevel
    ms.set_seed(0)
    model = _model(impl)
    sched = ddpm_ms.NoiseSchedule.from_name("linear", 200)
    if impl == "ddpm_ms":
        opt = nn.Adam(model.trainable_params(), learning_rate=1e-4)
        step = ddpm_ms.TrainStep(model, sched, opt, amp.DynamicLossScaler(65536, 2, 1000), "huber", jit=True)
    else:
        step = ref.make_train_step(model, sched)
    x0 = ms.Tensor(np.random.default_rng(0).uniform(-1, 1, (batch, 1, 28, 28)).astype(np.float32))
    t, noise = step_noise(0, 0, x0.shape, 200)
    t0 = time.perf_counter()
    out = step(x0, t, noise)
    (out[0] if isinstance(out, tuple) else out).asnumpy()
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        out = step(x0, t, noise)
    (out[0] if isinstance(out, tuple) else out).asnumpy()
    dt = (time.perf_counter() - t0) / steps
    return {"img_per_s": batch / dt, "s_per_step": dt, "first_step_s": warm}


def measure_sample(impl, batch, steps, total_steps=200, sampler="ddpm", ckpt=None):
    """Seconds for ``total_steps`` DDPM steps of ``batch`` images (extrapolated when steps < total).

    ``sampler="ddim"`` times ddpm_ms's DDIM over ``steps`` of the ``total_steps`` (compile included).
    With ``ckpt`` the model and schedule are the checkpoint's (EMA weights), and a second call with
    the compiled step cached on the model is timed too (``warm_seconds``).
    """
    import numpy as np  # pylint: disable=import-outside-toplevel
    import mindspore as ms  # pylint: disable=import-outside-toplevel
    import ddpm_ms  # pylint: disable=import-outside-toplevel
    ms.set_seed(0)
    if ckpt:
        from ddpm_ms.checkpoint import load_model  # pylint: disable=import-outside-toplevel
        model, sched, cfg, _ = load_model(ckpt)
        total_steps, steps = sched.num_timesteps, min(steps, sched.num_timesteps)
        if cfg.model.num_classes is not None:
            raise SystemExit("error: --ckpt needs an unconditional checkpoint")
    else:
        model = _model(impl)
        sched = ddpm_ms.NoiseSchedule.from_name("linear", total_steps)
    model.set_train(False)
    if impl == "ddpm_ms" and (sampler == "ddim" or steps >= total_steps):
        loop = ddpm_ms.ddim_sample_loop if sampler == "ddim" else ddpm_ms.p_sample_loop
        times = []
        for _ in range(2 if ckpt else 1):
            t0 = time.perf_counter()
            loop(model, sched, (batch, 1, 28, 28), seed=0, steps=steps, progress=False)
            times.append(time.perf_counter() - t0)
        return {"seconds": times[0], "warm_seconds": times[-1], "measured_steps": steps, "of_steps": steps}
    # the tutorial's loop: PyNative p_sample with a host-side Python branch per step
    from ddpm_ms.diffusion import p_sample  # pylint: disable=import-outside-toplevel
    from ddpm_ms.schedule import timestep_tensor  # pylint: disable=import-outside-toplevel
    x = ms.Tensor(np.random.default_rng(0).standard_normal((batch, 1, 28, 28)).astype(np.float32))
    x = p_sample(sched, model, x, timestep_tensor(total_steps - 1, batch))   # warm-up
    t0 = time.perf_counter()
    for i in range(steps):
        x = p_sample(sched, model, x, timestep_tensor(total_steps - 2 - i, batch))
        x.asnumpy()
    per = (time.perf_counter() - t0) / steps
    return {"seconds": per * total_steps, "measured_steps": steps, "of_steps": total_steps}


def _child(args):
    if args.kind == "train":
        result = measure_train(args.impl, args.batch, args.steps)
    else:
        result = measure_sample(args.impl, args.batch, args.steps, sampler=args.kind, ckpt=args.ckpt)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def _spawn(kind, impl, batch, steps, env, ckpt=None):
    cmd = [sys.executable, __file__, "--child", "--kind", kind, "--impl", impl, "--batch", str(batch),
           "--steps", str(steps)] + (["--ckpt", ckpt] if ckpt else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, **env), check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{kind}/{impl} failed:\n{proc.stderr[-2000:]}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer timed steps")
    p.add_argument("--ckpt", help="time DDPM-200 vs DDIM-50 sampling with this checkpoint's model only")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--kind", choices=("train", "ddpm", "ddim"), help=argparse.SUPPRESS)
    p.add_argument("--impl", choices=("tutorial", "ddpm_ms"), help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        _child(args)
        return
    q = args.quick
    plan = [
        # label (its first row is the 1.0x base), kind, variant, batch, timed steps, env
        ("train B=16", "train", "tutorial", 16, 2, DEFAULT_ENV),
        ("train B=16", "train", "tutorial+env", 16, 3 if q else 6, FAST_ENV),
        ("train B=16", "train", "ddpm_ms", 16, 3 if q else 10, FAST_ENV),
        ("train B=64", "train", "tutorial+env", 64, 2 if q else 4, FAST_ENV),
        ("train B=64", "train", "ddpm_ms", 64, 2 if q else 5, FAST_ENV),
        ("sample 64 images", "ddpm", "tutorial", 64, 2, DEFAULT_ENV),
        ("sample 64 images", "ddpm", "tutorial+env", 64, 5 if q else 10, FAST_ENV),
        ("sample 64 images", "ddpm", "ddpm_ms", 64, 200, FAST_ENV),
        ("sample 64 images", "ddim", "ddpm_ms DDIM-50", 64, 50, FAST_ENV),
    ]
    if args.ckpt:
        plan = [(f"sample 64 images ({os.path.basename(args.ckpt)})", kind, variant, batch, steps, env)
                for label, kind, variant, batch, steps, env in plan[-2:]]
    rows = []
    for label, kind, variant, batch, steps, env in plan:
        impl = "tutorial" if variant.startswith("tutorial") else "ddpm_ms"
        r = _spawn(kind, impl, batch, steps, env, args.ckpt)
        rows.append((label, kind, variant, r))
        print(f"  done: {label:16s} {variant:15s} {json.dumps(r)}", file=sys.stderr, flush=True)
    if args.ckpt:
        _print_ckpt_table(rows)
        return
    base = {}
    print("| workload | variant | result | vs tutorial | peak RSS MiB | timed |")
    print("|---|---|---|---|---|---|")
    for label, kind, variant, r in rows:
        if kind == "train":
            value, text = r["img_per_s"], f"{r['img_per_s']:.1f} img/s"
            ratio = value / base.setdefault(label, value)
            timed = f"{r['s_per_step']:.2f} s/step"
        else:
            value, text = r["seconds"], f"{r['seconds']:.0f} s"
            ratio = base.setdefault(label, value) / value
            timed = f"{kind.upper()}-{r['of_steps']}" + (
                f" ({r['measured_steps']} steps timed, extrapolated)" if r["measured_steps"] < r["of_steps"] else "")
        print(f"| {label} | {variant} | {text} | {ratio:.1f}x | {r['peak_rss_mib']:.0f} | {timed} |")


def _print_ckpt_table(rows):
    """DDPM-200 vs DDIM-50 with a checkpoint's model: first call (compile included) and second call."""
    (_, _, _, ddpm), (_, _, _, ddim) = rows
    print("| sampler | first call s | vs DDPM-200 | second call s | vs DDPM-200 | peak RSS MiB |")
    print("|---|---|---|---|---|---|")
    for name, r in ((f"DDPM-{ddpm['of_steps']}", ddpm), (f"DDIM-{ddim['of_steps']}", ddim)):
        print(f"| {name} | {r['seconds']:.1f} | {ddpm['seconds'] / r['seconds']:.2f}x | {r['warm_seconds']:.1f} | "
              f"{ddpm['warm_seconds'] / r['warm_seconds']:.2f}x | {r['peak_rss_mib']:.0f} |")


if __name__ == "__main__":
    main()
