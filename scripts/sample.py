#!/usr/bin/env python
"""`ddpm-ms sample` without installing: python scripts/sample.py --help (see ddpm_ms/commands/sample.py)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from ddpm_ms.commands import run  # noqa: E402  pylint: disable=wrong-import-position

if __name__ == "__main__":
    sys.exit(run("sample"))
