"""Score generated images against held-out real Fashion-MNIST: Fréchet distance, KID, IS-style score, classes.

    python scripts/evaluate.py --samples samples.npy        # or a grid PNG written by sample.py
    python scripts/evaluate.py --ckpt PATH [--sampler ddim --steps 50]   # samples 1000 images first
    python scripts/evaluate.py --calibrate                   # the reference points in the README

Prints JSON. Every number uses exactly 1000 images, so numbers compare across runs (``--num`` scores fewer, for
a quick look whose numbers do not compare with those).
"""
import json
import os
from argparse import RawDescriptionHelpFormatter

# pylint: disable=import-outside-toplevel
from ..cli import (ArgumentParser, add_device_arg, add_guidance_args, add_sampler_args, check_sampler_args,
                   guidance_settings, positive_int, resolve_guidance, sampler_options, sampler_settings)


def require_fashion(parser, cfg):
    """One line when a checkpoint was not trained on Fashion-MNIST: the metric's classifier is a Fashion-MNIST one."""
    if cfg.data.dataset != "fashion_mnist":
        parser.error(f"the metric scores Fashion-MNIST samples (its classifier is a Fashion-MNIST CNN); this "
                     f"checkpoint was trained on {cfg.data.dataset}")


def main(argv=None, prog=None):
    parser = ArgumentParser(prog=prog, description=__doc__, formatter_class=RawDescriptionHelpFormatter)
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--samples", help="samples .npy ([N,1,28,28] in [-1,1]) or an exact grid PNG from sample.py")
    src.add_argument("--ckpt", help="sample from this checkpoint first")
    src.add_argument("--calibrate", action="store_true", help="score the reference points instead")
    add_sampler_args(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=positive_int, default=250)
    parser.add_argument("--no-ema", action="store_true")
    add_guidance_args(parser)     # a class-conditional --ckpt samples labels 0..9 in turn
    parser.add_argument("--no-clip", action="store_true", help="sample without clipping the predicted x_0")
    parser.add_argument("--num", type=positive_int, help="images to score (default 1000: what reported numbers use)")
    parser.add_argument("--data-root", help="Fashion-MNIST folder (default: the usual lookup)")
    add_device_arg(parser)
    args = parser.parse_args(argv)
    check_sampler_args(parser, args)

    import numpy as np
    from ..data import resolve_fashion_dir
    from ..device import use_device
    from ..metrics import NUM_EVAL, Evaluator, calibration

    num = args.num or NUM_EVAL
    use_device(args.device)
    root = resolve_fashion_dir(args.data_root)
    if args.samples and not os.path.isfile(args.samples):
        parser.error(f"--samples file not found: {args.samples}")
    evaluator = Evaluator(root)
    if args.calibrate:
        print(json.dumps(calibration(evaluator, root), indent=1))
        return 0
    labels = None
    if args.samples:
        if args.samples.endswith(".npy"):
            try:
                images = np.load(args.samples, allow_pickle=False)
            except (ValueError, OSError) as e:
                parser.error(f"--samples {args.samples} is not a numeric .npy array: {str(e).splitlines()[0]}")
        else:
            from ..viz import read_grid
            try:
                images = read_grid(args.samples)
            except (ValueError, OSError) as e:
                parser.error(str(e))
    else:
        from ..pipeline import Pipeline
        pipe = Pipeline.from_checkpoint(args.ckpt, use_ema=not args.no_ema, clip_denoised=not args.no_clip)
        require_fashion(parser, pipe.config)
        check_sampler_args(parser, args, pipe.num_timesteps)
        labels = pipe.labels(num)
        guidance = resolve_guidance(parser, args, pipe.config)
        images = pipe.generate(num, seed=args.seed, batch_size=args.batch_size, guidance=guidance,
                               **sampler_options(args))
    try:
        result = evaluator.evaluate(images, num, labels=labels)
    except ValueError as e:
        parser.error(str(e))
    if args.ckpt:   # how the scored samples were made
        result.update(sampler_settings(args), **(guidance_settings(guidance) if labels is not None else
                                                 {"guidance": None, "guidance_interval": None}),
                      ema=not args.no_ema, clip_denoised=not args.no_clip, seed=args.seed)
    print(json.dumps(result))
    return 0
