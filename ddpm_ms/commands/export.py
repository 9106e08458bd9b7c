"""Export a checkpoint's network as MindIR: ddpm-ms export --ckpt PATH [--out FILE.mindir] [--no-ema]

Writes FILE.mindir, the denoising network with the EMA weights (inputs x [B,C,H,W] float32 and t [B] int32, and
y [B] int32 labels for a class-conditional model; any batch size), and FILE.yaml, its config. Any MindSpore
runtime loads it; in Python, ddpm_ms.load_exported(FILE.mindir) gives a network that ddpm_ms.Denoiser and every
sampler accept. --out defaults to the checkpoint's path with .mindir.
"""
from ..cli import ArgumentParser, add_device_arg


def main(argv=None, prog=None):
    parser = ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument("--ckpt", required=True, help="checkpoint written by ddpm-ms train")
    parser.add_argument("--out", help="the .mindir file to write (default: next to the checkpoint)")
    parser.add_argument("--no-ema", action="store_true", help="export the raw weights instead of the EMA ones")
    add_device_arg(parser)
    args = parser.parse_args(argv)
    if args.out and not args.out.endswith(".mindir"):
        parser.error(f"--out must end with .mindir, got {args.out}")

    from ..device import use_device  # pylint: disable=import-outside-toplevel
    from ..export import export_network  # pylint: disable=import-outside-toplevel
    use_device(args.device)
    path = export_network(args.ckpt, args.out, use_ema=not args.no_ema)
    print(f"wrote {path} and its config {path[:-len('.mindir')]}.yaml")
    return 0
