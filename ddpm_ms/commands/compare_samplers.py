"""Compare samplers on one checkpoint: speed and quality against network calls, one table and one figure.

    python scripts/compare_samplers.py --ckpt runs/fashion_cpu/ckpt_step00001748.ckpt
    python scripts/compare_samplers.py --ckpt PATH --runs ddpm ddim:50:eta=1 dpm++2m:10 dpm++2m:20:spacing=logsnr

Each run is ``sampler[:steps][:option=value...]`` with a sampler of ddpm_ms.sampling.SAMPLERS (steps default to
the sampler's; options: spacing=uniform|logsnr, and eta for ddim). For each run it times 64 images twice, on a
new Denoiser (``first``: the graph compile included) and again (``cached``), then samples 1000 images (``--num``)
in batches of --batch-size and scores them with ddpm_ms.metrics (FD, KID, IS-style score, class histogram)
against the real reference images. It prints a Markdown table and writes compare_samplers.md, compare_samplers.json and
quality_vs_calls.png (FD against network calls, one line per sampler and spacing) into --out.
"""
import json
import os
import time
from argparse import RawDescriptionHelpFormatter

# pylint: disable=import-outside-toplevel
from ..cli import ArgumentParser, add_device_arg, add_guidance_args, positive_int, resolve_guidance

DEFAULT_RUNS = ("ddpm", "ddim:10", "ddim:20", "ddim:50", "ddim:50:eta=1", "dpm++2m:10", "dpm++2m:20",
                "dpm++2m:20:spacing=logsnr", "dpm++2m-sde:10", "dpm++2m-sde:20", "dpm++2m-sde:20:spacing=logsnr",
                "dpm++3m-sde:10", "dpm++3m-sde:20", "unipc:10", "unipc:20")


def parse_run(text, num_timesteps):
    """'ddim:50:eta=1' -> {'sampler': 'ddim', 'steps': 50, 'spacing': 'uniform', 'eta': 1.0}; ValueError if bad."""
    from ..samplers import SAMPLERS, SPACINGS, default_steps
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


def time_64(make_pipeline, run, guidance):
    """(first, cached) seconds for 64 images: a new pipeline (its compile included), then the same one again."""
    pipe, seconds = make_pipeline(), []
    for _ in range(2):
        t0 = time.perf_counter()
        pipe.generate(64, batch_size=64, guidance=guidance, progress=False, **run)
        seconds.append(time.perf_counter() - t0)
    return seconds


def main(argv=None, prog=None):
    parser = ArgumentParser(prog=prog, description=__doc__, formatter_class=RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="checkpoint written by scripts/train.py")
    parser.add_argument("--runs", nargs="+", default=list(DEFAULT_RUNS), metavar="SAMPLER[:STEPS][:K=V]",
                        help=f"what to compare (default: {' '.join(DEFAULT_RUNS)})")
    parser.add_argument("--batch-size", type=positive_int, default=250, help="images per batch")
    add_guidance_args(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num", type=positive_int, help="images scored per row (default 1000: what reported "
                                                          "numbers use)")
    parser.add_argument("--out", help="output folder (default: compare_samplers/ next to the checkpoint)")
    parser.add_argument("--data-root", help="Fashion-MNIST folder (default: the usual lookup)")
    add_device_arg(parser)
    args = parser.parse_args(argv)

    from tqdm.auto import tqdm
    from ..data import resolve_fashion_dir
    from ..device import use_device
    from ..metrics import NUM_EVAL, Evaluator
    from ..paths import make_output_dir, save_text
    from ..pipeline import Pipeline
    from ..report import label, plot_quality, table
    from .evaluate import require_fashion

    use_device(args.device)
    pipe = Pipeline.from_checkpoint(args.ckpt)
    require_fashion(parser, pipe.config)
    try:
        runs = [parse_run(text, pipe.num_timesteps) for text in args.runs]
    except ValueError as e:
        parser.error(str(e))
    out = make_output_dir(args.out or os.path.join(os.path.dirname(os.path.abspath(args.ckpt)), "compare_samplers"),
                          "--out")
    cfg, k = pipe.config, pipe.num_classes
    guidance = resolve_guidance(parser, args, cfg)
    evaluator = Evaluator(resolve_fashion_dir(args.data_root or cfg.data.root))
    num = args.num or NUM_EVAL
    labels = pipe.labels(num)

    def make_pipeline():
        return Pipeline(pipe.model, pipe.sched, cfg)

    rows = []
    for run in tqdm(runs, desc="samplers"):
        first, cached = time_64(make_pipeline, run, guidance)
        images = pipe.generate(num, seed=args.seed, batch_size=args.batch_size, guidance=guidance, **run)
        score = evaluator.evaluate(images, num, labels=labels)
        rows.append({"run": run, "first_s": first, "cached_s": cached, **score})
        tqdm.write(f"{label(run)}: FD {score['fd']:.1f}, {cached:.1f} s / 64 images")
    md = table(rows)
    print(md)
    save_text(os.path.join(out, "compare_samplers.md"), f"Checkpoint: {args.ckpt}; {num} images per row, seed "
              f"{args.seed}{f', guidance {guidance.w:g}' if k else ''}"
              f"{f' on timesteps {guidance.interval[0]}-{guidance.interval[1]}' if k and guidance.interval else ''}"
              f".\n\n{md}\n")
    save_text(os.path.join(out, "compare_samplers.json"), json.dumps({"ckpt": args.ckpt, "rows": rows}, indent=1))
    plot_quality(rows, os.path.join(out, "quality_vs_calls.png"))
    print(f"wrote compare_samplers.md, compare_samplers.json and quality_vs_calls.png to {out}")
    return 0
