"""Sample from a trained checkpoint: python scripts/sample.py --ckpt PATH [--num 64] [--sampler ddim --steps 50]

Writes samples.png (a grid) and samples.npy ([N, C, H, W] float32 in [-1, 1]) into --out; --gif adds
denoising.gif; --forward-figure adds the tutorial's forward-diffusion figure. A class-conditional
checkpoint takes --class NAME|INDEX and --guidance W, or --per-class for a labelled 10-row grid.
--ablation adds ablation.png: DDPM and DDPM with no noise added back, from the same starting noise.
--explain adds three figures of the reverse process: explain_steps.png, explain_std.png, explain_loss.png.
--init-image IMAGES --strength S edits images (SDEdit); --interpolate K writes interpolation.png.
EMA weights are used when the checkpoint has them (--no-ema for the raw weights).
"""
import os
from argparse import RawDescriptionHelpFormatter

# pylint: disable=import-outside-toplevel
from ..cli import (ArgumentParser, add_device_arg, add_guidance_args, add_sampler_args, check_sampler_args,
                   positive_int, resolve_guidance, sampler_options, unit_float)


def parse_class(text, num_classes, class_names):
    """A class index or (case-insensitive) name -> index; raises ValueError naming the choices."""
    if text.isdigit() and int(text) < num_classes:
        return int(text)
    lowered = [n.lower() for n in class_names]
    if text.lower() in lowered:
        return lowered.index(text.lower())
    raise ValueError(f"--class {text!r} is not a class index 0..{num_classes - 1} or one of: {', '.join(class_names)}")


