#!/usr/bin/env python
"""`ddpm-ms inpaint` without installing: python scripts/inpaint.py --help (see ddpm_ms/commands/inpaint.py)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from ddpm_ms.commands import run  # noqa: E402  pylint: disable=wrong-import-position

if __name__ == "__main__":
    sys.exit(run("inpaint"))
