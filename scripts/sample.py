#!/usr/bin/env python
"""Sample from a trained checkpoint: python scripts/sample.py --ckpt PATH [--num 64] [--sampler ddim --steps 50]

Writes samples.png (a grid) and samples.npy ([N, C, H, W] float32 in [-1, 1]) into --out; --gif adds
denoising.gif; --forward-figure adds the tutorial's forward-diffusion figure. A class-conditional
checkpoint takes --class NAME|INDEX and --guidance W, or --per-class for a labelled 10-row grid.
--ablation adds ablation.png: DDPM and DDPM with no noise added back, from the same starting noise.
EMA weights are used when the checkpoint has them (--no-ema for the raw weights).
"""
import os
import sys
from argparse import RawDescriptionHelpFormatter

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

# pylint: disable=wrong-import-position,import-outside-toplevel
from ddpm_ms.cli import (ArgumentParser, add_sampler_args, check_sampler_args, non_negative_float,  # noqa: E402
                         positive_int, run_main)


def parse_class(text, num_classes, class_names):
    """A class index or (case-insensitive) name -> index; raises ValueError naming the choices."""
    if text.isdigit() and int(text) < num_classes:
        return int(text)
    lowered = [n.lower() for n in class_names]
    if text.lower() in lowered:
        return lowered.index(text.lower())
    raise ValueError(f"--class {text!r} is not a class index 0..{num_classes - 1} or one of: {', '.join(class_names)}")


def main():
    parser = ArgumentParser(description=__doc__, formatter_class=RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="checkpoint written by scripts/train.py")
    parser.add_argument("--num", type=positive_int, default=64, help="number of images (default 64)")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="images per sampling batch")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (same seed, same images)")
    parser.add_argument("--out", help="output folder (default: samples/ next to the checkpoint)")
    add_sampler_args(parser)
    parser.add_argument("--class", dest="cls", metavar="NAME|INDEX", help="class to generate (conditional models)")
    parser.add_argument("--guidance", type=non_negative_float, default=3.0, help="classifier-free guidance w")
    parser.add_argument("--per-class", action="store_true", help="a grid of every class, one labelled row each")
    parser.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA ones")
    parser.add_argument("--no-clip", action="store_true",
                        help="do not clip the predicted x_0 to [-1, 1] at each step (the tutorial's update)")
    parser.add_argument("--gif", action="store_true", help="also write denoising.gif of the first batch")
    parser.add_argument("--gif-index", type=int, default=0, help="which image of the first batch to animate")
    parser.add_argument("--forward-figure", action="store_true",
                        help="also write forward_diffusion.png (one training image at t=0,50,100,150,199)")
    parser.add_argument("--ablation", action="store_true",
                        help="also write ablation.png: 8 DDPM samples above the same 8 with no noise added back")
    args = parser.parse_args()
    check_sampler_args(parser, args)

    import numpy as np
    from ddpm_ms.checkpoint import load_model
    from ddpm_ms.data import FASHION_CLASSES
    from ddpm_ms.paths import make_output_dir
    from ddpm_ms.sampling import batch_plan, generate
    from ddpm_ms.viz import save_gif, save_grid

    model, sched, cfg, _ = load_model(args.ckpt, use_ema=not args.no_ema)
    check_sampler_args(parser, args, sched.num_timesteps)
    k = cfg.model.num_classes
    if (args.cls is not None or args.per_class) and k is None:
        parser.error("--class/--per-class need a class-conditional checkpoint (model.num_classes)")
    names = list(FASHION_CLASSES) if k == len(FASHION_CLASSES) else [str(i) for i in range(k or 0)]
    labels, rows = None, None
    if args.per_class:
        per_row = max(1, args.num // k)
        labels, rows = np.repeat(np.arange(k), per_row), names
    elif args.cls is not None:
        try:
            labels = np.full(args.num, parse_class(args.cls, k, names))
        except ValueError as e:
            parser.error(str(e))
    elif k is not None:
        labels = np.arange(args.num) % k
    num = args.num if labels is None else len(labels)
    first_batch = batch_plan(num, args.batch_size)[1]
    if not 0 <= args.gif_index < first_batch:
        parser.error(f"--gif-index must be in [0, {first_batch}) (the first batch)")

    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.ckpt)), "samples")
    make_output_dir(out, "--out")
    c, size = cfg.model.channels, cfg.data.image_size
    result = generate(model, sched, (c, size, size), num, seed=args.seed, batch_size=args.batch_size,
                      sampler=args.sampler, steps=args.steps, eta=args.eta, labels=labels, guidance=args.guidance,
                      null_class=k, frames=args.gif, clip_denoised=not args.no_clip)
    samples, frames = result if args.gif else (result, None)
    np.save(os.path.join(out, "samples.npy"), samples.astype(np.float32))
    nrow = len(samples) // k if rows else int(np.ceil(np.sqrt(len(samples))))
    save_grid(samples, os.path.join(out, "samples.png"), nrow=nrow, row_labels=rows)
    if frames is not None:
        save_gif(frames, os.path.join(out, "denoising.gif"), index=args.gif_index, every=max(1, len(frames) // 100))
    if args.ablation:
        n = min(8, num)
        rows = [generate(model, sched, (c, size, size), n, seed=args.seed, batch_size=n, sampler=name,
                         labels=None if labels is None else labels[:n], guidance=args.guidance, null_class=k,
                         clip_denoised=not args.no_clip) for name in ("ddpm", "ddpm-no-noise")]
        save_grid(np.concatenate(rows), os.path.join(out, "ablation.png"), nrow=n,
                  row_labels=["DDPM", "no noise added"], title="same starting noise x_T")
    if args.forward_figure:
        from ddpm_ms.data import load_fashion_arrays, resolve_fashion_dir
        from ddpm_ms.viz import forward_diffusion_figure
        images, _ = load_fashion_arrays(resolve_fashion_dir(cfg.data.root), count=1)
        forward_diffusion_figure(sched, images[:1].astype(np.float32) / 127.5 - 1.0,
                                 os.path.join(out, "forward_diffusion.png"))
    print(f"wrote {len(samples)} samples to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
