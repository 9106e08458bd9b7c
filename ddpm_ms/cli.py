"""Shared command-line plumbing: typed argument checks and one-line errors instead of tracebacks.

Imports no MindSpore: the commands import what they need once their arguments are parsed.
"""
import argparse
import signal
import sys

from .errors import UserError, first_line
from .registries import DEVICES, SAMPLERS, SPACINGS


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line: 'error: ...', exit status 2."""

    def error(self, message):
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def positive_int(text):
    """argparse type: an integer > 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def positive_float(text):
    """argparse type: a finite float > 0."""
    value = non_negative_float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value}")
    return value


def non_negative_float(text):
    """argparse type: a float >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return value


def _terminate(signum, _frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def run_main(main):
    """Call ``main()``; a user error (:class:`ddpm_ms.errors.UserError`) becomes one line 'error: ...' on stderr
    and exit status 2. Ctrl-C or SIGTERM outside the training steps (which checkpoint and stop cleanly by
    themselves) unwinds like Ctrl-C: every file being written is dropped whole, and one line says so (status 130).
    """
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return main()
    except UserError as e:
        print(f"error: {first_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"error: interrupted ({e.args[0] if e.args else 'SIGINT'}); nothing was half-written "
              "(a training run continues with --resume latest)", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def unit_float(text):
    """argparse type: a float in [0, 1]."""
    value = non_negative_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {value}")
    return value


def add_device_arg(parser, default="auto"):
    """--device auto|CPU|GPU|Ascend ("auto": MindSpore's default target)."""
    parser.add_argument("--device", choices=DEVICES, default=default,
                        help="where to run (default: " + (default or "the config's train.device") +
                             "; auto is MindSpore's default)")


def add_sampler_args(parser):
    """--sampler, --steps, --spacing and --eta, defined once for every script that samples."""
    listed = "; ".join(f"{name}: {entry.summary}" for name, entry in SAMPLERS.items())
    parser.add_argument("--sampler", choices=SAMPLERS.names(), default="ddpm", help=f"default ddpm ({listed})")
    defaults = ", ".join(f"{name} {entry.default_steps or 'T'}" for name, entry in SAMPLERS.items())
    parser.add_argument("--steps", type=positive_int,
                        help=f"network calls, at most the model's T (default: {defaults})")
    parser.add_argument("--spacing", choices=SPACINGS, default="uniform",
                        help="timesteps evenly spaced in t (uniform, default) or in log-SNR (logsnr)")
    parser.add_argument("--eta", type=unit_float, help="DDIM eta in [0, 1] (default 0: deterministic; 1: DDPM-like)")


def check_sampler_args(parser, args, num_timesteps=None):
    """One-line errors for sampler flags that do not fit the sampler or the model's ``num_timesteps``."""
    if args.eta is not None and "eta" not in SAMPLERS[args.sampler].options:
        takes = [name for name, entry in SAMPLERS.items() if "eta" in entry.options]
        parser.error(f"--eta applies to --sampler {' or '.join(takes)}, not {args.sampler}")
    if num_timesteps is not None and args.steps is not None and args.steps > num_timesteps:
        parser.error(f"--steps {args.steps} exceeds the checkpoint's {num_timesteps} diffusion timesteps")


def add_guidance_args(parser):
    """--guidance and --guidance-interval, defined once for every script that samples a class-conditional model;
    :func:`resolve_guidance` fills in what is not given from the checkpoint."""
    parser.add_argument("--guidance", type=non_negative_float,
                        help="classifier-free guidance w for a class-conditional checkpoint (default: its "
                             "train.guidance; 0 unconditional, 1 conditional)")
    parser.add_argument("--guidance-interval", type=int, nargs=2, metavar=("LO", "HI"),
                        help="guide only on timesteps LO..HI, w = 1 elsewhere (default: the checkpoint's "
                             "train.guidance_interval, else every timestep)")


def resolve_guidance(parser, args, config):
    """The :class:`ddpm_ms.samplers.Guidance` of the guidance flags, the checkpoint's ``config`` filling the gaps."""
    from .samplers import Guidance, interval_problem  # pylint: disable=import-outside-toplevel
    t, interval = config.train, args.guidance_interval
    problem = interval_problem(interval, config.diffusion.timesteps)
    if problem is not None:
        parser.error(f"--guidance-interval {problem}")
    interval = interval if interval is not None else t.guidance_interval
    return Guidance(t.guidance if args.guidance is None else args.guidance,
                    None if interval is None else tuple(int(v) for v in interval))


def guidance_settings(guidance):
    """A Guidance as JSON-ready settings."""
    return {"guidance": guidance.w, "guidance_interval": None if guidance.interval is None else list(guidance.interval)}


def sampler_options(args):
    """The keyword arguments of :func:`ddpm_ms.sampling.generate` that the sampler flags give."""
    options = {"sampler": args.sampler, "steps": args.steps, "spacing": args.spacing}
    if args.eta is not None:
        options["eta"] = args.eta
    return options


def sampler_settings(args):
    """The sampler flags as a dict, for results that must say how their samples were made."""
    return {"sampler": args.sampler, "steps": args.steps, "spacing": args.spacing, "eta": args.eta}
