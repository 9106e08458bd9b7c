"""Compare samplers on one checkpoint: speed and quality against network calls, one table and one figure.

    python scripts/compare_samplers.py --ckpt runs/fashion_cpu/ckpt_step00001748.ckpt
    python scripts/compare_samplers.py --ckpt PATH --runs ddpm ddim:50:eta=1 dpm++2m:10 dpm++2m:20:spacing=logsnr

Each run is ``sampler[:steps][:option=value...]`` with a sampler of ddpm_ms.sampling.SAMPLERS (steps default to
the sampler's; options: spacing=uniform|logsnr, and eta for ddim). For each run it times 64 images twice, on a
new Denoiser (``first``: the graph compile included) and again (``cached``), then samples 1000 images in batches
of --batch-size and scores them with ddpm_ms.metrics (FD, KID, IS-style score, class histogram) against the
real reference images. It prints a Markdown table and writes compare_samplers.md, compare_samplers.json and
quality_vs_calls.png (FD against network calls, one line per sampler and spacing) into --out.
"""
import json
import os
import time
from argparse import RawDescriptionHelpFormatter

# pylint: disable=import-outside-toplevel
from ..cli import ArgumentParser, add_device_arg, non_negative_float, positive_int

DEFAULT_RUNS = ("ddpm", "ddim:10", "ddim:20", "ddim:50", "ddim:50:eta=1", "dpm++2m:10", "dpm++2m:20",
                "dpm++2m:20:spacing=logsnr", "dpm++2m-sde:10", "dpm++2m-sde:20", "dpm++2m-sde:20:spacing=logsnr")


def parse_run(text, num_timesteps):
    """'ddim:50:eta=1' -> {'sampler': 'ddim', 'steps': 50, 'spacing': 'uniform', 'eta': 1.0}; ValueError if bad."""
    from ..sampling import SAMPLERS, SPACINGS, default_steps
    name, *rest = text.split(":")
    if name not in SAMPLERS:
        raise ValueError(f"run {text!r}: unknown sampler {name!r} (choose from {', '.join(SAMPLERS)})")
    run = {"sampler": name, "steps": default_steps(name, num_timesteps), "spacing": "uniform"}
    for part in rest:
        key, eq, value = part.partition("=")
        if not eq and key.isdigit():
            run["steps"] = int(key)
        elif key == "spacing" and value in SPACINGS:
            run["spacing"] = value
        elif key in SAMPLERS[name].options:
            run[key] = float(value)
        else:
            raise ValueError(f"run {text!r}: cannot read {part!r} (steps, spacing=uniform|logsnr"
                             f"{', ' if SAMPLERS[name].options else ''}{', '.join(SAMPLERS[name].options)})")
    if not 1 <= run["steps"] <= num_timesteps:
        raise ValueError(f"run {text!r}: steps must be in [1, {num_timesteps}] for this checkpoint")
    return run


def label(run):
    """A row name: 'dpm++2m-20 logsnr', 'ddim-50 eta=1'."""
    extra = [run["spacing"]] if run["spacing"] != "uniform" else []
    extra += [f"{k}={run[k]:g}" for k in run if k not in ("sampler", "steps", "spacing")]
    return " ".join([f"{run['sampler']}-{run['steps']}"] + extra)


def time_64(make_denoiser, shape, run, labels, guidance):
    """(first, cached) seconds for 64 images: a new Denoiser (compile included), then the same one again."""
    from ..sampling import generate
    denoiser, seconds = make_denoiser(), []
    for _ in range(2):
        t0 = time.perf_counter()
        generate(denoiser, shape, 64, batch_size=64, labels=None if labels is None else labels[:64],
                 guidance=guidance, progress=False, **run)
        seconds.append(time.perf_counter() - t0)
    return seconds


