"""Fill in part of an image with a trained checkpoint, no retraining:
ddpm-ms inpaint --ckpt PATH --image IMAGES --mask NAME|FILE [--method plain|repaint] [--sampler ddim --steps 50]

IMAGES: a .npy ([N, C, H, W] in [-1, 1], or [N, H, W] uint8), a grayscale/RGB PNG of one image, or real
Fashion-MNIST images by index, ``data:5000:5064`` (the held-out ones the recipes never train on). The mask:
left, right, top, bottom (the half that is kept), center (the middle is filled in), random, or a .npy/.png file of
the image's size, 1 (white) where a pixel is kept. ``--method plain`` replaces the known pixels with the noised
original after every step of any sampler; ``repaint`` is RePaint (Lugmayr et al. 2022) on DDPM's steps, with
``--jump-length`` and ``--jump-n-sample``. Writes inpainted.npy, inpainted.png and inpaint_figure.png (the
original, the masked input, the reverse process, the result) into --out; ``--evaluate`` adds the FD of the
results and the classifier's agreement with the originals' classes (Fashion-MNIST images by index only).
"""
import json
import os
from argparse import RawDescriptionHelpFormatter

# pylint: disable=import-outside-toplevel
from ..cli import (ArgumentParser, add_device_arg, add_guidance_args, add_sampler_args, check_sampler_args,
                   positive_int, resolve_guidance, sampler_options)


def read_images(parser, spec, cfg, flag="--image"):
    """(images [N, C, H, W] float32 in [-1, 1], labels [N] or None) of --image (or ``flag``, e.g. --init-image)."""
    import numpy as np
    size, channels = cfg.data.image_size, cfg.model.channels
    if spec.startswith("data:"):
        from ..data import load_fashion_arrays, resolve_fashion_dir
        try:
            start, stop = (int(v) for v in spec[5:].split(":"))
        except ValueError:
            parser.error(f"{flag} {spec!r}: expected data:START:STOP, e.g. data:5000:5064")
        if not 0 <= start < stop:
            parser.error(f"{flag} {spec!r}: needs 0 <= START < STOP")
        if cfg.data.dataset != "fashion_mnist":
            parser.error(f"{flag} data:START:STOP reads Fashion-MNIST; this checkpoint was trained on "
                         f"{cfg.data.dataset}")
        x, y = load_fashion_arrays(resolve_fashion_dir(cfg.data.root), count=stop)
        if len(x) < stop:
            parser.error(f"{flag} {spec!r}: the data has only {len(x)} images")
        return x[start:stop, None].astype(np.float32) / 127.5 - 1.0, y[start:stop].astype(np.int64)
    if not os.path.isfile(spec):
        parser.error(f"{flag} file not found: {spec}")
    if spec.endswith(".npy"):
        try:
            x = np.load(spec, allow_pickle=False)
        except (ValueError, OSError) as e:
            parser.error(f"{flag} {spec} is not a numeric .npy array: {str(e).splitlines()[0]}")
        if x.dtype == np.uint8:
            x = x.astype(np.float32) / 127.5 - 1.0
        x = x[:, None] if x.ndim == 3 else x
    else:
        from ..viz import plt
        try:
            img = plt.imread(spec)
        except (ValueError, OSError, SyntaxError) as e:
            parser.error(f"{flag} {spec} is not a readable image: {e}")
        img = img[..., :3] if img.ndim == 3 else img[..., None]
        img = img.mean(-1, keepdims=True) if channels == 1 else img
        x = (img.transpose(2, 0, 1)[None].astype(np.float32) * 2.0 - 1.0)
    x = np.asarray(x, np.float32)
    if x.ndim != 4 or x.shape[1:] != (channels, size, size):
        parser.error(f"{flag} {spec}: images of shape [N, {channels}, {size}, {size}] needed for this checkpoint, "
                     f"got {list(x.shape)}")
    return np.clip(x, -1.0, 1.0), None


def read_mask(parser, spec, shape, seed):
    """The mask [1 or N, 1, H, W] of --mask: a name, or a .npy/.png file of the image's size (1 = kept)."""
    import numpy as np
    from ..editing import MASKS, make_mask
    if spec in MASKS:
        return make_mask(spec, shape, seed=seed)
    if not os.path.isfile(spec):
        parser.error(f"--mask {spec!r} is neither a mask name ({', '.join(MASKS)}) nor a file")
    if spec.endswith(".npy"):
        try:
            m = np.load(spec, allow_pickle=False).astype(np.float32)
        except (ValueError, OSError) as e:
            parser.error(f"--mask {spec} is not a numeric .npy array: {str(e).splitlines()[0]}")
    else:
        from ..viz import plt
        m = plt.imread(spec).astype(np.float32)
        m = m[..., :3].mean(-1) if m.ndim == 3 else m
    m = m.reshape((-1, 1) + m.shape[-2:]) if m.ndim >= 2 else m
    if m.ndim != 4 or m.shape[-2:] != tuple(shape[-2:]) or m.shape[0] not in (1, shape[0]):
        parser.error(f"--mask {spec}: a mask of {shape[-2]}x{shape[-1]} pixels needed, got {list(m.shape)}")
    return (m > 0.5).astype(np.float32)