def choose_labels(parser, args, num_classes):
    """(labels [N] or None, row names or None) for the class flags; one-line errors for bad ones."""
    import numpy as np
    from ..data import FASHION_CLASSES
    k = num_classes
    if (args.cls is not None or args.per_class) and k is None:
        parser.error("--class/--per-class need a class-conditional checkpoint (model.num_classes)")
    names = list(FASHION_CLASSES) if k == len(FASHION_CLASSES) else [str(i) for i in range(k or 0)]
    if args.per_class:
        return np.repeat(np.arange(k), max(1, args.num // k)), names
    if args.cls is not None:
        try:
            return np.full(args.num, parse_class(args.cls, k, names)), None
        except ValueError as e:
            parser.error(str(e))
    return (None if k is None else np.arange(args.num) % k), None


def write_ablation(pipe, labels, args, out):
    """ablation.png: 8 DDPM samples above the same 8 starting noises with no noise added back."""
    import numpy as np
    from ..viz import save_grid
    n = min(8, args.num)
    rows = [pipe.generate(n, seed=args.seed, batch_size=n, sampler=name, guidance=args.guidance,
                          classes=None if labels is None else labels[:n]) for name in ("ddpm", "ddpm-no-noise")]
    save_grid(np.concatenate(rows), os.path.join(out, "ablation.png"), nrow=n,
              row_labels=["DDPM", "no noise added"], title="same starting noise x_T")


def write_explain(pipe, labels, args, out):
    """explain_steps.png, explain_std.png, explain_loss.png: the reverse process for learners."""
    from ..data import build_dataset
    from ..explain import write_figures
    held = next(build_dataset(pipe.config.data, 64).create_tuple_iterator(num_epochs=1, output_numpy=True))[0]
    write_figures(pipe.model, pipe.sched, pipe.config, pipe.image_shape, held, out, seed=args.seed, labels=labels,
                  guidance=args.guidance, clip_denoised=not args.no_clip, **sampler_options(args))


def _editing_options(args):
    return {k: v for k, v in sampler_options(args).items() if k not in ("sampler", "steps", "spacing")}


def write_sdedit(parser, pipe, labels, args, out, recorder=None):
    """SDEdit of --init-image at --strength (returned), and sdedit_strengths.png: its first images at 0.2 .. 1."""
    import numpy as np
    from ..editing import sdedit
    from ..viz import strength_figure
    from .inpaint import read_images
    images, _ = read_images(parser, args.init_image, pipe.config, flag="--init-image")
    k = pipe.num_classes
    wanted = None if k is None else (labels[:len(images)] if labels is not None and len(labels) >= len(images)
                                     else np.arange(len(images)) % k)

    def edit(x, strength, callback=None):
        denoise = pipe.denoiser.bind(None if wanted is None else wanted[:len(x)], args.guidance)
        return sdedit(denoise, x, strength, pipe.denoiser.alphas_cumprod, np.random.default_rng(args.seed),
                      sampler=args.sampler, steps=args.steps, spacing=args.spacing, callback=callback,
                      **_editing_options(args))

    edited = edit(images, args.strength, recorder)
    few, strengths = images[:6], (0.2, 0.4, 0.6, 0.8, 1.0)
    strength_figure(few, np.stack([edit(few, s) for s in strengths]), strengths,
                    os.path.join(out, "sdedit_strengths.png"),
                    title=f"SDEdit ({args.sampler}): the input noised to t = s T and denoised")
    return edited


def write_interpolation(pipe, args, out, strips=4):
    """interpolation.png: ``strips`` rows of --interpolate K images between two starting noises each."""
    import numpy as np
    from ..editing import interpolate, mix_labels
    from ..samplers import batch_rng
    from ..viz import save_grid
    rows, k = [], pipe.num_classes
    for j in range(strips):
        z0, z1 = (batch_rng(args.seed, 2 * j + e).standard_normal((1, *pipe.image_shape), dtype=np.float32)
                  for e in (0, 1))
        at = None if k is None else mix_labels(pipe.denoiser, j % k, (j + 1) % k, args.guidance)
        rows.append(interpolate(pipe.denoiser, z0, z1, args.interpolate, pipe.denoiser.alphas_cumprod,
                                sampler=args.sampler, steps=args.steps, spacing=args.spacing, denoise_at=at))
    save_grid(np.concatenate(rows), os.path.join(out, "interpolation.png"), nrow=args.interpolate,
              title=f"slerp between two noises per row ({args.sampler}"
                    f"{', labels mixed' if k else ''})")


def build_parser(prog=None):
    """The sample command's arguments."""
    parser = ArgumentParser(prog=prog, description=__doc__, formatter_class=RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="checkpoint written by scripts/train.py")
    parser.add_argument("--num", type=positive_int, default=64, help="number of images (default 64)")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="images per sampling batch")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (same seed, same images)")
    parser.add_argument("--out", help="output folder (default: samples/ next to the checkpoint)")
    add_sampler_args(parser)
    parser.add_argument("--class", dest="cls", metavar="NAME|INDEX", help="class to generate (conditional models)")
    add_guidance_args(parser)
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
    parser.add_argument("--explain", action="store_true",
                        help="also write explain_steps.png (x_t, predicted noise, predicted x_0 at a few steps), "
                             "explain_std.png (std of x_t along the chain, clipped or not) and explain_loss.png "
                             "(the loss by timestep on a batch of training images)")
    parser.add_argument("--init-image", metavar="IMAGES",
                        help="image-to-image (SDEdit): start from these images (.npy, PNG or data:START:STOP) noised "
                             "to --strength; also writes sdedit_strengths.png")
    parser.add_argument("--strength", type=unit_float, default=0.5,
                        help="with --init-image: the noise level s in [0, 1] (t = s T; 0 returns the input, 1 is "
                             "unconditional sampling)")
    parser.add_argument("--interpolate", type=int, metavar="K",
                        help="write interpolation.png: K images between pairs of starting noises (slerp), decoded "
                             "with --sampler ddim or dpm++2m; a conditional model's labels are mixed too")
    add_device_arg(parser)
    return parser


def check_modes(parser, args):
    """One-line errors for flags that do not fit together (before any model is loaded)."""
    check_sampler_args(parser, args)
    if args.interpolate is not None:
        if args.interpolate < 2:
            parser.error(f"--interpolate K needs K >= 2, got {args.interpolate}")
        if args.sampler not in ("ddim", "dpm++2m"):
            parser.error("--interpolate needs a deterministic sampler: --sampler ddim or dpm++2m")


def write_figures(pipe, labels, args, out):
    """The optional figures: ablation.png, the --explain figures, forward_diffusion.png."""
    import numpy as np
    if args.ablation:
        write_ablation(pipe, labels, args, out)
    if args.explain:
        write_explain(pipe, labels, args, out)
    if args.forward_figure:
        from ..data import load_fashion_arrays, resolve_fashion_dir
        from ..viz import forward_diffusion_figure
        images, _ = load_fashion_arrays(resolve_fashion_dir(pipe.config.data.root), count=1)
        forward_diffusion_figure(pipe.sched, images[:1].astype(np.float32) / 127.5 - 1.0,
                                 os.path.join(out, "forward_diffusion.png"))


def main(argv=None, prog=None):
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    check_modes(parser, args)

    import numpy as np
    from ..device import use_device
    from ..paths import make_output_dir, save_npy
    from ..pipeline import Pipeline
    from ..samplers import Recorder, batch_plan
    from ..viz import save_gif, save_grid

    use_device(args.device)
    pipe = Pipeline.from_checkpoint(args.ckpt, use_ema=not args.no_ema, clip_denoised=not args.no_clip)
    check_sampler_args(parser, args, pipe.num_timesteps)
    args.guidance = resolve_guidance(parser, args, pipe.config)      # a Guidance from here on
    labels, rows = choose_labels(parser, args, pipe.num_classes)
    num = args.num if labels is None else len(labels)
    if not 0 <= args.gif_index < batch_plan(num, args.batch_size)[1]:
        parser.error(f"--gif-index must be in [0, {batch_plan(num, args.batch_size)[1]}) (the first batch)")
    out = make_output_dir(args.out or os.path.join(os.path.dirname(os.path.abspath(args.ckpt)), "samples"), "--out")
    if args.interpolate is not None:
        write_interpolation(pipe, args, out)
        print(f"wrote interpolation.png to {out}")
        return 0
    recorder = Recorder(("x",)) if args.gif else None
    if args.init_image:
        samples = write_sdedit(parser, pipe, labels, args, out, recorder)
    else:
        samples = pipe.generate(num, seed=args.seed, batch_size=args.batch_size, classes=labels,
                                guidance=args.guidance, callback=recorder, **sampler_options(args))
    save_npy(os.path.join(out, "samples.npy"), samples.astype(np.float32))
    nrow = len(samples) // pipe.num_classes if rows else int(np.ceil(np.sqrt(len(samples))))
    save_grid(samples, os.path.join(out, "samples.png"), nrow=nrow, row_labels=rows)
    if recorder is not None:
        frames = recorder.stack("x")
        save_gif(frames, os.path.join(out, "denoising.gif"), index=args.gif_index, every=max(1, len(frames) // 100))
    write_figures(pipe, labels, args, out)
    print(f"wrote {len(samples)} samples to {out}")
    return 0
