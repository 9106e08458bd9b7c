"""The command line: ``ddpm-ms <command> [options]`` (installed with the package), or ``python scripts/<command>.py``.

    ddpm-ms train --config fashion_cpu.yaml       ddpm-ms sample --ckpt PATH        ddpm-ms evaluate --ckpt PATH
    ddpm-ms export --ckpt PATH                    ddpm-ms compare-samplers --ckpt PATH
    ddpm-ms inpaint --ckpt PATH --image data:5000:5064 --mask left

Each command is a module here with ``main(argv, prog)``; ``ddpm-ms <command> --help`` lists its options.
"""
import importlib
import sys

from ..cli import run_main

COMMANDS = {   # command -> (module, one line)
    "train": ("train", "train a model from a config (bundled name or path); --resume continues exactly"),
    "sample": ("sample", "sample images (and figures) from a checkpoint"),
    "evaluate": ("evaluate", "score samples or a checkpoint: FD, KID, IS-style, classes"),
    "export": ("export", "write a checkpoint's network as MindIR for any MindSpore runtime"),
    "compare-samplers": ("compare_samplers", "time and score every sampler at several step counts"),
    "inpaint": ("inpaint", "fill in the masked part of images (plain or RePaint), no retraining"),
}


def run(command, argv=None, prog=None):
    """Run one command (``argv``: its arguments, default sys.argv[1:]); returns the exit status."""
    module = importlib.import_module(f"{__name__}.{COMMANDS[command][0]}")
    return run_main(lambda: module.main(argv, prog))


def main(argv=None):
    """The ``ddpm-ms`` console entry point."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        width = max(map(len, COMMANDS))
        listed = "\n".join(f"  {name:{width}}  {text}" for name, (_, text) in COMMANDS.items())
        print(f"usage: ddpm-ms <command> [options]\n\ncommands:\n{listed}\n\n"
              "ddpm-ms <command> --help shows a command's options.")
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"error: unknown command {argv[0]!r}; choose one of {', '.join(COMMANDS)} (see --help)",
              file=sys.stderr)
        return 2
    return run(argv[0], argv[1:], prog=f"ddpm-ms {argv[0]}")