def plot_quality(rows, path):
    """FD against network calls, one line per sampler and spacing (log-scaled calls)."""
    from ..viz import plt
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    series = {}
    for row in rows:
        key = " ".join([row["run"]["sampler"]] + label(row["run"]).split(" ")[1:])
        series.setdefault(key, []).append((row["run"]["steps"], row["fd"]))
    for key, points in series.items():
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=key)
    ax.set_xscale("log")
    ax.set_xlabel("network calls per image (steps)")
    ax.set_ylabel("FD to real images (lower is better)")
    ax.set_title("sample quality against sampling cost", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return series


def table(rows):
    """The Markdown table of the rows."""
    lines = ["| sampler | network calls | s / 64 images, first call | cached | FD | KID | IS | class histogram |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {label(r['run'])} | {r['run']['steps']} | {r['first_s']:.1f} | {r['cached_s']:.1f} | "
                     f"{r['fd']:.1f} | {r['kid']:.4g} | {r['is']:.2f} | {' '.join(map(str, r['class_histogram']))} |")
    return "\n".join(lines)


def main(argv=None, prog=None):
    parser = ArgumentParser(prog=prog, description=__doc__, formatter_class=RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="checkpoint written by scripts/train.py")
    parser.add_argument("--runs", nargs="+", default=list(DEFAULT_RUNS), metavar="SAMPLER[:STEPS][:K=V]",
                        help=f"what to compare (default: {' '.join(DEFAULT_RUNS)})")
    parser.add_argument("--batch-size", type=positive_int, default=250, help="images per batch for the 1000")
    parser.add_argument("--guidance", type=non_negative_float, default=3.0, help="for a class-conditional model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="output folder (default: compare_samplers/ next to the checkpoint)")
    parser.add_argument("--data-root", help="Fashion-MNIST folder (default: the usual lookup)")
    add_device_arg(parser)
    args = parser.parse_args(argv)

    import numpy as np
    from tqdm.auto import tqdm
    from ..checkpoint import load_model
    from ..data import resolve_fashion_dir
    from ..metrics import NUM_EVAL, Evaluator
    from ..paths import make_output_dir
    from ..sampling import Denoiser, generate
    from ..device import use_device

    use_device(args.device)
    model, sched, cfg, _ = load_model(args.ckpt)
    try:
        runs = [parse_run(text, sched.num_timesteps) for text in args.runs]
    except ValueError as e:
        parser.error(str(e))
    out = make_output_dir(args.out or os.path.join(os.path.dirname(os.path.abspath(args.ckpt)), "compare_samplers"),
                          "--out")
    evaluator = Evaluator(resolve_fashion_dir(args.data_root or cfg.data.root))
    k = cfg.model.num_classes
    labels = None if k is None else np.arange(NUM_EVAL) % k
    shape = (cfg.model.channels, cfg.data.image_size, cfg.data.image_size)

    def make_denoiser():
        return Denoiser.from_config(model, sched, cfg)

    denoiser, rows = make_denoiser(), []
    for run in tqdm(runs, desc="samplers"):
        first, cached = time_64(make_denoiser, shape, run, labels, args.guidance)
        images = generate(denoiser, shape, NUM_EVAL, seed=args.seed, batch_size=args.batch_size, labels=labels,
                          guidance=args.guidance, **run)
        score = evaluator.evaluate(images, labels=labels)
        rows.append({"run": run, "first_s": first, "cached_s": cached, **score})
        tqdm.write(f"{label(run)}: FD {score['fd']:.1f}, {cached:.1f} s / 64 images")
    md = table(rows)
    print(md)
    with open(os.path.join(out, "compare_samplers.md"), "w", encoding="utf-8") as f:
        f.write(f"Checkpoint: {args.ckpt}; {NUM_EVAL} images per row, seed {args.seed}"
                f"{f', guidance {args.guidance}' if k else ''}.\n\n{md}\n")
    with open(os.path.join(out, "compare_samplers.json"), "w", encoding="utf-8") as f:
        json.dump({"ckpt": args.ckpt, "rows": rows}, f, indent=1)
    plot_quality(rows, os.path.join(out, "quality_vs_calls.png"))
    print(f"wrote compare_samplers.md, compare_samplers.json and quality_vs_calls.png to {out}")
    return 0