def fill_in(parser, pipe, known, mask, labels, args):
    """(inpainted images, the Recorder of their predicted x0) with the --method, sampler and class flags."""
    import numpy as np
    from ..editing import inpaint, repaint
    from ..samplers import Recorder, default_steps, timesteps
    k = pipe.num_classes
    if args.cls is not None and (k is None or not 0 <= args.cls < k):
        parser.error(f"--class needs a class-conditional checkpoint and an index 0..{(k or 1) - 1}")
    wanted = None if k is None else (np.full(len(known), args.cls) if args.cls is not None
                                     else labels if labels is not None else np.arange(len(known)) % k)
    denoise = pipe.denoiser.bind(wanted, args.guidance)
    ab = pipe.denoiser.alphas_cumprod
    ts = timesteps(ab, args.steps or default_steps(args.sampler, len(ab)), args.spacing)
    recorder, rng = Recorder(("x0",)), np.random.default_rng(args.seed)
    if args.method == "repaint":
        done = repaint(denoise, known, mask, ts, ab, rng, jump_length=args.jump_length,
                       jump_n_sample=args.jump_n_sample, callback=recorder)
    else:
        options = {key: v for key, v in sampler_options(args).items() if key not in ("sampler", "steps", "spacing")}
        done = inpaint(denoise, known, mask, ts, ab, rng, sampler=args.sampler, callback=recorder, **options)
    return done, recorder


def scores(parser, pipe, done, images, labels):
    """--evaluate: the FD of the inpainted images and their class agreement with the originals (and the same for
    the originals themselves, at the same count)."""
    if labels is None or pipe.config.data.dataset != "fashion_mnist":
        parser.error("--evaluate scores Fashion-MNIST images given as data:START:STOP")
    from ..data import resolve_fashion_dir
    from ..metrics import Evaluator
    ev = Evaluator(resolve_fashion_dir(pipe.config.data.root))
    scored, original = (ev.evaluate(x, num=len(x), labels=labels) for x in (done, images))
    return {"fd": scored["fd"], "label_agreement": scored["label_agreement"], "fd_of_the_originals": original["fd"],
            "originals_label_agreement": original["label_agreement"],
            "note": f"FD of {len(done)} images (the metric's own figures use 1000)"}


def main(argv=None, prog=None):
    parser = ArgumentParser(prog=prog, description=__doc__, formatter_class=RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="checkpoint written by ddpm-ms train")
    parser.add_argument("--image", required=True, help="a .npy, a PNG, or data:START:STOP (Fashion-MNIST by index)")
    parser.add_argument("--mask", required=True, help="left, right, top, bottom, center, random, or a mask file")
    parser.add_argument("--method", choices=("plain", "repaint"), default="plain")
    parser.add_argument("--jump-length", type=positive_int, default=10, help="RePaint: steps per jump back")
    parser.add_argument("--jump-n-sample", type=positive_int, default=10, help="RePaint: passes over each stretch")
    add_sampler_args(parser)
    parser.add_argument("--class", dest="cls", type=int, metavar="INDEX",
                        help="condition on this class (conditional checkpoints; default: each original's)")
    add_guidance_args(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="output folder (default: inpaint/ next to the checkpoint)")
    parser.add_argument("--evaluate", action="store_true", help="FD and class agreement (data:START:STOP images)")
    parser.add_argument("--no-progress", action="store_true")
    add_device_arg(parser)
    args = parser.parse_args(argv)
    check_sampler_args(parser, args)
    if args.method == "repaint" and args.sampler != "ddpm":
        parser.error("--method repaint runs on DDPM's steps: use --sampler ddpm (with --steps to respace)")

    import numpy as np
    from ..device import use_device
    from ..paths import make_output_dir, save_npy
    from ..pipeline import Pipeline
    from ..viz import inpaint_figure, save_grid

    use_device(args.device)
    pipe = Pipeline.from_checkpoint(args.ckpt)
    check_sampler_args(parser, args, pipe.num_timesteps)
    args.guidance = resolve_guidance(parser, args, pipe.config)      # a Guidance from here on
    images, labels = read_images(parser, args.image, pipe.config)
    mask = read_mask(parser, args.mask, images.shape, args.seed)
    out = make_output_dir(args.out or os.path.join(os.path.dirname(os.path.abspath(args.ckpt)), "inpaint"), "--out")
    done, recorder = fill_in(parser, pipe, images * mask, mask, labels, args)
    save_npy(os.path.join(out, "inpainted.npy"), done.astype(np.float32))
    save_grid(done, os.path.join(out, "inpainted.png"), nrow=int(np.ceil(np.sqrt(len(done)))))
    inpaint_figure(images, mask, recorder, done, os.path.join(out, "inpaint_figure.png"),
                   title=f"{args.method} inpainting, mask {os.path.basename(args.mask)}")
    result = {"images": len(done), "method": args.method, "mask": args.mask, "out": out}
    if args.evaluate:
        result.update(scores(parser, pipe, done, images, labels))
    print(json.dumps(result))
    return 0
