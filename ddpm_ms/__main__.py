"""``python -m ddpm_ms <command>``: the same as the ``ddpm-ms`` console command."""
import sys

from .commands import main

sys.exit(main())
