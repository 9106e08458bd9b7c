"""Shared command-line plumbing: typed argument checks and one-line errors instead of tracebacks."""
import argparse
import sys

from .checkpoint import CheckpointError
from .config import ConfigError
from .data import DataError

USER_ERRORS = (ConfigError, DataError, CheckpointError)


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


def non_negative_float(text):
    """argparse type: a float >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return value


def run_main(main):
    """Call ``main()``; a known user error becomes 'error: ...' on stderr and exit status 2."""
    try:
        return main()
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
