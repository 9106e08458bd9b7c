#!/usr/bin/env python
"""Sample from a trained checkpoint: python scripts/sample.py --ckpt PATH [--num 64] [--gif] [--out DIR]

Writes samples.png (a grid) and samples.npy ([N, C, H, W] float32 in [-1, 1]); --gif adds
denoising.gif; --forward-figure adds the tutorial's forward-diffusion figure.
"""
import os
from argparse import RawDescriptionHelpFormatter
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from ddpm_ms.cli import ArgumentParser, positive_int, run_main  # noqa: E402  pylint: disable=wrong-import-position


def main():
    parser = ArgumentParser(description=__doc__, formatter_class=RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="checkpoint written by scripts/train.py")
    parser.add_argument("--num", type=positive_int, default=64, help="number of images (default 64)")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="images per sampling batch")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (same seed, same images)")
    parser.add_argument("--out", help="output folder (default: samples/ next to the checkpoint)")
    parser.add_argument("--gif", action="store_true", help="also write denoising.gif of the first images")
    parser.add_argument("--gif-index", type=int, default=0, help="which image of the first batch to animate")
    parser.add_argument("--forward-figure", action="store_true",
                        help="also write forward_diffusion.png (one training image at t=0,50,100,150,199)")
    args = parser.parse_args()

    import numpy as np  # pylint: disable=import-outside-toplevel
    from ddpm_ms.checkpoint import load_model  # pylint: disable=import-outside-toplevel
    from ddpm_ms.sampling import p_sample_loop  # pylint: disable=import-outside-toplevel
    from ddpm_ms.viz import save_gif, save_grid  # pylint: disable=import-outside-toplevel

    model, sched, cfg, _ = load_model(args.ckpt)
    if not 0 <= args.gif_index < min(args.num, args.batch_size):
        parser.error(f"--gif-index must be in [0, {min(args.num, args.batch_size)})")
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.ckpt)), "samples")
    os.makedirs(out, exist_ok=True)
    c, size = cfg.model.channels, cfg.data.image_size
    chunks = []
    for i, start in enumerate(range(0, args.num, args.batch_size)):
        n = min(args.batch_size, args.num - start)
        want_frames = args.gif and i == 0
        x = p_sample_loop(model, sched, (n, c, size, size), seed=args.seed + i, return_all=want_frames)
        if want_frames:
            save_gif(x, os.path.join(out, "denoising.gif"), index=args.gif_index, every=max(1, len(x) // 100))
            x = x[-1]
        chunks.append(x)
    samples = np.concatenate(chunks)
    np.save(os.path.join(out, "samples.npy"), samples.astype(np.float32))
    save_grid(samples, os.path.join(out, "samples.png"), nrow=int(np.ceil(np.sqrt(len(samples)))))
    if args.forward_figure:
        from ddpm_ms.data import load_fashion_arrays, resolve_fashion_dir  # pylint: disable=import-outside-toplevel
        from ddpm_ms.viz import forward_diffusion_figure  # pylint: disable=import-outside-toplevel
        images, _ = load_fashion_arrays(resolve_fashion_dir(cfg.data.root), count=1)
        forward_diffusion_figure(sched, images[:1].astype(np.float32) / 127.5 - 1.0,
                                 os.path.join(out, "forward_diffusion.png"))
    print(f"wrote {len(samples)} samples to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
